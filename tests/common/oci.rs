//! A two-platform OCI image made in memory, and serving it from the loopback
//! server as a registry would.

use std::collections::BTreeMap;
use std::io::Write;

use hearth_testsupport::{Behavior, RouteOpts, Server};

use super::sha256_hex;

pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A two-platform image made in memory: every blob by digest, the index digest,
/// and which blobs belong to amd64.
pub struct Fixture {
    pub blobs: BTreeMap<String, (Vec<u8>, &'static str)>,
    pub index: String,
    pub amd64: Vec<String>,
    pub arm64_only: Vec<String>,
}

fn gz_layer(file: &str, body: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, file, body).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = sha256_hex(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

pub fn fixture() -> Fixture {
    let mut blobs = BTreeMap::new();
    let mut put = |bytes: Vec<u8>, media: &'static str| {
        let d = format!("sha256:{}", sha256_hex(&bytes));
        let size = bytes.len();
        blobs.insert(d.clone(), (bytes, media));
        (d, size)
    };
    let mut per_arch = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (layer, diff_id) = gz_layer("hello.txt", format!("hello from {arch}\n").as_bytes());
        let (layer_d, layer_n) = put(layer, "application/vnd.oci.image.layer.v1.tar+gzip");
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
        );
        let (config_d, config_n) = put(config.into_bytes(), "application/vnd.oci.image.config.v1+json");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{config_n}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{layer_n}}}]}}"#
        );
        let (m_d, m_n) = put(manifest.into_bytes(), MANIFEST_TYPE);
        per_arch.push((arch, m_d, m_n, vec![layer_d, config_d]));
    }
    let entries: Vec<String> = per_arch
        .iter()
        .map(|(arch, d, n, _)| format!(r#"{{"mediaType":"{MANIFEST_TYPE}","digest":"{d}","size":{n},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#))
        .collect();
    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{}]}}"#, entries.join(","));
    let (index_d, _) = put(index.into_bytes(), INDEX_TYPE);
    let (_, amd_m, _, amd_blobs) = &per_arch[0];
    let (_, arm_m, _, arm_blobs) = &per_arch[1];
    let mut amd64 = vec![index_d.clone(), amd_m.clone()];
    amd64.extend(amd_blobs.iter().cloned());
    let mut arm64_only = vec![arm_m.clone()];
    arm64_only.extend(arm_blobs.iter().cloned());
    Fixture { blobs, index: index_d, amd64, arm64_only }
}

/// Serves every blob and manifest of `fx` under `/v2/<repo>/` without auth, and
/// the index under the tag too; returns the reference (`127.0.0.1:PORT/repo:tag`).
pub fn serve_image(srv: &Server, fx: &Fixture, repo: &str, tag: &str) -> String {
    for (digest, (bytes, media)) in &fx.blobs {
        let kind = if *media == INDEX_TYPE || *media == MANIFEST_TYPE { "manifests" } else { "blobs" };
        let opts = RouteOpts { content_type: Some(media.to_string()), bearer: None };
        srv.serve_with(&format!("/v2/{repo}/{kind}/{digest}"), bytes.clone(), Behavior::Normal, opts);
    }
    let opts = RouteOpts { content_type: Some(INDEX_TYPE.into()), bearer: None };
    srv.serve_with(&format!("/v2/{repo}/manifests/{tag}"), fx.blobs[&fx.index].0.clone(), Behavior::Normal, opts);
    format!("127.0.0.1:{}/{repo}:{tag}", srv.base().rsplit(':').next().unwrap())
}
