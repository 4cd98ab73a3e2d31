//! An appliance's state directory: `<root>/<appliance>/` holds the PKI and the
//! bootstrap token (secrets 0600, see [`crate::pki`]), the seeds as written
//! (0600), the record of what was launched (`launched.json`) and the admin
//! kubeconfig (0600). `<root>/<appliance>.lock` is held by one launch,
//! reinstall or destroy at a time. **Invariant:** the record is written before any libvirt object is
//! made and removed only after they are gone, so `destroy` always knows what
//! hearth made even after a half-finished launch.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{FileError, remove_if_present, write_atomic};
use crate::pki::{Pki, PkiError};
use crate::secrets::{Secrets, SecretsError};
use crate::spec::Appliance;

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another hearth process holds the appliance.
    #[error("appliance `{name}` is busy: another hearth launch, reinstall or destroy holds `{}`", lock.display())]
    Busy {
        /// The appliance.
        name: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// `launched.json` is not hearth's.
    #[error("`{}` is damaged: {why}", path.display())]
    Damaged {
        /// Which.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The platform's secrets.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A state file.
    #[error(transparent)]
    File(#[from] FileError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| FileError { op, path: path.to_owned(), source }.into()
}

/// One launched node, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchedNode {
    /// Node name.
    pub name: String,
    /// libvirt domain.
    pub domain: String,
    /// Overlay disk.
    pub disk: PathBuf,
    /// Seed image.
    pub seed: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
}

/// What was launched: enough for status, reinstall and destroy without the
/// appliance.toml or the recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// The appliance as launched.
    pub appliance: Appliance,
    /// The image's store entry directory.
    pub image: PathBuf,
    /// Reinstall counter (each node's instance id carries it).
    pub generation: u32,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    /// The nodes.
    pub nodes: Vec<LaunchedNode>,
    /// What the platform was rendered from (absent: no platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRecord>,
}

/// The platform's inputs as launched: a reinstall renders from these again,
/// without the recipe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    /// The recipe (for messages).
    pub recipe: String,
    /// Each component's manifest file (or chart, or Helm tarball) in the store.
    pub manifests: std::collections::BTreeMap<String, PathBuf>,
    /// For a chart in a source archive: its directory inside, by component.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chart_dirs: std::collections::BTreeMap<String, String>,
    /// The images the node image preloads: reference and pinned digest.
    pub images: Vec<(String, Option<String>)>,
}

impl Launched {
    /// The record of generation `generation` of `a`, from its node plans.
    pub fn new(
        a: &Appliance,
        image: &Path,
        generation: u32,
        domain_type: &str,
        plans: &[crate::launch::NodePlan],
        platform: Option<&PlatformRecord>,
    ) -> Launched {
        Launched {
            appliance: a.clone(),
            image: image.to_owned(),
            generation,
            domain_type: domain_type.to_owned(),
            nodes: plans
                .iter()
                .map(|p| LaunchedNode {
                    name: p.node.clone(),
                    domain: p.domain.clone(),
                    disk: p.disk.clone(),
                    seed: p.seed.clone(),
                    console_log: p.console_log.clone(),
                })
                .collect(),
            platform: platform.cloned(),
        }
    }
}

/// The state directory of one appliance.
#[derive(Clone, Debug)]
pub struct State {
    dir: PathBuf,
    name: String,
}

/// Held while a launch, reinstall or destroy runs; released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] fs::File);

impl State {
    /// The state of appliance `name` under `root`.
    pub fn new(root: &Path, name: &str) -> State {
        State { dir: root.join(name), name: name.to_owned() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io("protecting", &self.dir))
    }

    /// Takes the appliance's lock without waiting: a second launch while one
    /// runs is refused, not queued.
    pub fn lock(&self) -> Result<Lock, StateError> {
        let path = self.lock_path();
        let root = path.parent().expect("has a parent");
        fs::create_dir_all(root).map_err(io("creating", root))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        match f.try_lock() {
            Ok(()) => Ok(Lock(f)),
            Err(fs::TryLockError::WouldBlock) => Err(StateError::Busy { name: self.name.clone(), lock: path }),
            Err(fs::TryLockError::Error(e)) => Err(io("locking", &path)(e)),
        }
    }

    /// `<root>/<appliance>.lock`, beside the directory, so that taking the lock
    /// makes no state.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.with_file_name(format!("{}.lock", self.name))
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("launched.json")
    }

    /// The record of the last launch, if any.
    pub fn launched(&self) -> Result<Option<Launched>, StateError> {
        let path = self.record_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StateError::Damaged { path, why: e.to_string() })
    }

    /// Writes the record (atomically).
    pub fn save_launched(&self, l: &Launched) -> Result<(), StateError> {
        self.ensure_dir()?;
        let mut body = serde_json::to_string_pretty(l).expect("the record serialises");
        body.push('\n');
        Ok(write_atomic(&self.record_path(), body.as_bytes(), 0o644)?)
    }

    /// The PKI, made on first use.
    pub fn pki(&self) -> Result<Pki, StateError> {
        self.ensure_dir()?;
        Ok(Pki::load_or_create(&self.dir)?)
    }

    /// The platform's secrets, each made on first use.
    pub fn secrets(&self) -> Result<Secrets, StateError> {
        self.ensure_dir()?;
        Ok(Secrets::load_or_create(&self.dir)?)
    }

    /// The host's admin kubeconfig (0600), made from the CA on first use.
    pub fn admin_kubeconfig(&self, a: &Appliance) -> Result<PathBuf, StateError> {
        let path = self.dir.join("admin.kubeconfig");
        if path.exists() {
            return Ok(path);
        }
        let pki = self.pki()?;
        let body = crate::kubeconfig::admin(a, &pki)?;
        write_atomic(&path, body.as_bytes(), 0o600)?;
        Ok(path)
    }

    /// `known_hosts` for `hearth ssh` (host keys change with every reinstall).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// Forgets the node host keys (a reinstall makes new ones).
    pub fn forget_host_keys(&self) -> Result<(), StateError> {
        Ok(remove_if_present(&self.known_hosts())?)
    }

    /// Removes the whole state directory (PKI included).
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &self.dir)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let s = State::new(root.path(), "k8s-myhome");
        let held = s.lock().unwrap();
        let err = s.lock().unwrap_err().to_string();
        assert!(err.contains("appliance `k8s-myhome` is busy") && err.contains("lock"), "{err}");
        drop(held);
        s.lock().unwrap();
        assert!(!s.dir().exists(), "locking makes no state");
    }

    #[test]
    fn the_record_round_trips_and_a_damaged_one_is_named() {
        let root = tempfile::tempdir().unwrap();
        let s = State::new(root.path(), "a");
        assert_eq!(s.launched().unwrap(), None);
        let l = Launched {
            appliance: Appliance::default(),
            image: "/store/x".into(),
            generation: 2,
            domain_type: "qemu".into(),
            nodes: vec![],
            platform: None,
        };
        s.save_launched(&l).unwrap();
        assert_eq!(s.launched().unwrap(), Some(l));
        fs::write(s.dir().join("launched.json"), "{").unwrap();
        let err = s.launched().unwrap_err().to_string();
        assert!(err.contains("launched.json` is damaged"), "{err}");
    }

    #[test]
    fn the_admin_kubeconfig_is_private() {
        let root = tempfile::tempdir().unwrap();
        let s = State::new(root.path(), "a");
        let p = s.admin_kubeconfig(&Appliance::default()).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("server: https://192.168.122.10:6443"), "{text}");
    }
}
