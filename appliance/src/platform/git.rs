//! A Git repository of one commit, written by hearth without Git: its
//! objects (blobs, trees, the commit), a bundle (`# v2 git bundle` with a
//! pack) that first boot seeds the in-cluster Git server from, and a checkout
//! (`.git` with loose objects and an index) for `hearth gitops export`.
//!
//! Everything is a function of the files and the message: the commit's author
//! and date are fixed (hearth at the epoch), zlib runs at a fixed level, and
//! objects and index entries are sorted, so the same files give the same
//! commit id on every machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use sha1::{Digest as _, Sha1};

use crate::files::{FileError, write_atomic};

/// The branch hearth commits to.
pub const BRANCH: &str = "main";

/// Who commits: hearth, at the epoch (no clock reaches a commit).
const SIGNATURE: &str = "hearth <hearth@hearth.invalid> 0 +0000";

/// A Git object id (SHA-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub [u8; 20]);

impl Oid {
    /// Lower-case hex, as Git prints it.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Commit,
    Tree,
    Blob,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
        }
    }

    /// The type number of a pack entry.
    fn pack_type(self) -> u8 {
        match self {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
        }
    }
}

struct Object {
    oid: Oid,
    kind: Kind,
    body: Vec<u8>,
}

/// A repository holding one commit on [`BRANCH`].
pub struct Repository {
    /// The commit.
    pub head: Oid,
    files: BTreeMap<String, (Oid, Vec<u8>)>,
    objects: Vec<Object>,
}

fn oid_of(kind: Kind, body: &[u8]) -> Oid {
    let mut h = Sha1::new();
    h.update(format!("{} {}\0", kind.name(), body.len()).as_bytes());
    h.update(body);
    Oid(h.finalize().into())
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::new(6));
    z.write_all(bytes).expect("writing to memory");
    z.finish().expect("writing to memory")
}

/// A node of the tree being built: a file's blob id, or a directory.
enum Node {
    File(Oid),
    Dir(BTreeMap<String, Node>),
}

impl Repository {
    /// Commits `files` (path `a/b/c` to contents; regular files, mode 644)
    /// with `message`.
    pub fn commit(files: &BTreeMap<String, Vec<u8>>, message: &str) -> Repository {
        let mut objects = Vec::new();
        let mut seen = BTreeSet::new();
        let mut add = |kind: Kind, body: Vec<u8>, objects: &mut Vec<Object>| {
            let oid = oid_of(kind, &body);
            if seen.insert(oid) {
                objects.push(Object { oid, kind, body });
            }
            oid
        };
        let mut root = BTreeMap::new();
        let mut blobs = BTreeMap::new();
        for (path, body) in files {
            let oid = add(Kind::Blob, body.clone(), &mut objects);
            blobs.insert(path.clone(), (oid, body.clone()));
            let mut parts: Vec<&str> = path.split('/').collect();
            let name = parts.pop().expect("split gives one part");
            let mut dir = &mut root;
            for p in parts {
                let next = dir.entry(p.to_owned()).or_insert_with(|| Node::Dir(BTreeMap::new()));
                dir = match next {
                    Node::Dir(d) => d,
                    Node::File(_) => panic!("{path}: a file is also a directory"),
                };
            }
            dir.insert(name.to_owned(), Node::File(oid));
        }
        fn tree(dir: &BTreeMap<String, Node>, add: &mut dyn FnMut(Kind, Vec<u8>) -> Oid) -> Oid {
            // Git orders a tree's entries by name, a directory's name as if it
            // ended in `/`.
            let mut entries: Vec<(Vec<u8>, &'static str, Oid, &str)> = dir
                .iter()
                .map(|(name, node)| match node {
                    Node::File(oid) => (name.as_bytes().to_vec(), "100644", *oid, name.as_str()),
                    Node::Dir(d) => {
                        let oid = tree(d, add);
                        ([name.as_bytes(), b"/"].concat(), "40000", oid, name.as_str())
                    }
                })
                .collect();
            entries.sort();
            let mut body = Vec::new();
            for (_, mode, oid, name) in entries {
                body.extend_from_slice(format!("{mode} {name}\0").as_bytes());
                body.extend_from_slice(&oid.0);
            }
            add(Kind::Tree, body)
        }
        let mut add_obj = |kind: Kind, body: Vec<u8>| add(kind, body, &mut objects);
        let root_tree = tree(&root, &mut add_obj);
        let mut commit = String::new();
        let _ = write!(commit, "tree {}\nauthor {SIGNATURE}\ncommitter {SIGNATURE}\n\n{message}", root_tree.hex());
        if !commit.ends_with('\n') {
            commit.push('\n');
        }
        let head = add_obj(Kind::Commit, commit.into_bytes());
        // The commit first, then trees, then blobs: the order Git packs in.
        objects.sort_by_key(|o| match o.kind {
            Kind::Commit => 0,
            Kind::Tree => 1,
            Kind::Blob => 2,
        });
        Repository { head, files: blobs, objects }
    }

    /// A pack of every object (version 2, no deltas).
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"PACK");
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(&u32::try_from(self.objects.len()).expect("fewer than 2^32 objects").to_be_bytes());
        for o in &self.objects {
            // Type and size: 3 bits of type and 4 of size, then 7 bits a byte.
            let mut size = o.body.len();
            let mut byte = (o.kind.pack_type() << 4) | (size & 0x0f) as u8;
            size >>= 4;
            while size > 0 {
                out.push(byte | 0x80);
                byte = (size & 0x7f) as u8;
                size >>= 7;
            }
            out.push(byte);
            out.extend_from_slice(&zlib(&o.body));
        }
        let sum: [u8; 20] = Sha1::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// A Git bundle (v2) of [`BRANCH`] and `HEAD`: `git clone FILE` reads it.
    pub fn bundle(&self) -> Vec<u8> {
        let head = self.head.hex();
        let mut out = format!("# v2 git bundle\n{head} refs/heads/{BRANCH}\n{head} HEAD\n\n").into_bytes();
        out.extend_from_slice(&self.pack());
        out
    }

    /// Writes the repository as a checkout in `dir` (which must not exist):
    /// the files, and `.git` with loose objects, the branch and an index, so
    /// that `git status` is clean and `git push` sends the commit.
    pub fn write_checkout(&self, dir: &Path) -> Result<(), FileError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FileError { op, path, source }
        };
        std::fs::create_dir(dir).map_err(io("creating", dir))?;
        let git = dir.join(".git");
        self.write_git_dir(&git, false)?;
        for (path, (_, body)) in &self.files {
            let to = dir.join(path);
            let parent = to.parent().expect("a file has a parent");
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            write_atomic(&to, body, 0o644)?;
        }
        write_atomic(&git.join("index"), &self.index(), 0o644)
    }

    /// Writes the repository as a bare repository `dir` (which must not exist).
    pub fn write_bare(&self, dir: &Path) -> Result<(), FileError> {
        self.write_git_dir(dir, true)
    }

    fn write_git_dir(&self, git: &Path, bare: bool) -> Result<(), FileError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FileError { op, path, source }
        };
        for d in ["", "refs/heads", "refs/tags", "objects/info", "objects/pack"] {
            let d = git.join(d);
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).map_err(io("protecting", &d))?;
        }
        write_atomic(&git.join("HEAD"), format!("ref: refs/heads/{BRANCH}\n").as_bytes(), 0o644)?;
        let config = format!(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = {bare}\n{}",
            if bare { "" } else { "\tlogallrefupdates = true\n" }
        );
        write_atomic(&git.join("config"), config.as_bytes(), 0o644)?;
        write_atomic(&git.join("refs/heads").join(BRANCH), format!("{}\n", self.head.hex()).as_bytes(), 0o644)?;
        for o in &self.objects {
            let hex = o.oid.hex();
            let d = git.join("objects").join(&hex[..2]);
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
            let mut loose = format!("{} {}\0", o.kind.name(), o.body.len()).into_bytes();
            loose.extend_from_slice(&o.body);
            write_atomic(&d.join(&hex[2..]), &zlib(&loose), 0o444)?;
        }
        Ok(())
    }

    /// The index (version 2) of the checkout. Stat fields are zero: Git finds
    /// them stale on its first look, hashes the files, and sees them clean.
    fn index(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"DIRC");
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(&u32::try_from(self.files.len()).expect("fewer than 2^32 files").to_be_bytes());
        // `files` is a BTreeMap of paths: byte order, as the index wants.
        for (path, (oid, body)) in &self.files {
            let start = out.len();
            out.extend_from_slice(&[0u8; 24]); // ctime, mtime, dev, ino
            out.extend_from_slice(&0o100644u32.to_be_bytes());
            out.extend_from_slice(&[0u8; 8]); // uid, gid
            out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&oid.0);
            out.extend_from_slice(&u16::try_from(path.len().min(0xfff)).expect("at most 0xfff").to_be_bytes());
            out.extend_from_slice(path.as_bytes());
            // One to eight NULs, to a multiple of eight.
            let len = out.len() - start;
            out.resize(start + (len + 8) / 8 * 8, 0);
        }
        let sum: [u8; 20] = Sha1::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_blob_has_gits_id() {
        // `git hash-object -t blob /dev/null`.
        assert_eq!(oid_of(Kind::Blob, b"").hex(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        // `printf 'hello\n' | git hash-object --stdin`.
        assert_eq!(oid_of(Kind::Blob, b"hello\n").hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }

    #[test]
    fn the_same_files_give_the_same_commit() {
        let files = BTreeMap::from([("a/b".to_owned(), b"1\n".to_vec()), ("a.txt".to_owned(), b"2\n".to_vec())]);
        let one = Repository::commit(&files, "m");
        let two = Repository::commit(&files, "m");
        assert_eq!(one.head, two.head);
        assert_eq!(one.bundle(), two.bundle());
        assert_ne!(one.head, Repository::commit(&files, "other").head);
    }
}
