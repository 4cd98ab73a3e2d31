//! The in-memory file tree an image root is assembled in: what the base's ext4
//! holds, with the layers applied on top, before a new ext4 is written.
//!
//! File contents are not held here, only described ([`Data`]): byte ranges of a
//! numbered external source (the base partition, a spill file of layer contents)
//! or small inline buffers. Memory therefore grows with the number of files, not
//! with their size.
//!
//! Content is read through [`Sources`] (the builder's base disk and spill file)
//! and file systems are written through a [`Sink`]: the tree itself does no I/O.
//!
//! Paths are resolved the way dpkg resolves them inside a chroot: symlinks met on
//! the way (`/lib -> usr/lib` on a usr-merged system) are followed, absolute
//! targets start again at the image root and `..` stops at the root, so nothing
//! ever resolves outside the tree.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// Index of a node in the tree's arena.
pub type NodeId = usize;
/// The root directory's id.
pub const ROOT: NodeId = 0;
/// How many symlinks one lookup may follow (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// Where file contents come from: the numbered external sources of
/// [`Piece::External`].
pub trait Sources {
    /// Fills `buf` from `source` at `offset`.
    fn read_at(&mut self, source: u32, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Where a file system or disk goes. The target must read as zeros beforehand:
/// [`Sink::write_nonzero`] skips blocks that are all zeros.
pub trait Sink {
    /// Writes `data` at byte `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Writes `data` at byte `offset`, leaving out every 4 KiB block (counted
    /// from `offset`) that is all zeros: the target reads as zeros there already,
    /// and a sparse file stays sparse.
    fn write_nonzero(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        for (i, block) in data.chunks(ZERO_BLOCK).enumerate() {
            if !crate::format::is_zero(block) {
                self.write_at(offset + (i * ZERO_BLOCK) as u64, block)?;
            }
        }
        Ok(())
    }
}

/// The granularity of [`Sink::write_nonzero`].
const ZERO_BLOCK: usize = 4096;

/// One piece of a file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes held in memory.
    Inline(Arc<[u8]>),
    /// `len` bytes at `offset` of external source `source`.
    External {
        /// Source number (meaning is up to the builder).
        source: u32,
        /// Byte offset in the source.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl Piece {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Inline(b) => b.len() as u64,
            Piece::External { len, .. } => *len,
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A regular file's content: pieces at file offsets; gaps read as zeros (holes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Data {
    /// File size.
    pub size: u64,
    /// `(file offset, piece)`, sorted, not overlapping.
    pub pieces: Vec<(u64, Piece)>,
}

impl Data {
    /// Content held in memory.
    pub fn inline(bytes: impl Into<Arc<[u8]>>) -> Data {
        let b: Arc<[u8]> = bytes.into();
        let size = b.len() as u64;
        if size == 0 { Data::default() } else { Data { size, pieces: vec![(0, Piece::Inline(b))] } }
    }
    /// Content that is one range of an external source.
    pub fn external(source: u32, offset: u64, len: u64) -> Data {
        if len == 0 {
            return Data::default();
        }
        Data { size: len, pieces: vec![(0, Piece::External { source, offset, len })] }
    }

    /// Fills `buf` with the bytes at `offset` (zeros where no piece is).
    pub fn read_at(&self, offset: u64, buf: &mut [u8], sources: &mut dyn Sources) -> io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (at, piece) in &self.pieces {
            let (p_start, p_end) = (*at, *at + piece.len());
            if p_end <= offset || p_start >= end {
                continue;
            }
            let from = p_start.max(offset);
            let to = p_end.min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match piece {
                Piece::Inline(b) => dst.copy_from_slice(&b[(from - p_start) as usize..(to - p_start) as usize]),
                Piece::External { source, offset: src_off, .. } => {
                    sources.read_at(*source, src_off + (from - p_start), dst)?;
                }
            }
        }
        Ok(())
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory: entries by name (bytes), sorted.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file.
    File(Data),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// Ownership, permissions, time and extended attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (no type bits).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since 1970.
    pub mtime: i64,
    /// Extended attributes: full name (`security.capability`) -> value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// root:root with these permissions at time 0.
    pub fn root(perm: u16) -> Meta {
        Meta { perm, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() }
    }
}

/// A node: kind plus metadata. Hard links are several directory entries naming
/// one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Its metadata.
    pub meta: Meta,
}

/// Errors of tree operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A path component does not exist.
    #[error("`{0}` does not exist")]
    NotFound(String),
    /// A component that should be a directory is not.
    #[error("`{0}` is not a directory")]
    NotDir(String),
    /// Symlink loop or chain too long.
    #[error("too many levels of symbolic links resolving `{0}`")]
    Loop(String),
    /// A name that cannot be an entry.
    #[error("`{0}` is not a valid path inside the image")]
    BadPath(String),
    /// Replacing a directory with a non-directory (dpkg refuses this too).
    #[error("`{0}` is a directory and cannot be replaced by a file")]
    IsDir(String),
}

/// A whole tree.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new(Meta::root(0o755))
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Splits a path into its normal components; `.` and empty ones are dropped.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".")
}

impl Tree {
    /// An empty tree whose root directory has `meta`.
    pub fn new(meta: Meta) -> Tree {
        Tree { nodes: vec![Node { kind: Kind::Dir(BTreeMap::new()), meta }] }
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// A node by id, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// Number of nodes (including unreachable ones left by removals).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: there is a root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Adds a detached node.
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn dir_entries(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[id].kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    /// Resolves the directory that would contain `path`, following every symlink
    /// on the way (inside the tree). Returns the directory and the last name.
    pub fn resolve_parent(&self, path: &[u8]) -> Result<(NodeId, Vec<u8>), TreeError> {
        let comps: Vec<&[u8]> = components(path).collect();
        let (last, dirs) = comps.split_last().ok_or_else(|| TreeError::BadPath(show(path)))?;
        if *last == b".." {
            return Err(TreeError::BadPath(show(path)));
        }
        let mut budget = MAX_SYMLINKS;
        let dir = self.walk(ROOT, dirs, path, &mut budget)?;
        Ok((dir, last.to_vec()))
    }

    /// Resolves `path` to a node, following symlinks in every component
    /// (including the last one when `follow_last`).
    pub fn lookup(&self, path: &[u8], follow_last: bool) -> Result<NodeId, TreeError> {
        let comps: Vec<&[u8]> = components(path).collect();
        let Some((last, dirs)) = comps.split_last() else { return Ok(ROOT) };
        let mut budget = MAX_SYMLINKS;
        let dir = self.walk(ROOT, dirs, path, &mut budget)?;
        self.step(dir, last, path, follow_last, &mut budget)
    }

    /// The whole content of the regular file at `path` (symlinks followed);
    /// `None` if there is none or a source cannot be read.
    pub fn read_file(&self, path: &[u8], sources: &mut dyn Sources) -> Option<Vec<u8>> {
        let id = self.lookup(path, true).ok()?;
        let Kind::File(data) = &self.node(id).kind else { return None };
        let mut out = vec![0u8; data.size as usize];
        data.read_at(0, &mut out, sources).ok()?;
        Some(out)
    }

    /// Walks directory components from `start`.
    fn walk(&self, start: NodeId, comps: &[&[u8]], whole: &[u8], budget: &mut usize) -> Result<NodeId, TreeError> {
        let mut cur = start;
        let mut stack: Vec<NodeId> = vec![];
        for c in comps {
            if *c == b".." {
                cur = stack.pop().unwrap_or(ROOT);
                continue;
            }
            let next = self.step(cur, c, whole, true, budget)?;
            if self.dir_entries(next).is_none() {
                return Err(TreeError::NotDir(show(whole)));
            }
            stack.push(cur);
            cur = next;
        }
        Ok(cur)
    }

    /// One component: the entry `name` in directory `dir`, its symlink followed.
    fn step(
        &self,
        dir: NodeId,
        name: &[u8],
        whole: &[u8],
        follow: bool,
        budget: &mut usize,
    ) -> Result<NodeId, TreeError> {
        if name == b".." {
            // A parent we cannot know without the walk stack: callers handle `..`
            // in walk(); a trailing `..` is refused by resolve_parent.
            return Err(TreeError::BadPath(show(whole)));
        }
        let entries = self.dir_entries(dir).ok_or_else(|| TreeError::NotDir(show(whole)))?;
        let id = *entries.get(name).ok_or_else(|| TreeError::NotFound(show(whole)))?;
        match &self.nodes[id].kind {
            Kind::Symlink(target) if follow => {
                if *budget == 0 {
                    return Err(TreeError::Loop(show(whole)));
                }
                *budget -= 1;
                self.follow(dir, target, whole, budget)
            }
            _ => Ok(id),
        }
    }

    /// Resolves a symlink `target` found in directory `dir`.
    fn follow(&self, dir: NodeId, target: &[u8], whole: &[u8], budget: &mut usize) -> Result<NodeId, TreeError> {
        // A relative target is resolved from the link's directory. To interpret
        // `..` correctly we need that directory's path: recompute it.
        let base: Vec<Vec<u8>> =
            if target.starts_with(b"/") { Vec::new() } else { self.path_of(dir).unwrap_or_default() };
        let mut full: Vec<&[u8]> = base.iter().map(|v| v.as_slice()).collect();
        full.extend(components(target));
        let Some((last, dirs)) = full.split_last() else { return Ok(ROOT) };
        let d = self.walk(ROOT, dirs, whole, budget)?;
        if *last == b".." {
            return self.walk(ROOT, &full, whole, budget);
        }
        self.step(d, last, whole, true, budget)
    }

    /// The path of a directory node from the root (first match in a sorted walk).
    pub fn path_of(&self, target: NodeId) -> Option<Vec<Vec<u8>>> {
        if target == ROOT {
            return Some(Vec::new());
        }
        let mut stack: Vec<(NodeId, Vec<Vec<u8>>)> = vec![(ROOT, Vec::new())];
        while let Some((id, path)) = stack.pop() {
            if let Some(entries) = self.dir_entries(id) {
                for (name, child) in entries {
                    if matches!(self.nodes[*child].kind, Kind::Dir(_)) {
                        let mut p = path.clone();
                        p.push(name.clone());
                        if *child == target {
                            return Some(p);
                        }
                        stack.push((*child, p));
                    }
                }
            }
        }
        None
    }

    /// Links `node` at `path` (its parent must exist), replacing a non-directory
    /// that is there. Replacing a directory with a directory keeps the old one's
    /// entries (the new metadata wins), as unpacking an archive over a tree does.
    pub fn insert(&mut self, path: &[u8], node: Node) -> Result<NodeId, TreeError> {
        let (parent, name) = self.resolve_parent(path)?;
        let existing = self.dir_entries(parent).expect("parent is a dir").get(&name).copied();
        if let Some(old) = existing {
            let old_is_dir = matches!(self.nodes[old].kind, Kind::Dir(_));
            match (&node.kind, old_is_dir) {
                (Kind::Dir(_), true) => {
                    self.nodes[old].meta = node.meta;
                    return Ok(old);
                }
                (_, true) => return Err(TreeError::IsDir(show(path))),
                _ => {}
            }
        }
        let id = self.add(node);
        if let Kind::Dir(e) = &mut self.nodes[parent].kind {
            e.insert(name, id);
        }
        Ok(id)
    }

    /// Makes a hard link at `path` to the node at `target` (not following a final
    /// symlink, as `link(2)`).
    pub fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<NodeId, TreeError> {
        let id = self.lookup(target, false)?;
        if matches!(self.nodes[id].kind, Kind::Dir(_)) {
            return Err(TreeError::IsDir(show(target)));
        }
        let (parent, name) = self.resolve_parent(path)?;
        if let Some(old) = self.dir_entries(parent).expect("dir").get(&name)
            && matches!(self.nodes[*old].kind, Kind::Dir(_))
        {
            return Err(TreeError::IsDir(show(path)));
        }
        if let Kind::Dir(e) = &mut self.nodes[parent].kind {
            e.insert(name, id);
        }
        Ok(id)
    }

    /// Creates every missing directory of `path` with `meta` (like `mkdir -p`).
    pub fn mkdir_p(&mut self, path: &[u8], meta: &Meta) -> Result<NodeId, TreeError> {
        let mut cur = String::new();
        let mut id = ROOT;
        for c in components(path) {
            cur.push('/');
            cur.push_str(&String::from_utf8_lossy(c));
            id = match self.lookup(cur.as_bytes(), true) {
                Ok(existing) if matches!(self.nodes[existing].kind, Kind::Dir(_)) => existing,
                Ok(_) => return Err(TreeError::NotDir(cur)),
                Err(TreeError::NotFound(_)) => {
                    self.insert(cur.as_bytes(), Node { kind: Kind::Dir(BTreeMap::new()), meta: meta.clone() })?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(id)
    }

    /// Removes the entry at `path` (not following a final symlink). Returns
    /// whether something was there.
    pub fn remove(&mut self, path: &[u8]) -> Result<bool, TreeError> {
        let (parent, name) = match self.resolve_parent(path) {
            Ok(x) => x,
            Err(TreeError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Kind::Dir(e) = &mut self.nodes[parent].kind {
            return Ok(e.remove(&name).is_some());
        }
        Ok(false)
    }

    /// Every reachable node once, with one of its paths, in sorted depth-first
    /// order (directories before their entries). Deterministic.
    pub fn walk_sorted(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        let mut seen = vec![false; self.nodes.len()];
        fn rec(t: &Tree, id: NodeId, path: &mut Vec<u8>, out: &mut Vec<(Vec<u8>, NodeId)>, seen: &mut [bool]) {
            out.push((path.clone(), id));
            seen[id] = true;
            if let Some(entries) = t.dir_entries(id) {
                for (name, child) in entries {
                    let len = path.len();
                    path.push(b'/');
                    path.extend_from_slice(name);
                    if !seen[*child] || !matches!(t.nodes[*child].kind, Kind::Dir(_)) {
                        if seen[*child] {
                            out.push((path.clone(), *child));
                        } else {
                            rec(t, *child, path, out, seen);
                        }
                    }
                    path.truncate(len);
                }
            }
        }
        rec(self, ROOT, &mut Vec::new(), &mut out, &mut seen);
        out
    }

    /// Applies `f` to the metadata of every reachable node.
    pub fn for_each_meta(&mut self, mut f: impl FnMut(&mut Meta)) {
        let ids: Vec<NodeId> = self.walk_sorted().into_iter().map(|(_, id)| id).collect();
        let mut done = vec![false; self.nodes.len()];
        for id in ids {
            if !done[id] {
                done[id] = true;
                f(&mut self.nodes[id].meta);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Node {
        Node { kind: Kind::File(Data::inline(text.as_bytes().to_vec())), meta: Meta::root(0o644) }
    }
    fn link(target: &str) -> Node {
        Node { kind: Kind::Symlink(target.as_bytes().to_vec()), meta: Meta::root(0o777) }
    }

    fn usr_merged() -> Tree {
        let mut t = Tree::default();
        t.mkdir_p(b"/usr/lib/x86_64-linux-gnu", &Meta::root(0o755)).unwrap();
        t.mkdir_p(b"/usr/bin", &Meta::root(0o755)).unwrap();
        t.insert(b"/lib", link("usr/lib")).unwrap();
        t.insert(b"/bin", link("/usr/bin")).unwrap();
        t
    }

    #[test]
    fn usr_merge_symlinks_are_followed_like_dpkg() {
        let mut t = usr_merged();
        t.insert(b"/lib/x86_64-linux-gnu/libfoo.so.1", file("foo")).unwrap();
        t.insert(b"/bin/tool", file("tool")).unwrap();
        assert!(t.lookup(b"/usr/lib/x86_64-linux-gnu/libfoo.so.1", false).is_ok());
        assert!(t.lookup(b"/usr/bin/tool", false).is_ok());
        // The links themselves stay links.
        assert!(matches!(t.node(t.lookup(b"/lib", false).unwrap()).kind, Kind::Symlink(_)));
    }

    #[test]
    fn climbing_symlinks_stay_inside_the_root() {
        let mut t = Tree::default();
        t.mkdir_p(b"/a/b", &Meta::root(0o755)).unwrap();
        t.mkdir_p(b"/etc", &Meta::root(0o755)).unwrap();
        t.insert(b"/a/b/up", link("../../../../../../etc")).unwrap();
        t.insert(b"/a/b/up/passwd", file("x")).unwrap();
        assert!(t.lookup(b"/etc/passwd", false).is_ok(), "resolved inside the image");
        t.insert(b"/a/abs", link("/../../etc")).unwrap();
        t.insert(b"/a/abs/shadow", file("y")).unwrap();
        assert!(t.lookup(b"/etc/shadow", false).is_ok());
    }

    #[test]
    fn loops_and_bad_paths_are_errors() {
        let mut t = Tree::default();
        t.insert(b"/x", link("/y")).unwrap();
        t.insert(b"/y", link("/x")).unwrap();
        assert!(matches!(t.insert(b"/x/f", file("z")), Err(TreeError::Loop(_))));
        assert!(matches!(t.insert(b"/", file("z")), Err(TreeError::BadPath(_))));
        assert!(matches!(t.insert(b"/a/..", file("z")), Err(TreeError::BadPath(_))));
        t.mkdir_p(b"/d", &Meta::root(0o755)).unwrap();
        assert!(matches!(t.insert(b"/d", file("z")), Err(TreeError::IsDir(_))));
        assert!(matches!(t.insert(b"/nope/f", file("z")), Err(TreeError::NotFound(_))));
    }

    #[test]
    fn hard_links_share_a_node_and_walks_are_sorted() {
        let mut t = Tree::default();
        t.mkdir_p(b"/b", &Meta::root(0o755)).unwrap();
        let id = t.insert(b"/b/one", file("1")).unwrap();
        assert_eq!(t.hardlink(b"/a-link", b"/b/one").unwrap(), id);
        let paths: Vec<String> = t.walk_sorted().iter().map(|(p, _)| show(p)).collect();
        assert_eq!(paths, ["", "/a-link", "/b", "/b/one"]);
    }
}
