//! Pulling a pinned image into the store: the manifest (checked against its
//! pin), the platform's manifest from an index, the config and layers through the
//! fetcher, and an `index.json` that names the pinned digest with the image's
//! reference.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::registry::Session;
use super::{
    CONTAINERD_NAME, Descriptor, INDEX_TYPES, Index, MANIFEST_TYPES, Manifest, OciError, REF_NAME, Reference, digest_of,
};
use crate::digest::Sha256;
use crate::fetch::{Download, Fetcher};
use crate::files::{self, FileError};
use crate::store::{Claim, EntryKey, OutputRecord, Outputs, Store, StorePath};

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

fn clear_dir(dir: &Path) -> Result<(), OciError> {
    for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
        let item = item.map_err(FileError::at("reading", dir))?;
        files::remove_tree(&item.path())?;
    }
    Ok(())
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
