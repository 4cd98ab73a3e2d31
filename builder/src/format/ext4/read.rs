//! The ext4 reader: a whole file system into a [`Tree`], with file contents left
//! on the device (pieces of external source `source`, at the file system's byte
//! offsets plus `base`).
//!
//! Reads what mke2fs and the kernel make today: 32- and 64-bit descriptors,
//! flex_bg, metadata_csum (checksums are not verified: e2fsck is the judge of a
//! base), extent trees of any depth, old block maps, htree directories (read
//! linearly), in-inode and block extended attributes, fast and slow symlinks,
//! devices, hard links. Refused: inline data, a journal that needs recovery,
//! and every structure that points outside the file system.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, SeekFrom};

use super::*;
use crate::format::endian::{le16, le32};
use crate::tree::{Data, Kind, Meta, Node, NodeId, Piece, ROOT, Tree};

/// Deepest extent tree accepted (ext4's own maximum is 5).
const MAX_DEPTH: u16 = 5;
/// Largest directory read (bytes).
const MAX_DIR: u64 = 256 << 20;

/// Errors of reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not ext2/3/4.
    #[error("no ext4 superblock (bad magic)")]
    BadMagic,
    /// Unsupported feature.
    #[error("unsupported ext4 feature: {0}")]
    Unsupported(String),
    /// Inconsistent structure.
    #[error("corrupt ext4: {0}")]
    Corrupt(String),
    /// I/O.
    #[error("reading ext4")]
    Io(#[from] io::Error),
}

/// Facts about the file system that the writer keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Volume label.
    pub label: Vec<u8>,
    /// UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Block size.
    pub block_size: u64,
    /// Blocks.
    pub blocks: u64,
    /// Inodes in use (counted while reading).
    pub inodes_used: u64,
}

struct Fs<'a, R> {
    dev: &'a mut R,
    bs: u64,
    blocks: u64,
    inode_size: u64,
    inodes_per_group: u64,
    inodes_count: u64,
    desc: Vec<u64>, // inode table block per group
}

impl<R: Read + Seek> Fs<'_, R> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.dev.seek(SeekFrom::Start(offset))?;
        self.dev.read_exact(buf)?;
        Ok(())
    }

    fn block(&mut self, n: u64) -> Result<Vec<u8>, ReadError> {
        if n >= self.blocks {
            return Err(ReadError::Corrupt(format!("block {n} beyond the end ({} blocks)", self.blocks)));
        }
        let mut b = vec![0u8; self.bs as usize];
        self.read(n * self.bs, &mut b)?;
        Ok(b)
    }

    fn inode(&mut self, ino: u64) -> Result<Vec<u8>, ReadError> {
        if ino == 0 || ino > self.inodes_count {
            return Err(ReadError::Corrupt(format!("inode {ino} out of range")));
        }
        let g = (ino - 1) / self.inodes_per_group;
        let idx = (ino - 1) % self.inodes_per_group;
        let table = *self.desc.get(g as usize).ok_or_else(|| ReadError::Corrupt(format!("no group {g}")))?;
        let mut r = vec![0u8; self.inode_size as usize];
        let off = table * self.bs + idx * self.inode_size;
        if off + self.inode_size > self.blocks * self.bs {
            return Err(ReadError::Corrupt(format!("inode table of group {g} beyond the end")));
        }
        self.read(off, &mut r)?;
        Ok(r)
    }

    /// The (logical block, physical block, length) runs of an inode.
    fn runs(&mut self, inode: &[u8]) -> Result<Vec<(u64, u64, u64)>, ReadError> {
        let flags = le32(inode, 32);
        if flags & INLINE_DATA_FL != 0 {
            return Err(ReadError::Unsupported("inline data".into()));
        }
        let mut out = Vec::new();
        if flags & EXTENTS_FL != 0 {
            self.extent_node(&inode[40..100], 0, &mut out)?;
        } else {
            self.block_map(&inode[40..100], &mut out)?;
        }
        Ok(out)
    }

    fn extent_node(&mut self, node: &[u8], level: u16, out: &mut Vec<(u64, u64, u64)>) -> Result<(), ReadError> {
        if le16(node, 0) != EXTENT_MAGIC {
            return Err(ReadError::Corrupt("bad extent header magic".into()));
        }
        let entries = le16(node, 2) as usize;
        let depth = le16(node, 6);
        if depth > MAX_DEPTH || level > MAX_DEPTH || 12 + entries * 12 > node.len() {
            return Err(ReadError::Corrupt("extent tree too deep or overfull".into()));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let logical = u64::from(le32(e, 0));
                let raw_len = u64::from(le16(e, 4));
                let phys = (u64::from(le16(e, 6)) << 32) | u64::from(le32(e, 8));
                if raw_len > 32768 {
                    continue; // uninitialised: reads as zeros
                }
                if phys + raw_len > self.blocks {
                    return Err(ReadError::Corrupt(format!("extent {phys}+{raw_len} beyond the end")));
                }
                out.push((logical, phys, raw_len));
            } else {
                let leaf = (u64::from(le16(e, 8)) << 32) | u64::from(le32(e, 4));
                let child = self.block(leaf)?;
                self.extent_node(&child, level + 1, out)?;
            }
        }
        Ok(())
    }

    fn block_map(&mut self, i_block: &[u8], out: &mut Vec<(u64, u64, u64)>) -> Result<(), ReadError> {
        let per = self.bs / 4;
        let mut logical = 0u64;
        let mut push = |out: &mut Vec<(u64, u64, u64)>, logical: u64, phys: u64| {
            if phys != 0 {
                match out.last_mut() {
                    Some((l, p, n)) if *l + *n == logical && *p + *n == phys => *n += 1,
                    _ => out.push((logical, phys, 1)),
                }
            }
        };
        for i in 0..12 {
            push(out, logical, u64::from(le32(i_block, i * 4)));
            logical += 1;
        }
        for (level, slot) in [(1u32, 12usize), (2, 13), (3, 14)] {
            let root = u64::from(le32(i_block, slot * 4));
            let span = per.pow(level);
            if root == 0 {
                logical += span;
                continue;
            }
            self.indirect(root, level, &mut logical, out, &mut push)?;
        }
        Ok(())
    }

    fn indirect(
        &mut self,
        block: u64,
        level: u32,
        logical: &mut u64,
        out: &mut Vec<(u64, u64, u64)>,
        push: &mut impl FnMut(&mut Vec<(u64, u64, u64)>, u64, u64),
    ) -> Result<(), ReadError> {
        let per = self.bs / 4;
        let b = self.block(block)?;
        for i in 0..per as usize {
            let p = u64::from(le32(&b, i * 4));
            if level == 1 {
                push(out, *logical, p);
                *logical += 1;
            } else if p == 0 {
                *logical += per.pow(level - 1);
            } else {
                self.indirect(p, level - 1, logical, out, push)?;
            }
        }
        Ok(())
    }

    fn read_runs(&mut self, runs: &[(u64, u64, u64)], size: u64) -> Result<Vec<u8>, ReadError> {
        if size > MAX_DIR {
            return Err(ReadError::Corrupt(format!("directory of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        for (logical, phys, len) in runs {
            for k in 0..*len {
                let at = (logical + k) * self.bs;
                if at >= size {
                    break;
                }
                let b = self.block(phys + k)?;
                let n = (size - at).min(self.bs) as usize;
                data[at as usize..at as usize + n].copy_from_slice(&b[..n]);
            }
        }
        Ok(data)
    }

    fn xattrs(&mut self, inode: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ReadError> {
        let mut out = BTreeMap::new();
        if self.inode_size > 128 {
            let extra = u64::from(le16(inode, 128));
            let start = (128 + extra) as usize;
            if start + 4 <= inode.len() && le32(inode, start) == XATTR_MAGIC {
                parse_xattr_entries(&inode[start + 4..], &inode[start + 4..], &mut out)?;
            }
        }
        let acl = u64::from(le32(inode, 104)) | (u64::from(le16(inode, 118)) << 32);
        if acl != 0 {
            let b = self.block(acl)?;
            if le32(&b, 0) != XATTR_MAGIC {
                return Err(ReadError::Corrupt(format!("xattr block {acl} has a bad magic")));
            }
            parse_xattr_entries(&b[32..], &b, &mut out)?;
        }
        Ok(out)
    }
}

/// Parses xattr entries from `entries`; value offsets are relative to `values`.
fn parse_xattr_entries(entries: &[u8], values: &[u8], out: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), ReadError> {
    let mut at = 0usize;
    while at + 16 <= entries.len() && le32(entries, at) != 0 {
        let name_len = entries[at] as usize;
        let index = entries[at + 1];
        let voff = le16(entries, at + 2) as usize;
        let vinum = le32(entries, at + 4);
        let vsize = le32(entries, at + 8) as usize;
        if at + 16 + name_len > entries.len() {
            return Err(ReadError::Corrupt("xattr name beyond its area".into()));
        }
        if vinum != 0 {
            return Err(ReadError::Unsupported("xattr values in separate inodes (ea_inode)".into()));
        }
        let name = &entries[at + 16..at + 16 + name_len];
        let prefix: &[u8] = XATTR_PREFIXES.iter().find(|(_, i)| *i == index).map_or(b"", |(p, _)| *p);
        let value =
            values.get(voff..voff + vsize).ok_or_else(|| ReadError::Corrupt("xattr value beyond its area".into()))?;
        let mut full = prefix.to_vec();
        full.extend_from_slice(name);
        out.insert(full, value.to_vec());
        at += 16 + name_len.div_ceil(4) * 4;
    }
    Ok(())
}

/// Reads the whole file system from `dev` (positioned anywhere; offsets are
/// relative to the file system start). Contents become pieces of `source` at
/// `base` + the file system offset.
pub fn read_tree<R: Read + Seek>(dev: &mut R, source: u32, base: u64) -> Result<(Tree, Info), ReadError> {
    let mut sb = vec![0u8; 1024];
    dev.seek(SeekFrom::Start(1024))?;
    dev.read_exact(&mut sb)?;
    if le16(&sb, 56) != MAGIC {
        return Err(ReadError::BadMagic);
    }
    let log = le32(&sb, 24);
    if log > 6 {
        return Err(ReadError::Corrupt(format!("block size 2^{}", log + 10)));
    }
    let bs = 1024u64 << log;
    let incompat_flags = le32(&sb, 96);
    if incompat_flags & incompat::INLINE_DATA != 0 {
        return Err(ReadError::Unsupported("inline_data".into()));
    }
    if incompat_flags & incompat::RECOVER != 0 {
        return Err(ReadError::Unsupported("the journal needs recovery (run e2fsck on the base first)".into()));
    }
    let is64 = incompat_flags & incompat::BIT64 != 0;
    let blocks = u64::from(le32(&sb, 4)) | if is64 { u64::from(le32(&sb, 336)) << 32 } else { 0 };
    let inodes_count = u64::from(le32(&sb, 0));
    let blocks_per_group = u64::from(le32(&sb, 32));
    let inodes_per_group = u64::from(le32(&sb, 40));
    let first_data_block = u64::from(le32(&sb, 20));
    let rev = le32(&sb, 76);
    let inode_size = if rev == 0 { 128 } else { u64::from(le16(&sb, 88)) };
    let desc_size = if is64 { u64::from(le16(&sb, 254)).max(32) } else { 32 };
    if blocks_per_group == 0 || inodes_per_group == 0 || !(128..=bs).contains(&inode_size) || desc_size > 1024 {
        return Err(ReadError::Corrupt("impossible geometry in the superblock".into()));
    }
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    if groups.saturating_mul(inodes_per_group) < inodes_count || groups > 1 << 24 {
        return Err(ReadError::Corrupt(format!("{groups} groups cannot hold {inodes_count} inodes")));
    }
    let meta_bg = incompat_flags & incompat::META_BG != 0;
    let first_meta_bg = u64::from(le32(&sb, 260));
    let per_block = bs / desc_size;
    let mut desc = Vec::with_capacity(groups as usize);
    let mut fs = Fs { dev, bs, blocks, inode_size, inodes_per_group, inodes_count, desc: Vec::new() };
    let mut cached: Option<(u64, Vec<u8>)> = None;
    for g in 0..groups {
        let db = g / per_block;
        let loc = if !meta_bg || db < first_meta_bg {
            first_data_block + 1 + db
        } else {
            let first = db * per_block;
            first_data_block + first * blocks_per_group + u64::from(has_super(first))
        };
        if cached.as_ref().is_none_or(|(b, _)| *b != loc) {
            cached = Some((loc, fs.block(loc)?));
        }
        let b = &cached.as_ref().expect("cached").1;
        let o = ((g % per_block) * desc_size) as usize;
        let table =
            u64::from(le32(b, o + 8)) | if is64 && desc_size >= 64 { u64::from(le32(b, o + 0x28)) << 32 } else { 0 };
        desc.push(table);
    }
    fs.desc = desc;

    let mut tree = Tree::new(Meta::root(0o755));
    let mut by_ino: HashMap<u64, NodeId> = HashMap::new();
    by_ino.insert(u64::from(ROOT_INO), ROOT);
    let mut todo: Vec<u64> = vec![u64::from(ROOT_INO)];
    let mut dirs_seen = std::collections::HashSet::new();
    while let Some(dir_ino) = todo.pop() {
        if !dirs_seen.insert(dir_ino) {
            return Err(ReadError::Corrupt(format!("directory inode {dir_ino} is linked twice")));
        }
        let raw = fs.inode(dir_ino)?;
        let node_id = by_ino[&dir_ino];
        tree.node_mut(node_id).meta = meta_of(&mut fs, &raw)?;
        let size = u64::from(le32(&raw, 4)) | (u64::from(le32(&raw, 108)) << 32);
        let runs = fs.runs(&raw)?;
        let data = fs.read_runs(&runs, size)?;
        let mut entries: BTreeMap<Vec<u8>, NodeId> = BTreeMap::new();
        for block in data.chunks(bs as usize) {
            let mut at = 0usize;
            while at + 8 <= block.len() {
                let ino = u64::from(le32(block, at));
                let rec = le16(block, at + 4) as usize;
                let name_len = block[at + 6] as usize;
                if rec < 8 || at + rec > block.len() || 8 + name_len > rec {
                    return Err(ReadError::Corrupt(format!("bad directory entry in inode {dir_ino}")));
                }
                let name = block[at + 8..at + 8 + name_len].to_vec();
                at += rec;
                if ino == 0 || name == b"." || name == b".." {
                    continue;
                }
                if name.contains(&b'/') || name.is_empty() {
                    return Err(ReadError::Corrupt(format!("invalid name in directory inode {dir_ino}")));
                }
                if let Some(id) = by_ino.get(&ino) {
                    if matches!(tree.node(*id).kind, Kind::Dir(_)) {
                        return Err(ReadError::Corrupt(format!("directory inode {ino} is linked twice")));
                    }
                    entries.insert(name, *id);
                    continue;
                }
                let child = fs.inode(ino)?;
                let mode = le16(&child, 0);
                let meta = meta_of(&mut fs, &child)?;
                let csize = u64::from(le32(&child, 4)) | (u64::from(le32(&child, 108)) << 32);
                let kind = match mode & 0xF000 {
                    0x4000 => Kind::Dir(BTreeMap::new()),
                    0x8000 => {
                        let mut d = Data { size: csize, pieces: Vec::new() };
                        for (logical, phys, len) in fs.runs(&child)? {
                            let at = logical * bs;
                            if at >= csize {
                                continue;
                            }
                            let n = (len * bs).min(csize - at);
                            d.pieces.push((at, Piece::External { source, offset: base + phys * bs, len: n }));
                        }
                        d.pieces.sort_by_key(|(o, _)| *o);
                        Kind::File(d)
                    }
                    0xA000 => {
                        let flags = le32(&child, 32);
                        if csize < 60 && flags & EXTENTS_FL == 0 && le32(&child, 104) == 0 {
                            Kind::Symlink(child[40..40 + csize as usize].to_vec())
                        } else {
                            if csize > bs {
                                return Err(ReadError::Corrupt(format!("symlink inode {ino} of {csize} bytes")));
                            }
                            let runs = fs.runs(&child)?;
                            Kind::Symlink(fs.read_runs(&runs, csize)?)
                        }
                    }
                    0x2000 | 0x6000 => {
                        let old = le32(&child, 40);
                        let new = le32(&child, 44);
                        let (major, minor) = if old != 0 {
                            ((old >> 8) & 0xff, old & 0xff)
                        } else {
                            ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
                        };
                        if mode & 0xF000 == 0x2000 {
                            Kind::CharDev { major, minor }
                        } else {
                            Kind::BlockDev { major, minor }
                        }
                    }
                    0x1000 => Kind::Fifo,
                    0xC000 => Kind::Socket,
                    other => return Err(ReadError::Corrupt(format!("inode {ino} has file type {other:#x}"))),
                };
                let is_dir = matches!(kind, Kind::Dir(_));
                let id = tree.add(Node { kind, meta });
                by_ino.insert(ino, id);
                if is_dir {
                    todo.push(ino);
                }
                entries.insert(name, id);
            }
        }
        if let Kind::Dir(e) = &mut tree.node_mut(node_id).kind {
            *e = entries;
        }
    }
    let mut label = sb[120..136].to_vec();
    while label.last() == Some(&0) {
        label.pop();
    }
    let info = Info {
        label,
        uuid: sb[104..120].try_into().expect("16"),
        hash_seed: sb[236..252].try_into().expect("16"),
        block_size: bs,
        blocks,
        inodes_used: by_ino.len() as u64,
    };
    Ok((tree, info))
}

fn meta_of<R: Read + Seek>(fs: &mut Fs<'_, R>, raw: &[u8]) -> Result<Meta, ReadError> {
    let uid = u32::from(le16(raw, 2)) | (u32::from(le16(raw, 120)) << 16);
    let gid = u32::from(le16(raw, 24)) | (u32::from(le16(raw, 122)) << 16);
    let mtime = i64::from(le32(raw, 16) as i32);
    Ok(Meta { perm: le16(raw, 0) & 0o7777, uid, gid, mtime, xattrs: fs.xattrs(raw)? })
}
