//! NoCloud seed documents for one node: `meta-data`, `network-config` (v2, the
//! node's fixed address on a NIC matched by its MAC) and `user-data`
//! (`#cloud-config`: host name, the user's SSH key, hearth's files: the node's
//! role, its kubeadm configuration, and on the control plane the CA files).
//! Rendering is pure; writing the seed image is the launcher's job.

use serde::Serialize;
use sha2::Digest as _;

use crate::spec::{Appliance, NodeSpec, Role};

/// The MAC of a node's NIC: QEMU's 52:54:00 prefix and three bytes derived
/// from the appliance and node names (stable across reinstalls).
pub fn mac_address(appliance: &str, node: &str) -> String {
    let d = sha2::Sha256::digest(format!("hearth-mac:{appliance}:{node}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2])
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct MetaData {
    instance_id: String,
    local_hostname: String,
}

/// `meta-data`. The instance id changes with `generation` (each reinstall), so
/// cloud-init treats a reinstalled node as new.
pub fn meta_data(a: &Appliance, node: &NodeSpec, generation: u32) -> String {
    let m =
        MetaData { instance_id: format!("{}-{}-{generation}", a.name, node.name), local_hostname: node.name.clone() };
    serde_saphyr::to_string(&m).expect("meta-data serialises")
}

#[derive(Serialize)]
struct Match {
    macaddress: String,
}

#[derive(Serialize)]
struct Route {
    to: String,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    addresses: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    set_name: String,
    dhcp4: bool,
    addresses: Vec<String>,
    routes: Vec<Route>,
    nameservers: Nameservers,
}

#[derive(Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: std::collections::BTreeMap<String, Ethernet>,
}

/// `network-config` (version 2): the fixed address, the gateway as route and DNS.
pub fn network_config(a: &Appliance, node: &NodeSpec) -> String {
    let gw = a.network.gateway.to_string();
    let mut ethernets = std::collections::BTreeMap::new();
    ethernets.insert(
        "eth0".to_owned(),
        Ethernet {
            matches: Match { macaddress: mac_address(&a.name, &node.name) },
            set_name: "eth0".into(),
            dhcp4: false,
            addresses: vec![format!("{}/{}", node.ip, a.network.cidr.len)],
            routes: vec![Route { to: "default".into(), via: gw.clone() }],
            nameservers: Nameservers { addresses: vec![gw] },
        },
    );
    serde_saphyr::to_string(&NetworkConfig { version: 2, ethernets }).expect("network-config serialises")
}

/// A file for cloud-init's `write_files`.
#[derive(Clone, Debug, Serialize)]
pub struct WriteFile {
    /// Absolute path in the node.
    pub path: String,
    /// Content.
    pub content: String,
    /// Octal mode, as a string.
    pub permissions: String,
    /// `user:group`.
    pub owner: String,
}

impl WriteFile {
    /// A root-owned file.
    pub fn new(path: &str, content: &str, secret: bool) -> WriteFile {
        WriteFile {
            path: path.into(),
            content: content.into(),
            permissions: if secret { "0600".into() } else { "0644".into() },
            owner: "root:root".into(),
        }
    }
}

#[derive(Serialize)]
struct CloudConfig {
    hostname: String,
    preserve_hostname: bool,
    manage_etc_hosts: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<String>,
    ssh_pwauth: bool,
    write_files: Vec<WriteFile>,
}

/// `user-data`: the node's identity and hearth's files for its first boot.
pub fn user_data(node: &NodeSpec, ssh_key: Option<&str>, files: &[WriteFile]) -> String {
    let mut all = vec![WriteFile::new(
        "/etc/hearth/role",
        match node.role {
            Role::ControlPlane => "control-plane\n",
            Role::Worker => "worker\n",
        },
        false,
    )];
    all.extend_from_slice(files);
    let c = CloudConfig {
        hostname: node.name.clone(),
        preserve_hostname: false,
        manage_etc_hosts: true,
        ssh_authorized_keys: ssh_key.map(|k| vec![k.trim().to_owned()]).unwrap_or_default(),
        ssh_pwauth: false,
        write_files: all,
    };
    format!("#cloud-config\n{}", serde_saphyr::to_string(&c).expect("user-data serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_local_and_distinct() {
        let a = mac_address("k8s-myhome", "k8s-worker-1");
        assert_eq!(a, mac_address("k8s-myhome", "k8s-worker-1"));
        assert!(a.starts_with("52:54:00:") && a.len() == 17);
        assert_ne!(a, mac_address("k8s-myhome", "k8s-worker-2"));
    }
}

#[cfg(test)]
mod yaml11 {
    /// cloud-init and netplan read YAML 1.1, where `52:54:00:12:34:56` unquoted is
    /// a base-60 integer: such MACs must come out quoted.
    #[test]
    fn base_60_looking_macs_are_quoted() {
        #[derive(serde::Serialize)]
        struct M {
            m: String,
        }
        let s = serde_saphyr::to_string(&M { m: "52:54:00:12:34:56".into() }).unwrap();
        assert!(s.contains("\"52:54:00:12:34:56\"") || s.contains("'52:54:00:12:34:56'"), "{s}");
    }
}
