//! `hearth launch | status | reinstall | destroy | kubeconfig` against libvirt's
//! built-in `test:///default` driver (no daemon; every process starts from the
//! driver's own fresh state, whose `default` network holds 192.168.122.0/24).
//! Every `hearth` here runs in a fresh, empty network namespace
//! (`Env::isolated`): its probes of the node addresses meet "unreachable"
//! there, which the test asserts, and never reach a real host.
//! The image is a real build of the small Ubuntu-shaped base. What a real
//! libvirtd and real VMs do is tests/vm_appliance.rs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::base::make_base;
use common::{Env, require_tool, sha256_hex};

fn tools_present() -> bool {
    ["mke2fs", "sgdisk", "qemu-img", "genisoimage", "openssl", "base64"].iter().all(|t| require_tool(t))
}

/// Builds the base into a store and writes an appliance.toml on the test driver.
fn setup(env: &Env) -> PathBuf {
    let dir = env.path("lab");
    fs::create_dir_all(&dir).unwrap();
    let base = make_base(&dir);
    let sha = sha256_hex(&fs::read(&base).unwrap());
    fs::write(
        dir.join("node.toml"),
        format!(
            "name = \"node\"\n[output]\nvirtual_size = \"2GiB\"\nepoch = 1700000000\n\
             [base]\nname = \"base.qcow2\"\nurls = [\"file://{}\"]\nsha256 = \"{sha}\"\nformat = \"qcow2\"\n",
            base.display()
        ),
    )
    .unwrap();
    env.run(&["build", dir.join("node.toml").to_str().unwrap()]).ok();
    let spec = dir.join("appliance.toml");
    fs::write(
        &spec,
        "name = \"lab\"\nlibvirt_uri = \"test:///default\"\ndomain_type = \"qemu\"\nrecipe = \"node.toml\"\n\
         storage_dir = \"storage\"\n",
    )
    .unwrap();
    spec
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

#[test]
fn launch_status_kubeconfig_reinstall_destroy_on_the_test_driver() {
    if !tools_present() {
        return;
    }
    let mut env = Env::isolated();
    let state = env.path("state");
    env.env("HEARTH_STATE", state.to_str().unwrap());
    let spec = setup(&env);
    let spec_s = spec.to_str().unwrap();
    let storage = spec.parent().unwrap().join("storage");

    let r = env.run(&["launch", spec_s, "--wait", "running"]).ok();
    r.stderr_has("network `default`: reused, 3 DHCP reservations added")
        .stderr_has("includes the MetalLB pool 192.168.122.100-192.168.122.150")
        .stderr_has("started 3 VMs of appliance `lab` (generation 1); host side took")
        .stderr_has("reached running");
    r.stdout_has("appliance lab (generation 1): API https://192.168.122.10:6443 not ready");
    assert!(
        r.stdout.lines().any(|l| l.starts_with("k8s-worker-2") && l.contains("192.168.122.12  running")),
        "{}",
        r.stdout
    );
    // The probes ran in the test's empty namespace: no route, no packet out.
    assert_eq!(r.stdout.matches("no (unreachable)").count(), 3, "{}", r.stdout);

    // Per node: a thin overlay backed by the store image, a private seed.
    let app = state.join("lab");
    let launched: serde_json::Value = serde_json::from_slice(&fs::read(app.join("launched.json")).unwrap()).unwrap();
    let image = PathBuf::from(launched["image"].as_str().unwrap());
    for node in ["k8s-control-plane", "k8s-worker-1", "k8s-worker-2"] {
        let disk = storage.join(format!("lab-{node}.qcow2"));
        let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&disk).output().unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"].as_str(), Some(image.join("disk.qcow2").to_str().unwrap()));
        assert_eq!(mode(&storage.join(format!("lab-{node}.seed.iso"))), 0o600);
        assert_eq!(mode(&app.join("seeds").join(node).join("user-data")), 0o600);
    }
    for secret in
        ["pki/ca.key", "pki/sa.key", "pki/etcd/ca.key", "pki/front-proxy-ca.key", "pki/platform-ca.key", "token"]
    {
        assert_eq!(mode(&app.join(secret)), 0o600, "{secret}");
    }
    let token = fs::read_to_string(app.join("token")).unwrap();
    assert!(!r.stdout.contains(token.trim()) && !r.stderr.contains(token.trim()), "the token was printed");
    // The store keeps the image while the appliance exists.
    env.run(&["store", "gc"]).ok();
    assert!(image.join("disk.qcow2").exists());

    // One look: the test driver of this new process has no such domains.
    let st = env.run(&["status", spec_s, "--json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(st["nodes"][0]["vm"], "missing");
    assert_eq!(st["pending"], "running");

    // A second launch while one holds the appliance is refused, and changes nothing.
    let lock = fs::OpenOptions::new().write(true).open(state.join("lab.lock")).unwrap();
    lock.try_lock().unwrap();
    env.run(&["launch", spec_s, "--wait", "running"]).fails().stderr_has("appliance `lab` is busy");
    env.run(&["reinstall", spec_s, "--wait", "running"]).fails().stderr_has("appliance `lab` is busy");
    drop(lock);

    // The admin kubeconfig: 0600, its client certificate signed by the appliance's CA.
    let kc = env.path("admin.kubeconfig");
    env.run(&["kubeconfig", "-a", spec_s, "-o", kc.to_str().unwrap()]).ok();
    assert_eq!(mode(&kc), 0o600);
    let text = fs::read_to_string(&kc).unwrap();
    assert!(text.contains("server: https://192.168.122.10:6443"), "{text}");
    let b64 = text.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data: ")).unwrap();
    let pem = Command::new("sh").arg("-c").arg(format!("echo {b64} | base64 -d")).output().unwrap().stdout;
    let cert = env.path("admin.crt");
    fs::write(&cert, pem).unwrap();
    let v =
        Command::new("openssl").arg("verify").arg("-CAfile").arg(app.join("pki/ca.crt")).arg(&cert).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // --merge keeps the user's other clusters.
    fs::create_dir_all(env.home.join(".kube")).unwrap();
    fs::write(
        env.home.join(".kube/config"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster:\n    server: https://127.0.0.1:1\n",
    )
    .unwrap();
    env.run(&["kubeconfig", "-a", spec_s, "--merge"]).ok();
    let merged = fs::read_to_string(env.home.join(".kube/config")).unwrap();
    assert!(merged.contains("name: work") && merged.contains("current-context: lab-admin@lab"), "{merged}");

    // The platform CA for the host to trust: printed, or written; openssl reads it.
    let printed = env.run(&["ca", "-a", spec_s]).ok().stdout;
    assert_eq!(printed, fs::read_to_string(app.join("pki/platform-ca.crt")).unwrap());
    let trust = env.path("hearth-ca.crt");
    env.run(&["ca", "-a", spec_s, "-o", trust.to_str().unwrap()]).ok();
    let subject = Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(&trust).output().unwrap();
    assert!(String::from_utf8_lossy(&subject.stdout).contains("hearth platform CA"), "{subject:?}");
    assert_eq!(mode(&app.join("pki/platform-ca.key")), 0o600);
    // access: without a platform, only the API; a secret is shown only by its name.
    env.run(&["access", "-a", spec_s]).ok().stdout_has("Kubernetes API\n  url:      https://192.168.122.10:6443");
    env.run(&["access", "-a", spec_s, "--show", "nope"])
        .fails()
        .stderr_has("appliance `lab` has no secret `nope`")
        .stderr_has("argocd-admin-password");
    let shown = env.run(&["access", "-a", spec_s, "--show", "git-admin-password"]).ok().stdout;
    assert_eq!(shown, fs::read_to_string(app.join("secrets/git-admin-password")).unwrap());
    assert_eq!(mode(&app.join("secrets/git-admin-password")), 0o600);
    env.run(&["gitops", "export", "-a", spec_s, "x"]).fails().stderr_has("has no GitOps repository");

    // Reinstall: next generation, same PKI, fresh seeds.
    let ca = fs::read(app.join("pki/ca.crt")).unwrap();
    let platform_ca = fs::read(app.join("pki/platform-ca.crt")).unwrap();
    let meta1 = fs::read_to_string(app.join("seeds/k8s-worker-1/meta-data")).unwrap();
    let r = env.run(&["reinstall", spec_s, "--wait", "running", "--offline"]).ok();
    r.stderr_has("the PKI and the image stay").stderr_has("(generation 2)").stderr_has("reinstall host side took");
    assert_eq!(fs::read(app.join("pki/ca.crt")).unwrap(), ca);
    assert_eq!(fs::read(app.join("pki/platform-ca.crt")).unwrap(), platform_ca, "reinstall keeps the platform CA");
    let meta2 = fs::read_to_string(app.join("seeds/k8s-worker-1/meta-data")).unwrap();
    assert_ne!(meta1, meta2, "the instance id must change so cloud-init runs again");

    // Destroy: state, files and the store root go; a second destroy is a no-op.
    env.run(&["destroy", spec_s]).ok().stdout_has("destroyed appliance `lab`");
    assert!(!app.exists());
    assert!(!storage.join("lab-k8s-worker-1.qcow2").exists() && !storage.join("lab-k8s-worker-1.seed.iso").exists());
    env.run(&["destroy", spec_s]).ok().stdout_has("appliance `lab` does not exist here: nothing to destroy");
    env.run(&["status", spec_s]).fails().stderr_has("appliance `lab` is not launched here");
}

#[test]
fn bad_appliances_are_refused_before_anything_is_made() {
    if !tools_present() {
        return;
    }
    let mut env = Env::isolated();
    let state = env.path("state");
    env.env("HEARTH_STATE", state.to_str().unwrap());
    let dir = env.path("bad");
    fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("appliance.toml");
    let spec_s = spec.to_str().unwrap();

    // Validation names the file and every problem.
    let mut text = String::from("name = \"lab\"\nlibvirt_uri = \"test:///default\"\n");
    for (name, role, ip, mem) in
        [("cp", "control-plane", 10, 1024), ("w1", "worker", 11, 2048), ("w1", "worker", 120, 2048)]
    {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nip = \"192.168.122.{ip}\"\nvcpus = 2\nmemory_mib = {mem}\ndisk_gib = 20\n"
        ));
    }
    fs::write(&spec, &text).unwrap();
    let r = env.run(&["launch", spec_s]).fails();
    r.stderr_has("appliance.toml`")
        .stderr_has("node `cp`: 1024 MiB of memory is too little for kubeadm")
        .stderr_has("node `w1`: the name is used twice")
        .stderr_has("192.168.122.120 is inside the MetalLB pool");
    assert!(!state.exists(), "nothing may be made for an invalid appliance");

    // An image that is not in the store: the error says how to build it.
    fs::write(
        &spec,
        "name = \"lab\"\nlibvirt_uri = \"test:///default\"\nrecipe = \"node.toml\"\nstorage_dir = \"storage\"\n",
    )
    .unwrap();
    fs::write(
        dir.join("node.toml"),
        format!(
            "name = \"node\"\n[output]\nvirtual_size = \"2GiB\"\nepoch = 1\n[base]\nname = \"b.qcow2\"\nurls = [\"file:///nonexistent\"]\n\
             sha256 = \"{}\"\nformat = \"qcow2\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let r = env.run(&["launch", spec_s]).fails();
    r.stderr_has("is not in the store")
        .stderr_has(&format!("hint: build it first: `hearth build {}", dir.join("node.toml").display()));
    assert!(!dir.join("storage").exists());

    // Nothing launched: reinstall says so, destroy is a no-op.
    env.run(&["reinstall", spec_s]).fails().stderr_has("appliance `lab` was never launched here");
    env.run(&["destroy", spec_s]).ok().stdout_has("nothing to destroy");
}

/// A Flannel manifest of the upstream shape (its ConfigMap and DaemonSet),
/// running an image the test's recipe preloads.
fn small_flannel(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube-flannel-cfg\n  namespace: kube-flannel\ndata:\n  \
         net-conf.json: |\n    {{\n      \"Network\": \"10.244.0.0/16\",\n      \"Backend\": {{ \"Type\": \"vxlan\" }}\n    }}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: kube-flannel-ds\n  namespace: kube-flannel\nspec:\n  \
         selector:\n    matchLabels:\n      app: flannel\n  template:\n    metadata:\n      labels:\n        app: flannel\n    \
         spec:\n      containers:\n      - name: kube-flannel\n        image: {image}\n"
    )
}

#[test]
fn the_platform_plan_rides_on_the_control_planes_seed_and_a_plan_needing_a_missing_image_is_refused() {
    if !tools_present() || !require_tool("isoinfo") {
        return;
    }
    let mut env = Env::isolated();
    let state = env.path("state");
    env.env("HEARTH_STATE", state.to_str().unwrap());
    let spec = setup(&env);
    let dir = spec.parent().unwrap().to_owned();
    let srv = hearth_testsupport::Server::start();
    let fx = common::oci::fixture();
    let image = common::oci::serve_image(&srv, &fx, "test/img", "1.0");
    // Only Flannel: the other components are off in this appliance.
    fs::write(
        &spec,
        format!(
            "{}[platform.components]\nlocal_path = false\nmetallb = false\ncert_manager = false\ningress_nginx = false\nargocd = false\n\
             harbor = false\nexternal_secrets = false\narc = false\n",
            fs::read_to_string(&spec).unwrap()
        ),
    )
    .unwrap();
    let recipe = dir.join("node.toml");
    let base_recipe = fs::read_to_string(&recipe).unwrap();
    let with_flannel = |manifest: &str| {
        let path = dir.join("flannel.yml");
        fs::write(&path, manifest).unwrap();
        let sha = sha256_hex(manifest.as_bytes());
        fs::write(
            &recipe,
            format!(
                "{base_recipe}[[images]]\nreference = \"{image}\"\ndigest = \"{}\"\n\
                 [[manifests]]\nname = \"flannel.yml\"\ncomponent = \"flannel\"\nurls = [\"file://{}\"]\nsha256 = \"{sha}\"\n",
                fx.index,
                path.display()
            ),
        )
        .unwrap();
        env.run(&["build", recipe.to_str().unwrap()]).ok();
    };
    let spec_s = spec.to_str().unwrap();

    // A manifest naming an image the node image does not preload: refused
    // before any domain is defined, naming the object and the recipe lines.
    with_flannel(&small_flannel("docker.io/flannel/flannel:v0.25.5"));
    let r = env.run(&["launch", spec_s, "--wait", "running"]).fails();
    r.stderr_has("the platform would not run offline")
        .stderr_has("DaemonSet kube-flannel/kube-flannel-ds container `kube-flannel`")
        .stderr_has("image `docker.io/flannel/flannel:v0.25.5` is not preloaded by")
        .stderr_has("reference = \"docker.io/flannel/flannel:v0.25.5\"");
    assert!(!state.join("lab/launched.json").exists(), "nothing may be recorded for a refused plan");
    env.run(&["destroy", spec_s]).ok();

    // The preloaded image: the plan is rendered and rides on the control plane's seed.
    with_flannel(&small_flannel(&image));
    env.run(&["launch", spec_s, "--wait", "running"]).ok();
    let seed = dir.join("storage/lab-k8s-control-plane.seed.iso");
    let list = Command::new("isoinfo").args(["-f", "-R", "-i"]).arg(&seed).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().any(|l| l == "/platform/10-flannel/kube-flannel.yaml"), "{list}");
    let plan = Command::new("isoinfo").args(["-R", "-x", "/platform/plan", "-i"]).arg(&seed).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("step 10-flannel 600\n") && plan.contains("nodes 3\n"), "{plan}");
    let rendered =
        fs::read_to_string(state.join("lab/seeds/k8s-control-plane/platform/10-flannel/kube-flannel.yaml")).unwrap();
    assert!(rendered.contains(&image) && rendered.contains("10.244.0.0/16"), "{rendered}");
    let worker = Command::new("isoinfo")
        .args(["-f", "-R", "-i"])
        .arg(dir.join("storage/lab-k8s-worker-1.seed.iso"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&worker.stdout).contains("platform"));
    // The record keeps the manifest for reinstall, which renders the same plan offline.
    let launched: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("lab/launched.json")).unwrap()).unwrap();
    assert!(launched["platform"]["manifests"]["flannel"].as_str().unwrap().ends_with("/flannel.yml"));
    let read_secrets = || {
        let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(state.join("lab/secrets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
            .collect();
        all.sort();
        all
    };
    let secrets_before = read_secrets();
    // A record from before Harbor, External Secrets and ARC existed: its spec
    // lacks their switches (so they read as on) and its inputs lack them.
    let record_path = state.join("lab/launched.json");
    let mut old: serde_json::Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let comps = old["appliance"]["platform"]["components"].as_object_mut().unwrap();
    for c in ["harbor", "external_secrets", "arc"] {
        assert!(comps.remove(c).is_some(), "{c}");
    }
    fs::write(&record_path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    let r = env.run(&["reinstall", spec_s, "--wait", "running", "--offline"]).ok();
    r.stderr_has("note: `harbor` is on in the spec, but this appliance was launched without its input: it stays off");
    let now: serde_json::Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(now["appliance"]["platform"]["components"]["harbor"], false, "recorded as it was rendered");
    assert_eq!(read_secrets(), secrets_before, "reinstall keeps the appliance's secrets");
    let again =
        fs::read_to_string(state.join("lab/seeds/k8s-control-plane/platform/10-flannel/kube-flannel.yaml")).unwrap();
    assert_eq!(again, rendered);

    // No secret of the appliance is in its node image or anywhere in the store:
    // the image's disk as raw bytes and every store file, searched by grep.
    let secrets_dir = state.join("lab/secrets");
    let mut patterns = String::new();
    for e in fs::read_dir(&secrets_dir).unwrap() {
        let path = e.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let text = fs::read_to_string(&path).unwrap();
        if text.starts_with("-----BEGIN") {
            // A PEM key or certificate: its longest base64 line.
            patterns.push_str(text.lines().max_by_key(|l| l.len()).unwrap());
        } else {
            patterns.push_str(text.trim());
        }
        patterns.push('\n');
    }
    assert!(patterns.lines().count() >= 12, "{patterns}");
    let pattern_file = env.path("secret-patterns");
    fs::write(&pattern_file, &patterns).unwrap();
    let grep = |target: &Path| {
        Command::new("grep").args(["-a", "-r", "-l", "-F", "-f"]).arg(&pattern_file).arg(target).output().unwrap()
    };
    let image = PathBuf::from(launched["image"].as_str().unwrap());
    let raw = env.path("disk.raw");
    let c = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image.join("disk.qcow2"))
        .arg(&raw)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    for target in [raw.as_path(), env.store.as_path()] {
        let found = grep(target);
        assert_eq!(
            found.status.code(),
            Some(1),
            "a secret is in {}: {}",
            target.display(),
            String::from_utf8_lossy(&found.stdout)
        );
    }
    // The search can find one: a copy of a secret next to the raw disk.
    fs::write(env.path("planted"), format!("x{}x", patterns.lines().next().unwrap())).unwrap();
    assert_eq!(grep(&env.path("planted")).status.code(), Some(0), "the secret search finds nothing at all");
    fs::remove_file(&raw).unwrap();
    env.run(&["destroy", spec_s]).ok();
}
