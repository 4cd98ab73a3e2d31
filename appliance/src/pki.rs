//! The cluster's PKI and bootstrap token, made on the host before any VM boots,
//! the way kubeadm would make them (RSA 2048 keys): the cluster CA, the
//! front-proxy CA, the etcd CA, the service-account key pair, a bootstrap token,
//! and the CA's public-key pin (`sha256:<hex of the SubjectPublicKeyInfo>`).
//!
//! State lives in the appliance's state directory: secrets are written 0600 and
//! never printed (`Debug` of [`Pki`] redacts them). Loading is idempotent, so a
//! reinstall keeps the cluster's identity.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256};
use sha2::Digest as _;

use crate::files::{FileError, write_atomic};

/// The platform CA's common name.
pub const PLATFORM_CA_NAME: &str = "hearth platform CA";

/// Years a CA is valid (kubeadm's default for CAs).
const CA_YEARS: i32 = 10;

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation.
    #[error("generating {what}")]
    Generate {
        /// What.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A state file that does not parse.
    #[error("`{}` is damaged: {why}", path.display())]
    Damaged {
        /// Which file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A PKI file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The system's random source.
    #[error("reading random bytes")]
    Random(#[from] getrandom::Error),
}

/// A CA: certificate and key, PEM.
#[derive(Clone)]
pub struct Ca {
    /// Certificate.
    pub cert_pem: String,
    /// Private key (secret).
    pub key_pem: String,
}

/// Everything the cluster's identity is made of.
#[derive(Clone)]
pub struct Pki {
    /// The cluster CA (`ca.crt`, `ca.key`).
    pub ca: Ca,
    /// The front-proxy CA.
    pub front_proxy_ca: Ca,
    /// The etcd CA.
    pub etcd_ca: Ca,
    /// The platform CA: cert-manager's CA ClusterIssuer signs the platform's
    /// certificates (ingress, Harbor, Argo CD) with it; the host and the nodes'
    /// containerd trust its certificate. Not the cluster CA, so trusting it
    /// trusts no cluster component.
    pub platform_ca: Ca,
    /// Service-account signing key (secret) and its public half.
    pub sa_key_pem: String,
    /// Service-account public key.
    pub sa_pub_pem: String,
    /// Bootstrap token `abcdef.0123456789abcdef` (secret).
    pub token: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca_cert_hash", &self.ca_cert_hash().ok()).finish_non_exhaustive()
    }
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// The civil date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

pub(crate) fn make_ca(common_name: &str, what: &'static str) -> Result<Ca, PkiError> {
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).map_err(gen_err(what))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err(what))?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil(days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + CA_YEARS, m, d.min(28));
    let cert = params.self_signed(&key).map_err(gen_err(what))?;
    Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A fresh bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn new_token() -> Result<String, PkiError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(23);
    while out.len() < 23 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        // Rejection sampling keeps the characters uniform.
        for x in b {
            if out.len() == 6 {
                out.push('.');
            }
            if out.len() < 23 && (x as usize) < 252 {
                out.push(ALPHABET[x as usize % 36] as char);
            }
        }
    }
    Ok(out)
}

/// Whether `t` has the shape of a bootstrap token.
pub fn is_token(t: &str) -> bool {
    let ok = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    t.split_once('.').is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

impl Pki {
    /// Makes a new PKI.
    pub fn generate() -> Result<Pki, PkiError> {
        // Four RSA key generations: side by side, they take the time of one or two.
        std::thread::scope(|s| {
            let ca = s.spawn(|| make_ca("kubernetes", "the cluster CA"));
            let front = s.spawn(|| make_ca("front-proxy-ca", "the front-proxy CA"));
            let etcd = s.spawn(|| make_ca("etcd-ca", "the etcd CA"));
            let platform = s.spawn(|| make_ca(PLATFORM_CA_NAME, "the platform CA"));
            let sa = KeyPair::generate_for(&PKCS_RSA_SHA256).map_err(gen_err("the service-account key"))?;
            Ok(Pki {
                ca: ca.join().expect("key generation panicked")?,
                front_proxy_ca: front.join().expect("key generation panicked")?,
                etcd_ca: etcd.join().expect("key generation panicked")?,
                platform_ca: platform.join().expect("key generation panicked")?,
                sa_key_pem: sa.serialize_pem(),
                sa_pub_pem: sa.public_key_pem(),
                token: new_token()?,
            })
        })
    }

    /// The files of the PKI, relative to the state directory, with whether each
    /// is secret. The layout is kubeadm's `/etc/kubernetes/pki`.
    pub fn files(&self) -> Vec<(&'static str, &str, bool)> {
        vec![
            ("pki/ca.crt", &self.ca.cert_pem, false),
            ("pki/ca.key", &self.ca.key_pem, true),
            ("pki/front-proxy-ca.crt", &self.front_proxy_ca.cert_pem, false),
            ("pki/front-proxy-ca.key", &self.front_proxy_ca.key_pem, true),
            ("pki/etcd/ca.crt", &self.etcd_ca.cert_pem, false),
            ("pki/etcd/ca.key", &self.etcd_ca.key_pem, true),
            ("pki/platform-ca.crt", &self.platform_ca.cert_pem, false),
            ("pki/platform-ca.key", &self.platform_ca.key_pem, true),
            ("pki/sa.key", &self.sa_key_pem, true),
            ("pki/sa.pub", &self.sa_pub_pem, false),
            ("token", &self.token, true),
        ]
    }

    /// Loads the PKI from `state`, or makes and saves a new one.
    pub fn load_or_create(state: &Path) -> Result<Pki, PkiError> {
        let ca_path = state.join("pki/ca.crt");
        if ca_path.exists() {
            return Pki::load(state);
        }
        let pki = Pki::generate()?;
        pki.save(state)?;
        Ok(pki)
    }

    fn save(&self, state: &Path) -> Result<(), PkiError> {
        for (rel, body, secret) in self.files() {
            let path = state.join(rel);
            let io = |op| {
                let path = path.clone();
                move |source| PkiError::from(FileError { op, path, source })
            };
            let dir = path.parent().expect("has a parent");
            fs::create_dir_all(dir).map_err(io("creating"))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("protecting"))?;
            write_atomic(&path, body.as_bytes(), if secret { 0o600 } else { 0o644 })?;
        }
        Ok(())
    }

    fn load(state: &Path) -> Result<Pki, PkiError> {
        let read = |rel: &str| {
            let path = state.join(rel);
            fs::read_to_string(&path).map_err(|source| PkiError::from(FileError { op: "reading", path, source }))
        };
        // State from before the platform CA existed gets one now, kept from then on.
        let platform_ca = if state.join("pki/platform-ca.crt").exists() {
            Ca { cert_pem: read("pki/platform-ca.crt")?, key_pem: read("pki/platform-ca.key")? }
        } else {
            let ca = make_ca(PLATFORM_CA_NAME, "the platform CA")?;
            write_atomic(&state.join("pki/platform-ca.key"), ca.key_pem.as_bytes(), 0o600)?;
            write_atomic(&state.join("pki/platform-ca.crt"), ca.cert_pem.as_bytes(), 0o644)?;
            ca
        };
        let pki = Pki {
            platform_ca,
            ca: Ca { cert_pem: read("pki/ca.crt")?, key_pem: read("pki/ca.key")? },
            front_proxy_ca: Ca { cert_pem: read("pki/front-proxy-ca.crt")?, key_pem: read("pki/front-proxy-ca.key")? },
            etcd_ca: Ca { cert_pem: read("pki/etcd/ca.crt")?, key_pem: read("pki/etcd/ca.key")? },
            sa_key_pem: read("pki/sa.key")?,
            sa_pub_pem: read("pki/sa.pub")?,
            token: read("token")?.trim().to_owned(),
        };
        if !is_token(&pki.token) {
            return Err(PkiError::Damaged { path: state.join("token"), why: "not a bootstrap token".into() });
        }
        pki.ca_cert_hash()?;
        Ok(pki)
    }

    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo: what a worker's
    /// JoinConfiguration pins in `caCertHashes`.
    pub fn ca_cert_hash(&self) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(&self.ca.key_pem)
            .map_err(|e| PkiError::Damaged { path: "pki/ca.key".into(), why: e.to_string() })?;
        Ok(format!("sha256:{}", hex::encode(sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)))))
    }

    /// A client certificate for `cn` in `org`, signed by the cluster CA: (cert, key).
    pub fn client_cert(&self, cn: &str, org: &str) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca.key_pem).map_err(gen_err("the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key).map_err(gen_err("the CA issuer"))?;
        let key = KeyPair::generate_for(&PKCS_RSA_SHA256).map_err(gen_err("a client key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("a client certificate"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, org);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).map_err(gen_err("a client certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape() {
        for _ in 0..50 {
            let t = new_token().unwrap();
            assert!(is_token(&t), "{t}");
        }
        assert_ne!(new_token().unwrap(), new_token().unwrap());
        assert!(!is_token("ABCDEF.0123456789abcdef") && !is_token("abc.def"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
    }

    #[test]
    fn state_is_saved_private_and_reloaded_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.token, b.token);
        for (rel, _, secret) in a.files() {
            let mode = fs::metadata(dir.path().join(rel)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{rel}");
        }
        let shown = format!("{a:?}");
        assert!(!shown.contains(&a.token) && !shown.contains("PRIVATE KEY"), "{shown}");
    }
}
