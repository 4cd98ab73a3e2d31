//! Command-line definitions (clap derive). Help texts teach; behaviour lives in
//! the `cmd_*` modules and the library crates.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The recipe built when none is named.
pub const DEFAULT_RECIPE: &str = "images/ubuntu-24.04-k8s-1.29.toml";

/// hearth: hermetic node images and a self-assembling kubeadm appliance on libvirt.
///
/// `hearth build` turns a pinned recipe into a content-addressed qcow2 node image,
/// bit for bit the same on any machine; `hearth launch` boots the images as fixed-IP
/// libvirt VMs that form the cluster on first boot, offline.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Store directory [default: /var/lib/hearth/store as root, else $XDG_DATA_HOME/hearth/store]
    #[arg(long, global = true, env = "HEARTH_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Never touch the network; a missing input is an error that names it
    #[arg(long, global = true)]
    pub offline: bool,
    /// More detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors and results; no progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Appliance state (PKI, token, launch record) [default: /var/lib/hearth/appliances as root,
    /// else $XDG_STATE_HOME/hearth/appliances]
    #[arg(long, global = true, env = "HEARTH_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a node image from a recipe; prints its store path
    ///
    /// Fetches what is missing (unless --offline), then assembles the image without root,
    /// a VM or the network: the base's root file system is read, the recipe's packages,
    /// archives, files and OCI archives are laid over it, and a new ext4, GPT disk and
    /// zstd-compressed qcow2 are written, with the kernel and initrd beside them. The same
    /// recipe and inputs give the same bytes and the same store path on any machine.
    Build(BuildArgs),
    /// Fill the store with every pinned input of a recipe, nothing else
    ///
    /// Downloads run in parallel (see `[fetch] jobs` in ~/.config/hearth/config.toml),
    /// resume after interruption and are checked against their sha256 while they stream.
    /// Mirrors (`[mirrors]` or HEARTH_MIRRORS="PREFIX=MIRROR[,MIRROR]") replace URL prefixes.
    Fetch(RecipeArg),
    /// Resolve a recipe's unpinned inputs and write its lock file (needs the network)
    ///
    /// Each unpinned download is fetched once, hashed while it streams and kept in the
    /// store; each unpinned image tag is resolved to the digest its registry serves. The
    /// pins go to the lock beside the recipe (`x.toml` -> `x.lock`), sorted.
    Lock(LockArgs),
    /// Create network, disks, seeds and VMs; wait until the cluster is Ready
    ///
    /// Never touches the network: the node image must be in the store (`hearth build`).
    /// Each node gets a thin overlay of the image, a NoCloud seed with its fixed IP and
    /// kubeadm configuration, a DHCP reservation and a domain; the PKI and bootstrap
    /// token are made on the host first and kept in the state directory. The nodes then
    /// assemble the cluster on their own; launch watches: VMs running -> IPs answering ->
    /// API ready -> nodes Ready -> platform healthy. On a running appliance it only
    /// reports status. Without APPLIANCE, ./appliance.toml, else the built-in layout.
    Launch(LaunchArgs),
    /// Show VMs, IPs, first-boot stages, Kubernetes nodes and platform health
    Status(ApplianceJsonArg),
    /// Throw the VMs and their disks away and recreate them from the stored image (offline)
    ///
    /// Keeps the PKI, the token and the image; destroys the domains, overlays, seeds and
    /// console logs, then launches the next generation and waits as launch does.
    Reinstall(LaunchArgs),
    /// Remove what hearth created for an appliance, and nothing else
    ///
    /// Domains, overlays, seeds, console logs, hearth's network (or its reservations on a
    /// network it reused), the state directory with the PKI, and the store root that kept
    /// the image. Objects hearth did not make are never touched. Nothing there: a no-op.
    Destroy(ApplianceArg),
    /// Print the admin kubeconfig, or merge it into ~/.kube/config
    ///
    /// The host makes it from the cluster CA it holds. It carries a private key: treat
    /// the output as a secret.
    Kubeconfig(KubeconfigArgs),
    /// Print the platform CA certificate (PEM), for the host to trust
    ///
    /// cert-manager's CA issuer signs the platform's certificates (ingress, Harbor at the
    /// appliance's harbor_ip, Argo CD) with this CA; the nodes' containerd trusts it. It is
    /// made with the cluster PKI on the first launch and kept by reinstall. To trust it:
    /// system-wide (Debian/Ubuntu) `hearth ca -o /usr/local/share/ca-certificates/hearth.crt
    /// && update-ca-certificates`; docker `/etc/docker/certs.d/192.168.122.100/ca.crt`;
    /// podman `/etc/containers/certs.d/192.168.122.100/ca.crt`; a browser imports the file.
    Ca(CaArgs),
    /// Print the platform's URLs, user names and where each password is kept
    ///
    /// Passwords are made on the host once per appliance, kept in its state directory
    /// (`secrets/`, 0600) and delivered through the control plane's seed; they are never in
    /// the node image or the GitOps repository. This prints where each one is, not the
    /// password itself, unless asked by name: `hearth access --show argocd-admin-password`.
    Access(AccessArgs),
    /// The GitOps repository Argo CD keeps the platform from
    #[command(subcommand)]
    Gitops(GitopsCommand),
    /// SSH into a node as the image's default user, with your key
    Ssh(SshArgs),
    /// Attach to a node's serial console (`virsh console`; leave with Ctrl+])
    Console(NodeArg),
    /// Inspect and manage the store
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Args)]
pub struct RecipeArg {
    /// Recipe file
    #[arg(default_value = DEFAULT_RECIPE)]
    pub recipe: PathBuf,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Recipe file
    #[arg(default_value = DEFAULT_RECIPE)]
    pub recipe: PathBuf,
    /// Re-resolve the pins the lock already has, too
    #[arg(long)]
    pub update: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe file
    #[arg(default_value = DEFAULT_RECIPE)]
    pub recipe: PathBuf,
    /// Rebuild and compare bit for bit with the stored output
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct ApplianceArg {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    pub appliance: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    pub appliance: Option<PathBuf>,
    /// Wait until this stage: running, ip, api, nodes or platform
    #[arg(long, value_name = "STAGE", default_value = "platform")]
    pub wait: hearth_appliance::ready::Stage,
    /// Give each stage at most this many seconds [default: 60 running, 600 ip, 900 api,
    /// 900 nodes, 1200 platform]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ApplianceJsonArg {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    pub appliance: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// Merge into ~/.kube/config ($KUBECONFIG if set) instead of printing
    #[arg(long, conflicts_with = "output")]
    pub merge: bool,
    /// Write to this file (0600) instead of printing
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// Write to this file (0644) instead of printing
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AccessArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// Print this one secret (e.g. argocd-admin-password) and nothing else
    #[arg(long, value_name = "NAME")]
    pub show: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GitopsCommand {
    /// Write the appliance's GitOps repository to a new directory, to push to your own
    ///
    /// The same commit first boot seeded the in-cluster Git server with: the seed's layout
    /// (`manifests/00-bootstrap/app-of-apps.yaml`, `infrastructure/`, `platform/`,
    /// `applications/`), with no secret in it. To have Argo CD follow your repository, push
    /// it (`git -C DIR push https://github.com/USER/REPO main`), then set `[gitops] repo` (and
    /// `credentials`, a file with a read token, for a private one) in appliance.toml and
    /// `hearth reinstall`.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// The directory to create
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// Node name (e.g. k8s-control-plane)
    pub node: String,
    /// Command to run instead of a shell
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// appliance.toml [default: ./appliance.toml if present, else the built-in layout]
    #[arg(short, long, value_name = "FILE")]
    pub appliance: Option<PathBuf>,
    /// Node name
    pub node: String,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List entries
    Ls {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the store directory, or the path of an entry (by name or hash part)
    Path {
        /// Entry name, hash part, or path
        entry: Option<String>,
    },
    /// Add a local file as the fixed-output entry for its sha256
    ///
    /// The offline way to provide a download: `hearth store add ./kubeadm --sha256 d074...`.
    /// The bytes are hashed while copied; a mismatch adds nothing.
    Add {
        /// The file
        file: PathBuf,
        /// Its expected sha256 (64 hex digits)
        #[arg(long, value_name = "HEX")]
        sha256: String,
        /// Entry name [default: the file's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Re-hash entries and compare with their manifests; non-zero if any differs
    Verify {
        /// Entries to check [default: all]
        entries: Vec<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Remove entries that no root keeps alive
    Gc {
        /// Only print what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// Write entries and their closure to one bundle (tar)
    Export {
        /// Entries to export [default: everything the roots keep]
        entries: Vec<String>,
        /// Bundle file (`-` for standard output)
        #[arg(short, long, value_name = "BUNDLE")]
        output: PathBuf,
        /// Write one OCI image entry as an OCI archive instead (what
        /// `ctr -n k8s.io images import` takes); deterministic, mtimes 0
        #[arg(long)]
        oci_archive: bool,
    },
    /// Read a bundle, verify every entry, then add them all (or nothing)
    Import {
        /// Bundle file (`-` for standard input)
        bundle: PathBuf,
    },
}
