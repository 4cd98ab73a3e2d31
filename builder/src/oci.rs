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

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::fetch::{Download, FetchError, Fetcher};
use crate::files::{self, FileError, PathReader};
use crate::store::{self, Claim, EntryKey, OutputRecord, Outputs, Store, StorePath};

/// Media types of an index (OCI) or manifest list (Docker).
pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
/// Media types of a single-platform manifest.
pub const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Largest manifest or index accepted (they are kilobytes in practice).
const MAX_MANIFEST: usize = 4 << 20;
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

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), `docker.io` normalised.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Sha256>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@sha256:hex]` the way docker does.
    pub fn parse(text: &str) -> Result<Self, OciError> {
        let bad = |why| OciError::BadReference(text.to_owned(), why);
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(Sha256::parse_oci(d).map_err(|_| bad("digest is not sha256:<64 hex>"))?)),
            None => (text, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_owned())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad("repository must be lower-case path components"));
        }
        if tag.is_none() && digest.is_none() && text.is_empty() {
            return Err(bad("empty"));
        }
        Ok(Reference { registry, repository, tag, digest })
    }

    /// Base URL of the registry API: plain HTTP for loopback registries (as docker
    /// treats them), HTTPS otherwise.
    pub fn base_url(&self) -> String {
        let host = if self.registry == "docker.io" { "registry-1.docker.io" } else { &self.registry };
        let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = hostname == "localhost"
            || hostname.starts_with("127.")
            || hostname == "[::1]"
            || hostname.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        format!("{}://{host}/", if loopback { "http" } else { "https" })
    }

    /// The name without digest, as images are named in containerd.
    pub fn name(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(d) = &self.digest {
            write!(f, "@{}", d.oci())?;
        }
        Ok(())
    }
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

/// Parses a `WWW-Authenticate: Bearer k="v",...` challenge.
pub fn parse_challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut out = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, v) = s.split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, rest) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_owned(), &v[end..])
        };
        out.insert(k, value);
        s = rest.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// A pulled image in the store.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The entry.
    pub path: StorePath,
    /// False when it was already present.
    pub downloaded: bool,
}

/// Makes sure the image `reference` pinned at `digest` for `platform` is a store
/// entry named `name`.
pub async fn pull(
    fetcher: &Fetcher,
    store: &Store,
    reference: &str,
    digest: Sha256,
    platform: &str,
    name: &str,
) -> Result<Pulled, OciError> {
    let key = EntryKey::Oci { digest, platform: platform.to_owned() };
    if let Some(path) = store.lookup(&key)? {
        return Ok(Pulled { path, downloaded: false });
    }
    let parsed = Reference::parse(reference)?;
    let client = match fetcher.client() {
        Some(c) if !fetcher.options().offline => c.clone(),
        _ => return Err(OciError::Offline { reference: reference.to_owned(), digest: digest.oci() }),
    };
    let pending = match fetcher.claim(store, &key, name).await? {
        Claim::Present(path) => return Ok(Pulled { path, downloaded: false }),
        Claim::Vacant(p) => p,
    };
    let mut failures = Vec::new();
    for base in fetcher.options().mirrors.expand(&parsed.base_url()) {
        let mut session =
            Session { client: &client, base: base.clone(), repository: parsed.repository.clone(), token: None };
        match pull_into(
            fetcher,
            store,
            &mut session,
            &parsed,
            reference,
            digest,
            platform,
            pending.dir(),
            pending.path(),
        )
        .await
        {
            Ok(outputs) => {
                let path = tokio::task::spawn_blocking(move || pending.commit(outputs))
                    .await
                    .expect("commit task panicked")?;
                return Ok(Pulled { path, downloaded: true });
            }
            Err(e) => {
                failures.push(crate::report::error_chain(&e).replace('\n', "\n    "));
                // Start the next candidate from an empty layout.
                clear_dir(pending.dir())?;
            }
        }
    }
    Err(OciError::AllFailed { reference: reference.to_owned(), failures })
}

/// Resolves a reference's tag to the digest of what the registry serves for it
/// (the index or manifest bytes), for `hearth lock`.
pub async fn resolve(fetcher: &Fetcher, reference: &str) -> Result<Sha256, OciError> {
    let parsed = Reference::parse(reference)?;
    let tag = parsed.tag.clone().unwrap_or_else(|| "latest".to_owned());
    let Some(client) = fetcher.client() else {
        return Err(OciError::Offline { reference: reference.to_owned(), digest: format!("tag {tag}") });
    };
    let mut failures = Vec::new();
    for base in fetcher.options().mirrors.expand(&parsed.base_url()) {
        let mut session = Session { client, base, repository: parsed.repository.clone(), token: None };
        match session.manifest(&tag).await {
            Ok((bytes, _, _)) => return Ok(Sha256::of(&bytes)),
            Err(e) => failures.push(crate::report::error_chain(&e)),
        }
    }
    Err(OciError::AllFailed { reference: reference.to_owned(), failures })
}

fn clear_dir(dir: &Path) -> Result<(), OciError> {
    for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
        let item = item.map_err(FileError::at("reading", dir))?;
        files::remove_tree(&item.path())?;
    }
    Ok(())
}

struct Session<'a> {
    client: &'a reqwest::Client,
    base: String,
    repository: String,
    token: Option<String>,
}

impl Session<'_> {
    fn url(&self, kind: &str, digest: &Sha256) -> String {
        format!("{}v2/{}/{kind}/{}", self.base, self.repository, digest.oci())
    }

    /// GETs a manifest by digest or tag, answering one bearer challenge if asked.
    async fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String, String), OciError> {
        let url = format!("{}v2/{}/manifests/{reference}", self.base, self.repository);
        for _ in 0..2 {
            let mut req = self.client.get(&url).header(ACCEPT, [INDEX_TYPES, MANIFEST_TYPES].concat().join(", "));
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let resp = req.send().await.map_err(|source| OciError::Http { url: url.clone(), source })?;
            if resp.status() == StatusCode::UNAUTHORIZED && self.token.is_none() {
                let challenge =
                    resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                self.token = Some(self.fetch_token(&url, &challenge).await?);
                continue;
            }
            if !resp.status().is_success() {
                return Err(OciError::Status { url, status: resp.status() });
            }
            let media = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned())
                .unwrap_or_default();
            if resp.content_length().is_some_and(|n| n as usize > MAX_MANIFEST) {
                return Err(OciError::Invalid { reference: url, message: "manifest larger than 4 MiB".into() });
            }
            let body = resp.bytes().await.map_err(|source| OciError::Http { url: url.clone(), source })?;
            return Ok((body.to_vec(), media, url));
        }
        Err(OciError::Status { url, status: StatusCode::UNAUTHORIZED })
    }

    async fn fetch_token(&self, url: &str, challenge: &str) -> Result<String, OciError> {
        let auth_err = || OciError::Auth { url: url.to_owned(), challenge: challenge.to_owned() };
        let params = parse_challenge(challenge).ok_or_else(auth_err)?;
        let realm = params.get("realm").ok_or_else(auth_err)?;
        let mut token_url = url::Url::parse(realm).map_err(|_| auth_err())?;
        {
            let mut q = token_url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            q.append_pair("scope", &scope);
        }
        let resp = self
            .client
            .get(token_url.clone())
            .send()
            .await
            .map_err(|source| OciError::Http { url: token_url.to_string(), source })?;
        if !resp.status().is_success() {
            return Err(OciError::Status { url: token_url.to_string(), status: resp.status() });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp.bytes().await.map_err(|source| OciError::Http { url: token_url.to_string(), source })?;
        let t: Token = serde_json::from_slice(&body).map_err(|source| OciError::BadJson {
            url: token_url.to_string(),
            what: "token",
            source,
        })?;
        t.token.or(t.access_token).ok_or_else(auth_err)
    }
}

#[allow(clippy::too_many_arguments)]
async fn pull_into(
    fetcher: &Fetcher,
    store: &Store,
    session: &mut Session<'_>,
    parsed: &Reference,
    reference: &str,
    digest: Sha256,
    platform: &str,
    dir: &Path,
    entry: &StorePath,
) -> Result<Outputs, OciError> {
    let mut outputs = Outputs::default();
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(FileError::at("creating", &blob_dir))?;
    let mut put = |d: &Sha256, bytes: &[u8]| -> Result<(), OciError> {
        let p = blob_dir.join(d.hex());
        fs::write(&p, bytes).map_err(FileError::at("writing", &p))?;
        outputs.files.insert(
            format!("blobs/sha256/{}", d.hex()),
            OutputRecord { sha256: *d, size: bytes.len() as u64, executable: false },
        );
        Ok(())
    };

    let (top, top_type, url) = session.manifest(&digest.oci()).await?;
    let actual = Sha256::of(&top);
    if actual != digest {
        return Err(OciError::ManifestMismatch {
            reference: reference.into(),
            url,
            expected: digest.oci(),
            actual: actual.oci(),
        });
    }
    put(&digest, &top)?;
    let kind = media_kind(&top_type, &top);
    let (top_media, manifest_bytes, manifest_digest) = if kind == MediaKind::Index {
        let index: Index = serde_json::from_slice(&top).map_err(|source| OciError::BadJson {
            url: url.clone(),
            what: "index",
            source,
        })?;
        let (os, arch) = platform.split_once('/').unwrap_or((platform, ""));
        let chosen = index
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
            .ok_or_else(|| OciError::NoPlatform { reference: reference.into(), platform: platform.into() })?;
        let md = digest_of(chosen, reference)?;
        let (bytes, _, murl) = session.manifest(&md.oci()).await?;
        let got = Sha256::of(&bytes);
        if got != md {
            return Err(OciError::ManifestMismatch {
                reference: reference.into(),
                url: murl,
                expected: md.oci(),
                actual: got.oci(),
            });
        }
        put(&md, &bytes)?;
        let media = index.media_type.clone().unwrap_or_else(|| guess_type(&top_type, INDEX_TYPES[0]));
        (media, bytes, md)
    } else {
        (guess_type(&top_type, MANIFEST_TYPES[0]), top.clone(), digest)
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|source| OciError::BadJson {
        url: url.clone(),
        what: "manifest",
        source,
    })?;

    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let d = digest_of(blob, reference)?;
        let rel = format!("blobs/sha256/{}", d.hex());
        if outputs.files.contains_key(&rel) {
            continue;
        }
        let partial = store.partial_file(entry.hash(), &d);
        let dl = Download {
            label: format!("{} {}", parsed.name(), &d.hex()[..12]),
            urls: vec![session.url("blobs", &d)],
            sha256: d,
            bearer: session.token.clone(),
        };
        let size = fetcher.download(&dl, &partial).await?;
        if size != blob.size {
            let _ = fs::remove_file(&partial);
            return Err(OciError::Invalid {
                reference: reference.into(),
                message: format!("blob {} has {size} bytes, its descriptor says {}", blob.digest, blob.size),
            });
        }
        let dest = dir.join(&rel);
        fs::rename(&partial, &dest).map_err(FileError::at("moving blob", &dest))?;
        outputs.files.insert(rel, OutputRecord { sha256: d, size, executable: false });
    }

    let mut annotations = BTreeMap::new();
    annotations.insert(CONTAINERD_NAME.to_owned(), parsed.name());
    if let Some(t) = &parsed.tag {
        annotations.insert(REF_NAME.to_owned(), t.clone());
    }
    let layout_index = Index {
        schema_version: 2,
        media_type: Some(INDEX_TYPES[0].to_owned()),
        manifests: vec![Descriptor {
            media_type: top_media,
            digest: digest.oci(),
            size: top.len() as u64,
            platform: None,
            annotations,
        }],
    };
    let mut files: Vec<(&str, Vec<u8>)> = vec![("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec())];
    files.push(("index.json", serde_json::to_vec(&layout_index).expect("index serialises")));
    for (rel, bytes) in files {
        let p = dir.join(rel);
        fs::write(&p, &bytes).map_err(FileError::at("writing", &p))?;
        outputs.files.insert(
            rel.to_owned(),
            OutputRecord { sha256: Sha256::of(&bytes), size: bytes.len() as u64, executable: false },
        );
    }
    outputs.info.insert("reference".into(), parsed.name());
    outputs.info.insert("digest".into(), digest.oci());
    outputs.info.insert("platform".into(), platform.into());
    outputs.info.insert("manifest".into(), manifest_digest.oci());
    Ok(outputs)
}

#[derive(PartialEq, Eq)]
enum MediaKind {
    Index,
    Manifest,
}

fn media_kind(content_type: &str, body: &[u8]) -> MediaKind {
    if INDEX_TYPES.contains(&content_type) {
        return MediaKind::Index;
    }
    if MANIFEST_TYPES.contains(&content_type) {
        return MediaKind::Manifest;
    }
    // Fall back to the document's own mediaType or shape.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(p) if p.manifests.is_some() || p.media_type.as_deref().is_some_and(|m| INDEX_TYPES.contains(&m)) => {
            MediaKind::Index
        }
        _ => MediaKind::Manifest,
    }
}

fn guess_type(content_type: &str, fallback: &str) -> String {
    if INDEX_TYPES.contains(&content_type) || MANIFEST_TYPES.contains(&content_type) {
        content_type.to_owned()
    } else {
        fallback.to_owned()
    }
}

/// Writes an image-layout entry as a deterministic tar (sorted members, uid/gid
/// 0, mtime `mtime`, modes 0644/0755): the archive `ctr images import` takes.
/// An error reading the layout carries a [`FileError`] naming the file (see
/// [`FileError::carried_or`]); others come from `out`.
pub fn write_archive(layout: &Path, mtime: u64, out: impl Write) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(layout, layout, &mut paths)?;
    paths.retain(|(rel, _)| rel != store::MANIFEST_FILE);
    paths.sort();
    let mut tar = tar::Builder::new(out);
    for (rel, is_dir) in paths {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        if is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, format!("{rel}/"), io::empty())?;
        } else {
            let f = PathReader::open(&layout.join(&rel))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(f.size()?);
            tar.append_data(&mut h, &rel, f)?;
        }
    }
    tar.into_inner()?.flush()
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> Result<(), FileError> {
    for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
        let item = item.map_err(FileError::at("reading", dir))?;
        let rel = item.path().strip_prefix(base).expect("under base").to_string_lossy().into_owned();
        if item.file_type().map_err(FileError::at("reading", &item.path()))?.is_dir() {
            out.push((rel, true));
            collect(base, &item.path(), out)?;
        } else {
            out.push((rel, false));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let r = Reference::parse("nginx").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/nginx", None)
        );
        assert_eq!(r.base_url(), "https://registry-1.docker.io/");
        let r = Reference::parse("registry.k8s.io/pause:3.9").unwrap();
        assert_eq!(r.name(), "registry.k8s.io/pause:3.9");
        assert_eq!(r.base_url(), "https://registry.k8s.io/");
        let d = "7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097";
        let r = Reference::parse(&format!("127.0.0.1:5000/a/b:1.0@sha256:{d}")).unwrap();
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", Some("1.0")));
        assert_eq!(r.base_url(), "http://127.0.0.1:5000/");
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/a/b:1.0@sha256:{d}"));
        assert_eq!(Reference::parse("localhost:5000/x").unwrap().base_url(), "http://localhost:5000/");
        assert!(Reference::parse("Registry/UPPER").is_err());
        assert!(Reference::parse("a/b:t@sha256:123").is_err());
        assert!(Reference::parse("a/b:").is_err());
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["scope"], "repository:a/b:pull");
        assert!(parse_challenge("Basic realm=x").is_none());
    }

    #[test]
    fn archives_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("blobs/sha256/ab"), b"x").unwrap();
        fs::write(dir.path().join("index.json"), b"{}").unwrap();
        fs::write(dir.path().join("oci-layout"), b"{}").unwrap();
        fs::write(dir.path().join(store::MANIFEST_FILE), b"{}").unwrap();
        let mut a = Vec::new();
        write_archive(dir.path(), 0, &mut a).unwrap();
        let mut b = Vec::new();
        write_archive(dir.path(), 0, &mut b).unwrap();
        assert_eq!(a, b);
        let mut t = tar::Archive::new(&a[..]);
        let names: Vec<String> =
            t.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["blobs/", "blobs/sha256/", "blobs/sha256/ab", "index.json", "oci-layout"]);
    }
}
