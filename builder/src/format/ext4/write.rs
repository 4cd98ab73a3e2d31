//! The ext4 writer: [`plan`] lays out a [`Tree`] (inode numbers, directory
//! blocks, extents, group geometry) and [`write`] emits it in block order through
//! a [`Sink`], reading file contents from [`Sources`] as it goes (both defined
//! with the tree).
//!
//! Layout: inode 2 is `/`, 8 the journal, 11 `/lost+found` (made if missing), the
//! rest numbered from 12 in sorted depth-first order. Blocks are allocated
//! linearly in inode order after each group's metadata (superblock backup,
//! descriptor block under meta_bg, the two bitmaps, the inode table), so every
//! group's used blocks are one prefix of its data area and every used inode is in
//! `1..=last`. All times are the node's mtime clamped to the epoch.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::files::FileError;
use crate::tree::{Data, Kind, Meta, NodeId, ROOT, Sink, Sources, Tree};

/// Largest extent length for initialised extents.
const MAX_EXTENT_LEN: u64 = 32768;
/// Extents per leaf block: (4096 - 12) / 12.
const LEAF_CAPACITY: usize = 340;
/// Descriptors per block (32-byte descriptors).
const DESC_PER_BLOCK: u64 = BLOCK / 32;
/// Bytes of file data handled at once while writing.
const CHUNK: usize = 1 << 20;

/// What the writer is told besides the tree.
#[derive(Clone, Debug)]
pub struct Options {
    /// Volume label (at most 16 bytes).
    pub label: Vec<u8>,
    /// File-system UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Every timestamp is clamped to this (seconds since 1970).
    pub epoch: i64,
    /// Free space to leave beyond the content, in bytes.
    pub headroom: u64,
}

/// Errors of writing.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// A label longer than 16 bytes.
    #[error("label `{0}` is longer than 16 bytes")]
    Label(String),
    /// Extended attributes that do not fit the inode.
    #[error("extended attributes of `{path}` need {need} bytes, an inode holds {room}")]
    XattrTooBig {
        /// The file.
        path: String,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        room: usize,
    },
    /// A file too fragmented for a one-level extent tree.
    #[error("`{0}` needs more than 1360 extents")]
    TooFragmented(String),
    /// Too many files for ext4's 32-bit inode numbers.
    #[error("{0} inodes do not fit one file system")]
    TooManyInodes(u64),
    /// A name longer than 255 bytes.
    #[error("name `{0}` is longer than 255 bytes")]
    NameTooLong(String),
    /// Reading content or writing blocks failed: a file in the image whose
    /// content could not be read, or the target the file system goes to.
    #[error(transparent)]
    File(#[from] FileError),
}

/// One run of blocks of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u32,
    /// First physical block.
    pub physical: u64,
    /// Length in blocks.
    pub len: u32,
}

#[derive(Clone, Debug)]
enum Body {
    /// Regular file content.
    File(Data),
    /// Directory blocks, already rendered.
    Dir(Vec<u8>),
    /// Symlink target (fast when < 60 bytes).
    Symlink(Vec<u8>),
    /// Device numbers.
    Device { major: u32, minor: u32 },
    /// Fifo or socket: nothing.
    Empty,
    /// The journal.
    Journal { blocks: u64 },
}

#[derive(Clone, Debug)]
struct InodePlan {
    path: String,
    mode: u16,
    meta: Meta,
    links: u32,
    body: Body,
    extents: Vec<Extent>,
    leaves: Vec<u64>,
}

impl InodePlan {
    fn size(&self) -> u64 {
        match &self.body {
            Body::File(d) => d.size,
            Body::Dir(b) => b.len() as u64,
            Body::Symlink(t) => t.len() as u64,
            Body::Journal { blocks } => blocks * BLOCK,
            _ => 0,
        }
    }
    fn data_blocks(&self) -> u64 {
        match &self.body {
            Body::Symlink(t) if t.len() < 60 => 0,
            Body::Symlink(_) => 1,
            _ => self.size().div_ceil(BLOCK),
        }
    }
}

/// The group geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the file system.
    pub blocks: u64,
    /// Groups.
    pub groups: u64,
    /// Inodes per group.
    pub inodes_per_group: u64,
    /// Journal length in blocks.
    pub journal_blocks: u64,
}

impl Geometry {
    fn itable_blocks(&self) -> u64 {
        self.inodes_per_group * INODE_SIZE / BLOCK
    }
    fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }
    fn group_len(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(BLOCKS_PER_GROUP)
    }
    /// Whether group `g` holds a copy of its meta group's descriptor block.
    fn has_gdt(&self, g: u64) -> bool {
        let r = g % DESC_PER_BLOCK;
        r == 0 || r == 1 || r == DESC_PER_BLOCK - 1
    }
    fn meta_blocks(&self, g: u64) -> u64 {
        u64::from(has_super(g)) + u64::from(self.has_gdt(g)) + 2 + self.itable_blocks()
    }
    fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + u64::from(has_super(g)) + u64::from(self.has_gdt(g))
    }
    fn data_start(&self, g: u64) -> u64 {
        self.group_start(g) + self.meta_blocks(g)
    }
    fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }
}

/// A laid-out file system, ready to [`write`].
#[derive(Clone, Debug)]
pub struct Plan {
    opts: Options,
    geo: Geometry,
    /// By inode number; index 0 unused.
    inodes: Vec<Option<InodePlan>>,
    /// Blocks used in each group's data area (a prefix of it).
    used_in_group: Vec<u64>,
}

impl Plan {
    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.geo.blocks * BLOCK
    }
    /// Highest inode number in use.
    pub fn last_inode(&self) -> u32 {
        (self.inodes.len() - 1) as u32
    }
}

fn journal_blocks_for(fs_blocks: u64) -> u64 {
    match fs_blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        _ => 32768,
    }
}

/// Renders a directory's entries into whole blocks (`extra_blocks` empty blocks
/// added, as lost+found gets).
fn render_dir(entries: &[(Vec<u8>, u32, u8)], extra_blocks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = Vec::with_capacity(BLOCK as usize);
    let mut last_entry_at: usize = 0;
    for (name, ino, ftype) in entries {
        let rec = 8 + name.len().div_ceil(4) * 4;
        if block.len() + rec > BLOCK as usize {
            // Stretch the block's last entry to the end of the block.
            let stretch = BLOCK as usize - last_entry_at;
            block[last_entry_at + 4..last_entry_at + 6].copy_from_slice(&(stretch as u16).to_le_bytes());
            block.resize(BLOCK as usize, 0);
            out.extend_from_slice(&block);
            block.clear();
        }
        last_entry_at = block.len();
        block.extend_from_slice(&ino.to_le_bytes());
        block.extend_from_slice(&(rec as u16).to_le_bytes());
        block.push(name.len() as u8);
        block.push(*ftype);
        block.extend_from_slice(name);
        block.resize(last_entry_at + rec, 0);
    }
    let stretch = BLOCK as usize - last_entry_at;
    block[last_entry_at + 4..last_entry_at + 6].copy_from_slice(&(stretch as u16).to_le_bytes());
    block.resize(BLOCK as usize, 0);
    out.extend_from_slice(&block);
    for _ in 0..extra_blocks {
        let mut empty = vec![0u8; BLOCK as usize];
        empty[4..6].copy_from_slice(&(BLOCK as u16).to_le_bytes());
        out.extend_from_slice(&empty);
    }
    out
}

fn type_bits(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => 0x4000,
        Kind::File(_) => 0x8000,
        Kind::Symlink(_) => 0xA000,
        Kind::CharDev { .. } => 0x2000,
        Kind::BlockDev { .. } => 0x6000,
        Kind::Fifo => 0x1000,
        Kind::Socket => 0xC000,
    }
}

/// Lays the tree out.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan, Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::Label(String::from_utf8_lossy(&opts.label).into_owned()));
    }
    // Inode numbers.
    let walk = tree.walk_sorted();
    let mut ino_of: BTreeMap<NodeId, u32> = BTreeMap::new();
    ino_of.insert(ROOT, ROOT_INO);
    let lost_found = walk.iter().find(|(p, id)| p == b"/lost+found" && matches!(tree.node(*id).kind, Kind::Dir(_)));
    if let Some((_, id)) = lost_found {
        ino_of.insert(*id, FIRST_INO);
    }
    let mut next = FIRST_INO + 1;
    let mut links: BTreeMap<u32, u32> = BTreeMap::new();
    let mut paths: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for (path, id) in &walk {
        let ino = *ino_of.entry(*id).or_insert_with(|| {
            next += 1;
            next - 1
        });
        paths.entry(ino).or_insert_with(|| path.clone());
        if !matches!(tree.node(*id).kind, Kind::Dir(_)) {
            *links.entry(ino).or_default() += 1;
        }
    }
    let last_ino = next - 1;
    let mut inodes: Vec<Option<InodePlan>> = vec![None; last_ino as usize + 1];
    let clamp = |m: &Meta| {
        let mut m = m.clone();
        m.mtime = m.mtime.min(opts.epoch);
        m
    };
    // Directory listings.
    let mut parent_of: BTreeMap<u32, u32> = BTreeMap::new();
    parent_of.insert(ROOT_INO, ROOT_INO);
    for (path, id) in &walk {
        let ino = ino_of[id];
        if let Kind::Dir(entries) = &tree.node(*id).kind {
            for child in entries.values() {
                if matches!(tree.node(*child).kind, Kind::Dir(_)) {
                    parent_of.entry(ino_of[child]).or_insert(ino);
                }
            }
            let _ = path;
        }
    }
    for (path, id) in &walk {
        let ino = ino_of[id];
        if inodes[ino as usize].is_some() {
            continue;
        }
        let node = tree.node(*id);
        let path_text = String::from_utf8_lossy(if path.is_empty() { b"/" } else { path }).into_owned();
        let body = match &node.kind {
            Kind::Dir(entries) => {
                let mut list = vec![(b".".to_vec(), ino, 2u8), (b"..".to_vec(), parent_of[&ino], 2u8)];
                let mut subdirs = 0u32;
                for (name, child) in entries {
                    if name.len() > 255 {
                        return Err(Ext4Error::NameTooLong(String::from_utf8_lossy(name).into_owned()));
                    }
                    let c = tree.node(*child);
                    let ft = match &c.kind {
                        Kind::Dir(_) => {
                            subdirs += 1;
                            2
                        }
                        Kind::File(_) => 1,
                        Kind::Symlink(_) => 7,
                        Kind::CharDev { .. } => 3,
                        Kind::BlockDev { .. } => 4,
                        Kind::Fifo => 5,
                        Kind::Socket => 6,
                    };
                    list.push((name.clone(), ino_of[child], ft));
                }
                let mut extra = 0;
                if ino == ROOT_INO && lost_found.is_none() {
                    list.push((b"lost+found".to_vec(), FIRST_INO, 2));
                    subdirs += 1;
                    list[2..].sort();
                }
                if ino == FIRST_INO {
                    extra = 3;
                }
                // dir_nlink: a directory with too many subdirectories counts 1.
                let nlink = 2 + subdirs;
                links.insert(ino, if nlink >= 65000 { 1 } else { nlink });
                Body::Dir(render_dir(&list, extra))
            }
            Kind::File(data) => Body::File(data.clone()),
            Kind::Symlink(t) => Body::Symlink(t.clone()),
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                Body::Device { major: *major, minor: *minor }
            }
            Kind::Fifo | Kind::Socket => Body::Empty,
        };
        inodes[ino as usize] = Some(InodePlan {
            path: path_text,
            mode: type_bits(&node.kind) | (node.meta.perm & 0o7777),
            meta: clamp(&node.meta),
            links: links.get(&ino).copied().unwrap_or(1),
            body,
            extents: Vec::new(),
            leaves: Vec::new(),
        });
    }
    if lost_found.is_none() {
        let list = vec![(b".".to_vec(), FIRST_INO, 2u8), (b"..".to_vec(), ROOT_INO, 2u8)];
        inodes[FIRST_INO as usize] = Some(InodePlan {
            path: "/lost+found".into(),
            mode: 0x4000 | 0o700,
            meta: Meta { perm: 0o700, uid: 0, gid: 0, mtime: opts.epoch, xattrs: BTreeMap::new() },
            links: 2,
            body: Body::Dir(render_dir(&list, 3)),
            extents: Vec::new(),
            leaves: Vec::new(),
        });
    }
    for p in inodes.iter().flatten() {
        xattr_area(p)?;
    }

    // Geometry: grow until the allocation fits.
    let content: u64 = inodes.iter().flatten().map(|p| p.data_blocks()).sum();
    let headroom = opts.headroom.div_ceil(BLOCK);
    let wanted_inodes =
        (u64::from(last_ino) + u64::from(last_ino) / 4 + 1024).max((content + headroom) * BLOCK / 16384);
    let mut slack = 0u64;
    loop {
        let geo = solve_geometry(content + headroom + slack, wanted_inodes)?;
        let mut inodes_try = inodes.clone();
        inodes_try[JOURNAL_INO as usize] = Some(InodePlan {
            path: "<journal>".into(),
            mode: 0x8000 | 0o600,
            meta: Meta { perm: 0o600, uid: 0, gid: 0, mtime: opts.epoch, xattrs: BTreeMap::new() },
            links: 1,
            body: Body::Journal { blocks: geo.journal_blocks },
            extents: Vec::new(),
            leaves: Vec::new(),
        });
        match allocate(&geo, &mut inodes_try) {
            Some(used_in_group) => {
                let used: u64 = used_in_group.iter().sum();
                let data_room: u64 = (0..geo.groups).map(|g| geo.group_len(g) - geo.meta_blocks(g)).sum();
                if data_room - used >= headroom {
                    return Ok(Plan { opts: opts.clone(), geo, inodes: inodes_try, used_in_group });
                }
                slack += headroom - (data_room - used);
            }
            None => slack += BLOCKS_PER_GROUP / 4 + slack / 2,
        }
    }
}

fn solve_geometry(data_blocks: u64, wanted_inodes: u64) -> Result<Geometry, Ext4Error> {
    let mut groups = data_blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
    loop {
        let ipg = wanted_inodes.div_ceil(groups).div_ceil(16) * 16;
        if ipg > BLOCKS_PER_GROUP {
            groups += 1;
            continue;
        }
        let ipg = ipg.max(16);
        let journal_blocks = journal_blocks_for(data_blocks);
        let mut geo = Geometry { blocks: 0, groups, inodes_per_group: ipg, journal_blocks };
        let overhead: u64 = (0..groups).map(|g| geo.meta_blocks(g)).sum();
        let blocks = data_blocks + journal_blocks + overhead;
        let needed_groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        if needed_groups > groups {
            groups = needed_groups;
            continue;
        }
        // The last group must hold its metadata and a useful amount of data.
        let last = groups - 1;
        geo.blocks = blocks.max(last * BLOCKS_PER_GROUP + geo.meta_blocks(last) + 256);
        if geo.inodes() > u64::from(u32::MAX) {
            return Err(Ext4Error::TooManyInodes(geo.inodes()));
        }
        return Ok(geo);
    }
}

/// Allocates blocks linearly in inode order. `None` when the space runs out.
fn allocate(geo: &Geometry, inodes: &mut [Option<InodePlan>]) -> Option<Vec<u64>> {
    let mut used = vec![0u64; geo.groups as usize];
    let mut group = 0u64;
    let mut take = |n: u64, used: &mut Vec<u64>| -> Option<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        let mut left = n;
        while left > 0 {
            if group >= geo.groups {
                return None;
            }
            let room = geo.group_len(group) - geo.meta_blocks(group) - used[group as usize];
            if room == 0 {
                group += 1;
                continue;
            }
            let k = room.min(left);
            runs.push((geo.data_start(group) + used[group as usize], k));
            used[group as usize] += k;
            left -= k;
        }
        Some(runs)
    };
    for slot in inodes.iter_mut().flatten() {
        let n = slot.data_blocks();
        if n == 0 {
            continue;
        }
        let runs = take(n, &mut used)?;
        let mut extents = Vec::new();
        let mut logical = 0u64;
        for (start, len) in runs {
            let mut off = 0;
            while off < len {
                let k = (len - off).min(MAX_EXTENT_LEN);
                // Merge with the previous extent when physically contiguous.
                match extents.last_mut() {
                    Some(Extent { physical, len: l, .. })
                        if *physical + u64::from(*l) == start + off && u64::from(*l) + k <= MAX_EXTENT_LEN =>
                    {
                        *l += k as u32;
                    }
                    _ => extents.push(Extent { logical: logical as u32, physical: start + off, len: k as u32 }),
                }
                logical += k;
                off += k;
            }
        }
        if extents.len() > 4 {
            let leaves = extents.len().div_ceil(LEAF_CAPACITY);
            if leaves > 4 {
                return None;
            }
            slot.leaves = take(leaves as u64, &mut used)?.iter().flat_map(|(s, l)| *s..*s + *l).collect();
        }
        slot.extents = extents;
    }
    Some(used)
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}
fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Splits an xattr name into its prefix index and the rest.
fn split_xattr_name(name: &[u8]) -> (u8, &[u8]) {
    for (prefix, index) in XATTR_PREFIXES {
        if name.starts_with(prefix) && (prefix.ends_with(b".") || name.len() == prefix.len()) {
            return (index, &name[prefix.len()..]);
        }
    }
    (0, name)
}

/// The in-inode xattr area (after the 128 + EXTRA_ISIZE bytes), or an error if
/// the attributes do not fit.
fn xattr_area(p: &InodePlan) -> Result<Vec<u8>, Ext4Error> {
    let room = (INODE_SIZE as usize) - 128 - EXTRA_ISIZE as usize;
    if p.meta.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    // Header (magic), entries, a 4-byte zero terminator, values from the end.
    let mut entries = Vec::new();
    let mut values_len = 0usize;
    let mut sorted: Vec<(u8, &[u8], &[u8])> = p
        .meta
        .xattrs
        .iter()
        .map(|(k, v)| {
            let (i, n) = split_xattr_name(k);
            (i, n, v.as_slice())
        })
        .collect();
    // e2fsprogs sorts in-inode entries by (index, name length, name).
    sorted.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    for (_, name, value) in &sorted {
        entries.push(16 + name.len().div_ceil(4) * 4);
        values_len += value.len().div_ceil(4) * 4;
    }
    let need = 4 + entries.iter().sum::<usize>() + 4 + values_len;
    if need > room {
        return Err(Ext4Error::XattrTooBig { path: p.path.clone(), need, room });
    }
    let mut area = vec![0u8; room];
    area[..4].copy_from_slice(&le32(XATTR_MAGIC));
    // Offsets are relative to the first entry (just after the magic).
    let base = 4;
    let mut at = base;
    let mut value_end = room;
    for (index, name, value) in &sorted {
        let vlen = value.len().div_ceil(4) * 4;
        value_end -= vlen;
        area[value_end..value_end + value.len()].copy_from_slice(value);
        area[at] = name.len() as u8;
        area[at + 1] = *index;
        area[at + 2..at + 4].copy_from_slice(&le16((value_end - base) as u16));
        area[at + 4..at + 8].copy_from_slice(&le32(0));
        area[at + 8..at + 12].copy_from_slice(&le32(value.len() as u32));
        area[at + 12..at + 16].copy_from_slice(&le32(xattr_entry_hash(name, value)));
        area[at + 16..at + 16 + name.len()].copy_from_slice(name);
        at += 16 + name.len().div_ceil(4) * 4;
    }
    Ok(area)
}

fn extent_header(entries: usize, max: u16, depth: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..2].copy_from_slice(&le16(EXTENT_MAGIC));
    h[2..4].copy_from_slice(&le16(entries as u16));
    h[4..6].copy_from_slice(&le16(max));
    h[6..8].copy_from_slice(&le16(depth));
    h
}

fn extent_bytes(e: &Extent) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&le32(e.logical));
    b[4..6].copy_from_slice(&le16(e.len as u16));
    b[6..8].copy_from_slice(&le16((e.physical >> 32) as u16));
    b[8..12].copy_from_slice(&le32(e.physical as u32));
    b
}

/// The 60-byte i_block area and the leaf blocks of an inode.
fn block_map(p: &InodePlan) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let mut ib = [0u8; 60];
    match &p.body {
        Body::Symlink(t) if t.len() < 60 => {
            ib[..t.len()].copy_from_slice(t);
            return (ib, Vec::new());
        }
        Body::Device { major, minor } => {
            if *major < 256 && *minor < 256 {
                ib[..4].copy_from_slice(&le32((major << 8) | minor));
            } else {
                let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                ib[4..8].copy_from_slice(&le32(new));
            }
            return (ib, Vec::new());
        }
        Body::Empty => return (ib, Vec::new()),
        _ => {}
    }
    if p.leaves.is_empty() {
        ib[..12].copy_from_slice(&extent_header(p.extents.len(), 4, 0));
        for (i, e) in p.extents.iter().enumerate() {
            ib[12 + i * 12..24 + i * 12].copy_from_slice(&extent_bytes(e));
        }
        return (ib, Vec::new());
    }
    ib[..12].copy_from_slice(&extent_header(p.leaves.len(), 4, 1));
    let mut leaves = Vec::new();
    for (i, (leaf, chunk)) in p.leaves.iter().zip(p.extents.chunks(LEAF_CAPACITY)).enumerate() {
        let idx = 12 + i * 12;
        ib[idx..idx + 4].copy_from_slice(&le32(chunk[0].logical));
        ib[idx + 4..idx + 8].copy_from_slice(&le32(*leaf as u32));
        ib[idx + 8..idx + 10].copy_from_slice(&le16((*leaf >> 32) as u16));
        let mut block = vec![0u8; BLOCK as usize];
        block[..12].copy_from_slice(&extent_header(chunk.len(), LEAF_CAPACITY as u16, 0));
        for (j, e) in chunk.iter().enumerate() {
            block[12 + j * 12..24 + j * 12].copy_from_slice(&extent_bytes(e));
        }
        leaves.push((*leaf, block));
    }
    (ib, leaves)
}

fn uses_extents(p: &InodePlan) -> bool {
    match &p.body {
        Body::Symlink(t) => t.len() >= 60,
        Body::Device { .. } | Body::Empty => false,
        _ => true,
    }
}

fn inode_record(p: &InodePlan) -> Result<Vec<u8>, Ext4Error> {
    let mut r = vec![0u8; INODE_SIZE as usize];
    let t = p.meta.mtime.clamp(0, i64::from(u32::MAX)) as u32;
    let size = p.size();
    let blocks512 = (p.data_blocks() + p.leaves.len() as u64) * (BLOCK / 512);
    r[0..2].copy_from_slice(&le16(p.mode));
    r[2..4].copy_from_slice(&le16(p.meta.uid as u16));
    r[4..8].copy_from_slice(&le32(size as u32));
    for o in [8, 12, 16] {
        r[o..o + 4].copy_from_slice(&le32(t));
    }
    r[24..26].copy_from_slice(&le16(p.meta.gid as u16));
    r[26..28].copy_from_slice(&le16(p.links as u16));
    r[28..32].copy_from_slice(&le32(blocks512 as u32));
    r[32..36].copy_from_slice(&le32(if uses_extents(p) { EXTENTS_FL } else { 0 }));
    let (ib, _) = block_map(p);
    r[40..100].copy_from_slice(&ib);
    r[108..112].copy_from_slice(&le32((size >> 32) as u32));
    r[116..118].copy_from_slice(&le16((blocks512 >> 32) as u16));
    r[120..122].copy_from_slice(&le16((p.meta.uid >> 16) as u16));
    r[122..124].copy_from_slice(&le16((p.meta.gid >> 16) as u16));
    r[128..130].copy_from_slice(&le16(EXTRA_ISIZE));
    r[144..148].copy_from_slice(&le32(t)); // crtime
    let xattrs = xattr_area(p)?;
    if !xattrs.is_empty() {
        let at = 128 + EXTRA_ISIZE as usize;
        r[at..at + xattrs.len()].copy_from_slice(&xattrs);
    }
    Ok(r)
}

fn superblock(plan: &Plan, group: u64) -> Vec<u8> {
    let geo = &plan.geo;
    let o = &plan.opts;
    let mut s = vec![0u8; 1024];
    let put32 = |s: &mut Vec<u8>, at: usize, v: u32| s[at..at + 4].copy_from_slice(&le32(v));
    let put16 = |s: &mut Vec<u8>, at: usize, v: u16| s[at..at + 2].copy_from_slice(&le16(v));
    let used_blocks: u64 =
        plan.used_in_group.iter().sum::<u64>() + (0..geo.groups).map(|g| geo.meta_blocks(g)).sum::<u64>();
    let t = o.epoch.clamp(0, i64::from(u32::MAX)) as u32;
    put32(&mut s, 0, geo.inodes() as u32);
    put32(&mut s, 4, geo.blocks as u32);
    put32(&mut s, 8, (geo.blocks / 20) as u32);
    put32(&mut s, 12, (geo.blocks - used_blocks) as u32);
    put32(&mut s, 16, (geo.inodes() - u64::from(plan.last_inode())) as u32);
    put32(&mut s, 20, 0); // first data block
    put32(&mut s, 24, 2); // log2(block) - 10
    put32(&mut s, 28, 2);
    put32(&mut s, 32, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 36, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 40, geo.inodes_per_group as u32);
    put32(&mut s, 48, t); // wtime
    put16(&mut s, 54, 0xFFFF); // max mount count: -1
    put16(&mut s, 56, MAGIC);
    put16(&mut s, 58, 1); // clean
    put16(&mut s, 60, 1); // errors: continue
    put32(&mut s, 64, t); // lastcheck
    put32(&mut s, 76, 1); // dynamic revision
    put32(&mut s, 84, FIRST_INO);
    put16(&mut s, 88, INODE_SIZE as u16);
    put16(&mut s, 90, group as u16);
    put32(&mut s, 92, compat::HAS_JOURNAL | compat::EXT_ATTR);
    put32(&mut s, 96, incompat::FILETYPE | incompat::META_BG | incompat::EXTENTS);
    put32(&mut s, 100, ro_compat::SPARSE_SUPER | ro_compat::LARGE_FILE | ro_compat::DIR_NLINK | ro_compat::EXTRA_ISIZE);
    s[104..120].copy_from_slice(&o.uuid);
    s[120..120 + o.label.len()].copy_from_slice(&o.label);
    put32(&mut s, 224, JOURNAL_INO);
    s[236..252].copy_from_slice(&o.hash_seed);
    s[252] = 1; // half_md4
    s[253] = 1; // journal inode backup in s_jnl_blocks
    put32(&mut s, 256, 0x000C); // default mount options: user_xattr, acl
    put32(&mut s, 260, 0); // first meta_bg: every descriptor block is meta_bg-placed
    put32(&mut s, 264, t); // mkfs time
    let journal = plan.inodes[JOURNAL_INO as usize].as_ref().expect("journal planned");
    let (ib, _) = block_map(journal);
    s[268..328].copy_from_slice(&ib);
    let jsize = journal.size();
    put32(&mut s, 328, (jsize >> 32) as u32);
    put32(&mut s, 332, jsize as u32);
    put16(&mut s, 348, EXTRA_ISIZE);
    put16(&mut s, 350, EXTRA_ISIZE);
    put32(&mut s, 352, 1); // signed directory hash
    s
}

fn descriptor_block(plan: &Plan, meta_group: u64) -> Vec<u8> {
    let geo = &plan.geo;
    let mut b = vec![0u8; BLOCK as usize];
    let last_ino = u64::from(plan.last_inode());
    for i in 0..DESC_PER_BLOCK {
        let g = meta_group * DESC_PER_BLOCK + i;
        if g >= geo.groups {
            break;
        }
        let d = &mut b[(i * 32) as usize..(i * 32 + 32) as usize];
        let bb = geo.block_bitmap(g);
        d[0..4].copy_from_slice(&le32(bb as u32));
        d[4..8].copy_from_slice(&le32((bb + 1) as u32));
        d[8..12].copy_from_slice(&le32((bb + 2) as u32));
        let free = geo.group_len(g) - geo.meta_blocks(g) - plan.used_in_group[g as usize];
        d[12..14].copy_from_slice(&le16(free as u16));
        let first = g * geo.inodes_per_group + 1;
        let used_inodes = last_ino.saturating_sub(first - 1).min(geo.inodes_per_group);
        d[14..16].copy_from_slice(&le16((geo.inodes_per_group - used_inodes) as u16));
        let dirs = (first..first + geo.inodes_per_group)
            .filter(|i| *i <= last_ino)
            .filter(|i| plan.inodes[*i as usize].as_ref().is_some_and(|p| matches!(p.body, Body::Dir(_))))
            .count();
        d[16..18].copy_from_slice(&le16(dirs as u16));
    }
    b
}

fn write_nonzero(sink: &mut dyn Sink, target: &Path, offset: u64, data: &[u8]) -> Result<(), Ext4Error> {
    // Zero blocks are left out: the target already reads as zeros.
    sink.write_nonzero(offset, data).map_err(FileError::at("writing a block into", target))?;
    Ok(())
}

/// Writes the planned file system into `sink`; `target` names what the sink
/// writes (for errors).
pub fn write(plan: &Plan, sources: &mut dyn Sources, sink: &mut dyn Sink, target: &Path) -> Result<(), Ext4Error> {
    let geo = &plan.geo;
    let last_ino = u64::from(plan.last_inode());
    // Group metadata.
    for g in 0..geo.groups {
        let start = geo.group_start(g) * BLOCK;
        if has_super(g) {
            let sb = superblock(plan, g);
            let at = if g == 0 { 1024 } else { start };
            sink.write_at(at, &sb).map_err(FileError::at("writing a superblock into", target))?;
        }
        if geo.has_gdt(g) {
            let at = (geo.group_start(g) + u64::from(has_super(g))) * BLOCK;
            write_nonzero(sink, target, at, &descriptor_block(plan, g / DESC_PER_BLOCK))?;
        }
        // Block bitmap: metadata, then the used prefix of the data area; bits
        // past the end of a short last group are set.
        let mut bb = vec![0u8; BLOCK as usize];
        let used = geo.meta_blocks(g) + plan.used_in_group[g as usize];
        for bit in (0..used).chain(geo.group_len(g)..BLOCKS_PER_GROUP) {
            bb[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        write_nonzero(sink, target, geo.block_bitmap(g) * BLOCK, &bb)?;
        let mut ib = vec![0u8; BLOCK as usize];
        let first = g * geo.inodes_per_group + 1;
        let used_inodes = last_ino.saturating_sub(first - 1).min(geo.inodes_per_group);
        for bit in (0..used_inodes).chain(geo.inodes_per_group..BLOCK * 8) {
            ib[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        write_nonzero(sink, target, (geo.block_bitmap(g) + 1) * BLOCK, &ib)?;
        // Inode table: only the records of used inodes.
        let table = (geo.block_bitmap(g) + 2) * BLOCK;
        let mut records = Vec::new();
        for i in 0..used_inodes {
            let ino = first + i;
            match &plan.inodes[ino as usize] {
                Some(p) => records.extend(inode_record(p)?),
                None => records.extend(std::iter::repeat_n(0u8, INODE_SIZE as usize)),
            }
        }
        write_nonzero(sink, target, table, &records)?;
    }
    // Data, in inode (so mostly block) order.
    let mut buf = vec![0u8; CHUNK];
    for p in plan.inodes.iter().flatten() {
        let (_, leaves) = block_map(p);
        for (block, bytes) in leaves {
            sink.write_at(block * BLOCK, &bytes).map_err(FileError::at("writing an extent leaf into", target))?;
        }
        match &p.body {
            Body::Dir(bytes) => write_extents(sink, target, &p.extents, |off, out| {
                out.copy_from_slice(&bytes[off as usize..off as usize + out.len()]);
            })?,
            Body::Symlink(t) if t.len() >= 60 => {
                let mut block = vec![0u8; BLOCK as usize];
                block[..t.len()].copy_from_slice(t);
                sink.write_at(p.extents[0].physical * BLOCK, &block)
                    .map_err(FileError::at("writing a symlink into", target))?;
            }
            Body::Journal { blocks } => {
                let js = journal_superblock(plan, *blocks);
                sink.write_at(p.extents[0].physical * BLOCK, &js)
                    .map_err(FileError::at("writing the journal into", target))?;
            }
            Body::File(data) => {
                for e in &p.extents {
                    let mut done = 0u64;
                    let total = u64::from(e.len) * BLOCK;
                    while done < total {
                        let file_off = u64::from(e.logical) * BLOCK + done;
                        if file_off >= data.size {
                            break;
                        }
                        let n = (total - done).min(CHUNK as u64).min(data.size - file_off) as usize;
                        let chunk = &mut buf[..n];
                        data.read_at(file_off, chunk, sources)
                            .map_err(FileError::at("reading the content of", Path::new(&p.path)))?;
                        write_nonzero(sink, target, (e.physical * BLOCK) + done, chunk)?;
                        done += n as u64;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn write_extents(
    sink: &mut dyn Sink,
    target: &Path,
    extents: &[Extent],
    mut content: impl FnMut(u64, &mut [u8]),
) -> Result<(), Ext4Error> {
    for e in extents {
        let mut bytes = vec![0u8; (u64::from(e.len) * BLOCK) as usize];
        content(u64::from(e.logical) * BLOCK, &mut bytes);
        sink.write_at(e.physical * BLOCK, &bytes).map_err(FileError::at("writing a directory into", target))?;
    }
    Ok(())
}

fn journal_superblock(plan: &Plan, blocks: u64) -> Vec<u8> {
    let mut j = vec![0u8; BLOCK as usize];
    let be = |j: &mut Vec<u8>, at: usize, v: u32| j[at..at + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut j, 0, JBD2_MAGIC);
    be(&mut j, 4, 4); // superblock v2
    be(&mut j, 12, BLOCK as u32);
    be(&mut j, 16, blocks as u32);
    be(&mut j, 20, 1); // first log block
    be(&mut j, 24, 1); // sequence
    j[48..64].copy_from_slice(&plan.opts.uuid);
    be(&mut j, 64, 1); // users
    j
}
