//! The appliance's plumbing, with real libvirt and real VMs. This is NOT a
//! cluster test: kubeadm 1.29 cannot be installed here, so the fixture image
//! carries a recording STAND-IN named `kubeadm` that runs nothing and writes its
//! arguments and the config file it was given to the serial console. The test
//! proves what each node would have run, not that a cluster forms.
//!
//! The test makes a network namespace, starts virtlogd and libvirtd inside it
//! (so the VMs' 192.168.122.0/24 exists only there) and runs `hearth` inside it
//! too; the libvirt socket is a file, so the test reaches the daemon from
//! outside with virsh. Three TCG guests (domain type `qemu`) are launched with
//! the seed layout's addresses. Asserted:
//! - each VM answers at its fixed IP from inside the namespace;
//! - first boot configured the layered packages and imported the preloaded
//!   image into containerd's k8s.io namespace (`ctr` output on the console);
//! - the control plane ran `kubeadm init` with the config the host generated;
//! - each worker ran `kubeadm join` against 192.168.122.10:6443 with the token
//!   and the CA hash the host computed (the hash cross-checked with openssl);
//! - `reinstall --offline` brings them back the same way (same PKI);
//! - `destroy` leaves no hearth object, while a domain and a network the test
//!   defined itself are untouched.
//!
//! Runs when HEARTH_VM_TESTS=1, as root (tests/ci.sh sets it up).

#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{FixtureRecipe, Stages};
use common::{Env, Net, Run, sha256_hex};
use hearth_appliance::spec::{Role, parse_spec};
use hearth_testsupport::Server;

const NS: &str = "hearth-vmtest";
const URI: &str = "qemu:///system";
/// All three first boots under TCG on two cores must fit in this.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

/// The recording stand-in for kubeadm (see the module comment).
const KUBEADM_STAND_IN: &str = r#"#!/bin/sh
# STAND-IN for kubeadm, for hearth's VM test only: kubeadm 1.29 cannot be
# installed where the test runs. It runs nothing. It records its arguments and
# the config file it was given on the serial console, and succeeds.
say() { echo "kubeadm-stand-in: $*" >/dev/console; }
say "argv $*"
cfg=""
prev=""
for a in "$@"; do
  [ "$prev" = "--config" ] && cfg=$a
  prev=$a
done
if [ -n "$cfg" ]; then
  say "config $cfg sha256 $(sha256sum "$cfg" | cut -d' ' -f1)"
  while IFS= read -r line; do say "| $line"; done <"$cfg"
fi
exit 0
"#;

/// The recording stand-in for kubectl (see the module comment): it runs
/// nothing, writes each call (and the sha256 of an applied file) to the
/// console, answers `/readyz` with `ok` and `get nodes` with three Ready
/// nodes. The first `get nodes` on a disk holds until the test resets the VM
/// (a power loss in the middle of the platform plan).
const KUBECTL_STAND_IN: &str = r#"#!/bin/sh
# STAND-IN for kubectl, for hearth's VM test only: no cluster can run where the
# test runs. It records its arguments on the serial console and succeeds.
say() { echo "kubectl-stand-in: $*" >/dev/console; }
args=$(echo "$*" | sed 's|--kubeconfig [^ ]* ||')
f=""; prev=""
for a in "$@"; do [ "$prev" = "-f" ] && f=$a; prev=$a; done
if [ -n "$f" ]; then say "$args sha256 $(sha256sum "$f" | cut -d' ' -f1)"; else say "$args"; fi
case "$args" in
  *"get --raw=/readyz"*) echo ok ;;
  *"get nodes"*)
    if [ ! -e /var/lib/kubectl-stand-in.held ]; then
      touch /var/lib/kubectl-stand-in.held && sync
      say "holding for a reset"
      sleep 3600
    fi
    for n in 1 2 3; do echo "node-$n Ready <none> 1m v1.29.15"; done ;;
esac
exit 0
"#;

/// A Flannel manifest of the upstream shape running the fixture's preloaded
/// image, with a ConfigMap too large for kubectl's last-applied annotation
/// (so the step applies server-side).
fn small_flannel(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube-flannel-cfg\n  namespace: kube-flannel\ndata:\n  \
         net-conf.json: |\n    {{ \"Network\": \"10.244.0.0/16\", \"Backend\": {{ \"Type\": \"vxlan\" }} }}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: large\n  namespace: kube-flannel\ndata:\n  blob: \"{}\"\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: kube-flannel-ds\n  namespace: kube-flannel\nspec:\n  \
         selector:\n    matchLabels:\n      app: flannel\n  template:\n    metadata:\n      labels:\n        app: flannel\n    \
         spec:\n      containers:\n      - name: kube-flannel\n        image: {image}\n",
        "x".repeat(300_000)
    )
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn virsh(args: &[&str]) -> String {
    sh(Command::new("virsh").arg("-c").arg(URI).args(args))
}

/// The namespace with virtlogd and libvirtd in it; torn down on drop, with
/// every domain and network the test left behind.
struct Daemons {
    children: Vec<std::process::Child>,
    /// /dev/kvm's mode and group before the test, to put back.
    kvm: Option<(u32, u32)>,
}

/// On a real host udev makes /dev/kvm `root:kvm 0660` and the QEMU user is in
/// `kvm`. In a container without udev it is root's alone; libvirtd then finds
/// KVM "no longer available" on every lookup and probes QEMU anew (about 13 s
/// per domain define under TCG). The test sets the host's usual access and
/// puts the old one back. The guests still run under TCG (domain type qemu).
fn kvm_as_udev_sets_it() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    let group = Command::new("getent").args(["group", "kvm"]).output().ok()?;
    let gid: u32 = String::from_utf8_lossy(&group.stdout).split(':').nth(2)?.trim().parse().ok()?;
    let old = (meta.mode() & 0o7777, meta.gid());
    sh(Command::new("chgrp").arg(gid.to_string()).arg("/dev/kvm"));
    sh(Command::new("chmod").arg("0660").arg("/dev/kvm"));
    Some(old)
}

impl Daemons {
    fn start() -> Daemons {
        let running = Command::new("virsh").args(["-c", URI, "version"]).output().unwrap();
        assert!(
            !running.status.success(),
            "a libvirtd already answers at {URI}; the VM test starts its own inside a network namespace"
        );
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        sh(Command::new("ip").args(["netns", "add", NS]));
        sh(Command::new("ip").args(["netns", "exec", NS, "ip", "link", "set", "lo", "up"]));
        let kvm = kvm_as_udev_sets_it();
        let mut children = Vec::new();
        for daemon in ["virtlogd", "libvirtd"] {
            // Under `tini -s`, a subreaper: libvirtd's daemonized QEMU processes
            // (capability probes, the guests) are reaped when they exit even
            // where PID 1 does not reap orphans (containers), else libvirtd
            // waits for a zombie forever.
            let child = Command::new("ip")
                .args(["netns", "exec", NS, "tini", "-s", "--", daemon])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(format!("/tmp/hearth-vmtest-{daemon}.log")).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {daemon}: {e}"));
            children.push(child);
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = Instant::now();
        while !Command::new("virsh").args(["-c", URI, "version"]).output().unwrap().status.success() {
            assert!(t.elapsed() < Duration::from_secs(30), "libvirtd did not come up in the namespace");
            std::thread::sleep(Duration::from_millis(300));
        }
        Daemons { children, kvm }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let list = |what: &str| {
            Command::new("virsh")
                .args(["-c", URI, what, "--all", "--name"])
                .output()
                .map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        for d in list("list").lines().filter(|d| d.starts_with("vmtest-") || *d == "bystander") {
            let _ = Command::new("virsh").args(["-c", URI, "destroy", d]).output();
            let _ = Command::new("virsh").args(["-c", URI, "undefine", d]).output();
        }
        // Reservations hearth left on `default` when the test failed midway.
        let config = Command::new("virsh")
            .args(["-c", URI, "net-dumpxml", "--inactive", "default"])
            .output()
            .map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout).into_owned());
        for host in config.lines().map(str::trim).filter(|l| l.starts_with("<host ") && l.contains("name='k8s-")) {
            for scope in ["--config", "--live"] {
                let _ = Command::new("virsh")
                    .args(["-c", URI, "net-update", "default", "delete", "ip-dhcp-host", host, scope])
                    .output();
            }
        }
        let _ = Command::new("virsh").args(["-c", URI, "net-destroy", "bystander"]).output();
        let _ = Command::new("virsh").args(["-c", URI, "net-undefine", "bystander"]).output();
        let _ = Command::new("virsh").args(["-c", URI, "net-destroy", "default"]).output();
        // Everything left in the namespace (dnsmasq, QEMU), then the daemons.
        if let Ok(o) = Command::new("ip").args(["netns", "pids", NS]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if !self.children.iter().any(|c| c.id().to_string() == pid) {
                    let _ = Command::new("kill").arg(pid).status();
                }
            }
        }
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        if let Some((mode, gid)) = self.kvm {
            let _ = Command::new("chgrp").arg(gid.to_string()).arg("/dev/kvm").status();
            let _ = Command::new("chmod").arg(format!("{mode:o}")).arg("/dev/kvm").status();
        }
    }
}

/// `hearth` run inside the namespace.
fn hearth(env: &Env, args: &[&str]) -> Run {
    Run::from(hearth_cmd(env, args).output().expect("run hearth in the namespace"))
}

fn hearth_cmd(env: &Env, args: &[&str]) -> Command {
    assert!(matches!(&env.net, Net::Namespace(ns) if ns == NS), "hearth runs in the test's namespace");
    env.cmd(args)
}

/// Runs `hearth ARGS` in the namespace while watching the consoles, so that
/// every first-boot stage gets the time it appeared at.
fn hearth_watching(
    env: &Env,
    args: &[&str],
    nodes: &[(String, Role, PathBuf)],
    started: Instant,
) -> (Run, Vec<Stages>) {
    let out = env.path(&format!("{}.out", args[0]));
    let err = env.path(&format!("{}.err", args[0]));
    let mut child = hearth_cmd(env, args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // A console log from before (a reinstall's previous generation) is not read:
    // hearth replaces it, and the new one is another file.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).ok()?).into();
    let old: Vec<Option<u64>> = nodes.iter().map(|(_, _, log)| inode(log)).collect();
    let mut stages: Vec<Stages> = nodes.iter().map(|_| Stages::default()).collect();
    // libvirt's view of the reservations, logged whenever it changes (a
    // diagnosis aid: they must appear once and stay).
    let mut hosts = String::new();
    let status = loop {
        let now = Command::new("virsh")
            .args(["-c", URI, "net-dumpxml", "default"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("<host "))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        if now != hosts {
            eprintln!(
                "{:>6.1} s  reservations on `default`: {}",
                started.elapsed().as_secs_f64(),
                now.split("<host ").count() - 1
            );
            hosts = now;
        }
        for (((_, _, log), st), old) in nodes.iter().zip(&mut stages).zip(&old) {
            if old.is_some() && inode(log) == *old {
                continue;
            }
            st.see(&std::fs::read_to_string(log).unwrap_or_default(), started.elapsed().as_secs_f64());
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    (run, stages)
}

/// Lines the stand-in and first boot wrote, once every node is through.
struct Boot {
    logs: Vec<(String, String)>,
    stages: Vec<(String, Stages)>,
}

fn wait_for_first_boots(nodes: &[(String, Role, PathBuf)], started: Instant, seen: Vec<Stages>) -> Boot {
    let mut stages: Vec<(String, Stages)> = nodes.iter().map(|(n, _, _)| n.clone()).zip(seen).collect();
    let mut reset = false;
    loop {
        let mut logs = Vec::new();
        let mut through = true;
        for ((name, role, log), (_, st)) in nodes.iter().zip(&mut stages) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            st.see(&text, started.elapsed().as_secs_f64());
            let config_seen = text.contains("kubeadm-stand-in: config ");
            // The control plane holds in the middle of its platform plan (the
            // kubectl stand-in waits there): the power goes, once.
            if *role == Role::ControlPlane && !reset && text.contains("kubectl-stand-in: holding for a reset") {
                eprintln!("{:>6.1} s  resetting {name} in its platform plan", started.elapsed().as_secs_f64());
                virsh(&["reset", &format!("vmtest-{name}")]);
                reset = true;
            }
            let done = config_seen && text.contains("hearth-firstboot: done");
            assert!(!text.contains("hearth-firstboot: error"), "{name}'s first boot failed:\n{text}");
            through &= done;
            logs.push((name.clone(), text));
        }
        if through {
            return Boot { logs, stages };
        }
        assert!(
            started.elapsed() < BOOT_TIMEOUT,
            "first boots not through within {BOOT_TIMEOUT:?}:\n{}",
            logs.iter().map(|(n, l)| format!("== {n}\n{}", tail(l, 40))).collect::<String>()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}

/// The stand-in's record on one console: its argv line, the config's sha256
/// and the config's lines.
struct Recorded {
    argv: String,
    sha256: String,
    config: Vec<String>,
}

fn recorded(log: &str) -> Recorded {
    let after = |l: &str, key: &str| l.find(key).map(|i| l[i + key.len()..].trim_end().to_owned());
    let argv = log.lines().find_map(|l| after(l, "kubeadm-stand-in: argv ")).expect("the stand-in ran");
    let cfg = log.lines().find_map(|l| after(l, "kubeadm-stand-in: config ")).expect("with a config");
    let sha256 = cfg.rsplit(' ').next().unwrap().to_owned();
    let config = log.lines().filter_map(|l| after(l, "kubeadm-stand-in: | ")).collect();
    Recorded { argv, sha256, config }
}

fn openssl_ca_hash(ca: &Path) -> String {
    let out = sh(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
        ca.display()
    )));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

#[allow(clippy::too_many_lines)]
/// The other components Argo CD needs, each the smallest manifest of the
/// upstream shape hearth patches, running the fixture's image. Argo CD's
/// server pulls `Always` upstream, which hearth must turn to `IfNotPresent`.
fn small_platform(image: &str) -> Vec<(&'static str, String)> {
    let deployment = |ns: &str, name: &str, policy: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  \
             selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    \
             spec:\n      containers:\n      - name: {name}\n        image: {image}\n        imagePullPolicy: {policy}\n"
        )
    };
    vec![
        (
            "metallb",
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: metallb-system\n---\n{}",
                deployment("metallb-system", "controller", "IfNotPresent")
            ),
        ),
        (
            "cert-manager",
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cert-manager\n---\n{}",
                deployment("cert-manager", "cert-manager", "IfNotPresent")
            ),
        ),
        (
            "argo-cd",
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n---\n\
                 apiVersion: v1\nkind: Secret\nmetadata:\n  name: argocd-secret\ntype: Opaque\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata:\n  name: argocd-server\nspec:\n  ports:\n  - port: 443\n  \
                 selector:\n    app: argocd-server\n---\n{}",
                deployment("", "argocd-server", "Always").replace("\n  namespace: \n", "\n")
            ),
        ),
    ]
}

/// Checks one generation; returns the sha256 of the Argo CD secret the
/// control plane applied (the appliance's password hash and session key).
fn check_generation(env: &Env, spec_path: &Path, state: &Path, boot: &Boot, generation: u32) -> String {
    let a = parse_spec(&std::fs::read_to_string(spec_path).unwrap()).unwrap();
    let token = std::fs::read_to_string(state.join("token")).unwrap().trim().to_owned();
    let ca_hash = openssl_ca_hash(&state.join("pki/ca.crt"));
    for ((name, log), node) in boot.logs.iter().zip(&a.nodes) {
        assert_eq!(name, &node.name);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("hearth-firstboot: ")).collect();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(has("configured hello ") && has("configured less "), "{name}: packages\n{}", lines.join("\n"));
        assert!(has("ctr k8s.io image 127.0.0.1:"), "{name}: no image in containerd's k8s.io\n{}", lines.join("\n"));
        let r = recorded(log);
        let expected = match node.role {
            Role::ControlPlane => {
                assert_eq!(r.argv, "init --config /etc/hearth/kubeadm.yaml", "{name}");
                hearth_appliance::kubeadm::init_config(&a, &token)
            }
            Role::Worker => {
                assert_eq!(r.argv, "join --config /etc/hearth/kubeadm.yaml", "{name}");
                let text = r.config.join("\n");
                assert!(text.contains("apiServerEndpoint: 192.168.122.10:6443"), "{name}:\n{text}");
                assert!(text.contains(&format!("token: {token}")), "{name}: token");
                assert!(text.contains(&ca_hash), "{name}: the CA hash openssl computes, {ca_hash}:\n{text}");
                assert!(!text.contains("unsafeSkipCAVerification: true"), "{name}");
                hearth_appliance::kubeadm::join_config(&a, node, &token, &ca_hash)
            }
        };
        assert_eq!(
            r.sha256,
            sha256_hex(expected.as_bytes()),
            "{name}: the config the node got is not what the host generated"
        );
    }
    // The control plane ran the platform plan the host rendered: in order,
    // the large step server-side, its file byte for byte; after the reset it
    // resumed without applying the finished step again.
    let cp = &boot.logs[0].1;
    let calls: Vec<&str> =
        cp.lines().filter_map(|l| l.split_once("kubectl-stand-in: ").map(|(_, c)| c.trim_end())).collect();
    let rendered = std::fs::read(state.join("seeds/k8s-control-plane/platform/10-flannel/kube-flannel.yaml")).unwrap();
    let apply = format!(
        "apply --server-side --force-conflicts --field-manager=hearth -f /etc/hearth/platform/10-flannel/kube-flannel.yaml sha256 {}",
        sha256_hex(&rendered)
    );
    assert_eq!(
        calls.iter().filter(|c| **c == apply).count(),
        1,
        "one server-side apply of the rendered file:\n{calls:#?}"
    );
    let at =
        |needle: &str| calls.iter().position(|c| c.contains(needle)).unwrap_or_else(|| panic!("{needle}: {calls:#?}"));
    assert!(at("get --raw=/readyz") < at(&apply), "{calls:#?}");
    assert!(at(&apply) < at("-n kube-flannel rollout status daemonset/kube-flannel-ds"), "{calls:#?}");
    assert!(at("rollout status daemonset/kube-flannel-ds") < at("holding for a reset"), "{calls:#?}");
    let after_reset = &cp[cp.find("kubectl-stand-in: holding for a reset").unwrap()..];
    for line in ["platform 10-flannel already done", "platform 11-nodes done", "platform ready", "done"] {
        assert!(after_reset.contains(&format!("hearth-firstboot: {line}")), "{line}:\n{}", tail(after_reset, 30));
    }
    assert!(!after_reset.contains("stage kubeadm-init"), "kubeadm init ran again after the reset");
    // Then MetalLB's pools, the CA issuer, Argo CD with the appliance's
    // secret, and last the root Application (here the user's repository, with
    // its credentials delivered by the seed), each the host's file.
    let host =
        |rel: &str| sha256_hex(&std::fs::read(state.join("seeds/k8s-control-plane/platform").join(rel)).unwrap());
    let applied = |rel: &str| {
        let line = format!("-f /etc/hearth/platform/{rel} sha256 {}", host(rel));
        calls
            .iter()
            .rposition(|c| c.starts_with("apply ") && c.ends_with(&line))
            .unwrap_or_else(|| panic!("{line}: {calls:#?}"))
    };
    let order = [
        "31-metallb-pools/pools.yaml",
        "41-ca-issuer/platform-ca.yaml",
        "41-ca-issuer/issuer.yaml",
        "60-argo-cd/argo-cd.yaml",
        "60-argo-cd/argocd-secret.yaml",
        "90-app-of-apps/repo-credentials.yaml",
        "90-app-of-apps/app-of-apps.yaml",
    ];
    let at_apply: Vec<usize> = order.iter().map(|rel| applied(rel)).collect();
    assert!(at_apply.windows(2).all(|w| w[0] < w[1]), "{order:?} at {at_apply:?}:\n{calls:#?}");
    let last_apply = calls.iter().rposition(|c| c.starts_with("apply ")).unwrap();
    assert_eq!(last_apply, at_apply[at_apply.len() - 1], "the root Application is applied last");
    let root = std::fs::read_to_string(state.join("seeds/k8s-control-plane/platform/90-app-of-apps/app-of-apps.yaml"))
        .unwrap();
    assert!(root.contains("\"repoURL\": \"https://github.com/example/platform\""), "{root}");
    let argo = std::fs::read_to_string(state.join("seeds/k8s-control-plane/platform/60-argo-cd/argo-cd.yaml")).unwrap();
    assert!(argo.contains("\"imagePullPolicy\": \"IfNotPresent\"") && !argo.contains("\"Always\""), "{argo}");
    assert!(String::from_utf8_lossy(&rendered).contains("10.244.0.0/16"));
    // hearth's own view, from inside the namespace.
    let st = hearth(env, &["status", spec_path.to_str().unwrap(), "--json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["generation"], generation);
    for n in st["nodes"].as_array().unwrap() {
        assert_eq!((n["vm"].as_str(), n["ip_answers"].as_bool()), (Some("running"), Some(true)), "{n}");
    }
    assert_eq!(st["nodes"][0]["firstboot"], "done", "the control plane is through its platform plan");
    assert_eq!(st["nodes"][1]["firstboot"], "done");
    assert_eq!(st["pending"], "api", "the stand-in starts no API server");
    host("60-argo-cd/argocd-secret.yaml")
}

fn ping_from_namespace(ip: &str) {
    let ok = Command::new("ip")
        .args(["netns", "exec", NS, "ping", "-c", "1", "-W", "3", ip])
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "{ip} does not answer ping inside the namespace");
}

fn report(what: &str, boot: &Boot) {
    eprintln!("{what}: time from launch to each first-boot stage (TCG, 3 guests on this machine):");
    for (node, st) in &boot.stages {
        for (line, t) in &st.0 {
            eprintln!("  {node:<18} {t:>6.1} s  {line}");
        }
    }
}

#[test]
fn launched_vms_run_kubeadm_as_generated_reinstall_and_destroy_only_ours() {
    let Some(fixture) = common::fixture::vm_tests_fixture() else { return };
    for tool in ["ip", "tini", "libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "genisoimage", "openssl", "ping"]
    {
        assert!(common::require_tool(tool), "{tool}");
    }
    let mut env = Env::new();
    let state_root = env.path("state");
    env.env("HEARTH_STATE", state_root.to_str().unwrap());
    let srv = Server::start();
    // The manifest names the fixture image, whose reference is known once it
    // is served: it is pinned into the recipe after.
    let flannel_path = "/manifests/kube-flannel.yml";
    let FixtureRecipe { recipe, image_ref } = common::fixture::write_fixture_recipe(
        &env,
        &srv,
        &fixture,
        &format!(
            "[[files]]\npath = \"/usr/bin/kubeadm\"\nmode = \"0755\"\ncontent = '''\n{KUBEADM_STAND_IN}'''\n\
             [[files]]\npath = \"/usr/bin/kubectl\"\nmode = \"0755\"\ncontent = '''\n{KUBECTL_STAND_IN}'''\n\
             [[manifests]]\nname = \"kube-flannel.yml\"\ncomponent = \"flannel\"\nurls = [\"{}\"]\n{}",
            srv.url(flannel_path),
            ["metallb", "cert-manager", "argo-cd"]
                .iter()
                .map(|c| format!(
                    "[[manifests]]\nname = \"{c}.yaml\"\ncomponent = \"{c}\"\nurls = [\"{}\"]\n",
                    srv.url(&format!("/manifests/{c}.yaml"))
                ))
                .collect::<String>()
        ),
    );
    let flannel = small_flannel(&image_ref);
    srv.serve(flannel_path, flannel.clone().into_bytes(), hearth_testsupport::Behavior::Normal);
    let text = std::fs::read_to_string(&recipe).unwrap();
    let url_line = format!("urls = [\"{}\"]\n", srv.url(flannel_path));
    let pinned = format!("{url_line}sha256 = \"{}\"\n", sha256_hex(flannel.as_bytes()));
    let mut text = text.replace(&url_line, &pinned);
    for (component, body) in small_platform(&image_ref) {
        let path = format!("/manifests/{component}.yaml");
        srv.serve(&path, body.clone().into_bytes(), hearth_testsupport::Behavior::Normal);
        let url_line = format!("urls = [\"{}\"]\n", srv.url(&path));
        text = text.replace(&url_line, &format!("{url_line}sha256 = \"{}\"\n", sha256_hex(body.as_bytes())));
    }
    std::fs::write(&recipe, text).unwrap();
    env.run(&["build", recipe.to_str().unwrap()]).ok();
    // From here on every `hearth` runs inside the namespace (the build above
    // fetched from the loopback server outside it).
    env.net = Net::Namespace(NS.into());
    // qemu runs as libvirt-qemu: it must reach the overlays and the store image.
    for dir in [env.dir.path(), &env.store, &env.path("recipe")] {
        sh(Command::new("chmod").arg("a+rx").arg(dir));
    }

    let spec = env.path("recipe/appliance.toml");
    std::fs::write(
        &spec,
        "name = \"vmtest\"\nlibvirt_uri = \"qemu:///system\"\ndomain_type = \"qemu\"\nrecipe = \"fixture.toml\"\n\
         storage_dir = \"storage\"\n\
         [platform.components]\nlocal_path = false\ningress_nginx = false\nharbor = false\nexternal_secrets = false\narc = false\n\
         [gitops]\nrepo = \"https://github.com/example/platform\"\ncredentials = \"gitops.token\"\n\
         [[nodes]]\nname = \"k8s-control-plane\"\nrole = \"control-plane\"\nip = \"192.168.122.10\"\nvcpus = 2\nmemory_mib = 1792\ndisk_gib = 10\n\
         [[nodes]]\nname = \"k8s-worker-1\"\nrole = \"worker\"\nip = \"192.168.122.11\"\nvcpus = 1\nmemory_mib = 1024\ndisk_gib = 10\n\
         [[nodes]]\nname = \"k8s-worker-2\"\nrole = \"worker\"\nip = \"192.168.122.12\"\nvcpus = 1\nmemory_mib = 1024\ndisk_gib = 10\n",
    )
    .unwrap();
    let spec_s = spec.to_str().unwrap();
    std::fs::write(env.path("recipe/gitops.token"), "ghp_vmtest0123456789abcdefghijklmnopqrstu\n").unwrap();
    let a = parse_spec(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    let storage = env.path("recipe/storage");
    let nodes: Vec<(String, Role, PathBuf)> = a
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.role, storage.join(format!("vmtest-{}.console.log", n.name))))
        .collect();

    let _daemons = Daemons::start();
    // The test's own objects, which hearth must leave alone.
    let bystander_net = env.path("bystander-net.xml");
    std::fs::write(
        &bystander_net,
        "<network><name>bystander</name><ip address='10.213.7.1' netmask='255.255.255.0'/></network>",
    )
    .unwrap();
    virsh(&["net-define", bystander_net.to_str().unwrap()]);
    virsh(&["net-start", "bystander"]);
    let bystander_dom = env.path("bystander-dom.xml");
    std::fs::write(
        &bystander_dom,
        "<domain type='qemu'><name>bystander</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>",
    )
    .unwrap();
    virsh(&["define", bystander_dom.to_str().unwrap()]);

    // Launch, inside the namespace, until every fixed IP answers.
    let started = Instant::now();
    let (r, seen) = hearth_watching(&env, &["launch", spec_s, "--wait", "ip"], &nodes, started);
    eprintln!("{}", r.stderr);
    let r = r.ok();
    r.stderr_has("started 3 VMs of appliance `vmtest` (generation 1)").stderr_has("reached ip");
    let default = virsh(&["net-dumpxml", "default"]);
    for n in &a.nodes {
        ping_from_namespace(&n.ip.to_string());
        let mac = hearth_appliance::cloudinit::mac_address(&a.name, &n.name);
        assert!(default.contains(&format!("mac='{mac}'")) && default.contains(&format!("ip='{}'", n.ip)), "{default}");
    }
    let state = state_root.join("vmtest");
    let boot = wait_for_first_boots(&nodes, started, seen);
    report("launch", &boot);
    let argocd_secret_1 = check_generation(&env, &spec, &state, &boot, 1);
    let ca = std::fs::read(state.join("pki/ca.crt")).unwrap();
    let token = std::fs::read(state.join("token")).unwrap();

    // A launch of the running appliance reports and changes nothing.
    hearth(&env, &["launch", spec_s]).ok().stderr_has("already running; nothing changed");

    // Reinstall, offline: the same plumbing again, with the same PKI.
    let started = Instant::now();
    let (r, seen) = hearth_watching(&env, &["reinstall", spec_s, "--offline", "--wait", "ip"], &nodes, started);
    eprintln!("{}", r.stderr);
    r.ok().stderr_has("(generation 2)");
    let boot = wait_for_first_boots(&nodes, started, seen);
    report("reinstall", &boot);
    let argocd_secret_2 = check_generation(&env, &spec, &state, &boot, 2);
    assert_eq!(argocd_secret_1, argocd_secret_2, "reinstall keeps the appliance's secrets");
    assert_eq!(std::fs::read(state.join("pki/ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read(state.join("token")).unwrap(), token);

    // Destroy: nothing of hearth's is left; the test's own objects are untouched.
    hearth(&env, &["destroy", spec_s]).ok().stdout_has("destroyed appliance `vmtest`: 3 domains");
    let domains = virsh(&["list", "--all", "--name"]);
    assert!(!domains.contains("vmtest-"), "{domains}");
    assert!(domains.lines().any(|d| d == "bystander"), "{domains}");
    let nets = virsh(&["net-list", "--all", "--name"]);
    assert!(nets.lines().any(|n| n == "bystander"), "{nets}");
    let default = virsh(&["net-dumpxml", "default"]);
    for n in &a.nodes {
        let mac = hearth_appliance::cloudinit::mac_address(&a.name, &n.name);
        assert!(!default.contains(&mac), "reservation of {} left:\n{default}", n.name);
    }
    assert!(!virsh(&["dumpxml", "bystander"]).contains(hearth_appliance::xml::NAMESPACE));
    assert!(!storage.join("vmtest-k8s-worker-1.qcow2").exists());
    hearth(&env, &["destroy", spec_s]).ok().stdout_has("nothing to destroy");
}
