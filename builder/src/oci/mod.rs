//! OCI images: references, pulls through the registry HTTP API, the image-layout
//! store entry, and the deterministic archive that `ctr images import` takes.
//!
//! A pull asks for the pinned digest (never a tag), checks the manifest bytes
//! against it, picks the platform from an index, and downloads the config and
//! layers through the fetcher (mirrors, retries, resume, digest check while
//! streaming). Anonymous bearer tokens are obtained the way public registries
//! expect: a 401 with `WWW-Authenticate: Bearer realm=..,service=..,scope=..` is
//! answered by a GET on the realm. The entry is an OCI image layout whose
//! `index.json` names the pinned index (or manifest) with the image's reference, so
//! that an import yields the image under its name with its repo digest. Only the
//! chosen platform's blobs are stored.
//!
//! Files: `reference` (parsing and normalising references), `registry` (one
//! registry session: manifests, bearer tokens, tag resolution), `pull` (the
//! image-layout entry), `archive` (the `ctr images import` tar).

mod archive;
mod pull;
mod reference;
mod registry;

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::fetch::FetchError;
use crate::files::FileError;
use crate::store;

pub use archive::write_archive;
pub use pull::{Pulled, pull};
pub use reference::Reference;
pub use registry::{parse_challenge, resolve};

/// Media types of an index (OCI) or manifest list (Docker).
pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
/// Media types of a single-platform manifest.
pub const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Annotation containerd reads for the image name on import.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference name.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors of OCI pulls.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A reference that cannot be parsed.
    #[error("`{0}` is not an image reference ({1})")]
    BadReference(String, &'static str),
    /// The manifest does not have the pinned digest.
    #[error(
        "manifest of `{reference}` from `{url}` does not match its pin\n  expected: {expected}\n  computed: {actual}"
    )]
    ManifestMismatch {
        /// The image.
        reference: String,
        /// Where it came from.
        url: String,
        /// Pinned digest.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// The registry answered with an error.
    #[error("registry answered HTTP {status} for `{url}`")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The registry wants credentials hearth does not have.
    #[error("`{url}` requires authentication hearth cannot provide anonymously ({challenge})")]
    Auth {
        /// The URL.
        url: String,
        /// The challenge.
        challenge: String,
    },
    /// JSON that is not an index or manifest.
    #[error("`{url}` returned an unreadable {what}")]
    BadJson {
        /// The URL.
        url: String,
        /// Index, manifest, token...
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The index has no manifest for the platform.
    #[error("`{reference}` has no image for platform {platform}")]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platform.
        platform: String,
    },
    /// Something about the manifest is unacceptable.
    #[error("`{reference}`: {message}")]
    Invalid {
        /// The image.
        reference: String,
        /// What.
        message: String,
    },
    /// A request failed.
    #[error("requesting `{url}`")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The image is missing and the network is off limits.
    #[error("image `{reference}@{digest}` is not in the store and --offline forbids pulling it")]
    Offline {
        /// The image.
        reference: String,
        /// Its digest.
        digest: String,
    },
    /// Every registry candidate failed.
    #[error("could not pull `{reference}`:\n  {}", failures.join("\n  "))]
    AllFailed {
        /// The image.
        reference: String,
        /// One line per candidate.
        failures: Vec<String>,
    },
    /// A blob download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A local file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v8` etc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An index (or Docker manifest list).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
}

/// A single-platform manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
}

fn digest_of(d: &Descriptor, reference: &str) -> Result<Sha256, OciError> {
    Sha256::parse_oci(&d.digest).map_err(|_| OciError::Invalid {
        reference: reference.to_owned(),
        message: format!("descriptor digest `{}` is not sha256", d.digest),
    })
}
