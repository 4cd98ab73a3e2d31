//! Host-side preparation and launch of an appliance: PKI, one thin qcow2
//! overlay per node backed by the store image, one NoCloud seed per node (an
//! ISO 9660 image labelled `cidata`, attached as a virtio disk), the network,
//! and the domains. Reinstall = destroy the domains, overlays and seeds, keep
//! the PKI and the image, prepare the next generation, launch again: nothing
//! here touches the network beyond libvirt's own.
//!
//! [`up`] reads top-down: the network on its own thread; here the PKI (loaded
//! or made once), then [`prepare`] per node (overlay, seed, domain XML), the
//! record; then the domains defined and started.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_builder::cmd::{self, CmdError};

use crate::files::{FileError, remove_if_present, write_atomic};
use crate::libvirt::{Libvirt, LibvirtError, NetworkUse};
use crate::pki::{Pki, PkiError};
use crate::platform::{self, Plan};
use crate::secrets::Secrets;
use crate::seed;
use crate::spec::{Appliance, NodeSpec};
use crate::state::{Launched, PlatformRecord, State};
use crate::xml;

/// Errors of preparing or launching.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// qemu-img or genisoimage.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// libvirt.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// A node's file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The platform does not render or would not run offline.
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
    /// A Helm chart.
    #[error(transparent)]
    Chart(#[from] platform::charts::ChartError),
    /// Charts to render and no Helm in the recipe.
    #[error("{recipe}: the platform has Helm charts but no `[[manifests]]` with component = \"helm\"")]
    NoHelm {
        /// The recipe.
        recipe: String,
    },
    /// A recipe's manifest names a component hearth does not know.
    #[error(
        "{recipe}: manifest component `{name}` is not one of flannel, local-path, metallb, cert-manager, \
         ingress-nginx, argo-cd, harbor, external-secrets, arc, arc-runner-set, helm"
    )]
    UnknownComponent {
        /// The recipe.
        recipe: String,
        /// The name.
        name: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LaunchError + 'a {
    move |source| FileError { op, path: path.to_owned(), source }.into()
}

/// The image a node boots: the store entry's files.
#[derive(Clone, Debug)]
pub struct Image {
    /// `disk.qcow2`.
    pub disk: PathBuf,
    /// `vmlinuz`.
    pub kernel: PathBuf,
    /// `initrd.img`.
    pub initrd: PathBuf,
}

impl Image {
    /// The files of an image entry directory.
    pub fn in_entry(dir: &Path) -> Image {
        Image { disk: dir.join("disk.qcow2"), kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img") }
    }
}

/// One prepared node.
#[derive(Clone, Debug)]
pub struct NodePlan {
    /// Node name.
    pub node: String,
    /// libvirt domain name.
    pub domain: String,
    /// Overlay disk.
    pub disk: PathBuf,
    /// Seed image.
    pub seed: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Domain XML.
    pub xml: String,
}

/// How to prepare.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// The appliance's state directory (PKI, token, generation).
    pub state: &'a Path,
    /// Where overlays, seeds and console logs go.
    pub storage: &'a Path,
    /// Reinstall counter: part of each node's instance id.
    pub generation: u32,
    /// The user's SSH public key.
    pub ssh_key: Option<&'a str>,
    /// `kvm`, or `qemu` for TCG.
    pub domain_type: &'a str,
    /// The platform to render and check (absent: none is installed).
    pub platform: Option<&'a PlatformInputs>,
}

/// What the platform is rendered from: the recipe's manifests, charts and
/// Helm, and what its image preloads, read from the store as recorded.
#[derive(Clone, Debug)]
pub struct PlatformInputs {
    /// The upstream manifests, by component.
    pub sources: platform::Sources,
    /// The charts (a packaged `.tgz`, or a source archive and the chart's
    /// directory in it), by component.
    pub charts: std::collections::BTreeMap<platform::Component, (PathBuf, Option<String>)>,
    /// The Helm release tarball that renders the charts (or a Helm binary).
    pub helm: Option<PathBuf>,
    /// The images the node image preloads.
    pub preloaded: Vec<platform::Preloaded>,
    /// Where they came from (kept in the launch record).
    pub record: PlatformRecord,
}

impl PlatformInputs {
    /// Reads the recorded manifests from the store.
    pub fn load(record: &PlatformRecord) -> Result<PlatformInputs, LaunchError> {
        let mut sources = platform::Sources::new();
        let mut charts = std::collections::BTreeMap::new();
        let mut helm = None;
        for (name, path) in &record.manifests {
            if name == "helm" {
                helm = Some(path.clone());
                continue;
            }
            let c = platform::Component::from_name(name)
                .ok_or_else(|| LaunchError::UnknownComponent { recipe: record.recipe.clone(), name: name.clone() })?;
            if c.is_chart() {
                charts.insert(c, (path.clone(), record.chart_dirs.get(name).cloned()));
            } else {
                sources.insert(c, fs::read_to_string(path).map_err(io("reading the platform manifest", path))?);
            }
        }
        let preloaded = record
            .images
            .iter()
            .map(|(reference, digest)| platform::Preloaded {
                reference: reference.clone(),
                digest: digest.as_deref().and_then(|d| hearth_builder::digest::Sha256::parse_oci(d).ok()),
            })
            .collect();
        Ok(PlatformInputs { sources, charts, helm, preloaded, record: record.clone() })
    }

    /// Renders the platform of `a`: each enabled chart by Helm first (in
    /// `scratch`, removed after), then the plan.
    pub fn render(&self, a: &Appliance, pki: &Pki, secrets: &Secrets, scratch: &Path) -> Result<Plan, LaunchError> {
        let mut sources = self.sources.clone();
        let wanted: Vec<_> = self.charts.iter().filter(|(c, _)| c.enabled(a)).collect();
        if !wanted.is_empty() {
            let Some(tarball) = &self.helm else {
                return Err(LaunchError::NoHelm { recipe: self.record.recipe.clone() });
            };
            let _ = fs::remove_dir_all(scratch);
            fs::create_dir_all(scratch).map_err(io("creating", scratch))?;
            fs::set_permissions(scratch, fs::Permissions::from_mode(0o700)).map_err(io("protecting", scratch))?;
            let rendered = (|| {
                // The recipe's release tarball; a plain binary is taken as is.
                let gzip = fs::read(tarball).map_err(io("reading", tarball))?.starts_with(&[0x1f, 0x8b]);
                let helm = if gzip {
                    unpack(tarball, scratch, "helm", Some("linux-amd64/helm"))?.join("linux-amd64/helm")
                } else {
                    tarball.clone()
                };
                let mut out = Vec::new();
                for (c, (chart, dir)) in wanted {
                    let chart = match dir {
                        Some(dir) => unpack(chart, scratch, c.name(), Some(dir))?.join(dir),
                        None => chart.clone(),
                    };
                    let values = platform::charts::values(*c, a, secrets);
                    out.push((*c, platform::charts::template(&helm, &chart, *c, &values)?));
                }
                Ok::<_, LaunchError>(out)
            })();
            let _ = fs::remove_dir_all(scratch);
            sources.extend(rendered?);
        }
        Ok(platform::render(a, pki, secrets, &sources)?)
    }
}

/// Unpacks `member` (all when none) of the tar archive `archive` into
/// `scratch/name`; returns that directory.
fn unpack(archive: &Path, scratch: &Path, name: &str, member: Option<&str>) -> Result<PathBuf, LaunchError> {
    let dir = scratch.join(name);
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(archive).arg("-C").arg(&dir);
    tar.args(member);
    cmd::run(&mut tar)?;
    Ok(dir)
}

/// Prepares every node's files (overlays and seeds are made anew), the nodes
/// side by side: each is two short-lived processes and a few small files.
pub fn prepare(
    a: &Appliance,
    pki: &Pki,
    image: &Image,
    o: &Options,
    plan: Option<&Plan>,
) -> Result<Vec<NodePlan>, LaunchError> {
    let ca_hash = pki.ca_cert_hash()?;
    fs::create_dir_all(o.storage).map_err(io("creating", o.storage))?;
    std::thread::scope(|s| {
        let workers: Vec<_> = a
            .nodes
            .iter()
            .map(|node| {
                let ca_hash = &ca_hash;
                let plan = plan.filter(|_| node.role == crate::spec::Role::ControlPlane);
                s.spawn(move || prepare_node(a, node, image, o, pki, ca_hash, plan))
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a node's preparation panicked")).collect()
    })
}

fn prepare_node(
    a: &Appliance,
    node: &NodeSpec,
    image: &Image,
    o: &Options,
    pki: &Pki,
    ca_hash: &str,
    plan: Option<&Plan>,
) -> Result<NodePlan, LaunchError> {
    let domain = a.domain_name(node);
    let disk = o.storage.join(format!("{domain}.qcow2"));
    let seed_img = o.storage.join(format!("{domain}.seed.iso"));
    let console_log = o.storage.join(format!("{domain}.console.log"));
    for old in [&disk, &seed_img, &console_log] {
        remove_if_present(old)?;
    }
    cmd::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image.disk)
            .arg(&disk)
            .arg(format!("{}G", node.disk_gib)),
    )?;
    // The seed holds secrets (the token; on the control plane the CA keys).
    let docs = seed::node_seed(a, node, pki, ca_hash, o.generation, o.ssh_key);
    let dir = o.state.join("seeds").join(&node.name);
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("protecting", &dir))?;
    for (name, body) in
        [("meta-data", &docs.meta_data), ("network-config", &docs.network_config), ("user-data", &docs.user_data)]
    {
        write_atomic(&dir.join(name), body.as_bytes(), 0o600)?;
    }
    // The control plane's platform plan travels on its seed (`platform/`).
    let platform_dir = dir.join("platform");
    match fs::remove_dir_all(&platform_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &platform_dir)(e)),
        _ => {}
    }
    let mut grafts = vec![
        format!("user-data={}", dir.join("user-data").display()),
        format!("meta-data={}", dir.join("meta-data").display()),
        format!("network-config={}", dir.join("network-config").display()),
    ];
    if let Some(plan) = plan {
        write_plan(plan, &platform_dir)?;
        grafts.push(format!("platform/={}", platform_dir.display()));
    }
    let iso = seed_img.with_extension("iso.partial");
    cmd::run(
        Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock", "-graft-points"])
            .args(&grafts),
    )?;
    fs::set_permissions(&iso, fs::Permissions::from_mode(0o600)).map_err(io("protecting", &iso))?;
    fs::rename(&iso, &seed_img).map_err(io("writing", &seed_img))?;
    let files = xml::NodeFiles { disk: &disk, seed: &seed_img, console_log: &console_log };
    let boot = xml::Boot::Kernel { kernel: &image.kernel, initrd: &image.initrd };
    let xml_text = xml::domain(a, node, &files, &boot, o.domain_type, o.generation);
    Ok(NodePlan { node: node.name.clone(), domain, disk, seed: seed_img, console_log, xml: xml_text })
}

/// Writes `plan` into `dir` (0700): the `plan` file, each step's files and
/// the GitOps repository's bundle, every one 0600 (some hold secrets).
pub fn write_plan(plan: &Plan, dir: &Path) -> Result<(), LaunchError> {
    let mkdir = |d: &Path| -> Result<(), LaunchError> {
        fs::create_dir_all(d).map_err(io("creating", d))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io("protecting", d))
    };
    mkdir(dir)?;
    for f in plan.files() {
        let path = dir.join(&f.path);
        mkdir(path.parent().expect("a step directory"))?;
        write_atomic(&path, f.body.as_bytes(), 0o600)?;
    }
    if let Some(repo) = &plan.gitops {
        let bundle = dir.join(platform::gitops::BUNDLE);
        mkdir(bundle.parent().expect("gitops/"))?;
        write_atomic(&bundle, &repo.bundle, 0o600)?;
    }
    write_atomic(&dir.join("plan"), plan.to_text().as_bytes(), 0o600)?;
    Ok(())
}

/// Where the host side of a launch spent its time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Loading or making the PKI.
    pub pki: Duration,
    /// Rendering and checking the platform.
    pub render: Duration,
    /// Overlays and seeds (with the network made alongside).
    pub files: Duration,
    /// Defining and starting the domains.
    pub domains: Duration,
}

/// What [`up`] did.
#[derive(Debug)]
pub struct Up {
    /// What was done with the network.
    pub network: NetworkUse,
    /// The record, as written before any domain was defined.
    pub launched: Launched,
    /// Where the time went.
    pub timings: Timings,
}

/// The whole host side of a launch, its slow parts overlapped: the network is
/// made ready (and a running reused network gets its live DHCP reservations,
/// about 0.35 s each: libvirt restarts dnsmasq for every one) on a thread of
/// its own, while this thread loads the PKI once, prepares the nodes and writes
/// the record (before any domain is defined, so that destroy knows even a half
/// launch); then the domains start side by side. The guests use their static
/// addresses, so they need not wait for the live reservations.
pub fn up(lv: &Libvirt, a: &Appliance, state: &State, image: &Path, o: &Options) -> Result<Up, LaunchError> {
    let began = Instant::now();
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
        let network = s.spawn(move || {
            let net = lv.ensure_network(a);
            let _ = ready_tx.send(net.is_ok());
            let net = net?;
            if matches!(net, NetworkUse::Reused { live_pending: true, .. }) {
                lv.add_live_reservations(a)?;
            }
            Ok::<_, LibvirtError>(net)
        });

        let mut timings = Timings::default();
        let mut host_side = || -> Result<(Vec<NodePlan>, Launched), LaunchError> {
            let pki = state.pki()?;
            timings.pki = began.elapsed();
            // Rendered and checked before any domain is defined: a plan that
            // could not run offline stops the launch here.
            let plan = match o.platform {
                Some(p) => {
                    let plan = p.render(a, &pki, &platform_secrets(a, state)?, &state.dir().join("render.tmp"))?;
                    platform::check(&plan, &p.preloaded, &p.record.recipe)?;
                    Some(plan)
                }
                None => None,
            };
            timings.render = began.elapsed() - timings.pki;
            let plans = prepare(a, &pki, &Image::in_entry(image), o, plan.as_ref())?;
            timings.files = began.elapsed() - timings.pki - timings.render;
            let launched = Launched::new(a, image, o.generation, o.domain_type, &plans, o.platform.map(|p| &p.record));
            state.save_launched(&launched)?;
            Ok((plans, launched))
        };
        let prepared = host_side();

        let network_ready = ready_rx.recv().unwrap_or(false);
        let domains_began = Instant::now();
        let started = match &prepared {
            Ok((plans, _)) if network_ready => start_domains(lv, a, plans),
            _ => Ok(()),
        };
        timings.domains = domains_began.elapsed();
        let network = network.join().expect("network setup panicked")?;
        let (_, launched) = prepared?;
        started?;
        Ok(Up { network, launched, timings })
    })
}

/// The appliance's platform secrets, with the user's tokens its appliance.toml
/// names (GitOps repository, Pulumi, GitHub).
pub fn platform_secrets(a: &Appliance, state: &State) -> Result<Secrets, LaunchError> {
    use crate::secrets::UserToken;
    let mut secrets = state.secrets()?;
    let p = &a.platform;
    let files = [
        (UserToken::Gitops, a.gitops.credentials.as_ref(), "reading the GitOps token"),
        (UserToken::Pulumi, p.pulumi.token.as_ref().filter(|_| p.pulumi.configured()), "reading the Pulumi token"),
        (UserToken::Github, p.arc.credentials.as_ref().filter(|_| p.arc.configured()), "reading the GitHub token"),
    ];
    for (which, path, what) in files {
        if let Some(path) = path {
            let token = fs::read_to_string(path).map_err(io(what, path))?;
            secrets = secrets.with_user_token(which, token.trim().to_owned());
        }
    }
    Ok(secrets)
}

/// Defines and starts the domains side by side: most of a start is QEMU coming
/// up, and libvirt serves concurrent calls on one connection.
fn start_domains(lv: &Libvirt, a: &Appliance, plans: &[NodePlan]) -> Result<(), LibvirtError> {
    std::thread::scope(|s| {
        let starts: Vec<_> =
            plans.iter().map(|p| s.spawn(move || lv.define_and_start(&a.name, &p.domain, &p.xml))).collect();
        starts.into_iter().try_for_each(|t| t.join().expect("a domain start panicked"))
    })
}

/// Removes the domains and their overlays and seeds (and, unless `keep_network`,
/// hearth's network or reservations). The PKI and the image stay.
pub fn teardown(
    lv: &Libvirt,
    a: &Appliance,
    storage: &Path,
    keep_network: bool,
) -> Result<crate::libvirt::Removed, LaunchError> {
    let removed = lv.destroy(a, keep_network)?;
    for node in &a.nodes {
        let domain = a.domain_name(node);
        for suffix in ["qcow2", "seed.iso", "console.log"] {
            remove_if_present(&storage.join(format!("{domain}.{suffix}")))?;
        }
    }
    Ok(removed)
}
