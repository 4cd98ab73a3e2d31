//! Tar members into the tree, never onto the host: names normalised, hostile
//! members (absolute, `..`, devices in packages, sizes beyond the image) refused
//! by name; release archives of any compression, told by their content.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component, Path};

use super::{LayerError, Spill, stream_err};
use crate::tree::{Kind, Meta, Node, Tree};

/// How a tar is unpacked.
pub struct Unpack<'a> {
    /// Name for errors (`deb conntrack`, `archive containerd...`).
    pub origin: &'a str,
    /// Directory the members go under.
    pub prefix: &'a str,
    /// Leading components to drop.
    pub strip: usize,
    /// Keep only members under these prefixes (after stripping); empty keeps all.
    pub include: &'a [String],
    /// Whether device nodes are acceptable (never for packages).
    pub allow_devices: bool,
    /// Force this owner on everything (release tarballs carry their CI's ids).
    pub force_owner: Option<(u32, u32)>,
    /// Largest file accepted.
    pub max_file: u64,
}

impl<'a> Unpack<'a> {
    /// A package's data: everything under `/`, names as they are, owners from
    /// the tar, no devices.
    pub fn package(origin: &'a str, max_file: u64) -> Unpack<'a> {
        Unpack { origin, prefix: "/", strip: 0, include: &[], allow_devices: false, force_owner: None, max_file }
    }
}

/// Normalises a member name: components without `.`, refusing `..` and
/// absolute names.
fn member_path(name: &[u8], u: &Unpack) -> Result<Option<Vec<u8>>, LayerError> {
    let text = String::from_utf8_lossy(name).into_owned();
    let hostile =
        |why: &str| LayerError::Hostile { origin: u.origin.to_owned(), member: text.clone(), why: why.to_owned() };
    if name.starts_with(b"/") {
        return Err(hostile("has an absolute name"));
    }
    let mut comps = Vec::new();
    for c in Path::new(std::ffi::OsStr::from_encoded_bytes_checked(name)).components() {
        match c {
            Component::Normal(s) => comps.push(s.as_encoded_bytes().to_vec()),
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile("climbs out with `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(hostile("has an absolute name")),
        }
    }
    if comps.len() <= u.strip {
        return Ok(None);
    }
    let rest = comps[u.strip..].join(&b'/');
    if !u.include.is_empty() && !u.include.iter().any(|inc| rest.starts_with(inc.trim_start_matches("./").as_bytes())) {
        return Ok(None);
    }
    let mut full = u.prefix.trim_end_matches('/').as_bytes().to_vec();
    full.push(b'/');
    full.extend_from_slice(&rest);
    Ok(Some(full))
}

trait OsStrChecked {
    fn from_encoded_bytes_checked(b: &[u8]) -> &std::ffi::OsStr;
}
impl OsStrChecked for std::ffi::OsStr {
    fn from_encoded_bytes_checked(b: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

/// How a release archive is compressed, told by its first bytes (a recipe's
/// `name` need not end in `.tar.gz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// Anything else is read as a plain tar.
    Tar,
}

impl ArchiveFormat {
    /// Bytes [`ArchiveFormat::detect`] looks at.
    pub const MAGIC_LEN: usize = 6;

    /// The format whose magic `head` starts with.
    pub fn detect(head: &[u8]) -> ArchiveFormat {
        if head.starts_with(&[0x1f, 0x8b]) {
            ArchiveFormat::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            ArchiveFormat::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ArchiveFormat::Zstd
        } else {
            ArchiveFormat::Tar
        }
    }
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Gzip => "gzip",
            ArchiveFormat::Xz => "xz",
            ArchiveFormat::Zstd => "zstd",
            ArchiveFormat::Tar => "plain tar",
        })
    }
}

/// Unpacks a release archive, plain or gzip/xz/zstd-compressed (told by its
/// content, not its name). Errors name `u.origin` and the format found.
pub fn unpack_archive<'r>(
    tree: &mut Tree,
    spill: &mut Spill,
    mut r: impl Read + 'r,
    u: &Unpack,
) -> Result<Vec<Vec<u8>>, LayerError> {
    let mut head = [0u8; ArchiveFormat::MAGIC_LEN];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(format!("{}: reading the archive", u.origin))(e)),
        }
    }
    let format = ArchiveFormat::detect(&head[..got]);
    let origin = format!("{} ({format})", u.origin);
    let whole = io::Cursor::new(head[..got].to_vec()).chain(r);
    let reader: Box<dyn Read + 'r> = match format {
        ArchiveFormat::Gzip => Box::new(flate2::read::GzDecoder::new(whole)),
        ArchiveFormat::Xz => Box::new(liblzma::read::XzDecoder::new(whole)),
        ArchiveFormat::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(whole).map_err(stream_err(format!("{origin}: starting zstd")))?)
        }
        ArchiveFormat::Tar => Box::new(whole),
    };
    unpack_tar(tree, spill, reader, &Unpack { origin: &origin, ..*u })
}

/// Unpacks a tar stream into the tree. Returns every path placed, in order.
pub fn unpack_tar(tree: &mut Tree, spill: &mut Spill, r: impl Read, u: &Unpack) -> Result<Vec<Vec<u8>>, LayerError> {
    let mut archive = tar::Archive::new(r);
    let mut placed = Vec::new();
    let entries = archive.entries().map_err(stream_err(format!("{}: reading the tar", u.origin)))?;
    for entry in entries {
        let mut entry = entry.map_err(stream_err(format!("{}: reading the tar", u.origin)))?;
        let name = entry.path_bytes().into_owned();
        let Some(path) = member_path(&name, u)? else { continue };
        let h = entry.header();
        let member = String::from_utf8_lossy(&name).into_owned();
        let hostile = |why: String| LayerError::Hostile { origin: u.origin.to_owned(), member: member.clone(), why };
        let (uid, gid) = match u.force_owner {
            Some(o) => o,
            None => (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32),
        };
        let meta = Meta {
            perm: (h.mode().unwrap_or(0o644) & 0o7777) as u16,
            uid,
            gid,
            mtime: h.mtime().unwrap_or(0) as i64,
            xattrs: BTreeMap::new(),
        };
        let place = |tree: &mut Tree, node: Node| -> Result<(), LayerError> {
            if let Some(parent) = path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
                && !parent.is_empty()
                && u.force_owner.is_some()
            {
                // Release tarballs may omit directories; packages must not.
                tree.mkdir_p(parent, &Meta::root(0o755)).map_err(|source| LayerError::Tree {
                    origin: u.origin.to_owned(),
                    member: member.clone(),
                    source,
                })?;
            }
            tree.insert(&path, node).map(|_| ()).map_err(|source| LayerError::Tree {
                origin: u.origin.to_owned(),
                member: member.clone(),
                source,
            })
        };
        let kind = h.entry_type();
        match kind {
            tar::EntryType::Directory => {
                // A directory that already exists, also through a symlink (`/lib`
                // -> `usr/lib` on usr-merged systems), is kept as it is, as dpkg does.
                let exists = tree.lookup(&path, true).is_ok_and(|id| matches!(tree.node(id).kind, Kind::Dir(_)));
                if !exists {
                    place(tree, Node { kind: Kind::Dir(BTreeMap::new()), meta })?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size =
                    h.size().map_err(stream_err(format!("{}: member `{member}`: reading its size", u.origin)))?;
                if size > u.max_file {
                    return Err(hostile(format!(
                        "declares {size} bytes, more than the image can hold ({})",
                        u.max_file
                    )));
                }
                let data = spill
                    .append(&mut entry, size, || format!("{}: member `{member}`: reading its content", u.origin))?;
                place(tree, Node { kind: Kind::File(data), meta })?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile("is a symlink without a target".into()))?
                    .into_owned();
                place(tree, Node { kind: Kind::Symlink(target), meta })?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| hostile("is a hard link without a target".into()))?;
                let target_path = member_path(&target, &Unpack { include: &[], ..*u })?
                    .ok_or_else(|| hostile("links to a member outside the archive's tree".into()))?;
                tree.hardlink(&path, &target_path).map_err(|source| LayerError::Tree {
                    origin: u.origin.to_owned(),
                    member: member.clone(),
                    source,
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block if u.allow_devices => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = if kind == tar::EntryType::Char {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                };
                place(tree, Node { kind, meta })?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(hostile("is a device node, which packages may not ship".into()));
            }
            tar::EntryType::Fifo => place(tree, Node { kind: Kind::Fifo, meta })?,
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => return Err(hostile(format!("has the unsupported type {other:?}"))),
        }
        placed.push(path);
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in members {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(if *kind == tar::EntryType::Regular { data.len() as u64 } else { 0 });
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
            }
            h.set_cksum();
            let body: &[u8] = if *kind == tar::EntryType::Regular { data } else { &[] };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(members: &[(&str, tar::EntryType, &[u8])], max_file: u64) -> Result<Tree, LayerError> {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(&dir.path().join("spill")).unwrap();
        let mut tree = Tree::default();
        tree.mkdir_p(b"/usr/lib", &Meta::root(0o755)).unwrap();
        tree.mkdir_p(b"/etc", &Meta::root(0o755)).unwrap();
        tree.insert(b"/lib", Node { kind: Kind::Symlink(b"usr/lib".to_vec()), meta: Meta::root(0o777) }).unwrap();
        unpack_tar(&mut tree, &mut spill, &tar_with(members)[..], &Unpack::package("package `evil`", max_file))?;
        Ok(tree)
    }

    #[test]
    fn hostile_members_are_refused() {
        use tar::EntryType::*;
        let e = unpack(&[("../../etc/passwd", Regular, b"x")], 100).unwrap_err().to_string();
        assert!(e.contains("member `../../etc/passwd` climbs out with `..`"), "{e}");
        let e = unpack(&[("/etc/passwd", Regular, b"x")], 100).unwrap_err().to_string();
        assert!(e.contains("has an absolute name"), "{e}");
        let e = unpack(&[("./dev/sda", Block, b"")], 100).unwrap_err().to_string();
        assert!(e.contains("is a device node"), "{e}");
        let e = unpack(&[("./big", Regular, b"0123456789")], 5).unwrap_err().to_string();
        assert!(e.contains("declares 10 bytes"), "{e}");
        // A header declaring 1 TiB with no data behind it: refused before reading.
        let mut h = tar::Header::new_gnu();
        h.set_path("./huge").unwrap();
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(&dir.path().join("spill")).unwrap();
        let mut tree = Tree::default();
        let u = Unpack::package("package `evil`", 10 << 30);
        let e = unpack_tar(&mut tree, &mut spill, &bytes[..], &u).unwrap_err().to_string();
        assert!(e.contains("member `huge` declares 1099511627776 bytes"), "{e}");
        assert_eq!(spill.len(), 0, "nothing was read into the spill file");
    }

    /// Unpacks `bytes` as the archive `containerd` (a name without a suffix).
    fn unpack_named(bytes: &[u8]) -> Result<Tree, LayerError> {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(&dir.path().join("spill")).unwrap();
        let mut tree = Tree::default();
        tree.mkdir_p(b"/usr/local", &Meta::root(0o755)).unwrap();
        let u = Unpack {
            origin: "archive `containerd`",
            prefix: "/usr/local",
            strip: 0,
            include: &[],
            allow_devices: false,
            force_owner: Some((0, 0)),
            max_file: 1 << 20,
        };
        unpack_archive(&mut tree, &mut spill, bytes, &u)?;
        Ok(tree)
    }

    #[test]
    fn archives_are_told_by_content_not_name() {
        use std::io::Write as _;
        let tar = tar_with(&[("bin/containerd", tar::EntryType::Regular, b"#!/bin/sh\n")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&tar).unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let formats = [
            (ArchiveFormat::Tar, tar.clone()),
            (ArchiveFormat::Gzip, gz.finish().unwrap()),
            (ArchiveFormat::Xz, xz.finish().unwrap()),
            (ArchiveFormat::Zstd, zst),
        ];
        for (format, bytes) in &formats {
            assert_eq!(ArchiveFormat::detect(bytes), *format);
            let tree = unpack_named(bytes).unwrap_or_else(|e| panic!("{format}: {}", crate::report::error_chain(&e)));
            assert!(tree.lookup(b"/usr/local/bin/containerd", false).is_ok(), "{format}");
        }
        // Cut short or damaged after the magic: the error names the archive and the format.
        for (format, bytes) in &formats[1..] {
            let mut bad = bytes[..ArchiveFormat::MAGIC_LEN].to_vec();
            bad.extend_from_slice(&[0x55; 64]);
            let e = crate::report::error_chain(&unpack_named(&bad).unwrap_err());
            assert!(e.starts_with(&format!("archive `containerd` ({format}): reading the tar")), "{e}");
        }
        let e = crate::report::error_chain(&unpack_named(&[0x55; 700]).unwrap_err());
        assert!(e.starts_with("archive `containerd` (plain tar): reading the tar"), "{e}");
    }

    #[test]
    fn a_symlink_climbing_out_resolves_inside() {
        use tar::EntryType::*;
        let t =
            unpack(&[("./lib/up", Symlink, b"../../../../../../../../etc"), ("./lib/up/shadow", Regular, b"s")], 100)
                .unwrap();
        // `/lib` -> `usr/lib`, so `up` sits in /usr/lib; climbing stops at the root.
        assert!(t.lookup(b"/etc/shadow", false).is_ok());
        assert!(t.lookup(b"/usr/lib/up", false).is_ok());
    }
}
