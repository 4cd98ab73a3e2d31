//! Applying a recipe's layers to an image tree, without unpacking anything as
//! the user who runs the build: tar members become tree nodes whose contents go
//! to a spill file (an external source of the tree), never to the host's paths.
//!
//! Order: debs (dependencies checked first, then unpacked and registered in the
//! dpkg database as "unpacked", so that `dpkg --configure -a` on first boot runs
//! their maintainer scripts), archives, files, OCI image archives, then scrub.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use crate::files::FileError;
use crate::format::deb::{self, DebError, Stanza};
use crate::tree::{Data, Kind, Meta, Node, Tree, TreeError};

/// Source number of the spill file in trees built here.
pub const SPILL_SOURCE: u32 = 1;
/// Where preloaded OCI archives go in the image.
pub const IMAGES_DIR: &str = "/var/lib/hearth/images";

/// Errors of layering.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A tar member whose name is unsafe.
    #[error("{origin}: member `{member}` {why}")]
    Hostile {
        /// The package or archive.
        origin: String,
        /// The member name.
        member: String,
        /// What is wrong.
        why: String,
    },
    /// A tree operation failed.
    #[error("{origin}: placing `{member}`")]
    Tree {
        /// The package or archive.
        origin: String,
        /// The member.
        member: String,
        /// The cause.
        #[source]
        source: TreeError,
    },
    /// An unmet dependency.
    #[error("package `{package}` {field} `{relation}`, which is not satisfied: {found}")]
    Unmet {
        /// The package.
        package: String,
        /// `depends on` / `pre-depends on`.
        field: &'static str,
        /// The relation as written.
        relation: String,
        /// What was found instead.
        found: String,
    },
    /// A package that cannot be parsed.
    #[error("{origin}")]
    Deb {
        /// The package.
        origin: String,
        /// The cause.
        #[source]
        source: DebError,
    },
    /// An owner that does not resolve.
    #[error("owner `{0}` is not a user:group of the image (see its /etc/passwd and /etc/group)")]
    Owner(String),
    /// A host file (the spill file, an input).
    #[error(transparent)]
    File(#[from] FileError),
    /// A tar or compressed stream that cannot be read. Not a file: `what` names
    /// the package or archive (with the format found) and the member.
    #[error("{what}")]
    Stream {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn stream_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError {
    let what = what.into();
    move |source| LayerError::Stream { what, source }
}

/// The append-only file that holds layer contents.
pub struct Spill {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Spill {
    /// A spill file at `path` (created, truncated).
    pub fn create(path: &Path) -> Result<Spill, LayerError> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .map_err(FileError::at("creating", path))?;
        Ok(Spill { file, path: path.to_owned(), len: 0 })
    }

    /// Appends exactly `size` bytes from `r`. A read error that carries a
    /// [`FileError`] (a [`crate::files::PathReader`]) stays one; any other is
    /// a [`LayerError::Stream`] on `what()`.
    pub fn append(&mut self, r: &mut dyn Read, size: u64, what: impl FnOnce() -> String) -> Result<Data, LayerError> {
        let read_err = |e: io::Error| match e.downcast::<FileError>() {
            Ok(file) => LayerError::File(file),
            Err(source) => LayerError::Stream { what: what(), source },
        };
        let start = self.len;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = match r.read(&mut buf[..left.min(1 << 20) as usize]) {
                Ok(0) => {
                    let missing = format!("{left} of {size} bytes missing");
                    return Err(read_err(io::Error::new(io::ErrorKind::UnexpectedEof, missing)));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            self.file.write_all_at(&buf[..n], self.len).map_err(FileError::at("writing", &self.path))?;
            self.len += n as u64;
            left -= n as u64;
        }
        Ok(Data::external(SPILL_SOURCE, start, size))
    }

    /// Appends bytes.
    pub fn append_bytes(&mut self, bytes: &[u8]) -> Result<Data, LayerError> {
        self.append(&mut &bytes[..], bytes.len() as u64, || "bytes in memory".into())
    }

    /// Appends whatever `write` produces, returning it as one piece. An error
    /// that carries a [`FileError`] (reading what is written) stays one; any
    /// other is a failure to write the spill file.
    pub fn append_with(
        &mut self,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<Data, LayerError> {
        struct Appender<'a>(&'a mut Spill);
        impl io::Write for Appender<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.file.write_all_at(buf, self.0.len)?;
                self.0.len += buf.len() as u64;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let start = self.len;
        let path = self.path.clone();
        let mut w = io::BufWriter::with_capacity(1 << 20, Appender(self));
        write(&mut w).and_then(|()| io::Write::flush(&mut w)).map_err(FileError::carried_or("writing", &path))?;
        drop(w);
        Ok(Data::external(SPILL_SOURCE, start, self.len - start))
    }

    /// Reads back (the writer's source).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was spilled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

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

/// Reads a file of the tree through its content pieces.
pub fn read_file(tree: &Tree, path: &[u8], sources: &mut dyn crate::format::ext4::write::Sources) -> Option<Vec<u8>> {
    let id = tree.lookup(path, true).ok()?;
    let Kind::File(data) = &tree.node(id).kind else { return None };
    let mut out = vec![0u8; data.size as usize];
    for (at, piece) in &data.pieces {
        let dst = &mut out[*at as usize..(*at + piece.len()) as usize];
        match piece {
            crate::tree::Piece::Inline(b) => dst.copy_from_slice(b),
            crate::tree::Piece::External { source, offset, .. } => sources.read_at(*source, *offset, dst).ok()?,
        }
    }
    Some(out)
}

/// A package as the dependency check sees it.
#[derive(Clone, Debug)]
pub struct Pkg {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `(name, version)` it provides.
    pub provides: Vec<(String, Option<String>)>,
    /// Where it comes from (`the base`, `the recipe`).
    pub origin: &'static str,
}

impl Pkg {
    /// From a control stanza.
    pub fn from_stanza(s: &Stanza, origin: &'static str) -> Option<Pkg> {
        let provides = s
            .get("Provides")
            .and_then(|p| deb::parse_relations(p).ok())
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .map(|r| (r.name, r.version.map(|(_, v)| v)))
            .collect();
        Some(Pkg { name: s.get("Package")?.to_owned(), version: s.get("Version")?.to_owned(), provides, origin })
    }
}

/// Installed packages of a dpkg status file (`install ok installed` only).
pub fn installed(status: &str) -> Vec<Pkg> {
    deb::parse_stanzas(status)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.get("Status").is_some_and(|v| v.ends_with("ok installed")))
        .filter_map(|s| Pkg::from_stanza(s, "the base"))
        .collect()
}

/// Checks Pre-Depends and Depends of `control` against `available`.
pub fn check_depends(control: &Stanza, available: &[Pkg]) -> Result<(), LayerError> {
    let package = control.get("Package").unwrap_or("?").to_owned();
    for (field, label) in [("Pre-Depends", "pre-depends on"), ("Depends", "depends on")] {
        let Some(text) = control.get(field) else { continue };
        let groups = deb::parse_relations(text)
            .map_err(|source| LayerError::Deb { origin: format!("package `{package}`"), source })?;
        for alts in groups {
            let ok = alts.iter().any(|rel| {
                available.iter().any(|p| {
                    let direct =
                        p.name == rel.name && rel.version.as_ref().is_none_or(|(op, v)| op.holds(&p.version, v));
                    let provided = p.provides.iter().any(|(n, pv)| {
                        n == &rel.name
                            && match (&rel.version, pv) {
                                (None, _) => true,
                                (Some((op, v)), Some(pv)) => op.holds(pv, v),
                                (Some(_), None) => false,
                            }
                    });
                    direct || provided
                })
            });
            if !ok {
                let found: Vec<String> = alts
                    .iter()
                    .flat_map(|rel| available.iter().filter(move |p| p.name == rel.name))
                    .map(|p| format!("{} {} (in {})", p.name, p.version, p.origin))
                    .collect();
                let relation = alts.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" | ");
                return Err(LayerError::Unmet {
                    package: package.clone(),
                    field: label,
                    relation,
                    found: if found.is_empty() {
                        "not installed".into()
                    } else {
                        format!("found {}", found.join(", "))
                    },
                });
            }
        }
    }
    Ok(())
}

/// A .deb ready to unpack.
pub struct DebLayer {
    /// Its control stanza.
    pub control: Stanza,
    /// control.tar members: name -> bytes.
    pub control_files: BTreeMap<String, Vec<u8>>,
    /// The deb's bytes (for data.tar).
    pub deb: deb::Deb,
}

/// Opens a .deb and reads its control data.
pub fn open_deb(bytes: &[u8], origin: &str) -> Result<DebLayer, LayerError> {
    let err = |source| LayerError::Deb { origin: origin.to_owned(), source };
    let d = deb::open_deb(bytes).map_err(err)?;
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(deb::tar_reader(&d.control.name, &d.control.data).map_err(err)?);
    let entries = ar.entries().map_err(stream_err(format!("{origin}: reading control.tar")))?;
    for e in entries {
        let mut e = e.map_err(stream_err(format!("{origin}: reading control.tar")))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_owned();
        if name.contains('/') || e.header().size().unwrap_or(0) > 16 << 20 {
            continue;
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v).map_err(stream_err(format!("{origin}: reading control.tar")))?;
        files.insert(name, v);
    }
    drop(ar);
    let control_text = String::from_utf8_lossy(
        files.get("control").ok_or_else(|| err(DebError::Malformed("no control file in control.tar".into())))?,
    )
    .into_owned();
    let control = deb::parse_stanzas(&control_text)
        .map_err(err)?
        .into_iter()
        .next()
        .ok_or_else(|| err(DebError::Control("empty control file".into())))?;
    Ok(DebLayer { control, control_files: files, deb: d })
}

/// Unpacks a package and registers it as unpacked. `status` is the dpkg status
/// text, updated in place.
pub fn install_deb(
    tree: &mut Tree,
    spill: &mut Spill,
    layer: &DebLayer,
    status: &mut Vec<Stanza>,
    max_file: u64,
) -> Result<(), LayerError> {
    let pkg = layer.control.get("Package").unwrap_or("?").to_owned();
    let origin = format!("package `{pkg}`");
    let conffiles: BTreeSet<Vec<u8>> = layer
        .control_files
        .get("conffiles")
        .map(|c| {
            String::from_utf8_lossy(c).lines().map(|l| l.trim().as_bytes().to_vec()).filter(|l| !l.is_empty()).collect()
        })
        .unwrap_or_default();
    let reader = deb::tar_reader(&layer.deb.data.name, &layer.deb.data.data)
        .map_err(|source| LayerError::Deb { origin: origin.clone(), source })?;
    let u = Unpack {
        origin: &origin,
        prefix: "/",
        strip: 0,
        include: &[],
        allow_devices: false,
        force_owner: None,
        max_file,
    };
    let placed = unpack_tar(tree, spill, reader, &u)?;
    // Conffiles wait as `<path>.dpkg-new` for `dpkg --configure` to move them in.
    for c in &conffiles {
        let mut new = c.clone();
        new.extend_from_slice(b".dpkg-new");
        if let Ok(id) = tree.lookup(c, false) {
            let node = tree.node(id).clone();
            tree.remove(c).map_err(|source| LayerError::Tree {
                origin: origin.clone(),
                member: String::from_utf8_lossy(c).into(),
                source,
            })?;
            tree.insert(&new, node).map_err(|source| LayerError::Tree {
                origin: origin.clone(),
                member: String::from_utf8_lossy(c).into(),
                source,
            })?;
        }
    }
    // The dpkg database.
    let arch = layer.control.get("Architecture").unwrap_or("all");
    let key = if layer.control.get("Multi-Arch") == Some("same") { format!("{pkg}:{arch}") } else { pkg.clone() };
    let info = Meta::root(0o755);
    tree.mkdir_p(b"/var/lib/dpkg/info", &info).map_err(|source| LayerError::Tree {
        origin: origin.clone(),
        member: "/var/lib/dpkg/info".into(),
        source,
    })?;
    let mut list = String::from("/.\n");
    for p in &placed {
        let text = String::from_utf8_lossy(p);
        let text = text.trim_end_matches('/');
        if !text.is_empty() {
            list.push_str(text);
            list.push('\n');
        }
    }
    let mut info_files: Vec<(String, Vec<u8>)> = vec![(format!("{key}.list"), list.into_bytes())];
    for (name, bytes) in &layer.control_files {
        if name != "control" {
            info_files.push((format!("{key}.{name}"), bytes.clone()));
        }
    }
    for (name, bytes) in info_files {
        let exec =
            ["preinst", "postinst", "prerm", "postrm", "config"].iter().any(|s| name.ends_with(&format!(".{s}")));
        let data = spill.append_bytes(&bytes)?;
        let path = format!("/var/lib/dpkg/info/{name}");
        tree.insert(
            path.as_bytes(),
            Node { kind: Kind::File(data), meta: Meta::root(if exec { 0o755 } else { 0o644 }) },
        )
        .map_err(|source| LayerError::Tree { origin: origin.clone(), member: path.clone(), source })?;
    }
    let mut stanza = Stanza::default();
    stanza.set("Package", &pkg);
    stanza.set("Status", "install ok unpacked");
    for (k, v) in &layer.control.fields {
        if !k.eq_ignore_ascii_case("Package") {
            stanza.fields.push((k.clone(), v.clone()));
        }
    }
    if !conffiles.is_empty() {
        let lines: String =
            conffiles.iter().map(|c| format!("\n {} newconffile", String::from_utf8_lossy(c))).collect();
        stanza.set("Conffiles", &lines);
    }
    status.retain(|s| {
        !(s.get("Package") == Some(pkg.as_str())
            && s.get("Architecture").is_none_or(|a| a == arch || a == "all" || arch == "all"))
    });
    status.push(stanza);
    Ok(())
}

/// Renders a status file, stanzas sorted by package name as dpkg writes it.
pub fn render_status(status: &mut [Stanza]) -> String {
    status.sort_by(|a, b| (a.get("Package"), a.get("Architecture")).cmp(&(b.get("Package"), b.get("Architecture"))));
    status.iter().map(|s| format!("{}\n", s.render())).collect()
}

/// Resolves `user:group` (names or numbers) against the image's passwd/group.
pub fn resolve_owner(owner: &str, passwd: &str, group: &str) -> Result<(u32, u32), LayerError> {
    let (u, g) = owner.split_once(':').ok_or_else(|| LayerError::Owner(owner.to_owned()))?;
    let lookup = |name: &str, db: &str| -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        db.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok()).flatten()
        })
    };
    Ok((
        lookup(u, passwd).ok_or_else(|| LayerError::Owner(owner.to_owned()))?,
        lookup(g, group).ok_or_else(|| LayerError::Owner(owner.to_owned()))?,
    ))
}

/// Removes what must not travel in an image: machine identity, SSH host keys,
/// logs, caches that embed time, dpkg's backup files.
pub fn scrub(tree: &mut Tree) -> Vec<String> {
    let mut removed = Vec::new();
    let walk = tree.walk_sorted();
    for (path, id) in &walk {
        let p = String::from_utf8_lossy(path).into_owned();
        let is_file = !matches!(tree.node(*id).kind, Kind::Dir(_));
        let drop = (is_file && (p.starts_with("/etc/ssh/ssh_host_") || p.starts_with("/var/log/")))
            || (p.starts_with("/var/cache/apt/") && p.ends_with(".bin"))
            || (p.starts_with("/var/lib/dpkg/") && p.ends_with("-old"))
            || p == "/var/lib/dbus/machine-id"
            || p == "/var/lib/systemd/random-seed"
            || p == "/var/cache/ldconfig/aux-cache"
            || (p.starts_with("/var/lib/cloud/instances") && p != "/var/lib/cloud/instances")
            || p == "/var/lib/cloud/instance";
        if drop && tree.remove(path).unwrap_or(false) {
            removed.push(p);
        }
    }
    if let Ok(id) = tree.lookup(b"/etc/machine-id", false) {
        if let Kind::File(d) = &mut tree.node_mut(id).kind {
            *d = Data::default();
        }
    } else if tree.lookup(b"/etc", true).is_ok() {
        let _ = tree.insert(b"/etc/machine-id", Node { kind: Kind::File(Data::default()), meta: Meta::root(0o444) });
    }
    removed
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
        let u = Unpack {
            origin: "package `evil`",
            prefix: "/",
            strip: 0,
            include: &[],
            allow_devices: false,
            force_owner: None,
            max_file,
        };
        unpack_tar(&mut tree, &mut spill, &tar_with(members)[..], &u)?;
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
        let u = Unpack {
            origin: "package `evil`",
            prefix: "/",
            strip: 0,
            include: &[],
            allow_devices: false,
            force_owner: None,
            max_file: 10 << 30,
        };
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

    #[test]
    fn dependencies_name_what_was_found() {
        let base = installed(
            "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n\nPackage: mawk\nStatus: install ok installed\nVersion: 1.3.4\nProvides: awk\n",
        );
        let ok = deb::parse_stanzas("Package: a\nVersion: 1\nDepends: libc6 (>= 2.34), awk\n").unwrap().remove(0);
        check_depends(&ok, &base).unwrap();
        let bad = deb::parse_stanzas("Package: a\nVersion: 1\nPre-Depends: libc6 (>= 2.38)\n").unwrap().remove(0);
        let e = check_depends(&bad, &base).unwrap_err().to_string();
        assert_eq!(
            e,
            "package `a` pre-depends on `libc6 (>= 2.38)`, which is not satisfied: found libc6 2.36-9 (in the base)"
        );
        let missing = deb::parse_stanzas("Package: a\nVersion: 1\nDepends: libfoo | libbar\n").unwrap().remove(0);
        let e = check_depends(&missing, &base).unwrap_err().to_string();
        assert!(e.ends_with("`libfoo | libbar`, which is not satisfied: not installed"), "{e}");
    }

    #[test]
    fn owners_resolve_by_name_or_number() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\netcd:x:998:997::/var/lib/etcd:/usr/sbin/nologin\n";
        let group = "root:x:0:\netcd:x:997:\n";
        assert_eq!(resolve_owner("etcd:etcd", passwd, group).unwrap(), (998, 997));
        assert_eq!(resolve_owner("0:5", passwd, group).unwrap(), (0, 5));
        assert!(resolve_owner("nobody:root", passwd, group).is_err());
    }
}
