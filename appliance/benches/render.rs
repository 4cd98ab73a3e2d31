//! Rendering time of each platform component (`cargo bench -p hearth-appliance
//! --bench render`), against a baseline measured in the same run: PyYAML
//! reading the same upstream manifest and writing it back as JSON (what any
//! renderer must at least do). Needs the upstream files (`shared/upstream`, or
//! HEARTH_UPSTREAM) and, for cert-manager, Helm and a Python with PyYAML
//! (HEARTH_HELM, HEARTH_K8S_PYTHON from tests/tools/k8s-tools.sh; else
//! `python3`). Medians of 15.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hearth_appliance::pki::{Ca, Pki};
use hearth_appliance::platform::{self, Component, Sources};
use hearth_appliance::secrets::Secrets;
use hearth_appliance::spec::Appliance;

const RUNS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pki() -> Pki {
    let ca = |n: &str| Ca { cert_pem: format!("-----CERT {n}-----\n"), key_pem: format!("-----KEY {n}-----\n") };
    Pki {
        ca: ca("ca"),
        front_proxy_ca: ca("f"),
        etcd_ca: ca("e"),
        platform_ca: ca("p"),
        sa_key_pem: String::new(),
        sa_pub_pem: String::new(),
        token: "abcdef.0123456789abcdef".into(),
    }
}

/// cert-manager's static manifest from its chart, as its release makes it.
fn cert_manager(helm: &Path, up: &Path, work: &Path) -> Option<String> {
    let chart = work.join("cert-manager");
    let src = up.join("cert-manager-v1.15.5/deploy");
    let ok = Command::new("cp").arg("-r").arg(src.join("charts/cert-manager")).arg(&chart).status().ok()?.success();
    if !ok {
        return None;
    }
    let t = std::fs::read_to_string(chart.join("Chart.template.yaml")).ok()?;
    std::fs::write(
        chart.join("Chart.yaml"),
        t.replace("v0.0.0", "v1.15.5").replace("\"{{IS_PRERELEASE}}\"", "\"false\""),
    )
    .ok()?;
    let mut crds: Vec<PathBuf> = std::fs::read_dir(src.join("crds"))
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    crds.sort();
    let joined: Vec<String> = crds.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    std::fs::write(chart.join("templates/crds.yaml"), joined.join("\n---\n")).ok()?;
    let out = Command::new(helm)
        .args(["template", "--api-versions=", "--namespace=cert-manager", "--set=crds.enabled=true"])
        .args(["--set=creator=static", "--set=startupapicheck.enabled=false", "cert-manager"])
        .arg(&chart)
        .output()
        .ok()?;
    if !out.status.success() {
        println!("  (cert-manager skipped: helm template: {})", String::from_utf8_lossy(&out.stderr).trim());
    }
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let up = std::env::var_os("HEARTH_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream"));
    if !up.join("FILES.tsv").exists() {
        println!("render benchmark: no upstream files at {} (HEARTH_UPSTREAM)", up.display());
        return;
    }
    let python = std::env::var_os("HEARTH_K8S_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let work = tempfile::tempdir().unwrap();
    let read = |rel: &str| std::fs::read_to_string(up.join(rel)).unwrap();
    let mut sources = Sources::from([
        (Component::Flannel, read("flannel-v0.25.5/Documentation/kube-flannel.yml")),
        (Component::LocalPath, read("local-path-provisioner-v0.0.28/deploy/local-path-storage.yaml")),
        (Component::Metallb, read("metallb-v0.14.8/config/manifests/metallb-native.yaml")),
        (Component::IngressNginx, read("ingress-nginx-controller-v1.11.5/deploy/static/provider/cloud/deploy.yaml")),
        (Component::ArgoCd, read("argo-cd-v2.11.14/manifests/install.yaml")),
    ]);
    if let Some(cm) = std::env::var_os("HEARTH_HELM").and_then(|h| cert_manager(Path::new(&h), &up, work.path())) {
        sources.insert(Component::CertManager, cm);
    }
    println!(
        "platform rendering, median of {RUNS} (hearth: render of one component, in process; baseline: PyYAML load + JSON dump of the same manifest, in process)"
    );
    let mut total = 0.0;
    for (c, text) in &sources {
        let mut a = Appliance::default();
        let comps = &mut a.platform.components;
        (comps.flannel, comps.local_path, comps.metallb, comps.cert_manager, comps.ingress_nginx, comps.argocd) = (
            *c == Component::Flannel,
            *c == Component::LocalPath,
            *c == Component::Metallb,
            *c == Component::CertManager,
            *c == Component::IngressNginx,
            *c == Component::ArgoCd,
        );
        let one = Sources::from([(*c, text.clone())]);
        let times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let plan = platform::render(&a, &pki(), &Secrets::for_tests("bench"), &one).expect("renders");
                std::hint::black_box(plan);
                t.elapsed().as_secs_f64()
            })
            .collect();
        let ours = median(times);
        total += ours;
        let file = work.path().join(format!("{}.yaml", c.name()));
        std::fs::write(&file, text).unwrap();
        let script = format!(
            "import json, sys, time, yaml\nts = []\nfor _ in range({RUNS}):\n    t = time.perf_counter()\n    \
             json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sort_keys=True)\n    \
             ts.append(time.perf_counter() - t)\nprint(sorted(ts)[len(ts) // 2])\n"
        );
        let out = Command::new(&python).arg("-c").arg(script).arg(&file).output().expect("python3");
        let base: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
        println!(
            "  {:<14} {:>7} KiB  hearth {:>8.2} ms   PyYAML {:>8.2} ms   ratio {:.2}x",
            c.name(),
            text.len() / 1024,
            ours * 1e3,
            base * 1e3,
            ours / base
        );
    }
    println!("  all components: hearth {:.2} ms", total * 1e3);
}
