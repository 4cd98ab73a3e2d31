//! kubeadm v1beta3 configuration as typed structs, rendered to YAML: the
//! control plane's InitConfiguration + ClusterConfiguration +
//! KubeletConfiguration, and each worker's JoinConfiguration. Images are never
//! pulled (`imagePullPolicy: Never`: they are preloaded), versions are exact, and
//! joins pin the CA (`caCertHashes`), never skipping its verification.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{Appliance, NodeSpec};

/// The API group of these documents.
pub const API_VERSION: &str = "kubeadm.k8s.io/v1beta3";
/// containerd's CRI socket.
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    name: String,
    cri_socket: String,
    image_pull_policy: String,
    kubelet_extra_args: BTreeMap<String, String>,
}

fn registration(node: &NodeSpec) -> NodeRegistration {
    let mut args = BTreeMap::new();
    args.insert("node-ip".to_owned(), node.ip.to_string());
    NodeRegistration {
        name: node.name.clone(),
        cri_socket: CRI_SOCKET.into(),
        image_pull_policy: "Never".into(),
        kubelet_extra_args: args,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapToken {
    token: String,
    ttl: String,
    usages: Vec<String>,
    groups: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiEndpoint {
    advertise_address: String,
    bind_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration {
    api_version: &'static str,
    kind: &'static str,
    bootstrap_tokens: Vec<BootstrapToken>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    node_registration: NodeRegistration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Networking {
    pod_subnet: String,
    service_subnet: String,
    dns_domain: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer {
    cert_s_a_ns: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration {
    api_version: &'static str,
    kind: &'static str,
    cluster_name: String,
    kubernetes_version: String,
    control_plane_endpoint: String,
    image_repository: String,
    networking: Networking,
    api_server: ApiServer,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    api_version: &'static str,
    kind: &'static str,
    cgroup_driver: String,
    /// Preloaded images must survive kubelet's garbage collection.
    #[serde(rename = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: u8,
    #[serde(rename = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenDiscovery {
    api_server_endpoint: String,
    token: String,
    ca_cert_hashes: Vec<String>,
    unsafe_skip_c_a_verification: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: TokenDiscovery,
    timeout: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration {
    api_version: &'static str,
    kind: &'static str,
    discovery: Discovery,
    node_registration: NodeRegistration,
}

fn yaml<T: Serialize>(doc: &T) -> String {
    serde_saphyr::to_string(doc).expect("kubeadm documents serialise")
}

/// The control plane's `kubeadm init --config` file.
pub fn init_config(a: &Appliance, token: &str) -> String {
    let cp = a.control_plane();
    let init = InitConfiguration {
        api_version: API_VERSION,
        kind: "InitConfiguration",
        bootstrap_tokens: vec![BootstrapToken {
            token: token.into(),
            ttl: "0s".into(), // never expires: workers may join long after (reinstall)
            usages: vec!["signing".into(), "authentication".into()],
            groups: vec!["system:bootstrappers:kubeadm:default-node-token".into()],
        }],
        local_api_endpoint: ApiEndpoint { advertise_address: cp.ip.to_string(), bind_port: 6443 },
        node_registration: registration(cp),
    };
    let c = &a.cluster;
    let cluster = ClusterConfiguration {
        api_version: API_VERSION,
        kind: "ClusterConfiguration",
        cluster_name: a.name.clone(),
        kubernetes_version: c.kubernetes_version.clone(),
        control_plane_endpoint: a.api_endpoint(),
        image_repository: "registry.k8s.io".into(),
        networking: Networking {
            pod_subnet: c.pod_cidr.into(),
            service_subnet: c.service_cidr.into(),
            dns_domain: c.dns_domain.clone(),
        },
        api_server: ApiServer { cert_s_a_ns: vec![cp.ip.to_string(), cp.name.clone(), "localhost".into()] },
    };
    let kubelet = KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        cgroup_driver: "systemd".into(),
        image_gc_high_threshold_percent: 100,
        image_gc_low_threshold_percent: 99,
    };
    format!("{}---\n{}---\n{}", yaml(&init), yaml(&cluster), yaml(&kubelet))
}

/// A worker's `kubeadm join --config` file.
pub fn join_config(a: &Appliance, node: &NodeSpec, token: &str, ca_cert_hash: &str) -> String {
    let join = JoinConfiguration {
        api_version: API_VERSION,
        kind: "JoinConfiguration",
        discovery: Discovery {
            bootstrap_token: TokenDiscovery {
                api_server_endpoint: a.api_endpoint(),
                token: token.into(),
                ca_cert_hashes: vec![ca_cert_hash.into()],
                unsafe_skip_c_a_verification: false,
            },
            timeout: "5m0s".into(),
        },
        node_registration: registration(node),
    };
    yaml(&join)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_kubeadms() {
        let a = Appliance::default();
        let init = init_config(&a, "abcdef.0123456789abcdef");
        for needle in [
            "localAPIEndpoint:",
            "imageGCHighThresholdPercent: 100",
            "certSANs:",
            "podSubnet: 10.244.0.0/16",
            "controlPlaneEndpoint: 192.168.122.10:6443",
            "imagePullPolicy: Never",
            "kubernetesVersion: v1.29.15",
        ] {
            assert!(init.contains(needle), "{needle} missing:\n{init}");
        }
        let join = join_config(&a, &a.nodes[1], "abcdef.0123456789abcdef", "sha256:00");
        for needle in [
            "unsafeSkipCAVerification: false",
            "caCertHashes:",
            "apiServerEndpoint: 192.168.122.10:6443",
            "name: k8s-worker-1",
        ] {
            assert!(join.contains(needle), "{needle} missing:\n{join}");
        }
    }
}
