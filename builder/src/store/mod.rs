//! The content-addressed store, Nix-style.
//!
//! An entry is a directory `STORE/<hash>-<name>` holding its outputs and a
//! `manifest.json` that records every output's sha256. Invariants:
//!
//! - An entry appears only by `rename(2)` of a fully written, read-only temporary
//!   sibling under `STORE/.tmp`; a crash leaves at most debris under `.tmp` (swept
//!   the next time that entry is made) or a resumable download under `.partial`,
//!   never a half entry.
//! - One lock file per hash part under `STORE/.locks` serialises the processes that
//!   want the same entry (its holder has the [`EntryGuard`]), so an input is
//!   downloaded or built once.
//! - The hash part is derived from the entry's key (see [`EntryKey`]): fixed-output
//!   entries from the pinned sha256 alone (the same bytes from any URL are the same
//!   entry), derived entries from a canonical hash of everything that went in.
//! - Roots live in `STORE/.roots`; `gc` keeps their closure (via each manifest's
//!   `references`) and removes the rest.
//!
//! Here: the store, claiming and committing entries, sealing, verifying. Entry
//! names are in `path`, manifests and their checks in `manifest`, roots and
//! collection in `gc`, bundles in `bundle`.

mod bundle;
mod gc;
mod manifest;
mod path;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Sha256;
use crate::files::{self, FileError, remove_tree, sync_dir};

pub use bundle::{BundleError, ImportSummary};
pub use gc::GcReport;
pub use manifest::{MANIFEST_FILE, MANIFEST_FORMAT, Manifest, OutputRecord, Outputs};
use manifest::{check_identity, verify_tree};
pub use path::{EntryKey, StorePath, check_name, sanitize_name};

const TMP_DIR: &str = ".tmp";
const LOCK_DIR: &str = ".locks";
const PARTIAL_DIR: &str = ".partial";
const ROOTS_DIR: &str = ".roots";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// An argument that is not a store entry.
    #[error("`{0}` is not a store entry name (expected `<32-char hash>-<name>`)")]
    BadEntryName(String),
    /// The entry does not exist.
    #[error("no store entry `{0}`")]
    Missing(String),
    /// A manifest that cannot be parsed.
    #[error("manifest of `{entry}` is unreadable")]
    BadManifest {
        /// The entry.
        entry: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A name that cannot be part of a store path.
    #[error("`{0}` cannot be used as a store name (letters, digits, `+-._?=` only, not starting with `.`)")]
    BadName(String),
    /// Content that does not match its recorded hash.
    #[error("content of `{}` does not match: expected sha256 {expected}, found {actual}", path.display())]
    HashMismatch {
        /// File that was checked.
        path: PathBuf,
        /// Pinned or recorded digest.
        expected: Sha256,
        /// Digest of the bytes found.
        actual: Sha256,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The answer of [`Store::claim`].
pub enum Claim {
    /// The entry exists.
    Present(StorePath),
    /// The entry is ours to make.
    Vacant(Pending),
}

/// An entry being made: holds its guard and its temporary directory.
pub struct Pending {
    store: Store,
    key: EntryKey,
    path: StorePath,
    tmp: PathBuf,
    _guard: EntryGuard,
    committed: bool,
}

impl Pending {
    /// The temporary directory to write outputs into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }
    /// The path the entry will have.
    pub fn path(&self) -> &StorePath {
        &self.path
    }
    /// Writes the manifest, seals the tree and moves it into place.
    pub fn commit(mut self, outputs: Outputs) -> Result<StorePath> {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            key: self.key.canonical(),
            name: self.path.name.clone(),
            outputs: outputs.files,
            references: outputs.references,
            info: outputs.info,
        };
        self.store.commit(&self.tmp, &self.path, &manifest)?;
        self.committed = true;
        Ok(self.path.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_tree(&self.tmp);
        }
    }
}

/// The exclusive right to make or remove the entry of one hash part: a lock on
/// its file under `STORE/.locks`, released on drop.
pub struct EntryGuard {
    _file: File,
}

/// A problem found by [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry.
    pub entry: String,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.entry, self.what)
    }
}

/// A store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in [TMP_DIR, LOCK_DIR, PARTIAL_DIR, ROOTS_DIR] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(FileError::at("creating store directory", &p))?;
        }
        let root = root.canonicalize().map_err(FileError::at("resolving store directory", &root))?;
        Ok(Store { root })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of an entry.
    pub fn entry_dir(&self, path: &StorePath) -> PathBuf {
        self.root.join(path.to_string())
    }

    /// Where an interrupted download of `sha256` for the entry with hash part
    /// `owner` is kept for resuming. Only the holder of `owner`'s lock touches it.
    pub fn partial_file(&self, owner: &str, sha256: &Sha256) -> PathBuf {
        self.root.join(PARTIAL_DIR).join(format!("{owner}-{sha256}"))
    }

    /// Adds a local file as the fixed-output entry for `expected`, hashing while
    /// copying; a mismatch leaves the store unchanged.
    pub fn add_file(&self, file: &Path, expected: Sha256, name: &str) -> Result<(StorePath, bool)> {
        self.ensure(
            &EntryKey::Fixed(expected),
            name,
            || {},
            |dir| {
                let dest = dir.join(name);
                let (actual, size) = files::copy_hashing(file, &dest)?;
                if actual != expected {
                    return Err(StoreError::HashMismatch { path: file.to_owned(), expected, actual });
                }
                let mut out = Outputs::default();
                out.files.insert(name.to_owned(), OutputRecord { sha256: actual, size, executable: false });
                Ok(out)
            },
        )
    }

    /// Every entry, sorted.
    pub fn list(&self) -> Result<Vec<StorePath>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.root).map_err(FileError::at("reading store", &self.root))? {
            let item = item.map_err(FileError::at("reading store", &self.root))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            if let Ok(p) = StorePath::parse(name) {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The entry with this key, if present (whatever its name).
    pub fn lookup(&self, key: &EntryKey) -> Result<Option<StorePath>> {
        let hash = key.hash_part();
        Ok(self.list()?.into_iter().find(|p| p.hash == hash))
    }

    /// Reads an entry's manifest.
    pub fn manifest(&self, path: &StorePath) -> Result<Manifest> {
        let file = self.entry_dir(path).join(MANIFEST_FILE);
        let bytes = fs::read(&file).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound && !self.entry_dir(path).exists() {
                StoreError::Missing(path.to_string())
            } else {
                FileError::at("reading manifest", &file)(e).into()
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadManifest { entry: path.to_string(), source })
    }

    /// Whether an entry with this exact name exists.
    pub fn contains(&self, name: &str) -> bool {
        StorePath::parse(name).is_ok_and(|p| self.entry_dir(&p).join(MANIFEST_FILE).exists())
    }

    /// Resolves a user's argument (entry name, path in the store, or hash part).
    pub fn resolve(&self, text: &str) -> Result<StorePath> {
        let candidate = text.trim_end_matches('/');
        let base = Path::new(candidate).file_name().and_then(|s| s.to_str()).unwrap_or(candidate);
        let found = self.list()?.into_iter().find(|p| p.to_string() == base || p.hash == base);
        found.ok_or_else(|| StoreError::Missing(text.to_owned()))
    }

    /// The lock file behind a hash part's guard (created if missing; never
    /// deleted, so that two processes always lock the same inode).
    fn guard_file(&self, hash: &str) -> Result<(File, PathBuf)> {
        let path = self.root.join(LOCK_DIR).join(format!("{hash}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FileError::at("opening lock", &path))?;
        Ok((file, path))
    }

    /// Takes the guard of a hash part, blocking; `on_wait` is called once if
    /// another process holds it.
    pub fn guard(&self, hash: &str, on_wait: impl FnOnce()) -> Result<EntryGuard> {
        let (file, path) = self.guard_file(hash)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(FileError::at("waiting for lock", &path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(FileError::at("taking lock", &path)(e).into()),
        }
        Ok(EntryGuard { _file: file })
    }

    /// The guard of a hash part if nobody holds it, without waiting.
    pub fn try_guard(&self, hash: &str) -> Result<Option<EntryGuard>> {
        let (file, path) = self.guard_file(hash)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EntryGuard { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(FileError::at("taking lock", &path)(e).into()),
        }
    }

    /// Returns the entry for `key`, creating it with `build` if it does not exist.
    ///
    /// `build` gets an empty temporary directory and writes the outputs into it; it
    /// returns their records. Only when it succeeds does the directory become the
    /// entry (read-only, renamed atomically). The boolean is true when the entry was
    /// created by this call.
    pub fn ensure<E: From<StoreError>>(
        &self,
        key: &EntryKey,
        name: &str,
        on_wait: impl FnOnce(),
        build: impl FnOnce(&Path) -> Result<Outputs, E>,
    ) -> Result<(StorePath, bool), E> {
        match self.claim(key, name, on_wait)? {
            Claim::Present(p) => Ok((p, false)),
            Claim::Vacant(pending) => {
                let outputs = build(pending.dir())?;
                Ok((pending.commit(outputs)?, true))
            }
        }
    }

    /// Looks for the entry of `key`; when absent, takes its lock (waiting for another
    /// process that holds it, then looking again) and hands out an empty temporary
    /// directory to fill. Dropping the [`Pending`] without committing removes it.
    pub fn claim(&self, key: &EntryKey, name: &str, on_wait: impl FnOnce()) -> Result<Claim> {
        check_name(name)?;
        if let Some(p) = self.lookup(key)? {
            return Ok(Claim::Present(p));
        }
        let hash = key.hash_part();
        let guard = self.guard(&hash, on_wait)?;
        if let Some(p) = self.lookup(key)? {
            return Ok(Claim::Present(p));
        }
        let tmp = self.fresh_tmp(&hash, name)?;
        Ok(Claim::Vacant(Pending {
            store: self.clone(),
            key: key.clone(),
            path: StorePath { hash, name: name.to_owned() },
            tmp,
            _guard: guard,
            committed: false,
        }))
    }

    /// A new, empty temporary directory for building `hash`; debris of an earlier
    /// crashed attempt at the same hash is removed first (the caller holds its lock).
    fn fresh_tmp(&self, hash: &str, name: &str) -> Result<PathBuf> {
        let tmp_root = self.root.join(TMP_DIR);
        for item in fs::read_dir(&tmp_root).map_err(FileError::at("reading", &tmp_root))? {
            let item = item.map_err(FileError::at("reading", &tmp_root))?;
            if item.file_name().to_string_lossy().starts_with(&format!("{hash}-")) {
                remove_tree(&item.path())?;
            }
        }
        let tmp = tmp_root.join(format!("{hash}-{name}.{}", std::process::id()));
        fs::create_dir(&tmp).map_err(FileError::at("creating", &tmp))?;
        Ok(tmp)
    }

    /// Writes the manifest, seals the tree read-only and renames it into place.
    fn commit(&self, tmp: &Path, path: &StorePath, manifest: &Manifest) -> Result<()> {
        let mpath = tmp.join(MANIFEST_FILE);
        let mut f = File::create(&mpath).map_err(FileError::at("writing", &mpath))?;
        f.write_all(&manifest.to_bytes()).map_err(FileError::at("writing", &mpath))?;
        drop(f);
        seal(tmp, manifest)?;
        let dest = self.entry_dir(path);
        fs::rename(tmp, &dest).map_err(FileError::at("moving entry into place", &dest))?;
        finish_seal(&dest)?;
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Checks entries against their manifests; returns every problem found.
    pub fn verify(&self, paths: &[StorePath]) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for p in paths {
            problems.extend(self.verify_entry(p)?);
        }
        Ok(problems)
    }

    fn verify_entry(&self, path: &StorePath) -> Result<Vec<Problem>> {
        let dir = self.entry_dir(path);
        let problem = |what: String| Problem { entry: path.to_string(), what };
        let manifest = match self.manifest(path) {
            Ok(m) => m,
            Err(e @ StoreError::Missing(_)) => return Err(e),
            Err(e) => return Ok(vec![problem(crate::report::error_chain(&e))]),
        };
        verify_tree(&dir, &manifest, path).map(|v| v.into_iter().map(problem).collect())
    }

    /// Every entry reachable from `paths` through references, sorted.
    pub fn closure(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<StorePath> = paths.to_vec();
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            for r in self.manifest(&p)?.references {
                todo.push(StorePath::parse(&r)?);
            }
        }
        Ok(seen)
    }

    /// Writes `paths` and their closure to a bundle (see [`bundle`]).
    pub fn export(&self, paths: &[StorePath], out: impl Write) -> Result<Vec<StorePath>, BundleError> {
        bundle::export(self, paths, out)
    }

    /// Reads a bundle, verifies every entry, then moves them in.
    pub fn import(&self, input: impl io::Read) -> Result<ImportSummary, BundleError> {
        bundle::import(self, input)
    }
}

/// Makes a finished tree read-only: files 0444 (0555 if executable), dirs 0555,
/// and flushes every file to disk. The top directory itself stays writable: a
/// directory is renamed into place only if its owner may write it (its `..`
/// changes), so [`finish_seal`] closes it after the rename.
fn seal(dir: &Path, manifest: &Manifest) -> Result<()> {
    fn walk(base: &Path, dir: &Path, manifest: &Manifest, top: bool) -> Result<()> {
        for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
            let item = item.map_err(FileError::at("reading", dir))?;
            let p = item.path();
            let ft = item.file_type().map_err(FileError::at("reading", &p))?;
            if ft.is_dir() {
                walk(base, &p, manifest, false)?;
                continue;
            }
            let rel = p.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
            let exec = manifest.outputs.get(&rel).is_some_and(|o| o.executable);
            let f = File::open(&p).map_err(FileError::at("opening", &p))?;
            f.sync_all().map_err(FileError::at("syncing", &p))?;
            let mode = if exec { 0o555 } else { 0o444 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(FileError::at("sealing", &p))?;
        }
        sync_dir(dir)?;
        if top {
            return Ok(());
        }
        Ok(fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(FileError::at("sealing", dir))?)
    }
    walk(dir, dir, manifest, true)
}

/// Closes an entry's top directory once it is in place (see [`seal`]).
fn finish_seal(dir: &Path) -> Result<()> {
    Ok(fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(FileError::at("sealing", dir))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, key: &EntryKey, name: &str, body: &[u8]) -> (StorePath, bool) {
        store
            .ensure::<StoreError>(
                key,
                name,
                || {},
                |dir| {
                    fs::write(dir.join(name), body).unwrap();
                    let mut o = Outputs::default();
                    o.files.insert(
                        name.to_owned(),
                        OutputRecord { sha256: Sha256::of(body), size: body.len() as u64, executable: false },
                    );
                    Ok(o)
                },
            )
            .unwrap()
    }

    #[test]
    fn fixed_entries_are_keyed_by_content_only() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let key = EntryKey::Fixed(Sha256::of(b"hello"));
        let (a, created) = put(&store, &key, "a.txt", b"hello");
        assert!(created);
        let (b, created) = put(&store, &key, "b.txt", b"hello");
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(store.list().unwrap(), vec![a.clone()]);
        assert!(store.verify(std::slice::from_ref(&a)).unwrap().is_empty());
        let meta = fs::metadata(store.entry_dir(&a).join("a.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    }

    #[test]
    fn failed_build_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let key = EntryKey::Derived(Sha256::of(b"x"));
        let r = store.ensure::<StoreError>(
            &key,
            "x",
            || {},
            |dir| {
                fs::write(dir.join("half"), b"half").unwrap();
                Err(StoreError::Missing("boom".into()))
            },
        );
        assert!(r.is_err());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(tmp.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn verify_names_corruption_and_gc_keeps_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (a, _) = put(&store, &EntryKey::Fixed(Sha256::of(b"aaaa")), "a", b"aaaa");
        let (b, _) = put(&store, &EntryKey::Fixed(Sha256::of(b"bbbb")), "b", b"bbbb");
        let file = store.entry_dir(&a).join("a");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&file, b"aaab").unwrap();
        let problems = store.verify(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].entry, a.to_string());
        assert!(problems[0].what.contains("`a` is corrupt"), "{}", problems[0].what);

        store.add_root("keep-b", std::slice::from_ref(&b)).unwrap();
        // Debris: a partial download whose owner is idle, and one whose owner is busy.
        let idle = store.partial_file(&"0".repeat(32), &Sha256::of(b"x"));
        let busy_hash = "1".repeat(32);
        let busy = store.partial_file(&busy_hash, &Sha256::of(b"y"));
        fs::write(&idle, b"x").unwrap();
        fs::write(&busy, b"y").unwrap();
        let _held = store.guard(&busy_hash, || {}).unwrap();
        let dry = store.gc(true).unwrap();
        assert_eq!((dry.entries, dry.debris), (vec![a.clone()], vec![idle.clone()]));
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.gc(false).unwrap().entries, vec![a]);
        assert_eq!(store.list().unwrap(), vec![b]);
        assert!(!idle.exists() && busy.exists());
    }
}
