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
//!   want the same entry, so an input is downloaded or built once.
//! - The hash part is derived from the entry's key (see [`EntryKey`]): fixed-output
//!   entries from the pinned sha256 alone (the same bytes from any URL are the same
//!   entry), derived entries from a canonical hash of everything that went in.
//! - Roots live in `STORE/.roots`; `gc` keeps their closure (via each manifest's
//!   `references`) and removes the rest.

mod bundle;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{self, Sha256};
use crate::files::{self, FileError, remove_tree, sync_dir};

pub use bundle::{BundleError, ImportSummary};

/// Version of the manifest layout; part of every derived key.
pub const MANIFEST_FORMAT: u32 = 1;
/// File name of an entry's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

const TMP_DIR: &str = ".tmp";
const LOCK_DIR: &str = ".locks";
const PARTIAL_DIR: &str = ".partial";
const ROOTS_DIR: &str = ".roots";
/// Mode of a root file.
const ROOT_MODE: u32 = 0o644;

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

/// What an entry's hash part is derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKey {
    /// A download pinned by the sha256 of its bytes.
    Fixed(Sha256),
    /// An OCI image pinned by the digest of its manifest or index, for a platform.
    Oci {
        /// The pinned digest.
        digest: Sha256,
        /// `os/arch`.
        platform: String,
    },
    /// Anything built: the sha256 of a canonical description of all inputs.
    Derived(Sha256),
}

impl EntryKey {
    /// The key as the text that is hashed.
    pub fn canonical(&self) -> String {
        match self {
            EntryKey::Fixed(d) => format!("fixed:sha256:{d}"),
            EntryKey::Oci { digest, platform } => format!("oci:sha256:{digest}:{platform}"),
            EntryKey::Derived(d) => format!("derived:v{MANIFEST_FORMAT}:sha256:{d}"),
        }
    }
    /// The 32-character hash part of the entry's path.
    pub fn hash_part(&self) -> String {
        digest::store_hash_part(&self.canonical())
    }
}

/// The name of an entry: `<hash>-<name>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StorePath {
    hash: String,
    name: String,
}

impl StorePath {
    /// Parses `<hash>-<name>`, or a path whose last component is that.
    pub fn parse(text: &str) -> Result<Self> {
        let base = Path::new(text.trim_end_matches('/'))
            .file_name()
            .and_then(|s| s.to_str())
            .ok_or_else(|| StoreError::BadEntryName(text.to_owned()))?;
        let (hash, name) = base.split_once('-').ok_or_else(|| StoreError::BadEntryName(text.to_owned()))?;
        let hash_ok = hash.len() == 32 && hash.bytes().all(|b| b"0123456789abcdfghijklmnpqrsvwxyz".contains(&b));
        if !hash_ok || check_name(name).is_err() {
            return Err(StoreError::BadEntryName(text.to_owned()));
        }
        Ok(StorePath { hash: hash.to_owned(), name: name.to_owned() })
    }
    /// The hash part.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    /// The human part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

/// Checks that a name may be used in a store path (Nix's rule).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    if ok { Ok(()) } else { Err(StoreError::BadName(name.to_owned())) }
}

/// Turns arbitrary text (a URL's last segment, an image reference) into a valid name.
pub fn sanitize_name(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "+-._?=".contains(c) { c } else { '_' }).collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    out.truncate(200);
    if out.is_empty() { "unnamed".to_owned() } else { out }
}

/// One output file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Digest of the file.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Whether the file is executable (mode 0555 instead of 0444).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// The `manifest.json` of an entry. Serialised with sorted maps, so its bytes are a
/// function of its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The key text the hash part comes from (see [`EntryKey::canonical`]).
    pub key: String,
    /// The entry's name part.
    pub name: String,
    /// Every output file, by path relative to the entry.
    pub outputs: BTreeMap<String, OutputRecord>,
    /// Entries this one refers to (its closure is these plus theirs).
    #[serde(default)]
    pub references: BTreeSet<String>,
    /// Free-form, deterministic facts about the entry (e.g. the image reference).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
}

impl Manifest {
    /// Canonical bytes (pretty JSON, sorted keys, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

/// What a build step hands back to [`Store::ensure`].
#[derive(Default, Debug)]
pub struct Outputs {
    /// Files written into the temporary directory, with their digests.
    pub files: BTreeMap<String, OutputRecord>,
    /// Entries referred to.
    pub references: BTreeSet<String>,
    /// Extra manifest facts.
    pub info: BTreeMap<String, String>,
}

/// The answer of [`Store::claim`].
pub enum Claim {
    /// The entry exists.
    Present(StorePath),
    /// The entry is ours to make.
    Vacant(Pending),
}

/// An entry being made: holds its lock and its temporary directory.
pub struct Pending {
    store: Store,
    key: EntryKey,
    path: StorePath,
    tmp: PathBuf,
    _lock: EntryLock,
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

/// An exclusive lock on one hash part, released on drop.
pub struct EntryLock {
    _file: File,
}

/// What [`Store::gc`] removed (or would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Entries no root keeps.
    pub entries: Vec<StorePath>,
    /// Partial downloads and temporary directories nobody owns.
    pub debris: Vec<PathBuf>,
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

    /// The lock file of a hash part (created if missing; never deleted, so that
    /// two processes always lock the same inode).
    fn lock_file(&self, hash: &str) -> Result<(File, PathBuf)> {
        let path = self.root.join(LOCK_DIR).join(format!("{hash}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FileError::at("opening lock", &path))?;
        Ok((file, path))
    }

    /// Takes the lock for a hash part, blocking; `on_wait` is called once if another
    /// process holds it.
    pub fn lock(&self, hash: &str, on_wait: impl FnOnce()) -> Result<EntryLock> {
        let (file, path) = self.lock_file(hash)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(FileError::at("waiting for lock", &path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(FileError::at("taking lock", &path)(e).into()),
        }
        Ok(EntryLock { _file: file })
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
        let lock = self.lock(&hash, on_wait)?;
        if let Some(p) = self.lookup(key)? {
            return Ok(Claim::Present(p));
        }
        let tmp = self.fresh_tmp(&hash, name)?;
        Ok(Claim::Vacant(Pending {
            store: self.clone(),
            key: key.clone(),
            path: StorePath { hash, name: name.to_owned() },
            tmp,
            _lock: lock,
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

    /// Records a root named `name` that keeps `paths` (and their closures) alive.
    pub fn add_root(&self, name: &str, paths: &[StorePath]) -> Result<()> {
        check_name(name)?;
        let file = self.root.join(ROOTS_DIR).join(name);
        let mut lines: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        lines.sort();
        lines.dedup();
        let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        files::write_atomic(&file, body.as_bytes(), ROOT_MODE)?;
        Ok(())
    }

    /// Removes the root named `name`, if there is one.
    pub fn remove_root(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let file = self.root.join(ROOTS_DIR).join(name);
        Ok(files::remove_if_present(&file)?)
    }

    /// All roots with the entries they name.
    pub fn roots(&self) -> Result<BTreeMap<String, Vec<StorePath>>> {
        let dir = self.root.join(ROOTS_DIR);
        let mut out = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(FileError::at("reading", &dir))? {
            let item = item.map_err(FileError::at("reading", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let body = fs::read_to_string(item.path()).map_err(FileError::at("reading root", &item.path()))?;
            let paths = body.lines().filter(|l| !l.is_empty()).filter_map(|l| StorePath::parse(l).ok());
            out.insert(name, paths.collect());
        }
        Ok(out)
    }

    /// Removes every entry not in the closure of a root, and debris no running
    /// process owns (interrupted downloads, temporary directories of crashed
    /// builds). With `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let rooted: Vec<StorePath> =
            self.roots()?.into_values().flatten().filter(|p| self.entry_dir(p).exists()).collect();
        let live = self.closure(&rooted)?;
        let mut report = GcReport::default();
        for p in self.list()? {
            if live.contains(&p) {
                continue;
            }
            if !dry_run {
                let _lock = self.lock(p.hash(), || {})?;
                remove_tree(&self.entry_dir(&p))?;
            }
            report.entries.push(p);
        }
        for sub in [PARTIAL_DIR, TMP_DIR] {
            let dir = self.root.join(sub);
            for item in fs::read_dir(&dir).map_err(FileError::at("reading", &dir))? {
                let item = item.map_err(FileError::at("reading", &dir))?;
                let name = item.file_name().to_string_lossy().into_owned();
                if let Some(_guard) = self.debris_guard(&name)? {
                    if !dry_run {
                        remove_tree(&item.path())?;
                    }
                    report.debris.push(item.path());
                }
            }
        }
        report.debris.sort();
        Ok(report)
    }

    /// For a name under `.partial` or `.tmp`: `Some` (holding its owner's lock when
    /// it has one) when no live process can be using it.
    fn debris_guard(&self, name: &str) -> Result<Option<Option<EntryLock>>> {
        // `<hash>-...`: owned by the holder of that hash part's lock.
        if let Some((hash, _)) = name.split_once('-')
            && hash.len() == 32
        {
            let (file, _) = self.lock_file(hash)?;
            return match file.try_lock() {
                Ok(()) => Ok(Some(Some(EntryLock { _file: file }))),
                Err(_) => Ok(None),
            };
        }
        // `import.<pid>`, `lock.<pid>.<n>`: owned by a process, if it still runs.
        let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Ok(None),
            _ => Ok(Some(None)),
        }
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

/// Checks that a manifest belongs to the entry named `path`: the hash part must
/// derive from the key, the names agree, and a fixed entry's single output carries
/// the key's digest. Reads no file.
pub(crate) fn check_identity(manifest: &Manifest, path: &StorePath) -> Vec<String> {
    let mut problems = Vec::new();
    if digest::store_hash_part(&manifest.key) != path.hash {
        problems.push(format!("hash part does not derive from the manifest key `{}`", manifest.key));
    }
    if manifest.name != path.name {
        problems.push(format!("manifest names `{}`", manifest.name));
    }
    if let Some(pinned) = manifest.key.strip_prefix("fixed:sha256:") {
        let ok = manifest.outputs.len() == 1 && manifest.outputs.values().all(|o| o.sha256.hex() == pinned);
        if !ok {
            problems.push(format!("manifest outputs do not carry the pinned sha256 {pinned}"));
        }
    }
    problems
}

/// [`check_identity`], then every file under `dir` against the manifest (missing,
/// corrupt, or not listed).
pub(crate) fn verify_tree(dir: &Path, manifest: &Manifest, path: &StorePath) -> Result<Vec<String>> {
    let mut problems = check_identity(manifest, path);
    let mut found = BTreeSet::new();
    walk_files(dir, dir, &mut found)?;
    found.remove(MANIFEST_FILE);
    for (rel, rec) in &manifest.outputs {
        let file = dir.join(rel);
        if !found.remove(rel) {
            problems.push(format!("`{rel}` is missing"));
            continue;
        }
        let f = File::open(&file).map_err(FileError::at("opening", &file))?;
        let (actual, size) = Sha256::of_reader(f).map_err(FileError::at("reading", &file))?;
        if actual != rec.sha256 || size != rec.size {
            problems.push(format!(
                "`{rel}` is corrupt: expected sha256 {} ({} bytes), found {actual} ({size} bytes)",
                rec.sha256, rec.size
            ));
        }
    }
    for extra in found {
        problems.push(format!("`{extra}` is not in the manifest"));
    }
    Ok(problems)
}

fn walk_files(base: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
        let item = item.map_err(FileError::at("reading", dir))?;
        let ft = item.file_type().map_err(FileError::at("reading", &item.path()))?;
        if ft.is_dir() {
            walk_files(base, &item.path(), out)?;
        } else {
            let rel = item.path().strip_prefix(base).expect("under base").to_string_lossy().into_owned();
            out.insert(rel);
        }
    }
    Ok(())
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

/// Records a finished regular file in `outputs`.
pub fn record_file(path: &Path, sha256: Sha256, size: u64, executable: bool) -> (String, OutputRecord) {
    let rel = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    (rel, OutputRecord { sha256, size, executable })
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
        let _held = store.lock(&busy_hash, || {}).unwrap();
        let dry = store.gc(true).unwrap();
        assert_eq!((dry.entries, dry.debris), (vec![a.clone()], vec![idle.clone()]));
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.gc(false).unwrap().entries, vec![a]);
        assert_eq!(store.list().unwrap(), vec![b]);
        assert!(!idle.exists() && busy.exists());
    }

    #[test]
    fn store_path_parsing() {
        let key = EntryKey::Fixed(Sha256::of(b""));
        let text = format!("{}-foo.img", key.hash_part());
        let p = StorePath::parse(&format!("/some/store/{text}/")).unwrap();
        assert_eq!(p.to_string(), text);
        assert!(StorePath::parse("nohash").is_err());
        assert!(StorePath::parse(&format!("{}-", key.hash_part())).is_err());
        assert!(check_name("../x").is_err());
        assert_eq!(sanitize_name("registry.k8s.io/pause:3.9"), "registry.k8s.io_pause_3.9");
    }
}
