//! The platform's per-appliance secrets: made on the host once, kept in the
//! appliance's state (`secrets/`, directory 0700, files 0600), delivered to
//! the control plane only through its seed, never put in an image or the
//! GitOps repository, and never printed unless the user asks for one by name
//! (`hearth secret NAME`).
//!
//! Each secret is a random string from the OS generator. What the platform
//! derives from one (Argo CD's bcrypt hash of its admin password) is derived
//! deterministically, so that rendering the same state twice gives the same
//! bytes. A secret missing from an older state is made when the state is next
//! loaded, and kept from then on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::files::{FileError, write_atomic};

/// Errors of the secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Reading or writing a file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Making a key pair.
    #[error(transparent)]
    Key(#[from] Box<crate::pki::PkiError>),
    /// The OS random generator failed.
    #[error("the OS random generator failed")]
    Random(#[from] getrandom::Error),
    /// A file holds something that is not a secret of the expected shape.
    #[error("{}: {why} (remove it to have a new one made; what used it must then be relaunched)", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A secret the platform needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Secret {
    /// Argo CD's `admin` password (its bcrypt hash goes in `argocd-secret`).
    ArgocdAdmin,
    /// Argo CD's `server.secretkey`, which signs its session tokens.
    ArgocdServerKey,
    /// The in-cluster Git server's `hearth` user.
    GitAdmin,
    /// The in-cluster Git server's `SECRET_KEY` (encrypts what it stores).
    GitSecretKey,
    /// Harbor's `admin` password.
    HarborAdmin,
    /// Harbor's `secretKey`, which encrypts its stored credentials (16 characters).
    HarborSecretKey,
    /// Harbor core's secret between its components (16 characters).
    HarborCore,
    /// Harbor core's CSRF key (32 characters).
    HarborXsrf,
    /// Harbor jobservice's secret (16 characters).
    HarborJobservice,
    /// The registry's HTTP secret (16 characters).
    HarborRegistryHttp,
    /// The password core and jobservice use with the registry (htpasswd).
    HarborRegistry,
    /// The password of Harbor's internal PostgreSQL.
    HarborDatabase,
    /// Harbor's robot account for the GitHub runners (see [`Secrets::harbor_robot_password`]).
    HarborRobot,
}

impl Secret {
    /// Every secret, in a fixed order.
    pub const ALL: [Secret; 13] = [
        Secret::ArgocdAdmin,
        Secret::ArgocdServerKey,
        Secret::GitAdmin,
        Secret::GitSecretKey,
        Secret::HarborAdmin,
        Secret::HarborSecretKey,
        Secret::HarborCore,
        Secret::HarborXsrf,
        Secret::HarborJobservice,
        Secret::HarborRegistryHttp,
        Secret::HarborRegistry,
        Secret::HarborDatabase,
        Secret::HarborRobot,
    ];

    /// Its file name under `secrets/`, and the name `hearth secret` takes.
    pub fn name(self) -> &'static str {
        match self {
            Secret::ArgocdAdmin => "argocd-admin-password",
            Secret::ArgocdServerKey => "argocd-server-secretkey",
            Secret::GitAdmin => "git-admin-password",
            Secret::GitSecretKey => "git-secret-key",
            Secret::HarborAdmin => "harbor-admin-password",
            Secret::HarborSecretKey => "harbor-secret-key",
            Secret::HarborCore => "harbor-core-secret",
            Secret::HarborXsrf => "harbor-xsrf-key",
            Secret::HarborJobservice => "harbor-jobservice-secret",
            Secret::HarborRegistryHttp => "harbor-registry-http-secret",
            Secret::HarborRegistry => "harbor-registry-password",
            Secret::HarborDatabase => "harbor-database-password",
            Secret::HarborRobot => "harbor-robot-secret",
        }
    }

    /// How many characters it has: what the consumer demands, else 32.
    pub fn length(self) -> usize {
        match self {
            Secret::HarborSecretKey | Secret::HarborCore | Secret::HarborJobservice | Secret::HarborRegistryHttp => 16,
            _ => LENGTH,
        }
    }

    /// What it is, for `hearth secret --list` and `hearth urls`.
    pub fn what(self) -> &'static str {
        match self {
            Secret::ArgocdAdmin => "Argo CD user `admin`",
            Secret::ArgocdServerKey => "Argo CD session signing key",
            Secret::GitAdmin => "in-cluster Git server user `hearth`",
            Secret::GitSecretKey => "in-cluster Git server's encryption key",
            Secret::HarborAdmin => "Harbor user `admin`",
            Secret::HarborSecretKey => "Harbor's encryption key for stored credentials",
            Secret::HarborCore => "Harbor core's internal secret",
            Secret::HarborXsrf => "Harbor core's CSRF key",
            Secret::HarborJobservice => "Harbor jobservice's internal secret",
            Secret::HarborRegistryHttp => "Harbor registry's HTTP secret",
            Secret::HarborRegistry => "Harbor registry's internal user",
            Secret::HarborDatabase => "Harbor's PostgreSQL password",
            Secret::HarborRobot => "Harbor robot `robot$hearth-runner` (the runners push with it)",
        }
    }

    /// The secret `name` names.
    pub fn from_name(name: &str) -> Option<Secret> {
        Secret::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A token the user gives in a file named by appliance.toml.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserToken {
    /// `[gitops] credentials`: read access to the user's GitOps repository.
    Gitops,
    /// `[platform.pulumi] token`: a Pulumi access token.
    Pulumi,
    /// `[platform.arc] credentials`: a GitHub token that registers runners.
    Github,
}

/// Characters of a generated secret: letters and digits, so that a secret
/// needs no quoting in a URL, a shell, YAML or an htpasswd line.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of a generated secret: 32 characters of 62, about 190 bits.
const LENGTH: usize = 32;

/// A new random secret of `len` characters.
fn generate(len: usize) -> Result<String, SecretsError> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut b = [0u8; 64];
        getrandom::fill(&mut b)?;
        // Rejection sampling keeps the characters uniform (248 = 4 * 62).
        out.extend(b.iter().filter(|&&x| x < 248).map(|&x| ALPHABET[x as usize % 62] as char).take(len - out.len()));
    }
    Ok(out)
}

fn well_formed(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A key pair and its self-signed certificate (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// The appliance's secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    values: Vec<(Secret, String)>,
    /// The key and certificate Harbor's token service signs registry tokens
    /// with (the chart would make a new one on every render).
    harbor_token: KeyPair,
    /// The user's tokens (`[gitops] credentials`, `[platform.pulumi] token`,
    /// `[platform.arc] credentials`), read at launch; not made by hearth.
    user_tokens: Vec<(UserToken, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.iter().map(|(s, _)| format!("{}: <redacted>", s.name()))).finish()
    }
}

impl Secrets {
    /// The directory of the secrets in a state directory.
    pub fn dir(state: &Path) -> PathBuf {
        state.join("secrets")
    }

    /// The file of `secret` in a state directory.
    pub fn path(state: &Path, secret: Secret) -> PathBuf {
        Secrets::dir(state).join(secret.name())
    }

    /// Loads the secrets of `state`, making (and saving) any that is missing.
    pub fn load_or_create(state: &Path) -> Result<Secrets, SecretsError> {
        let dir = Secrets::dir(state);
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| SecretsError::from(FileError { op, path, source })
        };
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("protecting", &dir))?;
        let mut values = Vec::new();
        for s in Secret::ALL {
            let path = dir.join(s.name());
            let value = match fs::read_to_string(&path) {
                Ok(text) => {
                    let v = text.trim().to_owned();
                    if !well_formed(&v, s.length()) {
                        return Err(SecretsError::Damaged {
                            path,
                            why: format!("not a secret hearth made ({} letters and digits)", s.length()),
                        });
                    }
                    v
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let v = generate(s.length())?;
                    write_atomic(&path, format!("{v}\n").as_bytes(), 0o600)?;
                    v
                }
                Err(e) => return Err(io("reading", &path)(e)),
            };
            values.push((s, value));
        }
        let (crt, key) = (dir.join("harbor-token.crt"), dir.join("harbor-token.key"));
        let harbor_token = if key.exists() {
            let read = |p: &Path| fs::read_to_string(p).map_err(io("reading", p));
            KeyPair { cert_pem: read(&crt)?, key_pem: read(&key)? }
        } else {
            let ca = crate::pki::make_ca("harbor-token-ca", "Harbor's token key").map_err(Box::new)?;
            write_atomic(&crt, ca.cert_pem.as_bytes(), 0o600)?;
            write_atomic(&key, ca.key_pem.as_bytes(), 0o600)?;
            KeyPair { cert_pem: ca.cert_pem, key_pem: ca.key_pem }
        };
        Ok(Secrets { values, harbor_token, user_tokens: Vec::new() })
    }

    /// Fixed secrets for tests and benchmarks (never for an appliance).
    pub fn for_tests(seed: &str) -> Secrets {
        let values = Secret::ALL
            .into_iter()
            .map(|s| {
                let h = sha2::Sha256::digest(format!("{seed}/{}", s.name()).as_bytes());
                (s, h.iter().map(|b| ALPHABET[*b as usize % 62] as char).take(s.length()).collect())
            })
            .collect();
        let harbor_token = KeyPair {
            cert_pem: format!("-----BEGIN CERTIFICATE-----\n{seed} harbor token\n-----END CERTIFICATE-----\n"),
            key_pem: format!("-----BEGIN PRIVATE KEY-----\n{seed} harbor token\n-----END PRIVATE KEY-----\n"),
        };
        Secrets { values, harbor_token, user_tokens: Vec::new() }
    }

    /// With one of the user's tokens.
    pub fn with_user_token(mut self, which: UserToken, token: String) -> Secrets {
        self.user_tokens.retain(|(w, _)| *w != which);
        self.user_tokens.push((which, token));
        self
    }

    /// One of the user's tokens, if given.
    pub fn user_token(&self, which: UserToken) -> Option<&str> {
        self.user_tokens.iter().find(|(w, _)| *w == which).map(|(_, t)| t.as_str())
    }

    /// Harbor's token signing key and certificate.
    pub fn harbor_token(&self) -> &KeyPair {
        &self.harbor_token
    }

    /// The value of `secret`.
    pub fn get(&self, secret: Secret) -> &str {
        self.values.iter().find(|(s, _)| *s == secret).map(|(_, v)| v.as_str()).expect("every secret is loaded")
    }

    /// Every value, for scans that prove a secret went nowhere it should not.
    pub fn values(&self) -> impl Iterator<Item = (Secret, &str)> {
        self.values.iter().map(|(s, v)| (*s, v.as_str()))
    }

    /// The password of Harbor's robot account for the runners. Harbor wants
    /// an upper-case letter, a lower-case letter and a digit in it, which a
    /// random string need not have: a fixed `Hr1` in front makes sure.
    pub fn harbor_robot_password(&self) -> String {
        format!("Hr1{}", self.get(Secret::HarborRobot))
    }

    /// An htpasswd line of `user` with the bcrypt hash of `secret`.
    pub fn htpasswd(&self, user: &str, secret: Secret) -> String {
        format!("{user}:{}", self.bcrypt(secret))
    }

    /// The bcrypt hash of `secret` as Go's bcrypt writes it (`$2a$`, cost 10),
    /// which is what Argo CD compares a login with. The salt is derived from
    /// the secret itself, so the hash is the same on every render: a salt
    /// needs to be unique, and a random 190-bit secret makes it so.
    pub fn bcrypt(&self, secret: Secret) -> String {
        let value = self.get(secret);
        let digest = sha2::Sha256::digest(format!("hearth bcrypt salt\0{value}").as_bytes());
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&digest[..16]);
        bcrypt::hash_with_salt(value, 10, salt).expect("cost 10 is valid").format_for_version(bcrypt::Version::TwoA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load_or_create(dir.path()).unwrap();
        let b = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        let meta = fs::metadata(Secrets::dir(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        for s in Secret::ALL {
            let meta = fs::metadata(Secrets::path(dir.path(), s)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", s.name());
            assert_eq!(a.get(s).len(), s.length());
        }
        // Every secret differs, and another appliance gets others.
        let other = Secrets::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        for s in Secret::ALL {
            assert_ne!(a.get(s), other.get(s));
        }
        assert!(!format!("{a:?}").contains(a.get(Secret::ArgocdAdmin)));
    }

    #[test]
    fn a_missing_secret_is_made_and_a_damaged_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load_or_create(dir.path()).unwrap();
        fs::remove_file(Secrets::path(dir.path(), Secret::GitAdmin)).unwrap();
        let b = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(a.get(Secret::ArgocdAdmin), b.get(Secret::ArgocdAdmin));
        assert_ne!(a.get(Secret::GitAdmin), b.get(Secret::GitAdmin));
        fs::write(Secrets::path(dir.path(), Secret::ArgocdAdmin), "no good!\n").unwrap();
        let e = Secrets::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("argocd-admin-password") && e.contains("not a secret hearth made"), "{e}");
    }

    #[test]
    fn the_bcrypt_hash_is_stable_and_verifies() {
        let s = Secrets::for_tests("x");
        let h = s.bcrypt(Secret::ArgocdAdmin);
        assert!(h.starts_with("$2a$10$"), "{h}");
        assert_eq!(h, s.bcrypt(Secret::ArgocdAdmin));
        assert!(bcrypt::verify(s.get(Secret::ArgocdAdmin), &h).unwrap());
        assert!(!bcrypt::verify("wrong", &h).unwrap());
        assert_ne!(h, Secrets::for_tests("y").bcrypt(Secret::ArgocdAdmin));
    }
}
