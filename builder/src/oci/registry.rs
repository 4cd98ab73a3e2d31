//! One session with a registry: manifests by digest or tag, with the anonymous
//! bearer-token flow public registries expect; and tag resolution for `hearth
//! lock`.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::{INDEX_TYPES, MANIFEST_TYPES, OciError, Reference};
use crate::digest::Sha256;
use crate::fetch::Fetcher;

/// Largest manifest or index accepted (they are kilobytes in practice).
const MAX_MANIFEST: usize = 4 << 20;

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

pub(super) struct Session<'a> {
    pub(super) client: &'a reqwest::Client,
    pub(super) base: String,
    pub(super) repository: String,
    pub(super) token: Option<String>,
}

impl Session<'_> {
    pub(super) fn url(&self, kind: &str, digest: &Sha256) -> String {
        format!("{}v2/{}/{kind}/{}", self.base, self.repository, digest.oci())
    }

    /// GETs a manifest by digest or tag, answering one bearer challenge if asked.
    pub(super) async fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String, String), OciError> {
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
            pub(super) token: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
