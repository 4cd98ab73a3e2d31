//! What each node receives on its NoCloud seed: the three documents, with the
//! control plane carrying the CA files and its InitConfiguration, and each
//! worker its JoinConfiguration pinned to the CA.

use crate::cloudinit::{self, WriteFile};
use crate::kubeadm;
use crate::pki::Pki;
use crate::spec::{Appliance, NodeSpec, Role};

/// Where the first-boot unit finds the kubeadm configuration.
pub const KUBEADM_CONFIG: &str = "/etc/hearth/kubeadm.yaml";

/// containerd's registry host directory (`config_path` in the image's
/// containerd config).
pub const CONTAINERD_CERTS: &str = "/etc/containerd/certs.d";

/// The seed documents of one node.
#[derive(Clone, Debug)]
pub struct Seed {
    /// `meta-data`.
    pub meta_data: String,
    /// `network-config`.
    pub network_config: String,
    /// `user-data` (holds secrets: written 0600, never printed).
    pub user_data: String,
}

/// Renders a node's seed. `ca_cert_hash` is [`Pki::ca_cert_hash`].
pub fn node_seed(
    a: &Appliance,
    node: &NodeSpec,
    pki: &Pki,
    ca_cert_hash: &str,
    generation: u32,
    ssh_key: Option<&str>,
) -> Seed {
    let mut files = Vec::new();
    match node.role {
        Role::ControlPlane => {
            files.push(WriteFile::new(KUBEADM_CONFIG, &kubeadm::init_config(a, &pki.token), true));
            for (rel, body, secret) in pki.files() {
                // The platform CA is not kubeadm's: it reaches cert-manager
                // through the platform plan.
                if let Some(name) = rel.strip_prefix("pki/").filter(|n| !n.starts_with("platform-ca.")) {
                    files.push(WriteFile::new(&format!("/etc/kubernetes/pki/{name}"), body, secret));
                }
            }
        }
        Role::Worker => {
            files.push(WriteFile::new(KUBEADM_CONFIG, &kubeadm::join_config(a, node, &pki.token, ca_cert_hash), true));
        }
    }
    // containerd pulls from the in-cluster registry (Harbor) at its fixed
    // address, trusting the platform CA that signs its certificate.
    let registry = a.harbor_ip();
    let dir = format!("{CONTAINERD_CERTS}/{registry}");
    files.push(WriteFile::new(&format!("{dir}/ca.crt"), &pki.platform_ca.cert_pem, false));
    files.push(WriteFile::new(
        &format!("{dir}/hosts.toml"),
        &format!(
            "server = \"https://{registry}\"\n\n[host.\"https://{registry}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  \
             ca = \"{dir}/ca.crt\"\n"
        ),
        false,
    ));
    Seed {
        meta_data: cloudinit::meta_data(a, node, generation),
        network_config: cloudinit::network_config(a, node),
        user_data: cloudinit::user_data(node, ssh_key, &files),
    }
}
