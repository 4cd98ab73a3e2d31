//! The generated cloud-config judged by `cloud-init schema` (Debian's
//! cloud-init), and the network-config read back by PyYAML as cloud-init reads
//! it (YAML 1.1: the MAC must stay a string).

use std::process::Command;

use hearth_appliance::pki::Pki;
use hearth_appliance::seed;
use hearth_appliance::spec::Appliance;

#[test]
fn cloud_init_accepts_every_node_seed() {
    if !hearth_testsupport::require_tool("cloud-init") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("state")).unwrap();
    let hash = pki.ca_cert_hash().unwrap();
    let a = Appliance { name: "hearth-test".into(), ..Default::default() };
    for node in &a.nodes {
        let s = seed::node_seed(&a, node, &pki, &hash, 3, Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE user@host"));
        let ud = dir.path().join(format!("{}-user-data", node.name));
        std::fs::write(&ud, &s.user_data).unwrap();
        let out = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&ud).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("Valid"), "{}: {text}", node.name);
        let nc = dir.path().join(format!("{}-network-config", node.name));
        std::fs::write(&nc, &s.network_config).unwrap();
        let check = format!(
            "import yaml,sys; d=yaml.safe_load(open(sys.argv[1])); e=d['ethernets']['eth0']; \
             assert d['version']==2; assert isinstance(e['match']['macaddress'], str), e; \
             assert e['addresses']==['{}/24'], e; print('ok')",
            node.ip
        );
        let py = Command::new("/usr/bin/python3").args(["-c", &check]).arg(&nc).output().unwrap();
        assert!(py.status.success(), "{}: {}", node.name, String::from_utf8_lossy(&py.stderr));
        let md = Command::new("/usr/bin/python3")
            .args(["-c", "import yaml,sys; d=yaml.safe_load(open(sys.argv[1])); assert d['instance-id'].endswith('-3'); print('ok')"])
            .arg({
                let p = dir.path().join(format!("{}-meta-data", node.name));
                std::fs::write(&p, &s.meta_data).unwrap();
                p
            })
            .output()
            .unwrap();
        assert!(md.status.success(), "{}", String::from_utf8_lossy(&md.stderr));
    }
}
