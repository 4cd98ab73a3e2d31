//! The platform's Helm charts (Harbor, External Secrets, ARC's controller and
//! runner scale set), rendered on the host by the recipe's pinned Helm with
//! values hearth derives from the appliance and its secrets.
//!
//! Every value a chart would randomise, generate or `lookup` is given, so
//! `helm template` prints the same bytes for the same state: Harbor's core,
//! jobservice and registry secrets, CSRF key, `secretKey`, admin and
//! database passwords, the registry's htpasswd line (a bcrypt hash with a
//! derived salt) and its token-signing key pair; its TLS certificate comes
//! from the platform CA through cert-manager (`certSource: secret`). ARC's
//! runner set is given `controllerServiceAccount`, so it needs no `lookup`.
//! Values go to Helm on its standard input, so no secret touches a disk.
//!
//! [`values`] is pure; [`template`] runs Helm.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::Component;
use crate::secrets::{Secret, Secrets};
use crate::spec::Appliance;

/// The Kubernetes version charts are rendered for (`--kube-version`).
pub const KUBE_VERSION: &str = "1.29.15";

/// Harbor's namespace.
pub const HARBOR_NAMESPACE: &str = "harbor";
/// External Secrets' namespace.
pub const ESO_NAMESPACE: &str = "external-secrets";
/// ARC's controller namespace.
pub const ARC_NAMESPACE: &str = "arc-systems";
/// ARC's runners' namespace.
pub const ARC_RUNNERS_NAMESPACE: &str = "arc-runners";
/// The controller's ServiceAccount, as its chart names it for release `arc`.
pub const ARC_CONTROLLER_SA: &str = "arc-gha-rs-controller";
/// The Secret holding the GitHub credentials of the runner set.
pub const ARC_GITHUB_SECRET: &str = "arc-github";
/// The Harbor TLS Secret (issued by the platform CA through cert-manager).
pub const HARBOR_TLS_SECRET: &str = "harbor-tls";
/// The Secret holding Harbor's token-signing key pair.
pub const HARBOR_TOKEN_SECRET: &str = "harbor-token";
/// Harbor's robot account for the runners (its full name; Harbor adds `robot$`).
pub const HARBOR_ROBOT: &str = "robot$hearth-runner";
/// The Secret in the runners' namespace holding the robot's login.
pub const HARBOR_ROBOT_SECRET: &str = "harbor-robot";
/// Harbor core's image (its chart's tag), which the robot Job runs (it has curl).
pub const HARBOR_CORE_IMAGE: &str = "docker.io/goharbor/harbor-core:v2.11.1";
/// The registry's internal user.
pub const HARBOR_REGISTRY_USER: &str = "harbor_registry_user";

/// Errors of rendering a chart.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Helm did not run.
    #[error("running Helm `{}`", helm.display())]
    Spawn {
        /// The binary.
        helm: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Helm failed.
    #[error("Helm could not render the {what} chart `{}`: {stderr}", chart.display())]
    Failed {
        /// Which chart.
        what: &'static str,
        /// The chart.
        chart: PathBuf,
        /// What Helm said.
        stderr: String,
    },
}

/// How a component's chart is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// Helm's release name (objects are named after it).
    pub name: &'static str,
    /// The namespace.
    pub namespace: &'static str,
    /// Whether the chart keeps its CRDs in `crds/` (Helm prints them only with `--include-crds`).
    pub include_crds: bool,
}

/// The release of a chart component (none: a plain manifest).
pub fn release(c: Component) -> Option<Release> {
    Some(match c {
        Component::Harbor => Release { name: "harbor", namespace: HARBOR_NAMESPACE, include_crds: false },
        Component::ExternalSecrets => {
            Release { name: "external-secrets", namespace: ESO_NAMESPACE, include_crds: false }
        }
        Component::Arc => Release { name: "arc", namespace: ARC_NAMESPACE, include_crds: true },
        Component::ArcRunners => Release { name: "arc-runners", namespace: ARC_RUNNERS_NAMESPACE, include_crds: false },
        _ => return None,
    })
}

/// The values of `c`'s chart for appliance `a`.
pub fn values(c: Component, a: &Appliance, secrets: &Secrets) -> Value {
    match c {
        Component::Harbor => harbor(a, secrets),
        Component::ExternalSecrets => json!({
            "installCRDs": true,
            "image": {"pullPolicy": "IfNotPresent"},
            "webhook": {"image": {"pullPolicy": "IfNotPresent"}},
            "certController": {"image": {"pullPolicy": "IfNotPresent"}},
        }),
        Component::Arc => json!({"image": {"pullPolicy": "IfNotPresent"}}),
        Component::ArcRunners => {
            let arc = &a.platform.arc;
            json!({
                "githubConfigUrl": arc.github_config_url.clone().unwrap_or_default(),
                "githubConfigSecret": ARC_GITHUB_SECRET,
                "controllerServiceAccount": {"name": ARC_CONTROLLER_SA, "namespace": ARC_NAMESPACE},
                "runnerScaleSetName": arc.scale_set_name,
                "minRunners": arc.min_runners,
                "maxRunners": arc.max_runners,
                "template": {"spec": {"containers": [{
                    "name": "runner",
                    "image": arc.runner_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/home/runner/run.sh"],
                    "env": runner_env(a),
                }]}},
            })
        }
        _ => Value::Null,
    }
}

/// With Harbor: where a workflow logs in to push (`$HARBOR_REGISTRY`,
/// `$HARBOR_USERNAME`, `$HARBOR_PASSWORD`, from the robot's Secret).
fn runner_env(a: &Appliance) -> Value {
    if !Component::Harbor.enabled(a) {
        return json!([]);
    }
    let from = |key: &str| json!({"secretKeyRef": {"name": HARBOR_ROBOT_SECRET, "key": key}});
    json!([
        {"name": "HARBOR_REGISTRY", "value": a.harbor_ip().to_string()},
        {"name": "HARBOR_USERNAME", "valueFrom": from("username")},
        {"name": "HARBOR_PASSWORD", "valueFrom": from("password")},
    ])
}

/// Harbor at `harbor_ip` (a LoadBalancer MetalLB gives that address), TLS
/// from the platform CA, every secret the appliance's, persistence on the
/// default StorageClass, Trivy off (its database would need the network).
fn harbor(a: &Appliance, s: &Secrets) -> Value {
    let ip = a.harbor_ip().to_string();
    json!({
        "expose": {
            "type": "loadBalancer",
            "tls": {"enabled": true, "certSource": "secret", "secret": {"secretName": HARBOR_TLS_SECRET}},
            "loadBalancer": {"annotations": {"metallb.universe.tf/loadBalancerIPs": ip}},
        },
        "externalURL": format!("https://{ip}"),
        // The portal's "download the CA" link: cert-manager's CA issuer puts
        // `ca.crt` in the TLS Secret.
        "caSecretName": HARBOR_TLS_SECRET,
        "harborAdminPassword": s.get(Secret::HarborAdmin),
        "secretKey": s.get(Secret::HarborSecretKey),
        "imagePullPolicy": "IfNotPresent",
        "core": {
            "secret": s.get(Secret::HarborCore),
            "xsrfKey": s.get(Secret::HarborXsrf),
            "secretName": HARBOR_TOKEN_SECRET,
        },
        "jobservice": {"secret": s.get(Secret::HarborJobservice)},
        "registry": {
            "secret": s.get(Secret::HarborRegistryHttp),
            "credentials": {
                "username": HARBOR_REGISTRY_USER,
                "password": s.get(Secret::HarborRegistry),
                "htpasswdString": s.htpasswd(HARBOR_REGISTRY_USER, Secret::HarborRegistry),
            },
        },
        "database": {"internal": {"password": s.get(Secret::HarborDatabase)}},
        "trivy": {"enabled": false},
    })
}

/// `helm template` of `chart` (a packaged `.tgz` or a directory) as
/// release `r` with `values` (given on Helm's standard input).
pub fn template(helm: &Path, chart: &Path, c: Component, values: &Value) -> Result<String, ChartError> {
    let r = release(c).expect("a chart component");
    let mut cmd = Command::new(helm);
    cmd.args(["template", r.name])
        .arg(chart)
        .args(["--namespace", r.namespace, "--kube-version", KUBE_VERSION, "--values", "-"])
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if r.include_crds {
        cmd.arg("--include-crds");
    }
    let spawn = |source| ChartError::Spawn { helm: helm.to_owned(), source };
    let mut child = cmd.spawn().map_err(spawn)?;
    let input = serde_json::to_vec(values).expect("JSON values serialise");
    let mut stdin = child.stdin.take().expect("piped");
    // Written from a thread: Helm may fill its stdout before reading all of stdin.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(spawn)?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(ChartError::Failed {
            what: c.name(),
            chart: chart.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
