//! Rendering time of the platform (`cargo bench -p hearth-appliance --bench
//! render`), against a baseline measured in the same run: PyYAML reading the
//! same upstream manifest (or chart output) and writing it back as JSON (what
//! any renderer must at least do). Per component, hearth's render in process;
//! then the whole default platform as `launch` renders it (Helm for the
//! charts, then the plan and its GitOps commit). Needs the upstream files
//! (`shared/upstream`, or HEARTH_UPSTREAM), Helm and a Python with PyYAML
//! (HEARTH_HELM, HEARTH_K8S_PYTHON from tests/tools/k8s-tools.sh). Medians.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../tests/upstream_charts/mod.rs"]
mod upstream_charts;

use hearth_appliance::launch::PlatformInputs;
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

fn main() {
    let up = std::env::var_os("HEARTH_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream"));
    if !up.join("FILES.tsv").exists() {
        println!("render benchmark: no upstream files at {} (HEARTH_UPSTREAM)", up.display());
        return;
    }
    let python = std::env::var_os("HEARTH_K8S_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let Some(helm) = std::env::var_os("HEARTH_HELM").map(PathBuf::from) else {
        println!("render benchmark: HEARTH_HELM is not set (tests/tools/k8s-tools.sh)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let read = |rel: &str| std::fs::read_to_string(up.join(rel)).unwrap();
    let arc = up.join("actions-runner-controller-gha-runner-scale-set-0.9.3/charts/gha-runner-scale-set-controller");
    let inputs = PlatformInputs {
        sources: Sources::from([
            (Component::Flannel, read("flannel-v0.25.5/Documentation/kube-flannel.yml")),
            (Component::LocalPath, read("local-path-provisioner-v0.0.28/deploy/local-path-storage.yaml")),
            (Component::Metallb, read("metallb-v0.14.8/config/manifests/metallb-native.yaml")),
            (Component::CertManager, upstream_charts::cert_manager_static(&helm, &up, work.path())),
            (
                Component::IngressNginx,
                read("ingress-nginx-controller-v1.11.5/deploy/static/provider/cloud/deploy.yaml"),
            ),
            (Component::ArgoCd, read("argo-cd-v2.11.14/manifests/install.yaml")),
        ]),
        charts: std::collections::BTreeMap::from([
            (Component::Harbor, (up.join("harbor-helm-v1.15.1"), None)),
            (Component::ExternalSecrets, (upstream_charts::external_secrets_chart(&up, work.path()), None)),
            (Component::Arc, (arc, None)),
        ]),
        helm: Some(helm.clone()),
        preloaded: Vec::new(),
        record: Default::default(),
    };
    let secrets = Secrets::for_tests("bench");
    let a = Appliance::default();
    // Each chart's Helm output, as the per-component renders take it.
    let mut sources = inputs.sources.clone();
    for (c, (chart, _)) in &inputs.charts {
        let values = platform::charts::values(*c, &a, &secrets);
        sources.insert(*c, platform::charts::template(&helm, chart, *c, &values).expect("helm renders"));
    }
    let pyyaml = |file: &Path, runs: usize| -> f64 {
        let script = format!(
            "import json, sys, time, yaml\nts = []\nfor _ in range({runs}):\n    t = time.perf_counter()\n    \
             json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sort_keys=True)\n    \
             ts.append(time.perf_counter() - t)\nprint(sorted(ts)[len(ts) // 2])\n"
        );
        let out = Command::new(&python).arg("-c").arg(script).arg(file).output().expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN)
    };
    println!(
        "platform rendering, median of {RUNS} (hearth: render of one component, in process; baseline: PyYAML load + JSON dump of the same manifest, in process)"
    );
    let mut total = 0.0;
    for (c, text) in &sources {
        let mut a = Appliance::default();
        for x in Component::ALL {
            x.set_enabled(&mut a, x == *c);
        }
        let one = Sources::from([(*c, text.clone())]);
        let times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let plan = platform::render(&a, &pki(), &secrets, &one).expect("renders");
                std::hint::black_box(plan);
                t.elapsed().as_secs_f64()
            })
            .collect();
        let ours = median(times);
        total += ours;
        let file = work.path().join(format!("{}.yaml", c.name()));
        std::fs::write(&file, text).unwrap();
        let base = pyyaml(&file, RUNS);
        println!(
            "  {:<17} {:>7} KiB  hearth {:>8.2} ms   PyYAML {:>8.2} ms   ratio {:.2}x",
            c.name(),
            text.len() / 1024,
            ours * 1e3,
            base * 1e3,
            ours / base
        );
    }
    println!("  all components: hearth {:.2} ms (sum of the above)", total * 1e3);

    // The whole default platform as launch renders it: Helm for the three
    // charts, then the plan, the checks' input and the GitOps commit.
    const WHOLE: usize = 5;
    let scratch = work.path().join("scratch");
    let times: Vec<f64> = (0..WHOLE)
        .map(|_| {
            let t = Instant::now();
            let plan = inputs.render(&a, &pki(), &secrets, &scratch).expect("renders");
            std::hint::black_box(plan);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let whole = median(times);
    let all = work.path().join("all.yaml");
    std::fs::write(&all, sources.values().cloned().collect::<Vec<_>>().join("\n---\n")).unwrap();
    let base = pyyaml(&all, WHOLE);
    println!(
        "whole default platform, median of {WHOLE}: hearth {:.0} ms (Helm for 3 charts included)   PyYAML load + dump of all sources {:.0} ms   ratio {:.2}x",
        whole * 1e3,
        base * 1e3,
        whole / base
    );
}
