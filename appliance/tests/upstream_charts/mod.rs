//! The upstream charts prepared as their releases pack them, from the
//! byte-exact files at their tags (`shared/upstream`): shared by the platform
//! tests and the render benchmark.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

/// cert-manager's `cert-manager.yaml` as its release makes it: Chart.yaml from
/// Chart.template.yaml (version and appVersion v1.15.5), `templates/crds.yaml`
/// from `deploy/crds/*.yaml` joined by `---`, then `helm template` with
/// `crds.enabled`, `creator=static`, no startupapicheck, after the Namespace.
pub fn cert_manager_static(helm: &Path, up: &Path, work: &Path) -> String {
    let src = up.join("cert-manager-v1.15.5/deploy");
    let chart = work.join("cert-manager");
    copy_dir(&src.join("charts/cert-manager"), &chart);
    let template = fs::read_to_string(chart.join("Chart.template.yaml")).unwrap();
    let chart_yaml = template.replace("v0.0.0", "v1.15.5").replace("\"{{IS_PRERELEASE}}\"", "\"false\"");
    assert_ne!(chart_yaml, template, "Chart.template.yaml has the release placeholders");
    fs::write(chart.join("Chart.yaml"), chart_yaml).unwrap();
    let mut crds: Vec<PathBuf> = fs::read_dir(src.join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    crds.sort();
    let joined: Vec<String> = crds.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
    fs::write(chart.join("templates/crds.yaml"), joined.join("\n---\n")).unwrap();
    let rendered = run(Command::new(helm)
        .args([
            "template",
            "--api-versions=",
            "--namespace=cert-manager",
            "--set=crds.enabled=true",
            "--set=creator=static",
            "--set=startupapicheck.enabled=false",
            "cert-manager",
        ])
        .arg(&chart));
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cert-manager\n---\n{rendered}")
}

/// External Secrets' chart as its release packs it: the disabled
/// `bitwarden-sdk-server` dependency (not shipped in the repository) dropped,
/// the CRDs of `deploy/crds/bundle.yaml` in `templates/crds/`, behind
/// `installCRDs`.
pub fn external_secrets_chart(up: &Path, work: &Path) -> PathBuf {
    let src = up.join("external-secrets-helm-chart-0.10.7/deploy");
    let chart = work.join("external-secrets");
    copy_dir(&src.join("charts/external-secrets"), &chart);
    let yaml = fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let (kept, deps) = yaml.split_once("dependencies:").expect("Chart.yaml declares its dependencies");
    assert!(deps.contains("bitwarden-sdk-server") && deps.contains("condition: bitwarden-sdk-server.enabled"));
    fs::write(chart.join("Chart.yaml"), kept).unwrap();
    let _ = fs::remove_file(chart.join("Chart.lock"));
    let bundle = fs::read_to_string(src.join("crds/bundle.yaml")).unwrap();
    assert!(!bundle.contains("{{"), "the CRDs hold nothing Helm would template");
    fs::write(
        chart.join("templates/crds/bundle.yaml"),
        format!("{{{{- if .Values.installCRDs }}}}\n{bundle}{{{{- end }}}}\n"),
    )
    .unwrap();
    chart
}
