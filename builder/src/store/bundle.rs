//! Store bundles: one tar stream carrying entries and their closure, for moving a
//! store's content to an air-gapped host.
//!
//! Layout: a first member `hearth-bundle` (text `hearth bundle 1` and the sorted
//! entry names), then for each entry, in sorted order, `<entry>/manifest.json` and
//! its outputs sorted by path. Headers are deterministic (uid/gid 0, mtime 0,
//! mode 0444 or 0555), so the same entries give the same bundle bytes.
//!
//! Import extracts into a private directory under `STORE/.tmp`, hashing every file
//! as it is written, checks each entry against its manifest and its name, and only
//! when all of them pass moves them into the store. Names are checked before use:
//! a member outside `<entry>/` or with `..` is rejected.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::{MANIFEST_FILE, Manifest, Store, StoreError, StorePath, TMP_DIR, check_identity};
use crate::digest::{Hasher, Sha256};
use crate::files::{FileError, PathReader, remove_tree, sync_dir};

const MARKER: &str = "hearth-bundle";
const MARKER_HEADER: &str = "hearth bundle 1\n";

/// Errors of export and import.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of an entry or of the staging directory.
    #[error(transparent)]
    File(#[from] FileError),
    /// The tar stream failed.
    #[error("{op} bundle")]
    Tar {
        /// Reading or writing.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stream is not a hearth bundle.
    #[error("not a hearth bundle: {0}")]
    NotABundle(String),
    /// A member whose name is unsafe or outside the layout.
    #[error("bundle member `{0}` is not inside an entry (rejected)")]
    BadMember(String),
    /// Entries that do not match their manifests; nothing was imported.
    #[error("bundle failed verification, nothing was imported:\n  {}", .0.join("\n  "))]
    Verification(Vec<String>),
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    /// Entries moved into the store.
    pub added: Vec<StorePath>,
    /// Entries already present (left alone).
    pub present: Vec<StorePath>,
}

/// A failure of the tar stream, unless it carries a [`FileError`] (an entry's
/// file that could not be read while it was copied in).
fn tar_err(op: &'static str) -> impl FnOnce(io::Error) -> BundleError {
    move |e| match e.downcast::<FileError>() {
        Ok(file) => BundleError::File(file),
        Err(source) => BundleError::Tar { op, source },
    }
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_path(path)?;
    h.set_cksum();
    Ok(h)
}

pub(super) fn export(store: &Store, paths: &[StorePath], out: impl Write) -> Result<Vec<StorePath>, BundleError> {
    let closure: Vec<StorePath> = store.closure(paths)?.into_iter().collect();
    let mut tar = tar::Builder::new(out);
    let mut index = String::from(MARKER_HEADER);
    for p in &closure {
        index.push_str(&format!("{p}\n"));
    }
    let h = header(MARKER, index.len() as u64, 0o444, tar::EntryType::Regular).map_err(tar_err("writing"))?;
    tar.append(&h, index.as_bytes()).map_err(tar_err("writing"))?;
    for p in &closure {
        let manifest = store.manifest(p)?;
        let dir = store.entry_dir(p);
        let mut files: Vec<(String, bool)> = vec![(MANIFEST_FILE.to_owned(), false)];
        files.extend(manifest.outputs.iter().map(|(k, v)| (k.clone(), v.executable)));
        for (rel, exec) in files {
            let src = dir.join(&rel);
            let f = PathReader::open(&src)?;
            let size = f.size()?;
            let mode = if exec { 0o555 } else { 0o444 };
            let mut h =
                header(&format!("{p}/{rel}"), size, mode, tar::EntryType::Regular).map_err(tar_err("writing"))?;
            // Long names go through GNU long-name records, which `append_data` writes.
            tar.append_data(&mut h, format!("{p}/{rel}"), f).map_err(tar_err("writing"))?;
        }
    }
    tar.into_inner().map_err(tar_err("writing"))?.flush().map_err(tar_err("writing"))?;
    Ok(closure)
}

/// A member name split into its entry and the path inside it, if safe.
fn split_member(name: &Path) -> Option<(StorePath, String)> {
    let mut comps = name.components();
    let entry = match comps.next()? {
        Component::Normal(s) => StorePath::parse(s.to_str()?).ok()?,
        _ => return None,
    };
    let mut rel = Vec::new();
    for c in comps {
        match c {
            Component::Normal(s) => rel.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if rel.is_empty() {
        return None;
    }
    Some((entry, rel.join("/")))
}

struct Staged {
    dir: PathBuf,
}
impl Drop for Staged {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
    }
}

pub(super) fn import(store: &Store, input: impl Read) -> Result<ImportSummary, BundleError> {
    let staging = Staged { dir: store.root.join(TMP_DIR).join(format!("import.{}", std::process::id())) };
    remove_tree(&staging.dir)?;
    fs::create_dir_all(&staging.dir).map_err(FileError::at("creating", &staging.dir))?;

    let mut archive = tar::Archive::new(input);
    let mut listed: Option<Vec<StorePath>> = None;
    let mut seen: BTreeMap<StorePath, BTreeMap<String, (Sha256, u64)>> = BTreeMap::new();
    for member in archive.entries().map_err(tar_err("reading"))? {
        let mut member = member.map_err(tar_err("reading"))?;
        let name = member.path().map_err(tar_err("reading"))?.into_owned();
        if listed.is_none() {
            if name != Path::new(MARKER) {
                return Err(BundleError::NotABundle(format!("first member is `{}`", name.display())));
            }
            let mut text = String::new();
            member.read_to_string(&mut text).map_err(tar_err("reading"))?;
            let body = text
                .strip_prefix(MARKER_HEADER)
                .ok_or_else(|| BundleError::NotABundle("unknown bundle version".into()))?;
            let entries = body.lines().map(StorePath::parse).collect::<Result<Vec<_>, _>>()?;
            listed = Some(entries);
            continue;
        }
        if member.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::BadMember(name.display().to_string()));
        }
        let (entry, rel) = split_member(&name).ok_or_else(|| BundleError::BadMember(name.display().to_string()))?;
        let dest = staging.dir.join(entry.to_string()).join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(FileError::at("creating", parent))?;
        }
        let mut out = File::create(&dest).map_err(FileError::at("writing", &dest))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; crate::digest::HASH_BUF_SIZE];
        loop {
            let n = member.read(&mut buf).map_err(tar_err("reading"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(FileError::at("writing", &dest))?;
        }
        let (d, size) = hasher.finish();
        seen.entry(entry).or_default().insert(rel, (d, size));
    }
    let listed = listed.ok_or_else(|| BundleError::NotABundle("empty stream".into()))?;

    // Verify every entry before anything lands.
    let mut problems = Vec::new();
    let mut manifests = Vec::new();
    for entry in &listed {
        let dir = staging.dir.join(entry.to_string());
        let Some(files) = seen.get(entry) else {
            problems.push(format!("{entry}: listed but absent"));
            continue;
        };
        let manifest: Manifest = match fs::read(dir.join(MANIFEST_FILE)) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{entry}: unreadable manifest: {e}"));
                    continue;
                }
            },
            Err(_) => {
                problems.push(format!("{entry}: no manifest"));
                continue;
            }
        };
        // Hashes were computed while extracting; compare them without a second read.
        for (rel, rec) in &manifest.outputs {
            match files.get(rel) {
                Some((d, size)) if *d == rec.sha256 && *size == rec.size => {}
                Some((d, size)) => problems.push(format!(
                    "{entry}: `{rel}` expected sha256 {} ({} bytes), found {d} ({size} bytes)",
                    rec.sha256, rec.size
                )),
                None => problems.push(format!("{entry}: `{rel}` is missing")),
            }
        }
        let consistency = verify_names(&manifest, entry, files);
        problems.extend(consistency.into_iter().map(|p| format!("{entry}: {p}")));
        for r in &manifest.references {
            if !listed.iter().any(|l| &l.to_string() == r) && !store.contains(r) {
                problems.push(format!("{entry}: refers to `{r}`, which is neither in the bundle nor in the store"));
            }
        }
        manifests.push((entry.clone(), manifest));
    }
    for entry in seen.keys() {
        if !listed.contains(entry) {
            problems.push(format!("{entry}: present but not listed"));
        }
    }
    if !problems.is_empty() {
        return Err(BundleError::Verification(problems));
    }

    let mut summary = ImportSummary::default();
    for (entry, manifest) in manifests {
        let _guard = store.guard(entry.hash(), || {})?;
        if store.entry_dir(&entry).exists() {
            summary.present.push(entry);
            continue;
        }
        let dir = staging.dir.join(entry.to_string());
        super::seal(&dir, &manifest)?;
        let dest = store.entry_dir(&entry);
        fs::rename(&dir, &dest).map_err(FileError::at("moving entry into place", &dest))?;
        super::finish_seal(&dest)?;
        summary.added.push(entry);
    }
    sync_dir(&store.root)?;
    Ok(summary)
}

/// Identity checks and stray files, using the digests taken during extraction.
fn verify_names(manifest: &Manifest, entry: &StorePath, files: &BTreeMap<String, (Sha256, u64)>) -> Vec<String> {
    let mut problems = check_identity(manifest, entry);
    for rel in files.keys() {
        if rel != MANIFEST_FILE && !manifest.outputs.contains_key(rel) {
            problems.push(format!("`{rel}` is not in the manifest"));
        }
    }
    problems
}
