//! The libvirt XML judged by libvirt itself: `virt-xml-validate` (libvirt's RNG
//! schemas) and the in-process `test:///default` driver through `virsh` (no
//! daemon), which must keep hearth's ownership metadata on what it defines.

use std::path::Path;
use std::process::Command;

use hearth_appliance::spec::Appliance;
use hearth_appliance::xml;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

#[test]
fn libvirt_accepts_the_network_and_every_domain() {
    if !hearth_testsupport::require_tool("virt-xml-validate") || !hearth_testsupport::require_tool("virsh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // hearth's own network (libvirt's test driver, like a real host, already
    // has a `default`).
    let mut a = Appliance::default();
    a.network.name = "hearth-test-net".into();
    let net = dir.path().join("network.xml");
    std::fs::write(&net, xml::network(&a)).unwrap();
    assert!(run(Command::new("virt-xml-validate").arg(&net).arg("network")).contains("validates"));
    let mut script = format!("net-define {}; ", net.display());
    let storage = Path::new("/mnt/k8s-storage");
    for (i, node) in a.nodes.iter().enumerate() {
        let disk = storage.join(format!("{}.qcow2", a.domain_name(node)));
        let seed = storage.join(format!("{}.seed.img", a.domain_name(node)));
        let log = storage.join(format!("{}.console.log", a.domain_name(node)));
        let files = xml::NodeFiles { disk: &disk, seed: &seed, console_log: &log };
        let kernel = Path::new("/store/image/vmlinuz");
        let initrd = Path::new("/store/image/initrd.img");
        let boot = if i == 0 { xml::Boot::Firmware } else { xml::Boot::Kernel { kernel, initrd } };
        let path = dir.path().join(format!("{}.xml", node.name));
        std::fs::write(&path, xml::domain(&a, node, &files, &boot, "qemu", 1)).unwrap();
        assert!(run(Command::new("virt-xml-validate").arg(&path).arg("domain")).contains("validates"), "{}", node.name);
        script.push_str(&format!("define {}; ", path.display()));
    }
    script.push_str("net-dumpxml hearth-test-net; dumpxml k8s-myhome-k8s-worker-2");
    let out = run(Command::new("virsh").args(["-c", "test:///default", &script]));
    assert!(out.contains("<host mac='52:54:00:") && out.contains("ip='192.168.122.12'"), "{out}");
    assert!(xml::owned_by(&out, "k8s-myhome"), "libvirt dropped hearth's metadata:\n{out}");
    assert!(out.contains("<hearth:node>k8s-worker-2</hearth:node>"), "{out}");
}
