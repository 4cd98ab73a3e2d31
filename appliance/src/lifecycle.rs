//! The appliance's verbs as library calls: `launch`, `reinstall`, `destroy`,
//! `status` (and the staged wait they end with), plus what `kubeconfig`, `ssh`
//! and `console` need. Every decision lives here: which spec applies, what an
//! existing appliance is ([`existing`]), whether stopped domains are started,
//! when a launch is refused. The binary parses arguments, renders the
//! [`Event`]s, the [`Status`] and the errors (with [`Error::hint`]), and never
//! talks to libvirt itself.
//!
//! Flow of a launch, top-down: spec -> state lock -> libvirt -> [`existing`] ->
//! (new) image from the store -> [`launch::up`] (network alongside PKI, overlays
//! and seeds; record; domains) -> [`Checker::wait`] up to the asked stage.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_builder::build::{self, BuildError};
use hearth_builder::recipe::{self, RecipeError};
use hearth_builder::store::{Store, StoreError};

use crate::files::FileError;
use crate::launch::{self, LaunchError, Options};
use crate::libvirt::{Libvirt, LibvirtError};
pub use crate::libvirt::{NetworkUse, Removed};
use crate::ready::{Checker, Stage, Status, WaitError};
use crate::spec::{self, Appliance, NodeSpec, SpecError};
use crate::state::{Launched, LaunchedNode, PlatformRecord, State, StateError};

/// Errors of the verbs. [`Error::hint`] says what to do about the ones a user
/// can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The appliance.toml is not valid.
    #[error("in `{}`", path.display())]
    Spec {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: SpecError,
    },
    /// A file (the spec, the SSH key).
    #[error(transparent)]
    File(#[from] FileError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// libvirt could not be reached.
    #[error("connecting to libvirt at `{uri}`")]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: LibvirtError,
    },
    /// A libvirt call.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// Preparing or starting the nodes.
    #[error("launching appliance `{name}`")]
    Launch {
        /// The appliance.
        name: String,
        /// The cause.
        #[source]
        source: LaunchError,
    },
    /// The recipe of the node image.
    #[error("reading the recipe of appliance `{name}`")]
    Recipe {
        /// The appliance.
        name: String,
        /// The cause.
        #[source]
        source: Box<RecipeError>,
    },
    /// The node image is not in the store.
    #[error("launching appliance `{name}`")]
    Image {
        /// The appliance.
        name: String,
        /// Its recipe.
        recipe: PathBuf,
        /// The cause.
        #[source]
        source: Box<BuildError>,
    },
    /// The store (its roots).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some of the appliance's domains are gone.
    #[error("appliance `{name}` is partly gone: no domain {}", missing.join(", "))]
    PartlyGone {
        /// The appliance.
        name: String,
        /// The missing domains.
        missing: Vec<String>,
    },
    /// Reinstall of an appliance that has no record here.
    #[error("appliance `{name}` was never launched here ({})", dir.display())]
    NeverLaunched {
        /// The appliance.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// Status and friends of an appliance that has no record here.
    #[error("appliance `{name}` is not launched here ({})", dir.display())]
    NotLaunched {
        /// The appliance.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// The recorded image left the store.
    #[error("the image of appliance `{name}` is gone from the store: `{}`", image.display())]
    ImageGone {
        /// The appliance.
        name: String,
        /// The image entry.
        image: PathBuf,
        /// Its recipe.
        recipe: PathBuf,
    },
    /// No such node.
    #[error("appliance `{name}` has no node `{node}`")]
    NoNode {
        /// The appliance.
        name: String,
        /// The node asked for.
        node: String,
        /// Its nodes.
        nodes: Vec<String>,
    },
    /// A stage was not reached in time.
    #[error("waiting for appliance `{name}`")]
    Wait {
        /// The appliance.
        name: String,
        /// The cause.
        #[source]
        source: WaitError,
    },
    /// The runtime of the Kubernetes client.
    #[error("starting the Kubernetes client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The appliance has no GitOps repository (no platform, or Argo CD off).
    #[error("appliance `{name}` has no GitOps repository: {why}")]
    NoGitops {
        /// The appliance.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// An export would overwrite something.
    #[error("`{}` exists: the export writes a new directory", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// No such secret.
    #[error("appliance `{name}` has no secret `{secret}`")]
    NoSecret {
        /// The appliance.
        name: String,
        /// The name asked for.
        secret: String,
    },
}

impl Error {
    /// What the user can do about it, where something helps.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Connect { uri, .. } => format!(
                "is libvirtd running and may this user use `{uri}`? (`sudo systemctl start libvirtd`; or join the \
                 `libvirt` group; `libvirt_uri` in appliance.toml picks another)"
            ),
            Error::Image { recipe, source, .. } if matches!(**source, BuildError::NotBuilt { .. }) => format!(
                "build it first: `hearth build {}` (offline: `hearth store import BUNDLE`, then build)",
                recipe.display()
            ),
            Error::PartlyGone { .. } => "`hearth reinstall` recreates its VMs from the stored image".into(),
            Error::NeverLaunched { .. } | Error::NotLaunched { .. } => "`hearth launch` creates it".into(),
            Error::ImageGone { recipe, .. } => {
                format!("`hearth build {}`, then `hearth destroy` and `hearth launch`", recipe.display())
            }
            Error::NoNode { nodes, .. } => format!("its nodes: {}", nodes.join(", ")),
            Error::NoSecret { .. } => format!(
                "its secrets: {}",
                crate::secrets::Secret::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
            Error::NoGitops { .. } => {
                "the platform (a recipe with [[manifests]]) and `argocd` in [platform.components] bring one".into()
            }
            Error::Wait { .. } => {
                "`hearth status` shows each node's first-boot stage; `hearth console NODE` shows its console".into()
            }
            _ => return None,
        })
    }
}

/// What happens during a verb, for the binary to show (library code never
/// prints).
#[derive(Debug)]
pub enum Event<'a> {
    /// No SSH public key was found: `hearth ssh` will not get in.
    NoSshKey,
    /// The recipe has no platform manifests: the cluster gets no platform
    /// (and, without a CNI, no node becomes Ready).
    NoPlatform,
    /// A component is on in the recorded spec, but the recorded launch has no
    /// input for it (it was launched by an older hearth): it stays off.
    RecordLacks {
        /// The component.
        component: &'static str,
    },
    /// What was done with the network.
    Network(&'a NetworkUse),
    /// Where the host side of a launch spent its time.
    HostSide {
        /// Loading or making the PKI.
        pki: Duration,
        /// Rendering and checking the platform.
        render: Duration,
        /// Overlays and seeds (the network alongside).
        files: Duration,
        /// Defining and starting the domains.
        domains: Duration,
    },
    /// The domains of a generation were started.
    Started {
        /// The appliance.
        appliance: &'a str,
        /// How many.
        vms: usize,
        /// The generation.
        generation: u32,
        /// The host side, from the start of the verb.
        took: Duration,
    },
    /// The appliance runs already; nothing was changed.
    AlreadyRunning {
        /// The appliance.
        appliance: &'a str,
    },
    /// A stopped domain of the appliance was started.
    StartedStopped {
        /// The domain.
        domain: &'a str,
    },
    /// A reinstall removed the old generation.
    TornDown {
        /// Domains removed.
        vms: usize,
        /// Time so far.
        took: Duration,
    },
    /// A reinstall's host side is done.
    Reinstalled {
        /// Its time.
        took: Duration,
    },
    /// The wait's live line: what is missing now.
    Waiting(&'a str),
    /// A stage was reached.
    Reached {
        /// The stage.
        stage: Stage,
        /// Since the wait began.
        after: Duration,
    },
}

/// Receives [`Event`]s.
pub trait Events {
    /// One event.
    fn event(&self, e: &Event<'_>);
}

/// Drops every event.
pub struct Quiet;

impl Events for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Where a verb runs: chosen by the caller (the binary reads flags and the
/// environment, the library does not).
pub struct Host<'a> {
    /// Where appliance state lives: `<root>/<name>/` and `<root>/<name>.lock`.
    pub state_root: PathBuf,
    /// The user's home, for the default SSH key `~/.ssh/id_ed25519.pub`.
    pub home: Option<PathBuf>,
    /// Where progress goes.
    pub events: &'a dyn Events,
}

/// How long to wait, and for what.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// The last stage to wait for.
    pub until: Stage,
    /// Every stage's timeout, overriding [`Stage::default_timeout`].
    pub timeout: Option<Duration>,
}

/// The spec to use: the named file, else `./appliance.toml`, else the built-in
/// layout. Relative paths in a file are taken from the file's directory.
pub fn load_spec(arg: Option<&Path>) -> Result<Appliance, Error> {
    let local = Path::new("appliance.toml");
    let path = match arg {
        Some(p) => p,
        None if local.exists() => local,
        None => return Ok(Appliance::default()),
    };
    let text = fs::read_to_string(path).map_err(|source| FileError { op: "reading", path: path.to_owned(), source })?;
    let mut a = spec::parse_spec(&text).map_err(|source| Error::Spec { path: path.to_owned(), source })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if arg.is_some() || base != Path::new(".") {
        for p in [&mut a.recipe, &mut a.storage_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let files = [
            &mut a.ssh_public_key,
            &mut a.gitops.credentials,
            &mut a.platform.pulumi.token,
            &mut a.platform.arc.credentials,
        ];
        for k in files.into_iter().flatten() {
            if k.is_relative() {
                *k = base.join(&*k);
            }
        }
    }
    Ok(a)
}

/// What exists of an appliance here, as its record and libvirt say.
#[derive(Debug)]
pub enum Existing {
    /// No record: never launched here (or destroyed).
    NotLaunched,
    /// A record, but none of its domains exist (a half launch, or libvirt was
    /// reset): launching again makes it anew.
    Gone(Launched),
    /// Some of its domains are missing: only a reinstall helps.
    PartlyGone {
        /// The record.
        launched: Launched,
        /// Missing domains.
        missing: Vec<String>,
    },
    /// Every domain exists and some are stopped.
    Stopped {
        /// The record.
        launched: Launched,
        /// Stopped domains.
        stopped: Vec<String>,
    },
    /// Every domain runs.
    Running(Launched),
}

/// What exists of the appliance recorded in `state`.
pub fn existing(lv: &Libvirt, state: &State) -> Result<Existing, Error> {
    let Some(launched) = state.launched()? else { return Ok(Existing::NotLaunched) };
    let (mut missing, mut stopped) = (Vec::new(), Vec::new());
    for n in &launched.nodes {
        if !lv.domain_exists(&n.domain)? {
            missing.push(n.domain.clone());
        } else if !lv.is_running(&n.domain)? {
            stopped.push(n.domain.clone());
        }
    }
    Ok(if missing.len() == launched.nodes.len() {
        Existing::Gone(launched)
    } else if !missing.is_empty() {
        Existing::PartlyGone { launched, missing }
    } else if !stopped.is_empty() {
        Existing::Stopped { launched, stopped }
    } else {
        Existing::Running(launched)
    })
}

/// The store root that keeps an appliance's image alive.
pub fn store_root_name(a: &Appliance) -> String {
    format!("appliance-{}", a.name)
}

fn connect(uri: &str) -> Result<Libvirt, Error> {
    Libvirt::open(uri).map_err(|source| Error::Connect { uri: uri.to_owned(), source })
}

/// The stored image for `a`, found by its recipe (never built or fetched
/// here), with the recipe's platform manifests; a store root keeps them
/// while the appliance exists.
fn find_image(store: &Store, a: &Appliance) -> Result<(PathBuf, Option<PlatformRecord>), Error> {
    let loaded =
        recipe::load_recipe(&a.recipe).map_err(|e| Error::Recipe { name: a.name.clone(), source: Box::new(e) })?;
    let not_built = |e| Error::Image { name: a.name.clone(), recipe: a.recipe.clone(), source: Box::new(e) };
    let (image, filled) = build::find_built(store, &loaded).map_err(not_built)?;
    let mut keep = vec![image.clone()];
    let mut platform = None;
    if !loaded.recipe.manifests.is_empty() {
        let mut record = PlatformRecord { recipe: a.recipe.display().to_string(), ..Default::default() };
        for m in &loaded.recipe.manifests {
            let file = build::input_file(store, &filled, &m.input_id()).map_err(not_built)?;
            record.manifests.insert(m.component.get_ref().clone(), file);
            if let Some(dir) = &m.path {
                record.chart_dirs.insert(m.component.get_ref().clone(), dir.clone());
            }
            if let Some(f) = filled.iter().find(|f| f.input.id == m.input_id()) {
                keep.push(f.path.clone());
            }
        }
        for f in &filled {
            if let recipe::InputKind::Image { reference, .. } = &f.input.kind {
                record.images.push((reference.clone(), f.input.pin.map(|d| d.oci())));
            }
        }
        platform = Some(record);
    }
    store.add_root(&store_root_name(a), &keep)?;
    Ok((store.entry_dir(&image), platform))
}

/// `launch`: makes the appliance (or starts its stopped domains, or only looks
/// when it runs) and waits for `wait`.
pub fn launch(h: &Host, a: &Appliance, store: &Store, wait: &Wait) -> Result<Status, Error> {
    let state = State::new(&h.state_root, &a.name);
    let _held = state.lock()?;
    let lv = connect(&a.libvirt_uri)?;
    let (image, platform, generation) = match existing(&lv, &state)? {
        Existing::NotLaunched => {
            let (image, platform) = find_image(store, a)?;
            (image, platform, 1)
        }
        Existing::Gone(l) => (l.image, l.platform, l.generation),
        Existing::PartlyGone { launched, missing } => {
            return Err(Error::PartlyGone { name: launched.appliance.name, missing });
        }
        Existing::Running(l) => {
            h.events.event(&Event::AlreadyRunning { appliance: &l.appliance.name });
            return look(&lv, &state, &l);
        }
        Existing::Stopped { launched, stopped } => {
            for d in &stopped {
                lv.start(&launched.appliance.name, d)?;
                h.events.event(&Event::StartedStopped { domain: d });
            }
            return wait_for(h, &lv, &state, &launched, wait);
        }
    };
    let next = Next { image: &image, platform: platform.as_ref(), generation };
    let launched = bring_up(h, &lv, a, &state, next, Instant::now())?;
    wait_for(h, &lv, &state, &launched, wait)
}

/// `reinstall`: throws the VMs, overlays and seeds away and launches the next
/// generation of the appliance as recorded (its spec, image and PKI), offline.
pub fn reinstall(h: &Host, a: &Appliance, wait: &Wait) -> Result<Status, Error> {
    let state = State::new(&h.state_root, &a.name);
    let _held = state.lock()?;
    let Some(l) = state.launched()? else {
        return Err(Error::NeverLaunched { name: a.name.clone(), dir: state.dir().to_owned() });
    };
    let started = Instant::now();
    if !l.image.join("disk.qcow2").exists() {
        return Err(Error::ImageGone { name: a.name.clone(), image: l.image, recipe: a.recipe.clone() });
    }
    let lv = connect(&l.appliance.libvirt_uri)?;
    let removed = launch::teardown(&lv, &l.appliance, &l.appliance.storage_dir, true)
        .map_err(|source| Error::Launch { name: a.name.clone(), source })?;
    state.forget_host_keys()?;
    h.events.event(&Event::TornDown { vms: removed.domains.len(), took: started.elapsed() });
    let next = Next { image: &l.image, platform: l.platform.as_ref(), generation: l.generation + 1 };
    let next = bring_up(h, &lv, &l.appliance, &state, next, started)?;
    h.events.event(&Event::Reinstalled { took: started.elapsed() });
    wait_for(h, &lv, &state, &next, wait)
}

/// What [`destroy`] did.
#[derive(Debug)]
pub enum Destroyed {
    /// Nothing of the appliance existed here.
    Nothing {
        /// The appliance.
        name: String,
    },
    /// What was removed.
    Removed {
        /// The appliance as launched.
        appliance: Box<Appliance>,
        /// libvirt objects.
        removed: Removed,
        /// The state directory, removed.
        state_dir: PathBuf,
    },
}

/// `destroy`: removes only what hearth made for the appliance (also after a
/// lost record, found by ownership metadata and MAC), its state and, with a
/// store, the root that kept its image.
pub fn destroy(h: &Host, a: &Appliance, store: Option<&Store>) -> Result<Destroyed, Error> {
    let state = State::new(&h.state_root, &a.name);
    let _held = state.lock()?;
    let recorded = state.launched()?;
    let target = recorded.as_ref().map_or(a, |l| &l.appliance);
    let lv = connect(&target.libvirt_uri)?;
    if recorded.is_none() && lv.owned_domains(&a.name)?.is_empty() && !lv.owns_network(a)? {
        state.remove()?;
        return Ok(Destroyed::Nothing { name: a.name.clone() });
    }
    let removed = launch::teardown(&lv, target, &target.storage_dir, false)
        .map_err(|source| Error::Launch { name: target.name.clone(), source })?;
    if let Some(store) = store {
        store.remove_root(&store_root_name(target))?;
    }
    state.remove()?;
    Ok(Destroyed::Removed { appliance: Box::new(target.clone()), removed, state_dir: state.dir().to_owned() })
}

/// The record of a launched appliance, or [`Error::NotLaunched`].
pub fn launched(h: &Host, a: &Appliance) -> Result<(State, Launched), Error> {
    let state = State::new(&h.state_root, &a.name);
    match state.launched()? {
        Some(l) => Ok((state, l)),
        None => Err(Error::NotLaunched { name: a.name.clone(), dir: state.dir().to_owned() }),
    }
}

/// `status`: one look at a launched appliance.
pub fn status(h: &Host, a: &Appliance) -> Result<Status, Error> {
    let (state, l) = launched(h, a)?;
    let lv = connect(&l.appliance.libvirt_uri)?;
    look(&lv, &state, &l)
}

/// The admin kubeconfig of a launched appliance (0600, made on first use).
pub fn admin_kubeconfig(h: &Host, a: &Appliance) -> Result<(Launched, PathBuf), Error> {
    let (state, l) = launched(h, a)?;
    let path = state.admin_kubeconfig(&l.appliance)?;
    Ok((l, path))
}

/// The platform CA certificate (PEM) of a launched appliance.
pub fn platform_ca(h: &Host, a: &Appliance) -> Result<String, Error> {
    let (state, _) = launched(h, a)?;
    Ok(state.pki()?.platform_ca.cert_pem)
}

/// `gitops export`: writes the GitOps repository of a launched appliance
/// into `dir` (new) as a Git checkout of one commit on `main`: the commit
/// first boot seeds the in-cluster Git server with (rendered again from the
/// recorded inputs, byte for byte). Returns the commit id.
pub fn gitops_export(h: &Host, a: &Appliance, dir: &Path) -> Result<String, Error> {
    let (state, l) = launched(h, a)?;
    let name = l.appliance.name.clone();
    let Some(record) = &l.platform else {
        return Err(Error::NoGitops { name, why: "it was launched without a platform" });
    };
    if dir.exists() {
        return Err(Error::Exists { dir: dir.to_owned() });
    }
    let launch_err = |source| Error::Launch { name: name.clone(), source };
    let inputs = launch::PlatformInputs::load(record).map_err(launch_err)?;
    let secrets = launch::platform_secrets(&l.appliance, &state).map_err(launch_err)?;
    let plan =
        inputs.render(&l.appliance, &state.pki()?, &secrets, &state.dir().join("render.tmp")).map_err(launch_err)?;
    let Some(repo) = plan.gitops else {
        return Err(Error::NoGitops { name, why: "Argo CD is off in [platform.components]" });
    };
    let commit = crate::platform::gitops::commit(&l.appliance, &repo.files);
    debug_assert_eq!(commit.head.hex(), repo.head);
    commit.write_checkout(dir)?;
    Ok(repo.head)
}

/// One way into the platform: where, as whom, and where the password is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Door {
    /// What it is.
    pub what: &'static str,
    /// Its URL (or how to reach it).
    pub url: String,
    /// The user name, if it has one.
    pub user: Option<&'static str>,
    /// The file holding its password, if any (read it with `hearth access --show`).
    pub secret: Option<(crate::secrets::Secret, PathBuf)>,
}

/// `access`: the platform's URLs, user names and where each password is.
pub fn access(h: &Host, a: &Appliance) -> Result<Vec<Door>, Error> {
    use crate::platform::Component;
    use crate::secrets::{Secret, Secrets};
    let (state, l) = launched(h, a)?;
    let a = &l.appliance;
    let secret = |s: Secret| Some((s, Secrets::path(state.dir(), s)));
    let mut doors = vec![Door {
        what: "Kubernetes API",
        url: format!("https://{}", a.api_endpoint()),
        user: Some("kubernetes-admin (`hearth kubeconfig`)"),
        secret: None,
    }];
    if l.platform.is_none() {
        return Ok(doors);
    }
    if Component::IngressNginx.enabled(a) {
        doors.push(Door {
            what: "ingress-nginx",
            url: format!("http://{0} https://{0}", a.ingress_ip()),
            user: None,
            secret: None,
        });
    }
    if Component::Harbor.enabled(a) {
        doors.push(Door {
            what: "Harbor",
            url: format!("https://{} (registry: docker login {0})", a.harbor_ip()),
            user: Some("admin"),
            secret: secret(Secret::HarborAdmin),
        });
    }
    if Component::ArgoCd.enabled(a) {
        doors.push(Door {
            what: "Argo CD",
            url: format!("https://{}", a.argocd_ip()),
            user: Some("admin"),
            secret: secret(Secret::ArgocdAdmin),
        });
        doors.push(Door {
            what: "GitOps repository",
            url: crate::platform::gitops::repo_url(a),
            user: a.gitops.repo.is_none().then_some(crate::platform::gitops::GIT_USER),
            secret: if a.gitops.repo.is_none() { secret(Secret::GitAdmin) } else { None },
        });
    }
    Ok(doors)
}

/// One secret of a launched appliance, by name: for `hearth access --show`.
pub fn secret(h: &Host, a: &Appliance, name: &str) -> Result<String, Error> {
    use crate::secrets::Secret;
    let (state, l) = launched(h, a)?;
    let s = Secret::from_name(name)
        .ok_or_else(|| Error::NoSecret { name: l.appliance.name.clone(), secret: name.to_owned() })?;
    let secrets = state.secrets()?;
    // As the service takes it.
    Ok(if s == Secret::HarborRobot { secrets.harbor_robot_password() } else { secrets.get(s).to_owned() })
}

fn node_of<'a>(l: &'a Launched, node: &str) -> Result<(&'a NodeSpec, &'a LaunchedNode), Error> {
    l.appliance.nodes.iter().zip(&l.nodes).find(|(n, _)| n.name == node).ok_or_else(|| Error::NoNode {
        name: l.appliance.name.clone(),
        node: node.to_owned(),
        nodes: l.appliance.nodes.iter().map(|n| n.name.clone()).collect(),
    })
}

/// The `ssh` command into `node` of a launched appliance: the user's key, the
/// appliance's own known_hosts (forgotten on reinstall), the image's user.
pub fn ssh_command(h: &Host, a: &Appliance, node: &str, command: &[String]) -> Result<Command, Error> {
    let (state, l) = launched(h, a)?;
    let (spec, _) = node_of(&l, node)?;
    let mut cmd = Command::new("ssh");
    if let Some((public, _)) = ssh_public_key(&l.appliance, h.home.as_deref())? {
        let private = public.with_extension("");
        if private.exists() {
            cmd.arg("-i").arg(private);
        }
    }
    cmd.arg("-o")
        .arg(format!("UserKnownHostsFile={}", state.known_hosts().display()))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg(format!("{}@{}", l.appliance.ssh_user, spec.ip));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    Ok(cmd)
}

/// The command that attaches to `node`'s serial console (`virsh console`),
/// with the domain and its console log.
pub fn console_command(h: &Host, a: &Appliance, node: &str) -> Result<(Command, LaunchedNode), Error> {
    let (_, l) = launched(h, a)?;
    let (_, rec) = node_of(&l, node)?;
    let mut cmd = Command::new("virsh");
    cmd.args(["-c", &l.appliance.libvirt_uri, "console", &rec.domain]);
    Ok((cmd, rec.clone()))
}

/// `kvm` where /dev/kvm exists, else `qemu` (TCG), unless the spec says.
fn domain_type(a: &Appliance) -> String {
    a.domain_type.clone().unwrap_or_else(|| if Path::new("/dev/kvm").exists() { "kvm" } else { "qemu" }.into())
}

/// The user's public key: the configured one, else `~/.ssh/id_ed25519.pub`
/// (which may be absent).
fn ssh_public_key(a: &Appliance, home: Option<&Path>) -> Result<Option<(PathBuf, String)>, Error> {
    let path = match (&a.ssh_public_key, home) {
        (Some(p), _) => p.clone(),
        (None, Some(h)) => h.join(".ssh/id_ed25519.pub"),
        (None, None) => return Ok(None),
    };
    match fs::read_to_string(&path) {
        Ok(k) => Ok(Some((path, k.trim().to_owned()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && a.ssh_public_key.is_none() => Ok(None),
        Err(source) => Err(FileError { op: "reading the SSH public key", path, source }.into()),
    }
}

/// What a generation is made from.
struct Next<'a> {
    /// The image entry directory.
    image: &'a Path,
    /// The platform's inputs, if the recipe has any.
    platform: Option<&'a PlatformRecord>,
    /// The generation's number.
    generation: u32,
}

/// Prepares and starts generation `generation` of `a` from the image entry
/// `image`; `started` is when the verb began (for the timings reported).
fn bring_up(
    h: &Host,
    lv: &Libvirt,
    a: &Appliance,
    state: &State,
    next: Next,
    started: Instant,
) -> Result<Launched, Error> {
    let Next { image, platform, generation } = next;
    // Generation 2 on renders what was recorded: a component the record has no
    // input for (launched before hearth knew it) stays off, and is recorded so.
    let recorded;
    let a = match platform {
        Some(record) if generation > 1 => {
            let mut b = a.clone();
            for c in crate::platform::Component::ALL {
                let has = record.manifests.contains_key(c.name());
                if c.enabled(&b) && !has && c != crate::platform::Component::ArcRunners {
                    c.set_enabled(&mut b, false);
                    h.events.event(&Event::RecordLacks { component: c.name() });
                }
            }
            recorded = b;
            &recorded
        }
        _ => a,
    };
    let key = ssh_public_key(a, h.home.as_deref())?;
    if key.is_none() {
        h.events.event(&Event::NoSshKey);
    }
    let inputs = match platform {
        Some(record) => Some(
            launch::PlatformInputs::load(record).map_err(|source| Error::Launch { name: a.name.clone(), source })?,
        ),
        None => {
            h.events.event(&Event::NoPlatform);
            None
        }
    };
    let dtype = domain_type(a);
    let options = Options {
        state: state.dir(),
        storage: &a.storage_dir,
        generation,
        ssh_key: key.as_ref().map(|(_, k)| k.as_str()),
        domain_type: &dtype,
        platform: inputs.as_ref(),
    };
    let up =
        launch::up(lv, a, state, image, &options).map_err(|source| Error::Launch { name: a.name.clone(), source })?;
    h.events.event(&Event::HostSide {
        pki: up.timings.pki,
        render: up.timings.render,
        files: up.timings.files,
        domains: up.timings.domains,
    });
    h.events.event(&Event::Network(&up.network));
    h.events.event(&Event::Started {
        appliance: &a.name,
        vms: up.launched.nodes.len(),
        generation,
        took: started.elapsed(),
    });
    Ok(up.launched)
}

/// One look at a launched appliance.
fn look(lv: &Libvirt, state: &State, l: &Launched) -> Result<Status, Error> {
    let kubeconfig = state.admin_kubeconfig(&l.appliance)?;
    let mut checker = Checker::new(lv, l, &kubeconfig).map_err(Error::Runtime)?;
    checker.status().map_err(|source| Error::Wait { name: l.appliance.name.clone(), source })
}

/// Waits for `wait.until`, reporting the live line and each stage reached.
fn wait_for(h: &Host, lv: &Libvirt, state: &State, l: &Launched, wait: &Wait) -> Result<Status, Error> {
    let kubeconfig = state.admin_kubeconfig(&l.appliance)?;
    let mut checker = Checker::new(lv, l, &kubeconfig).map_err(Error::Runtime)?;
    let timeouts = |s: Stage| wait.timeout.unwrap_or_else(|| s.default_timeout());
    checker
        .wait(wait.until, &timeouts, &mut |line| h.events.event(&Event::Waiting(line)), &mut |stage, after| {
            h.events.event(&Event::Reached { stage, after })
        })
        .map_err(|source| Error::Wait { name: l.appliance.name.clone(), source })
}
