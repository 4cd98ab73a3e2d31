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
use crate::seed;
use crate::spec::{Appliance, NodeSpec};
use crate::state::{Launched, State};
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
    /// A file.
    #[error("{op} `{}`", path.display())]
    Io {
        /// What.
        op: &'static str,
        /// Which.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LaunchError + 'a {
    move |source| LaunchError::Io { op, path: path.to_owned(), source }
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
}

/// Prepares every node's files (overlays and seeds are made anew), the nodes
/// side by side: each is two short-lived processes and a few small files.
pub fn prepare(a: &Appliance, pki: &Pki, image: &Image, o: &Options) -> Result<Vec<NodePlan>, LaunchError> {
    let ca_hash = pki.ca_cert_hash()?;
    fs::create_dir_all(o.storage).map_err(io("creating", o.storage))?;
    std::thread::scope(|s| {
        let workers: Vec<_> = a
            .nodes
            .iter()
            .map(|node| {
                let ca_hash = &ca_hash;
                s.spawn(move || prepare_node(a, node, image, o, pki, ca_hash))
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
    let iso = seed_img.with_extension("iso.partial");
    cmd::run(
        Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(dir.join("user-data"))
            .arg(dir.join("meta-data"))
            .arg(dir.join("network-config")),
    )?;
    fs::set_permissions(&iso, fs::Permissions::from_mode(0o600)).map_err(io("protecting", &iso))?;
    fs::rename(&iso, &seed_img).map_err(io("writing", &seed_img))?;
    let files = xml::NodeFiles { disk: &disk, seed: &seed_img, console_log: &console_log };
    let boot = xml::Boot::Kernel { kernel: &image.kernel, initrd: &image.initrd };
    let xml_text = xml::domain(a, node, &files, &boot, o.domain_type, o.generation);
    Ok(NodePlan { node: node.name.clone(), domain, disk, seed: seed_img, console_log, xml: xml_text })
}

/// Where the host side of a launch spent its time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Loading or making the PKI.
    pub pki: Duration,
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
            let plans = prepare(a, &pki, &Image::in_entry(image), o)?;
            timings.files = began.elapsed() - timings.pki;
            let launched = Launched::new(a, image, o.generation, o.domain_type, &plans);
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
