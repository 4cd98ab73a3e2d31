//! Manifests: what an entry holds (every output with its sha256 and size, the
//! entries it refers to, free-form facts), serialised canonically, and the
//! checks of an entry against its manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Result, StorePath};
use crate::digest::{self, Sha256};
use crate::files::FileError;

/// Version of the manifest layout; part of every derived key.
pub const MANIFEST_FORMAT: u32 = 1;
/// File name of an entry's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

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
