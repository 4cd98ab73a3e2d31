//! Entry names: the key an entry's hash part derives from, `<hash>-<name>`, and
//! Nix's rule for the name part.

use std::fmt;
use std::path::Path;

use super::{MANIFEST_FORMAT, Result, StoreError};
use crate::digest::{self, Sha256};

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
    pub(super) hash: String,
    pub(super) name: String,
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

#[cfg(test)]
mod tests {
    use super::*;

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
