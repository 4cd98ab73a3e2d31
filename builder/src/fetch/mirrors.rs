//! Mirror rules: a URL prefix mapped to replacement prefixes, tried in order.
//!
//! A rule replaces the original URL: to try the original too, list its prefix
//! among the mirrors. That way a test (or an air-gapped site) that points real URLs
//! at a local server never falls through to the outside world.

use std::collections::BTreeMap;

/// Errors in mirror rules.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A `HEARTH_MIRRORS` rule without `=`.
    #[error("mirror rule `{0}` has no `=` (expected `PREFIX=MIRROR[,MIRROR...]`)")]
    NoEquals(String),
    /// A rule whose prefix or mirror is not a URL prefix hearth can fetch from.
    #[error("mirror rule `{prefix}`: `{mirror}` is not an http, https or file URL prefix")]
    BadMirror {
        /// The rule's prefix.
        prefix: String,
        /// The offending mirror.
        mirror: String,
    },
}

/// A set of mirror rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrors {
    rules: BTreeMap<String, Vec<String>>,
}

impl Mirrors {
    /// Adds a rule (a later rule for the same prefix replaces an earlier one).
    pub fn insert(&mut self, prefix: &str, mirrors: Vec<String>) -> Result<(), MirrorError> {
        for m in &mirrors {
            let scheme_ok = ["http://", "https://", "file://"].iter().any(|s| m.starts_with(s));
            if !scheme_ok {
                return Err(MirrorError::BadMirror { prefix: prefix.to_owned(), mirror: m.clone() });
            }
        }
        self.rules.insert(prefix.to_owned(), mirrors);
        Ok(())
    }

    /// Parses the `HEARTH_MIRRORS` syntax: rules separated by `;` or white space,
    /// each `PREFIX=MIRROR[,MIRROR...]`.
    pub fn parse_env(text: &str) -> Result<Self, MirrorError> {
        let mut out = Mirrors::default();
        out.extend_env(text)?;
        Ok(out)
    }

    /// Adds the rules of a `HEARTH_MIRRORS` value.
    pub fn extend_env(&mut self, text: &str) -> Result<(), MirrorError> {
        for rule in text.split(|c: char| c == ';' || c.is_whitespace()).filter(|r| !r.is_empty()) {
            let (prefix, list) = rule.split_once('=').ok_or_else(|| MirrorError::NoEquals(rule.to_owned()))?;
            let mirrors = list.split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect();
            self.insert(prefix, mirrors)?;
        }
        Ok(())
    }

    /// The URLs to try for `url`: the mirrors of the longest matching prefix, or
    /// the URL itself when no rule matches.
    pub fn expand(&self, url: &str) -> Vec<String> {
        let best = self.rules.iter().filter(|(p, _)| url.starts_with(p.as_str())).max_by_key(|(p, _)| p.len());
        match best {
            Some((prefix, mirrors)) => mirrors.iter().map(|m| format!("{m}{}", &url[prefix.len()..])).collect(),
            None => vec![url.to_owned()],
        }
    }

    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_replaces() {
        let m = Mirrors::parse_env(
            "https://dl.k8s.io/=http://127.0.0.1:1/a/,http://127.0.0.1:2/b/ https://dl.k8s.io/release/=file:///srv/",
        )
        .unwrap();
        assert_eq!(m.expand("https://dl.k8s.io/release/v1/kubeadm"), vec!["file:///srv/v1/kubeadm"]);
        assert_eq!(
            m.expand("https://dl.k8s.io/other"),
            vec!["http://127.0.0.1:1/a/other", "http://127.0.0.1:2/b/other"]
        );
        assert_eq!(m.expand("https://example.org/x"), vec!["https://example.org/x"]);
    }

    #[test]
    fn bad_rules_are_named() {
        assert!(matches!(Mirrors::parse_env("nonsense"), Err(MirrorError::NoEquals(_))));
        assert!(matches!(Mirrors::parse_env("https://a/=ftp://b/"), Err(MirrorError::BadMirror { .. })));
    }
}
