//! The appliance: which VMs, on which network, running which cluster. With no
//! `appliance.toml`, the layout of the home-lab architecture is the default:
//! a NAT network 192.168.122.0/24, a control plane at .10 (4 vCPU, 8 GiB, 50 GiB)
//! and workers at .11 and .12 (2 vCPU, 4 GiB, 30 GiB), pod CIDR 10.244.0.0/16,
//! service CIDR 10.96.0.0/12, MetalLB .100-.150, storage in /mnt/k8s-storage.
//!
//! [`parse_spec`] is pure; [`Appliance::validate`] names every problem it finds.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Smallest memory kubeadm's preflight accepts on a control plane (MiB).
pub const MIN_CONTROL_PLANE_MIB: u64 = 1700;
/// Smallest memory worth running a kubelet in (MiB).
pub const MIN_WORKER_MIB: u64 = 1024;
/// kubeadm's preflight wants two CPUs on a control plane.
pub const MIN_CONTROL_PLANE_VCPUS: u32 = 2;

/// An IPv4 network `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a CIDR like 192.168.122.0/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("`{l}` is not a prefix length"))?;
        let c = Cidr { addr, len };
        if c.network() != addr {
            return Err(format!("`{s}` has host bits set (the network is {}/{len})", c.network()));
        }
        Ok(c)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.len)
    }
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    /// Whether `ip` is a usable host address of the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (n, i) = (u32::from(self.network()), u32::from(ip));
        i & self.mask() == n && i != n && i != (n | !self.mask())
    }
    /// Whether two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
    /// The netmask in dotted form.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
}

/// An inclusive range of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

impl Range {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }
    /// Whether the ranges share an address.
    pub fn overlaps(&self, o: &Range) -> bool {
        u32::from(self.start) <= u32::from(o.end) && u32::from(o.start) <= u32::from(self.end)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The libvirt network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// libvirt network name. libvirt's own `default` is reused when it holds the
    /// subnet; any other name is defined (and later removed) by hearth.
    pub name: String,
    /// Subnet.
    pub cidr: Cidr,
    /// Gateway (the host's bridge address).
    pub gateway: Ipv4Addr,
    /// Addresses dnsmasq hands out to other machines.
    pub dhcp: Range,
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs `kubeadm init`.
    ControlPlane,
    /// Runs `kubeadm join`.
    Worker,
}

/// One VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Host name and libvirt domain name suffix (a DNS label).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Fixed address.
    pub ip: Ipv4Addr,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk size in GiB (the overlay's virtual size).
    pub disk_gib: u64,
}

/// The cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Exact Kubernetes version (`v1.29.15`).
    pub kubernetes_version: String,
    /// Pod network (Flannel's).
    pub pod_cidr: Cidr,
    /// Service network.
    pub service_cidr: Cidr,
    /// MetalLB's address pool.
    pub metallb_pool: Range,
    /// Cluster DNS domain.
    pub dns_domain: String,
}

/// A whole appliance. A field `appliance.toml` leaves out keeps the default's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Appliance {
    /// Name; prefixes every libvirt object hearth makes (a DNS label).
    pub name: String,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Recipe of the node image.
    pub recipe: PathBuf,
    /// Where overlays and seeds go.
    pub storage_dir: PathBuf,
    /// SSH public key put in every node (default `~/.ssh/id_ed25519.pub`).
    pub ssh_public_key: Option<PathBuf>,
    /// The image's login user for `hearth ssh` (`ubuntu` on Ubuntu's cloud image).
    pub ssh_user: String,
    /// libvirt domain type: `kvm`, or `qemu` for software emulation (TCG).
    /// Default: `kvm` when /dev/kvm exists.
    pub domain_type: Option<String>,
    /// The network.
    pub network: Network,
    /// The cluster.
    pub cluster: Cluster,
    /// The VMs.
    pub nodes: Vec<NodeSpec>,
    /// The platform on top of the cluster.
    pub platform: Platform,
    /// Where Argo CD keeps the platform from.
    pub gitops: Gitops,
}

/// The GitOps repository Argo CD keeps the platform from (hearth generates
/// its contents: `hearth gitops export`). Left out: a Git server inside the
/// cluster, seeded at first boot, which needs nothing from outside.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gitops {
    /// The user's repository (`https://...`) instead of the in-cluster one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The branch Argo CD follows (default `main`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The user name sent with the token (default `git`; GitHub takes any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the token (a GitHub PAT with read access) for a
    /// private `repo`; it reaches the cluster as a Secret through the seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
}

impl Gitops {
    /// The branch Argo CD follows.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The user name sent with the token.
    pub fn username(&self) -> &str {
        self.username.as_deref().unwrap_or("git")
    }
}

/// Which platform components are installed. A component left out of
/// `[platform.components]` is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Components {
    /// Flannel, the pod network (CNI). Without it (or another CNI brought by
    /// the user) no node becomes Ready.
    pub flannel: bool,
    /// local-path-provisioner, the default StorageClass.
    pub local_path: bool,
    /// MetalLB (L2): LoadBalancer addresses from the pool.
    pub metallb: bool,
    /// cert-manager with a CA ClusterIssuer holding the platform CA.
    pub cert_manager: bool,
    /// ingress-nginx, its Service at `ingress_ip`.
    pub ingress_nginx: bool,
    /// Argo CD, its server at `argocd_ip` with a certificate from the platform CA.
    pub argocd: bool,
    /// Harbor, the registry at `harbor_ip` (TLS from the platform CA).
    pub harbor: bool,
    /// External Secrets Operator (a Pulumi ESC store when `[platform.pulumi]` says).
    pub external_secrets: bool,
    /// Actions Runner Controller (runners when `[platform.arc]` names a repository).
    pub arc: bool,
}

impl Default for Components {
    fn default() -> Self {
        Components {
            flannel: true,
            local_path: true,
            metallb: true,
            cert_manager: true,
            ingress_nginx: true,
            argocd: true,
            harbor: true,
            external_secrets: true,
            arc: true,
        }
    }
}

/// Pulumi ESC as External Secrets' ClusterSecretStore `pulumi-esc`: made only
/// when all three names and the token file are given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pulumi {
    /// The Pulumi organization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The ESC project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The ESC environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// A file holding a Pulumi access token; it reaches the cluster as a
    /// Secret through the control plane's seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<PathBuf>,
}

impl Pulumi {
    /// Whether a store is wanted (every field given).
    pub fn configured(&self) -> bool {
        self.organization.is_some() && self.project.is_some() && self.environment.is_some() && self.token.is_some()
    }
}

/// GitHub Actions runners (ARC's runner scale set): only when
/// `github_config_url` and `credentials` are given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Arc {
    /// The repository, organization or enterprise the runners serve
    /// (`https://github.com/USER/REPO`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_config_url: Option<String>,
    /// A file holding a GitHub token (PAT) that may register runners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// The runner image: pinned, preloaded by the recipe (never `:latest`).
    pub runner_image: String,
    /// The `runs-on:` label of the scale set.
    pub scale_set_name: String,
    /// Runners kept idle.
    pub min_runners: u32,
    /// Runners at most.
    pub max_runners: u32,
}

impl Default for Arc {
    fn default() -> Self {
        Arc {
            github_config_url: None,
            credentials: None,
            runner_image: "ghcr.io/actions/actions-runner:2.317.0".into(),
            scale_set_name: "hearth".into(),
            min_runners: 0,
            max_runners: 3,
        }
    }
}

impl Arc {
    /// Whether a runner scale set is wanted.
    pub fn configured(&self) -> bool {
        self.github_config_url.is_some() && self.credentials.is_some()
    }
}

/// The platform: components, fixed service addresses, storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Platform {
    /// Components on or off.
    pub components: Components,
    /// The part of `cluster.metallb_pool` kept for fixed service addresses: a
    /// pool of its own with `autoAssign: false`, each address requested by its
    /// Service; the rest of the MetalLB pool is assigned automatically.
    /// Default: the pool's first three addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_pool: Option<Range>,
    /// Harbor's address, in `fixed_pool` (default: its first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harbor_ip: Option<Ipv4Addr>,
    /// ingress-nginx's address, in `fixed_pool` (default: its second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_ip: Option<Ipv4Addr>,
    /// Argo CD's address, in `fixed_pool` (default: its third).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argocd_ip: Option<Ipv4Addr>,
    /// Where local-path volumes live on each node (absolute).
    pub storage_path: String,
    /// External Secrets' Pulumi ESC store.
    pub pulumi: Pulumi,
    /// GitHub Actions runners.
    pub arc: Arc,
}

impl Default for Platform {
    fn default() -> Self {
        Appliance::default().platform
    }
}

fn nth(start: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(start).saturating_add(n))
}

impl Appliance {
    /// The fixed-address pool: configured, else the MetalLB pool's first three.
    pub fn fixed_pool(&self) -> Range {
        let start = self.cluster.metallb_pool.start;
        self.platform.fixed_pool.unwrap_or(Range { start, end: nth(start, 2) })
    }

    /// Harbor's fixed address.
    pub fn harbor_ip(&self) -> Ipv4Addr {
        self.platform.harbor_ip.unwrap_or(self.fixed_pool().start)
    }

    /// ingress-nginx's fixed address.
    pub fn ingress_ip(&self) -> Ipv4Addr {
        self.platform.ingress_ip.unwrap_or(nth(self.fixed_pool().start, 1))
    }

    /// Argo CD's fixed address.
    pub fn argocd_ip(&self) -> Ipv4Addr {
        self.platform.argocd_ip.unwrap_or(nth(self.fixed_pool().start, 2))
    }

    /// The fixed service addresses, by the setting that names them.
    pub fn fixed_ips(&self) -> [(&'static str, Ipv4Addr); 3] {
        [("harbor_ip", self.harbor_ip()), ("ingress_ip", self.ingress_ip()), ("argocd_ip", self.argocd_ip())]
    }

    /// The MetalLB pool without the fixed pool: what MetalLB hands out by itself.
    pub fn auto_ranges(&self) -> Vec<Range> {
        let (pool, fixed) = (self.cluster.metallb_pool, self.fixed_pool());
        let (p0, p1, f0, f1) =
            (u32::from(pool.start), u32::from(pool.end), u32::from(fixed.start), u32::from(fixed.end));
        let mut out = Vec::new();
        if f0 > p0 {
            out.push(Range { start: pool.start, end: Ipv4Addr::from(f0.min(p1 + 1) - 1) });
        }
        if f1 < p1 {
            out.push(Range { start: Ipv4Addr::from(f1.max(p0 - 1) + 1), end: pool.end });
        }
        out
    }
}

impl Default for Network {
    fn default() -> Self {
        Appliance::default().network
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Appliance::default().cluster
    }
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

impl Default for Appliance {
    fn default() -> Self {
        let node = |name: &str, role, last, vcpus, memory_mib, disk_gib| NodeSpec {
            name: name.into(),
            role,
            ip: ip(192, 168, 122, last),
            vcpus,
            memory_mib,
            disk_gib,
        };
        Appliance {
            name: "k8s-myhome".into(),
            libvirt_uri: "qemu:///system".into(),
            recipe: "images/ubuntu-24.04-k8s-1.29.toml".into(),
            storage_dir: "/mnt/k8s-storage".into(),
            ssh_public_key: None,
            ssh_user: "ubuntu".into(),
            domain_type: None,
            network: Network {
                name: "default".into(),
                cidr: Cidr { addr: ip(192, 168, 122, 0), len: 24 },
                gateway: ip(192, 168, 122, 1),
                dhcp: Range { start: ip(192, 168, 122, 151), end: ip(192, 168, 122, 254) },
            },
            cluster: Cluster {
                kubernetes_version: "v1.29.15".into(),
                pod_cidr: Cidr { addr: ip(10, 244, 0, 0), len: 16 },
                service_cidr: Cidr { addr: ip(10, 96, 0, 0), len: 12 },
                metallb_pool: Range { start: ip(192, 168, 122, 100), end: ip(192, 168, 122, 150) },
                dns_domain: "cluster.local".into(),
            },
            nodes: vec![
                node("k8s-control-plane", Role::ControlPlane, 10, 4, 8192, 50),
                node("k8s-worker-1", Role::Worker, 11, 2, 4096, 30),
                node("k8s-worker-2", Role::Worker, 12, 2, 4096, 30),
            ],
            platform: Platform {
                components: Components::default(),
                fixed_pool: None,
                harbor_ip: None,
                ingress_ip: None,
                argocd_ip: None,
                storage_path: "/var/lib/hearth/local-path".into(),
                pulumi: Pulumi::default(),
                arc: Arc::default(),
            },
            gitops: Gitops::default(),
        }
    }
}

/// Errors of reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// TOML or a value (with line and column).
    #[error("{}", .0.to_string().trim_end())]
    Parse(#[from] toml::de::Error),
    /// Problems found by validation, one per line.
    #[error("the appliance is not valid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Parses an `appliance.toml`.
pub fn parse_spec(text: &str) -> Result<Appliance, SpecError> {
    let a: Appliance = toml::from_str(text)?;
    a.validate()?;
    Ok(a)
}

/// Whether `s` is a DNS label (RFC 1123: lower-case letters, digits, `-`, at most 63).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Appliance {
    /// The control plane node.
    pub fn control_plane(&self) -> &NodeSpec {
        self.nodes.iter().find(|n| n.role == Role::ControlPlane).expect("validated: one control plane")
    }

    /// `<ip>:6443` of the control plane.
    pub fn api_endpoint(&self) -> String {
        format!("{}:6443", self.control_plane().ip)
    }

    /// The libvirt domain name of a node.
    pub fn domain_name(&self, node: &NodeSpec) -> String {
        format!("{}-{}", self.name, node.name)
    }

    /// Every problem with the spec, or Ok.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut p = Vec::new();
        let net = &self.network;
        if !is_dns_label(&self.name) {
            p.push(format!("appliance name `{}` is not a DNS label (a-z, 0-9, `-`, at most 63)", self.name));
        }
        if !net.cidr.contains(net.gateway) {
            p.push(format!("gateway {} is outside {}", net.gateway, String::from(net.cidr)));
        }
        for end in [net.dhcp.start, net.dhcp.end] {
            if !net.cidr.contains(end) {
                p.push(format!("DHCP range {} is outside {}", net.dhcp, String::from(net.cidr)));
                break;
            }
        }
        let pool = &self.cluster.metallb_pool;
        if !net.cidr.contains(pool.start) || !net.cidr.contains(pool.end) {
            p.push(format!("MetalLB pool {pool} is outside {}", String::from(net.cidr)));
        }
        if pool.overlaps(&net.dhcp) {
            p.push(format!("MetalLB pool {pool} overlaps the DHCP range {}", net.dhcp));
        }
        if pool.contains(net.gateway) {
            p.push(format!("MetalLB pool {pool} contains the gateway {}", net.gateway));
        }
        let cps = self.nodes.iter().filter(|n| n.role == Role::ControlPlane).count();
        if cps != 1 {
            p.push(format!("there must be exactly one control plane, found {cps}"));
        }
        if let Some(t) = self.domain_type.as_deref().filter(|t| !matches!(*t, "kvm" | "qemu")) {
            p.push(format!("domain_type `{t}` is neither `kvm` nor `qemu`"));
        }
        if self.ssh_user.is_empty() || self.ssh_user.contains(|c: char| c.is_whitespace() || c == '@') {
            p.push(format!("ssh_user `{}` is not a user name", self.ssh_user));
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for n in &self.nodes {
            let who = format!("node `{}`", n.name);
            if !is_dns_label(&n.name) {
                p.push(format!("{who}: the name is not a DNS label (a-z, 0-9, `-`, at most 63)"));
            }
            if !names.insert(&n.name) {
                p.push(format!("{who}: the name is used twice"));
            }
            if !ips.insert(n.ip) {
                p.push(format!("{who}: {} is used twice", n.ip));
            }
            if !net.cidr.contains(n.ip) {
                p.push(format!("{who}: {} is outside the network {}", n.ip, String::from(net.cidr)));
            }
            if n.ip == net.gateway {
                p.push(format!("{who}: {} is the gateway", n.ip));
            }
            if pool.contains(n.ip) {
                p.push(format!("{who}: {} is inside the MetalLB pool {pool}", n.ip));
            }
            if net.dhcp.contains(n.ip) {
                p.push(format!("{who}: {} is inside the DHCP range {}", n.ip, net.dhcp));
            }
            let (min_mib, min_cpu) = match n.role {
                Role::ControlPlane => (MIN_CONTROL_PLANE_MIB, MIN_CONTROL_PLANE_VCPUS),
                Role::Worker => (MIN_WORKER_MIB, 1),
            };
            if n.memory_mib < min_mib {
                p.push(format!(
                    "{who}: {} MiB of memory is too little for kubeadm (at least {min_mib} MiB)",
                    n.memory_mib
                ));
            }
            if n.vcpus < min_cpu {
                p.push(format!("{who}: {} vCPU is too few for kubeadm (at least {min_cpu})", n.vcpus));
            }
            if n.disk_gib < 10 {
                p.push(format!("{who}: a {} GiB disk is too small (at least 10 GiB)", n.disk_gib));
            }
        }
        let c = &self.cluster;
        if c.pod_cidr.overlaps(&c.service_cidr) {
            p.push(format!(
                "pod CIDR {} overlaps service CIDR {}",
                String::from(c.pod_cidr),
                String::from(c.service_cidr)
            ));
        }
        for (what, cidr) in [("pod", c.pod_cidr), ("service", c.service_cidr)] {
            if cidr.overlaps(&net.cidr) {
                p.push(format!(
                    "{what} CIDR {} overlaps the node network {}",
                    String::from(cidr),
                    String::from(net.cidr)
                ));
            }
        }
        if !c.kubernetes_version.starts_with('v') || c.kubernetes_version.split('.').count() != 3 {
            p.push(format!("kubernetes_version `{}` must be exact, like v1.29.15", c.kubernetes_version));
        }
        self.validate_platform(&mut p);
        if p.is_empty() { Ok(()) } else { Err(SpecError::Invalid(p)) }
    }
}

impl Appliance {
    /// The platform's problems: addresses against the pool, the network, the
    /// nodes and each other; components that need one that is off; the path.
    fn validate_platform(&self, p: &mut Vec<String>) {
        let (pf, net, pool) = (&self.platform, &self.network, &self.cluster.metallb_pool);
        let fixed = &self.fixed_pool();
        if fixed.start > fixed.end {
            p.push(format!("platform: fixed_pool {fixed} ends before it starts"));
        }
        if !pool.contains(fixed.start) || !pool.contains(fixed.end) {
            p.push(format!("platform: fixed_pool {fixed} is not inside the MetalLB pool {pool}"));
        }
        let mut seen = BTreeSet::new();
        for (what, ip) in self.fixed_ips() {
            if !net.cidr.contains(ip) {
                p.push(format!("platform: {what} {ip} is outside the network {}", String::from(net.cidr)));
            } else if !fixed.contains(ip) {
                p.push(format!("platform: {what} {ip} is outside its pool, fixed_pool {fixed}"));
            }
            if net.dhcp.contains(ip) {
                p.push(format!("platform: {what} {ip} is inside the DHCP range {}", net.dhcp));
            }
            if ip == net.gateway {
                p.push(format!("platform: {what} {ip} is the gateway"));
            }
            if let Some(n) = self.nodes.iter().find(|n| n.ip == ip) {
                p.push(format!("platform: {what} {ip} is the address of node `{}`", n.name));
            }
            if !seen.insert(ip) {
                p.push(format!("platform: {what} {ip} is used twice"));
            }
        }
        let c = &pf.components;
        let needs = [
            ("local_path", c.local_path, "flannel", c.flannel),
            ("metallb", c.metallb, "flannel", c.flannel),
            ("cert_manager", c.cert_manager, "flannel", c.flannel),
            ("ingress_nginx", c.ingress_nginx, "metallb", c.metallb),
            ("ingress_nginx", c.ingress_nginx, "flannel", c.flannel),
            ("argocd", c.argocd, "flannel", c.flannel),
            ("argocd", c.argocd, "metallb", c.metallb),
            ("argocd", c.argocd, "cert_manager", c.cert_manager),
            ("harbor", c.harbor, "metallb", c.metallb),
            ("harbor", c.harbor, "cert_manager", c.cert_manager),
            ("harbor", c.harbor, "local_path", c.local_path),
            ("external_secrets", c.external_secrets, "flannel", c.flannel),
            ("arc", c.arc, "flannel", c.flannel),
        ];
        // The in-cluster Git server keeps its repository on the default StorageClass.
        let in_cluster_git = c.argocd && self.gitops.repo.is_none();
        let needs = needs.into_iter().chain([(
            "argocd (with the in-cluster Git server)",
            in_cluster_git,
            "local_path",
            c.local_path,
        )]);
        for (what, on, need, need_on) in needs {
            if on && !need_on {
                p.push(format!("platform: {what} needs {need}, which is off"));
            }
        }
        let pulumi = &pf.pulumi;
        let given = [
            pulumi.organization.is_some(),
            pulumi.project.is_some(),
            pulumi.environment.is_some(),
            pulumi.token.is_some(),
        ];
        if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
            p.push("platform.pulumi: organization, project, environment and token go together".into());
        }
        if pulumi.configured() && !c.external_secrets {
            p.push("platform.pulumi needs external_secrets, which is off".into());
        }
        let arc = &pf.arc;
        if arc.github_config_url.is_some() != arc.credentials.is_some() {
            p.push("platform.arc: github_config_url and credentials go together".into());
        }
        if let Some(u) = &arc.github_config_url
            && !u.starts_with("https://")
        {
            p.push(format!("platform.arc: github_config_url `{u}` is not an https:// URL"));
        }
        if arc.runner_image.ends_with(":latest") || !arc.runner_image.contains(':') {
            p.push(format!("platform.arc: runner_image `{}` must name a pinned tag, never latest", arc.runner_image));
        }
        if arc.min_runners > arc.max_runners {
            p.push(format!("platform.arc: min_runners {} is above max_runners {}", arc.min_runners, arc.max_runners));
        }
        let g = &self.gitops;
        if let Some(repo) = &g.repo {
            if !repo.starts_with("https://") || repo.contains(char::is_whitespace) || repo.contains('@') {
                p.push(format!(
                    "gitops: repo `{repo}` must be an https:// URL without credentials (put a token in a file named by `credentials`)"
                ));
            }
        } else if g.credentials.is_some() || g.username.is_some() {
            p.push("gitops: credentials and username need a repo".into());
        }
        if let Some(r) = &g.revision
            && (r.is_empty() || r.contains(char::is_whitespace))
        {
            p.push(format!("gitops: revision `{r}` is not a branch name"));
        }
        let path = &pf.storage_path;
        if !path.starts_with('/') || path.split('/').any(|s| s == "..") || path.contains(char::is_whitespace) {
            p.push(format!("platform: storage_path `{path}` must be an absolute path without `..` or spaces"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(edit: impl FnOnce(&mut Appliance)) -> String {
        let mut a = Appliance::default();
        edit(&mut a);
        a.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_default_is_the_seed_layout_and_valid() {
        let a = Appliance::default();
        a.validate().unwrap();
        assert_eq!(a.api_endpoint(), "192.168.122.10:6443");
        assert_eq!(a.domain_name(&a.nodes[1]), "k8s-myhome-k8s-worker-1");
        let text = toml::to_string(&a).unwrap();
        assert_eq!(parse_spec(&text).unwrap(), a, "round trip:\n{text}");
    }

    #[test]
    fn every_validation_error_names_its_cause() {
        type Edit = Box<dyn FnOnce(&mut Appliance)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|a| a.gitops.repo = Some("https://user:tok@github.com/u/r".into())),
                "gitops: repo `https://user:tok@github.com/u/r` must be an https:// URL without credentials",
            ),
            (Box::new(|a| a.gitops.credentials = Some("t".into())), "gitops: credentials and username need a repo"),
            (
                Box::new(|a| a.platform.components.local_path = false),
                "platform: argocd (with the in-cluster Git server) needs local_path, which is off",
            ),
            (
                Box::new(|a| a.nodes[1].ip = ip(10, 0, 0, 5)),
                "node `k8s-worker-1`: 10.0.0.5 is outside the network 192.168.122.0/24",
            ),
            (Box::new(|a| a.nodes[2].ip = a.nodes[1].ip), "node `k8s-worker-2`: 192.168.122.11 is used twice"),
            (Box::new(|a| a.nodes[2].name = a.nodes[1].name.clone()), "node `k8s-worker-1`: the name is used twice"),
            (
                Box::new(|a| a.nodes[0].name = "Control_Plane".into()),
                "node `Control_Plane`: the name is not a DNS label",
            ),
            (
                Box::new(|a| a.nodes[1].ip = ip(192, 168, 122, 120)),
                "node `k8s-worker-1`: 192.168.122.120 is inside the MetalLB pool 192.168.122.100-192.168.122.150",
            ),
            (
                Box::new(|a| a.nodes[1].ip = ip(192, 168, 122, 200)),
                "is inside the DHCP range 192.168.122.151-192.168.122.254",
            ),
            (
                Box::new(|a| a.network.dhcp = Range { start: ip(192, 168, 122, 2), end: ip(192, 168, 122, 254) }),
                "MetalLB pool 192.168.122.100-192.168.122.150 overlaps the DHCP range 192.168.122.2-192.168.122.254",
            ),
            (
                Box::new(|a| a.nodes[0].memory_mib = 1024),
                "node `k8s-control-plane`: 1024 MiB of memory is too little for kubeadm (at least 1700 MiB)",
            ),
            (
                Box::new(|a| a.nodes[0].vcpus = 1),
                "node `k8s-control-plane`: 1 vCPU is too few for kubeadm (at least 2)",
            ),
            (Box::new(|a| a.nodes[0].role = Role::Worker), "there must be exactly one control plane, found 0"),
            (Box::new(|a| a.name = "my home".into()), "appliance name `my home` is not a DNS label"),
            (
                Box::new(|a| a.cluster.pod_cidr = Cidr { addr: ip(10, 96, 0, 0), len: 16 }),
                "pod CIDR 10.96.0.0/16 overlaps service CIDR 10.96.0.0/12",
            ),
            (Box::new(|a| a.domain_type = Some("xen".into())), "domain_type `xen` is neither `kvm` nor `qemu`"),
            (Box::new(|a| a.ssh_user = "a b".into()), "ssh_user `a b` is not a user name"),
            (
                Box::new(|a| a.platform.ingress_ip = Some(ip(10, 1, 1, 1))),
                "platform: ingress_ip 10.1.1.1 is outside the network 192.168.122.0/24",
            ),
            (
                Box::new(|a| a.platform.harbor_ip = Some(ip(192, 168, 122, 120))),
                "platform: harbor_ip 192.168.122.120 is outside its pool, fixed_pool 192.168.122.100-192.168.122.102",
            ),
            (
                Box::new(|a| {
                    a.platform.fixed_pool = Some(Range { start: ip(192, 168, 122, 90), end: ip(192, 168, 122, 102) })
                }),
                "platform: fixed_pool 192.168.122.90-192.168.122.102 is not inside the MetalLB pool",
            ),
            (
                Box::new(|a| {
                    a.platform.fixed_pool = Some(Range { start: ip(192, 168, 122, 150), end: ip(192, 168, 122, 160) });
                    a.platform.argocd_ip = Some(ip(192, 168, 122, 160));
                }),
                "platform: argocd_ip 192.168.122.160 is inside the DHCP range 192.168.122.151-192.168.122.254",
            ),
            (
                Box::new(|a| {
                    a.cluster.metallb_pool = Range { start: ip(192, 168, 122, 10), end: ip(192, 168, 122, 150) }
                }),
                "node `k8s-control-plane`: 192.168.122.10 is inside the MetalLB pool",
            ),
            (
                Box::new(|a| {
                    a.cluster.metallb_pool = Range { start: ip(192, 168, 122, 10), end: ip(192, 168, 122, 150) };
                    a.platform.fixed_pool = Some(Range { start: ip(192, 168, 122, 10), end: ip(192, 168, 122, 102) });
                    a.platform.argocd_ip = Some(ip(192, 168, 122, 12));
                }),
                "platform: argocd_ip 192.168.122.12 is the address of node `k8s-worker-2`",
            ),
            (
                Box::new(|a| a.platform.ingress_ip = Some(a.harbor_ip())),
                "platform: ingress_ip 192.168.122.100 is used twice",
            ),
            (
                Box::new(|a| a.platform.components.metallb = false),
                "platform: ingress_nginx needs metallb, which is off",
            ),
            (Box::new(|a| a.platform.components.flannel = false), "platform: local_path needs flannel, which is off"),
            (
                Box::new(|a| a.platform.components.cert_manager = false),
                "platform: argocd needs cert_manager, which is off",
            ),
            (
                Box::new(|a| a.platform.storage_path = "data/../x".into()),
                "platform: storage_path `data/../x` must be an absolute path",
            ),
        ];
        for (edit, needle) in cases {
            let e = problems(edit);
            assert!(e.contains(needle), "expected {needle:?} in:\n{e}");
        }
    }

    #[test]
    fn a_partial_file_keeps_the_defaults() {
        let a = parse_spec("name = \"lab\"\ndomain_type = \"qemu\"\n[network]\nname = \"hearth-lab\"\n").unwrap();
        let d = Appliance::default();
        assert_eq!((a.name.as_str(), a.network.name.as_str()), ("lab", "hearth-lab"));
        assert_eq!((a.network.cidr, &a.nodes, &a.cluster), (d.network.cidr, &d.nodes, &d.cluster));
        let p = parse_spec("[platform.components]\ningress_nginx = false\n").unwrap().platform;
        assert!(!p.components.ingress_nginx && p.components.metallb && p.ingress_ip.is_none());
        let e = parse_spec("[network]\nnmae = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `nmae`") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn fixed_addresses_follow_the_pool_unless_set() {
        let a = Appliance::default();
        assert_eq!(
            a.fixed_ips().map(|(_, ip)| ip.to_string()),
            ["192.168.122.100", "192.168.122.101", "192.168.122.102"]
        );
        assert_eq!(a.auto_ranges(), [Range { start: ip(192, 168, 122, 103), end: ip(192, 168, 122, 150) }]);
        let mut b = a.clone();
        b.cluster.metallb_pool = Range { start: ip(192, 168, 122, 60), end: ip(192, 168, 122, 90) };
        assert_eq!(b.ingress_ip(), ip(192, 168, 122, 61));
        b.platform.fixed_pool = Some(Range { start: ip(192, 168, 122, 70), end: ip(192, 168, 122, 72) });
        assert_eq!(
            b.auto_ranges(),
            [
                Range { start: ip(192, 168, 122, 60), end: ip(192, 168, 122, 69) },
                Range { start: ip(192, 168, 122, 73), end: ip(192, 168, 122, 90) }
            ]
        );
        b.platform.fixed_pool = Some(b.cluster.metallb_pool);
        assert!(b.auto_ranges().is_empty());
    }

    #[test]
    fn bad_values_point_at_their_line() {
        let mut text = toml::to_string(&Appliance::default()).unwrap();
        text = text.replace("cidr = \"192.168.122.0/24\"", "cidr = \"192.168.122.7/24\"");
        let e = parse_spec(&text).unwrap_err().to_string();
        assert!(e.contains("line") && e.contains("has host bits set"), "{e}");
    }
}
