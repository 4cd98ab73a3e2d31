//! Golden files of every generated document: kubeadm YAML, cloud-init
//! meta-data, network-config and user-data, libvirt XML. `UPDATE_EXPECT=1
//! cargo test -p hearth-appliance --test snapshots` rewrites them; review the diff.

use std::path::PathBuf;

use hearth_appliance::kubeadm;
use hearth_appliance::spec::Appliance;

/// A fixed token and CA pin, so that the snapshots are stable.
const TOKEN: &str = "abcdef.0123456789abcdef";
const CA_HASH: &str = "sha256:0f8e3d1c2b4a59687766554433221100ffeeddccbbaa99887766554433221100";

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {}: run with UPDATE_EXPECT=1", path.display()));
    assert!(
        expected == actual,
        "{name} differs from its snapshot; run with UPDATE_EXPECT=1 and review.\n--- actual:\n{actual}"
    );
}

#[test]
fn kubeadm_documents() {
    let a = Appliance::default();
    check("kubeadm-init.yaml", &kubeadm::init_config(&a, TOKEN));
    check("kubeadm-join-k8s-worker-1.yaml", &kubeadm::join_config(&a, &a.nodes[1], TOKEN, CA_HASH));
}
