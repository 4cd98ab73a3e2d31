//! The host's admin kubeconfig, made from the cluster CA the host holds: a
//! client certificate for `kubernetes-admin` in `system:masters` (so it works
//! before kubeadm has bound any role), the CA inline, the control plane's
//! fixed address as server. It holds a private key: written 0600, never printed
//! unless the user asks `hearth kubeconfig` for it.

use base64_encode::encode;
use serde::Serialize;

use crate::pki::{Pki, PkiError};
use crate::spec::Appliance;

#[derive(Serialize)]
struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<Cluster>>,
    users: Vec<Named<User>>,
    contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context")]
    current_context: String,
}

/// Long base64 values stay on one plain line, as kubectl writes them.
fn to_yaml<T: Serialize>(v: &T) -> Result<String, serde_saphyr::ser::Error> {
    let mut opts = serde_saphyr::SerializerOptions::default();
    opts.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(v, opts)
}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    inner: T,
}

#[derive(Serialize)]
struct Cluster {
    cluster: ClusterInner,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterInner {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct User {
    user: UserInner,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserInner {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct Context {
    context: ContextInner,
}

#[derive(Serialize)]
struct ContextInner {
    cluster: String,
    user: String,
}

/// The admin kubeconfig of appliance `a` (YAML).
pub fn admin(a: &Appliance, pki: &Pki) -> Result<String, PkiError> {
    let (cert, key) = pki.client_cert("kubernetes-admin", "system:masters")?;
    let user = format!("{}-admin", a.name);
    let ctx = format!("{user}@{}", a.name);
    let k = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: a.name.clone(),
            inner: Cluster {
                cluster: ClusterInner {
                    server: format!("https://{}", a.api_endpoint()),
                    certificate_authority_data: encode(pki.ca.cert_pem.as_bytes()),
                },
            },
        }],
        users: vec![Named {
            name: user.clone(),
            inner: User {
                user: UserInner {
                    client_certificate_data: encode(cert.as_bytes()),
                    client_key_data: encode(key.as_bytes()),
                },
            },
        }],
        contexts: vec![Named {
            name: ctx.clone(),
            inner: Context { context: ContextInner { cluster: a.name.clone(), user } },
        }],
        current_context: ctx,
    };
    Ok(to_yaml(&k).expect("kubeconfig serialises"))
}

/// Standard base64 (RFC 4648, padded), as kubeconfig `*-data` fields take.
pub mod base64_encode {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes `data`.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    #[test]
    fn rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(encode(i.as_bytes()), o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_it_and_points_at_the_control_plane() {
        let a = Appliance::default();
        let pki = Pki::generate().unwrap();
        let text = admin(&a, &pki).unwrap();
        assert!(text.starts_with("apiVersion: v1\nkind: Config\n"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("    client-certificate-data: LS0t")), "one plain line:\n{text}");
        let k = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://192.168.122.10:6443"));
        assert_eq!(k.current_context.as_deref(), Some("k8s-myhome-admin@k8s-myhome"));
        let user = k.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.client_certificate_data.is_some() && user.client_key_data.is_some());
    }
}

/// Errors of merging into a user's kubeconfig.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MergeError(String);

/// `existing` (a user's kubeconfig, if there is one) with the cluster, user and
/// context of `ours` replacing any of the same names, and ours made current.
/// Everything else in `existing` is kept.
pub fn merge(existing: Option<&str>, ours: &str) -> Result<String, MergeError> {
    use kube::config::Kubeconfig;
    let ours = Kubeconfig::from_yaml(ours).map_err(|e| MergeError(e.to_string()))?;
    let mut k = match existing {
        Some(t) if !t.trim().is_empty() => Kubeconfig::from_yaml(t).map_err(|e| MergeError(e.to_string()))?,
        _ => Kubeconfig { api_version: Some("v1".into()), kind: Some("Config".into()), ..Kubeconfig::default() },
    };
    for c in &ours.clusters {
        k.clusters.retain(|x| x.name != c.name);
    }
    for u in &ours.auth_infos {
        k.auth_infos.retain(|x| x.name != u.name);
    }
    for c in &ours.contexts {
        k.contexts.retain(|x| x.name != c.name);
    }
    k.clusters.extend(ours.clusters);
    k.auth_infos.extend(ours.auth_infos);
    k.contexts.extend(ours.contexts);
    k.current_context = ours.current_context;
    to_yaml(&k).map_err(|e| MergeError(e.to_string()))
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn merging_keeps_other_clusters_and_replaces_ours() {
        let a = Appliance::default();
        let pki = Pki::generate().unwrap();
        let ours = admin(&a, &pki).unwrap();
        let other = "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster:\n    server: https://127.0.0.1:1\n\
                     users:\n- name: me\n  user:\n    token: t\ncontexts:\n- name: work\n  context:\n    cluster: work\n    \
                     user: me\ncurrent-context: work\n";
        let once = merge(Some(other), &ours).unwrap();
        let twice = merge(Some(&once), &ours).unwrap();
        let k = kube::config::Kubeconfig::from_yaml(&twice).unwrap();
        let names: Vec<&str> = k.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["work", "k8s-myhome"]);
        assert_eq!(k.auth_infos.len(), 2);
        assert_eq!(k.current_context.as_deref(), Some("k8s-myhome-admin@k8s-myhome"));
        let fresh = kube::config::Kubeconfig::from_yaml(&merge(None, &ours).unwrap()).unwrap();
        assert_eq!(fresh.clusters.len(), 1);
    }
}
