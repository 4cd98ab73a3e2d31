//! Golden files of every generated document: kubeadm YAML, cloud-init
//! meta-data, network-config and user-data, libvirt XML. `UPDATE_EXPECT=1
//! cargo test -p hearth-appliance --test snapshots` rewrites them; review the diff.

use std::path::PathBuf;

use hearth_appliance::pki::{Ca, Pki};
use hearth_appliance::spec::Appliance;
use hearth_appliance::{kubeadm, seed, xml};

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

/// A PKI with placeholder contents (snapshots must not hold real keys).
fn fake_pki() -> Pki {
    let ca = |n: &str| Ca { cert_pem: format!("-----CERT {n}-----\n"), key_pem: format!("-----KEY {n}-----\n") };
    Pki {
        ca: ca("ca"),
        front_proxy_ca: ca("front-proxy-ca"),
        etcd_ca: ca("etcd-ca"),
        platform_ca: ca("platform-ca"),
        sa_key_pem: "-----KEY sa-----\n".into(),
        sa_pub_pem: "-----PUB sa-----\n".into(),
        token: TOKEN.into(),
    }
}

#[test]
fn seeds() {
    let a = Appliance::default();
    let pki = fake_pki();
    for node in &a.nodes {
        let s =
            seed::node_seed(&a, node, &pki, CA_HASH, 1, Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY user@host"));
        check(&format!("seed-{}-meta-data.yaml", node.name), &s.meta_data);
        check(&format!("seed-{}-network-config.yaml", node.name), &s.network_config);
        check(&format!("seed-{}-user-data.yaml", node.name), &s.user_data);
    }
}

#[test]
fn libvirt_xml() {
    let a = Appliance::default();
    check("network.xml", &xml::network(&a));
    let node = &a.nodes[0];
    let dir = std::path::Path::new("/mnt/k8s-storage");
    let files = xml::NodeFiles {
        disk: &dir.join("k8s-myhome-k8s-control-plane.qcow2"),
        seed: &dir.join("k8s-myhome-k8s-control-plane.seed.img"),
        console_log: &dir.join("k8s-myhome-k8s-control-plane.console.log"),
    };
    let kernel = std::path::Path::new("/var/lib/hearth/store/0000-image/vmlinuz");
    let initrd = std::path::Path::new("/var/lib/hearth/store/0000-image/initrd.img");
    check(
        "domain-k8s-control-plane.xml",
        &xml::domain(&a, node, &files, &xml::Boot::Kernel { kernel, initrd }, "kvm", 1),
    );
    check(
        "domain-k8s-worker-1-tcg-firmware.xml",
        &xml::domain(&a, &a.nodes[1], &files, &xml::Boot::Firmware, "qemu", 2),
    );
}
