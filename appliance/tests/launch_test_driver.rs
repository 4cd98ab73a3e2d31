//! Host-side launch and reinstall against libvirt's `test:///default` driver:
//! overlays backed by the image (qemu-img), seeds labelled `cidata` holding the
//! three documents (isoinfo), secrets 0600, domains defined and running; a
//! reinstall keeps the PKI and changes the instance id. The guests themselves
//! are not run here (the test driver simulates them).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use hearth_appliance::launch::{self, Image, Options};
use hearth_appliance::libvirt::Libvirt;
use hearth_appliance::pki::Pki;
use hearth_appliance::platform::{Plan, PlanFile, Step};
use hearth_appliance::spec::Appliance;
use hearth_appliance::state::State;

fn tools() -> bool {
    ["qemu-img", "genisoimage", "isoinfo"].iter().all(|t| hearth_testsupport::require_tool(t))
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn prepare_launch_and_reinstall() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let entry = dir.path().join("image");
    std::fs::create_dir_all(&entry).unwrap();
    out(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(entry.join("disk.qcow2")).arg("1G"));
    std::fs::write(entry.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(entry.join("initrd.img"), b"initrd").unwrap();
    let image = Image::in_entry(&entry);
    let (state, storage) = (dir.path().join("state"), dir.path().join("storage"));
    let st = State::new(dir.path(), "state");
    let a = Appliance::default();
    let opts = |generation| Options {
        state: &state,
        storage: &storage,
        generation,
        ssh_key: Some("ssh-ed25519 AAAAtest u@h"),
        domain_type: "qemu",
        platform: None,
    };

    // The control plane's seed carries the platform plan (a small one here).
    let plan = Plan {
        steps: vec![Step {
            name: "10-x".into(),
            files: vec![PlanFile { path: "10-x/x.yaml".into(), body: "---\n{}\n".into(), secret: true }],
            server_side: false,
            retry_apply: false,
            waits: vec![],
            timeout_secs: 60,
        }],
        gitops: Some({
            let files = std::collections::BTreeMap::from([("README.md".to_owned(), b"x\n".to_vec())]);
            let repo = hearth_appliance::platform::gitops::commit(&a, &files);
            hearth_appliance::platform::gitops::Repo { files, head: repo.head.hex(), bundle: repo.bundle() }
        }),
    };
    let plans = launch::prepare(&a, &st.pki().unwrap(), &image, &opts(1), Some(&plan)).unwrap();
    let cp_files = out(Command::new("isoinfo").args(["-f", "-R", "-i"]).arg(&plans[0].seed));
    for f in ["/platform/plan", "/platform/10-x/x.yaml", "/platform/gitops/platform.bundle"] {
        assert!(cp_files.lines().any(|l| l == f), "{f} missing from the control plane's seed: {cp_files}");
    }
    let plan_text = out(Command::new("isoinfo").args(["-R", "-x", "/platform/plan", "-i"]).arg(&plans[0].seed));
    assert_eq!(plan_text, plan.to_text());
    let bundle = Command::new("isoinfo")
        .args(["-R", "-x", "/platform/gitops/platform.bundle", "-i"])
        .arg(&plans[0].seed)
        .output()
        .unwrap();
    assert_eq!(bundle.stdout, plan.gitops.as_ref().unwrap().bundle, "the GitOps bundle rides on the seed as is");
    let w1_files = out(Command::new("isoinfo").args(["-f", "-R", "-i"]).arg(&plans[1].seed));
    assert!(!w1_files.contains("platform"), "a worker gets no plan: {w1_files}");
    let key_mode =
        std::fs::metadata(state.join("seeds/k8s-control-plane/platform/10-x/x.yaml")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert_eq!(plans.len(), 3);
    for p in &plans {
        let info = out(Command::new("qemu-img").args(["info", "--output=json"]).arg(&p.disk));
        assert!(info.contains("\"backing-filename\"") && info.contains("disk.qcow2"), "{info}");
        assert!(
            info.contains(&format!(
                "\"virtual-size\": {}",
                if p.node == "k8s-control-plane" { 50u64 << 30 } else { 30u64 << 30 }
            )),
            "{info}"
        );
        let pvd = out(Command::new("isoinfo").arg("-d").arg("-i").arg(&p.seed));
        assert!(pvd.contains("Volume id: cidata"), "{pvd}");
        let files = out(Command::new("isoinfo").args(["-f", "-R", "-i"]).arg(&p.seed));
        for f in ["/meta-data", "/network-config", "/user-data"] {
            assert!(files.lines().any(|l| l == f), "{f} missing from the seed: {files}");
        }
        let mode = std::fs::metadata(&p.seed).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the seed holds secrets");
        assert!(
            p.xml.contains(&p.disk.display().to_string())
                && p.xml.contains("<type arch='x86_64' machine='q35'>hvm</type>")
        );
    }
    let meta = out(Command::new("isoinfo").args(["-R", "-x", "/meta-data", "-i"]).arg(&plans[1].seed));
    assert!(meta.contains("instance-id: k8s-myhome-k8s-worker-1-1"), "{meta}");

    let lv = Libvirt::open("test:///default").unwrap();
    let up = launch::up(&lv, &a, &st, &entry, &opts(1)).unwrap();
    assert_eq!(st.launched().unwrap().as_ref(), Some(&up.launched), "the record is written");
    assert_eq!(
        up.launched.nodes.iter().map(|n| &n.disk).collect::<Vec<_>>(),
        plans.iter().map(|p| &p.disk).collect::<Vec<_>>()
    );
    assert_eq!(lv.owned_domains(&a.name).unwrap().len(), 3);
    let ca_before = Pki::load_or_create(&state).unwrap().ca_cert_hash().unwrap();

    // Reinstall: tear down (keeping the network), prepare generation 2, launch.
    let removed = launch::teardown(&lv, &a, &storage, true).unwrap();
    assert_eq!(removed.domains.len(), 3);
    assert!(!plans[0].disk.exists() && !plans[0].seed.exists());
    let plans2 = launch::up(&lv, &a, &st, &entry, &opts(2)).unwrap().launched.nodes;
    assert_eq!(st.launched().unwrap().unwrap().generation, 2);
    assert_eq!(Pki::load_or_create(&state).unwrap().ca_cert_hash().unwrap(), ca_before, "reinstall keeps the PKI");
    let meta = out(Command::new("isoinfo").args(["-R", "-x", "/meta-data", "-i"]).arg(&plans2[1].seed));
    assert!(meta.contains("instance-id: k8s-myhome-k8s-worker-1-2"), "{meta}");
    assert!(lv.is_running("k8s-myhome-k8s-control-plane").unwrap());
}
