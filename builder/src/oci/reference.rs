//! Image references, normalised the way docker does (`nginx` is
//! `docker.io/library/nginx`), and the registry URL they point at.

use std::fmt;

use super::OciError;
use crate::digest::Sha256;

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
}
