//! The platform, rendered on the host and executed on the control plane.
//!
//! [`render`] turns the pinned upstream manifests ([`Sources`]) and the
//! appliance (its `[platform]`, network and PKI) into a [`Plan`]: ordered
//! steps, each a set of files to apply and conditions to wait for, with a
//! timeout. [`check`] refuses a plan that could not run offline: an image the
//! node image does not preload, or one pulled `Always`. First boot runs the
//! plan with a small executor and the image's kubectl (`images/files/hearth-platform`);
//! each step is idempotent and marked done, so an interrupted first boot
//! resumes where it stopped.
//!
//! Order: Flannel -> every node Ready -> local-path (default StorageClass) ->
//! MetalLB (then its pools: its webhook serves only after readiness, so the
//! apply is retried) -> cert-manager (then the platform CA and its issuer) ->
//! ingress-nginx (its Service at the appliance's `ingress_ip`).
//!
//! Pure: text in, text out; no process, clock or network.

pub mod charts;
pub mod git;
pub mod gitops;
pub mod manifest;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hearth_builder::digest::Sha256;
use hearth_builder::oci::Reference;
use serde_json::{Value, json};

use crate::pki::Pki;
use crate::secrets::{Secret, Secrets};
use crate::spec::Appliance;
use manifest::{ManifestError, Object};

/// The API server takes at most 256 KiB of annotations on one object, and
/// client-side apply puts the whole object there (last-applied-configuration),
/// next to the object's own annotations. A step with an object above this
/// size (a margin below the limit: Argo CD's ApplicationSet CRD is 218 KiB)
/// applies server-side.
pub const LAST_APPLIED_LIMIT: usize = 200 * 1024;

/// The image local-path-provisioner's helper pod runs. Upstream names plain
/// `busybox` (`:latest`, which changes and is pulled); hearth pins a tag the
/// recipe preloads.
pub const LOCAL_PATH_HELPER_IMAGE: &str = "docker.io/library/busybox:1.36.1";

/// The cert-manager ClusterIssuer that signs with the platform CA.
pub const CA_ISSUER: &str = "hearth-ca";

/// The MetalLB pools hearth makes.
pub const AUTO_POOL: &str = "hearth-auto";
/// The pool of fixed service addresses (`autoAssign: false`).
pub const FIXED_POOL: &str = "hearth-fixed";

/// A platform component with an upstream manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// Flannel `Documentation/kube-flannel.yml`.
    Flannel,
    /// local-path-provisioner `deploy/local-path-storage.yaml`.
    LocalPath,
    /// MetalLB `config/manifests/metallb-native.yaml`.
    Metallb,
    /// cert-manager's static manifest (`cert-manager.yaml` of its release).
    CertManager,
    /// ingress-nginx `deploy/static/provider/cloud/deploy.yaml`.
    IngressNginx,
    /// Argo CD `manifests/install.yaml` (namespace `argocd`).
    ArgoCd,
    /// Harbor's chart (namespace `harbor`).
    Harbor,
    /// External Secrets Operator's chart (namespace `external-secrets`).
    ExternalSecrets,
    /// ARC's `gha-runner-scale-set-controller` chart (namespace `arc-systems`).
    Arc,
    /// ARC's `gha-runner-scale-set` chart (namespace `arc-runners`), when
    /// `[platform.arc]` names a repository.
    ArcRunners,
}

impl Component {
    /// Every component, in plan order.
    pub const ALL: [Component; 10] = [
        Component::Flannel,
        Component::LocalPath,
        Component::Metallb,
        Component::CertManager,
        Component::IngressNginx,
        Component::ArgoCd,
        Component::Harbor,
        Component::ExternalSecrets,
        Component::Arc,
        Component::ArcRunners,
    ];

    /// The name used in recipes, appliance.toml and messages.
    pub fn name(self) -> &'static str {
        match self {
            Component::Flannel => "flannel",
            Component::LocalPath => "local-path",
            Component::Metallb => "metallb",
            Component::CertManager => "cert-manager",
            Component::IngressNginx => "ingress-nginx",
            Component::ArgoCd => "argo-cd",
            Component::Harbor => "harbor",
            Component::ExternalSecrets => "external-secrets",
            Component::Arc => "arc",
            Component::ArcRunners => "arc-runner-set",
        }
    }

    /// The component a recipe's `component = "..."` names.
    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the appliance has it on.
    pub fn enabled(self, a: &Appliance) -> bool {
        let c = &a.platform.components;
        match self {
            Component::Flannel => c.flannel,
            Component::LocalPath => c.local_path,
            Component::Metallb => c.metallb,
            Component::CertManager => c.cert_manager,
            Component::IngressNginx => c.ingress_nginx,
            Component::ArgoCd => c.argocd,
            Component::Harbor => c.harbor,
            Component::ExternalSecrets => c.external_secrets,
            Component::Arc => c.arc,
            Component::ArcRunners => c.arc && a.platform.arc.configured(),
        }
    }

    /// Switches it on or off in `a` (the runner set follows `[platform.arc]`:
    /// it is left as it is).
    pub fn set_enabled(self, a: &mut Appliance, on: bool) {
        let c = &mut a.platform.components;
        match self {
            Component::Flannel => c.flannel = on,
            Component::LocalPath => c.local_path = on,
            Component::Metallb => c.metallb = on,
            Component::CertManager => c.cert_manager = on,
            Component::IngressNginx => c.ingress_nginx = on,
            Component::ArgoCd => c.argocd = on,
            Component::Harbor => c.harbor = on,
            Component::ExternalSecrets => c.external_secrets = on,
            Component::Arc => c.arc = on,
            Component::ArcRunners => {}
        }
    }

    /// Whether its source is a Helm chart (rendered by Helm on the host first).
    pub fn is_chart(self) -> bool {
        charts::release(self).is_some()
    }
}

/// The upstream manifests, by component (as pinned by the recipe).
pub type Sources = BTreeMap<Component, String>;

/// Errors of rendering and checking.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// An enabled component has no manifest.
    #[error("platform component `{}` is on, but the recipe provides no manifest for it", .0.name())]
    MissingSource(Component),
    /// A manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A manifest lacks what hearth patches (another upstream version?).
    #[error("{component}: {what} is not in its manifest (is it the pinned version?)")]
    Shape {
        /// The component.
        component: &'static str,
        /// What was looked for.
        what: String,
    },
    /// The plan would not run offline.
    #[error("the platform would not run offline:\n  {}", .0.join("\n  "))]
    NotHermetic(Vec<String>),
}

/// What a step waits for after its files are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `kubectl rollout status` of a Deployment or DaemonSet.
    Rollout {
        /// Namespace.
        namespace: String,
        /// `deployment/NAME` or `daemonset/NAME`.
        object: String,
    },
    /// `kubectl wait --for=condition=C`.
    Condition {
        /// Namespace (empty: cluster-scoped).
        namespace: String,
        /// `kind/NAME`.
        object: String,
        /// The condition type.
        condition: String,
    },
    /// `kubectl wait --for=jsonpath=PATH=VALUE`.
    Value {
        /// Namespace.
        namespace: String,
        /// `kind/NAME`.
        object: String,
        /// JSONPath, e.g. `{.status.loadBalancer.ingress[0].ip}`.
        path: String,
        /// The value.
        value: String,
    },
    /// This many nodes registered, every one Ready.
    Nodes {
        /// How many.
        count: usize,
    },
}

/// A file of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanFile {
    /// Path relative to the plan directory (`NN-step/NAME.yaml`).
    pub path: String,
    /// Contents.
    pub body: String,
    /// Holds a secret (written 0600, never printed).
    pub secret: bool,
}

/// One step: apply, then wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `NN-name`: the order and the console stage.
    pub name: String,
    /// Files applied in order.
    pub files: Vec<PlanFile>,
    /// Apply server-side (an object exceeds [`LAST_APPLIED_LIMIT`]).
    pub server_side: bool,
    /// Retry the apply until the timeout (a webhook that serves late).
    pub retry_apply: bool,
    /// Conditions, in order.
    pub waits: Vec<Wait>,
    /// Seconds the step may take.
    pub timeout_secs: u32,
}

/// The ordered plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The GitOps repository Argo CD keeps the platform from (with Argo CD).
    pub gitops: Option<gitops::Repo>,
}

impl Plan {
    /// The plan file the node's executor reads: one directive a line.
    ///
    /// ```text
    /// step NAME TIMEOUT_SECS [server-side] [retry]
    /// apply PATH
    /// rollout NAMESPACE KIND/NAME
    /// condition NAMESPACE|- KIND/NAME CONDITION
    /// value NAMESPACE KIND/NAME JSONPATH VALUE
    /// nodes COUNT
    /// ```
    pub fn to_text(&self) -> String {
        let mut s = String::from("# hearth platform plan v1: rendered by hearth launch, run by hearth-platform\n");
        for step in &self.steps {
            let _ = write!(s, "step {} {}", step.name, step.timeout_secs);
            if step.server_side {
                s.push_str(" server-side");
            }
            if step.retry_apply {
                s.push_str(" retry");
            }
            s.push('\n');
            for f in &step.files {
                let _ = writeln!(s, "apply {}", f.path);
            }
            for w in &step.waits {
                let _ = match w {
                    Wait::Rollout { namespace, object } => writeln!(s, "rollout {namespace} {object}"),
                    Wait::Condition { namespace, object, condition } => {
                        let ns = if namespace.is_empty() { "-" } else { namespace };
                        writeln!(s, "condition {ns} {object} {condition}")
                    }
                    Wait::Value { namespace, object, path, value } => {
                        writeln!(s, "value {namespace} {object} {path} {value}")
                    }
                    Wait::Nodes { count } => writeln!(s, "nodes {count}"),
                };
            }
        }
        s
    }

    /// Every file of the plan, in order.
    pub fn files(&self) -> impl Iterator<Item = &PlanFile> {
        self.steps.iter().flat_map(|s| s.files.iter())
    }

    /// Every object of the plan, with its file.
    pub fn objects(&self) -> Result<Vec<(String, Object)>, ManifestError> {
        let mut out = Vec::new();
        for f in self.files() {
            for o in manifest::parse(&f.body, &f.path)? {
                out.push((f.path.clone(), o));
            }
        }
        Ok(out)
    }
}

/// Base64 of `s`, as a Secret's `data` holds it.
fn b64(s: &str) -> String {
    crate::kubeconfig::base64_encode::encode(s.as_bytes())
}

fn shape(component: Component, what: impl Into<String>) -> PlatformError {
    PlatformError::Shape { component: component.name(), what: what.into() }
}

/// A step that applies `objects` as one file `NAME/FILE.yaml` (none: a step
/// that only waits), server-side when one of them is too large for the
/// last-applied annotation.
fn step(name: &str, apply: Option<(&str, &[Object])>, waits: Vec<Wait>, timeout_secs: u32) -> Step {
    let server_side =
        apply.is_some_and(|(_, objects)| objects.iter().any(|o| manifest::applied_size(o) > LAST_APPLIED_LIMIT));
    let files = apply
        .map(|(file, objects)| PlanFile {
            path: format!("{name}/{file}.yaml"),
            body: manifest::emit(objects),
            secret: false,
        })
        .into_iter()
        .collect();
    Step { name: name.to_owned(), files, server_side, retry_apply: false, waits, timeout_secs }
}

/// A file of step `step` holding a secret: written 0600, never printed, and
/// kept out of the GitOps repository.
fn secret_file(step: &str, file: &str, objects: &[Object]) -> PlanFile {
    PlanFile { path: format!("{step}/{file}.yaml"), body: manifest::emit(objects), secret: true }
}

fn rollouts(objects: &[Object]) -> Vec<Wait> {
    objects
        .iter()
        .filter(|o| matches!(manifest::kind(o), "Deployment" | "DaemonSet" | "StatefulSet"))
        .map(|o| Wait::Rollout {
            namespace: manifest::namespace(o).to_owned(),
            object: format!("{}/{}", manifest::kind(o).to_lowercase(), manifest::name(o)),
        })
        .collect()
}

/// Renders the platform of `a` with its PKI and secrets.
pub fn render(a: &Appliance, pki: &Pki, secrets: &Secrets, sources: &Sources) -> Result<Plan, PlatformError> {
    let mut plan = Plan::default();
    let source = |c: Component| sources.get(&c).ok_or(PlatformError::MissingSource(c));
    for c in Component::ALL.into_iter().filter(|c| c.enabled(a)) {
        let text = source(c)?;
        let mut objects = manifest::parse(text, c.name())?;
        match c {
            Component::Flannel => {
                flannel(a, &mut objects)?;
                let waits = rollouts(&objects);
                plan.steps.push(step("10-flannel", Some(("kube-flannel", &objects)), waits, 600));
                plan.steps.push(step("11-nodes", None, vec![Wait::Nodes { count: a.nodes.len() }], 1200));
            }
            Component::LocalPath => {
                local_path(a, &mut objects)?;
                let waits = rollouts(&objects);
                plan.steps.push(step("20-local-path", Some(("local-path", &objects)), waits, 600));
            }
            Component::Metallb => {
                let waits = rollouts(&objects);
                plan.steps.push(step("30-metallb", Some(("metallb-native", &objects)), waits, 600));
                let mut pools = step("31-metallb-pools", Some(("pools", &metallb_pools(a))), vec![], 300);
                pools.retry_apply = true;
                plan.steps.push(pools);
            }
            Component::CertManager => {
                let waits = rollouts(&objects);
                plan.steps.push(step("40-cert-manager", Some(("cert-manager", &objects)), waits, 600));
                let mut issuer = step(
                    "41-ca-issuer",
                    Some(("issuer", &[ca_issuer()])),
                    vec![Wait::Condition {
                        namespace: String::new(),
                        object: format!("clusterissuer/{CA_ISSUER}"),
                        condition: "Ready".into(),
                    }],
                    300,
                );
                issuer.retry_apply = true;
                // The platform CA's key, applied before its issuer.
                issuer.files.insert(0, secret_file("41-ca-issuer", "platform-ca", &[ca_secret(pki)]));
                plan.steps.push(issuer);
            }
            Component::IngressNginx => {
                ingress_nginx(a, &mut objects)?;
                let mut waits: Vec<Wait> = objects
                    .iter()
                    .filter(|o| manifest::kind(o) == "Job")
                    .map(|o| Wait::Condition {
                        namespace: manifest::namespace(o).to_owned(),
                        object: format!("job/{}", manifest::name(o)),
                        condition: "Complete".into(),
                    })
                    .collect();
                waits.extend(rollouts(&objects));
                waits.push(Wait::Value {
                    namespace: "ingress-nginx".into(),
                    object: "service/ingress-nginx-controller".into(),
                    path: "{.status.loadBalancer.ingress[0].ip}".into(),
                    value: a.ingress_ip().to_string(),
                });
                plan.steps.push(step("50-ingress-nginx", Some(("ingress-nginx", &objects)), waits, 600));
            }
            Component::Harbor | Component::ExternalSecrets | Component::Arc | Component::ArcRunners => {
                plan.steps.extend(chart_steps(c, a, secrets, objects));
            }
            Component::ArgoCd => {
                let secret = argocd(a, secrets, &mut objects)?;
                let mut waits = rollouts(&objects);
                waits.push(Wait::Value {
                    namespace: ARGOCD_NAMESPACE.into(),
                    object: "service/argocd-server".into(),
                    path: "{.status.loadBalancer.ingress[0].ip}".into(),
                    value: a.argocd_ip().to_string(),
                });
                let mut argo = step("60-argo-cd", Some(("argo-cd", &objects)), waits, 900);
                argo.files.push(secret_file("60-argo-cd", "argocd-secret", &[secret]));
                plan.steps.push(argo);
            }
        }
    }
    if Component::ArgoCd.enabled(a) {
        gitops_steps(a, secrets, &mut plan);
    }
    Ok(plan)
}

/// Kinds that have no namespace.
const CLUSTER_SCOPED: [&str; 12] = [
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Namespace",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "PersistentVolume",
    "ClusterIssuer",
    "ClusterSecretStore",
];

/// Puts every namespaced object without a namespace into `ns`, and adds the
/// Namespace first (neither `kubectl apply -f` nor `helm template` makes it).
fn into_namespace(objects: &mut Vec<Object>, ns: &str) {
    for o in objects.iter_mut() {
        if !CLUSTER_SCOPED.contains(&manifest::kind(o)) && manifest::namespace(o).is_empty() {
            o["metadata"]["namespace"] = json!(ns);
        }
    }
    objects.insert(0, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
}

/// The steps of a chart component: Helm's objects but its Secrets in one
/// file, those Secrets (which hold the appliance's secrets) in another, and
/// what hearth adds (Harbor's certificate and token key, the Pulumi ESC
/// store, the runners' GitHub credentials).
fn chart_steps(c: Component, a: &Appliance, secrets: &Secrets, mut objects: Vec<Object>) -> Vec<Step> {
    let r = charts::release(c).expect("a chart component");
    into_namespace(&mut objects, r.namespace);
    let (mut hidden, public): (Vec<Object>, Vec<Object>) =
        objects.into_iter().partition(|o| manifest::kind(o) == "Secret");
    let mut public = public;
    let mut waits = rollouts(&public);
    let mut extra = Vec::new();
    let (name, timeout) = match c {
        Component::Harbor => {
            let ip = a.harbor_ip().to_string();
            public.push(json!({
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": {"name": charts::HARBOR_TLS_SECRET, "namespace": r.namespace},
                "spec": {
                    "secretName": charts::HARBOR_TLS_SECRET,
                    "issuerRef": {"kind": "ClusterIssuer", "name": CA_ISSUER},
                    "commonName": ip,
                    "ipAddresses": [ip],
                    "dnsNames": ["harbor", format!("harbor.{}.svc", r.namespace)],
                },
            }));
            let token = secrets.harbor_token();
            hidden.push(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": charts::HARBOR_TOKEN_SECRET, "namespace": r.namespace},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(&token.cert_pem), "tls.key": b64(&token.key_pem)},
            }));
            waits.push(Wait::Value {
                namespace: r.namespace.into(),
                object: "service/harbor".into(),
                path: "{.status.loadBalancer.ingress[0].ip}".into(),
                value: ip,
            });
            ("70-harbor", 1800)
        }
        Component::ExternalSecrets => {
            let p = &a.platform.pulumi;
            if let (true, Some(token)) = (p.configured(), secrets.user_token(crate::secrets::UserToken::Pulumi)) {
                let store = json!({
                    "apiVersion": "external-secrets.io/v1beta1",
                    "kind": "ClusterSecretStore",
                    "metadata": {"name": "pulumi-esc"},
                    "spec": {"provider": {"pulumi": {
                        "organization": p.organization,
                        "project": p.project,
                        "environment": p.environment,
                        "accessToken": {"secretRef": {"name": "pulumi-access-token", "key": "token", "namespace": r.namespace}},
                    }}},
                });
                let token_secret = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "pulumi-access-token", "namespace": r.namespace},
                    "type": "Opaque",
                    "data": {"token": b64(token)},
                });
                // Its webhook serves only after the rollout: retried. Not
                // waited for Ready: that needs Pulumi Cloud on the network.
                let mut st = step("72-pulumi-esc", Some(("cluster-secret-store", &[store])), vec![], 300);
                st.files.insert(0, secret_file("72-pulumi-esc", "access-token", &[token_secret]));
                st.retry_apply = true;
                extra.push(st);
            }
            ("71-external-secrets", 900)
        }
        Component::Arc => ("73-arc", 900),
        _ => {
            if let Some(token) = secrets.user_token(crate::secrets::UserToken::Github) {
                hidden.push(json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": charts::ARC_GITHUB_SECRET, "namespace": r.namespace},
                    "type": "Opaque",
                    "data": {"github_token": b64(token)},
                }));
            }
            ("74-arc-runners", 600)
        }
    };
    let mut main = step(name, Some((c.name(), &public)), waits, timeout);
    if !hidden.is_empty() {
        main.files.push(secret_file(name, "secrets", &hidden));
    }
    // ARC's runner set is checked by the controller's webhook: retried.
    main.retry_apply = c == Component::ArcRunners;
    let mut out = vec![main];
    out.extend(extra);
    if c == Component::ArcRunners && Component::Harbor.enabled(a) {
        out.push(harbor_robot(a, secrets));
    }
    out
}

/// Makes Harbor's robot account for the runners (system level, pull and push
/// on every project), or finds it, and sets the appliance's password on it
/// (Harbor's "refresh secret"), once Harbor answers; `HARBOR_API` overrides
/// where Harbor is (tests).
pub const ROBOT_SCRIPT: &str = r#"set -eu
api="${HARBOR_API:-http://harbor-core.harbor.svc/api/v2.0}"
auth="admin:$HARBOR_ADMIN_PASSWORD"
answer="${TMPDIR:-/tmp}/harbor-answer"
first_id() { tr ',' '\n' | sed -n 's/^[[{ ]*"id": *\([0-9][0-9]*\) *$/\1/p' | head -n 1; }
body='{"name":"hearth-runner","description":"hearth: the GitHub runners push with it","level":"system","duration":-1,"disable":false,"secret":"'"$ROBOT_PASSWORD"'","permissions":[{"kind":"project","namespace":"*","access":[{"resource":"repository","action":"pull"},{"resource":"repository","action":"push"}]}]}'
code=$(curl -s -o "$answer" -w '%{http_code}' -u "$auth" -H 'Content-Type: application/json' \
  -X POST "$api/robots" -d "$body")
case "$code" in
  201) id=$(first_id <"$answer") ;;
  409) id=$(curl -sf -u "$auth" "$api/robots?q=name%3Drobot%24hearth-runner" | first_id) ;;
  *) echo "Harbor answered $code: $(cat "$answer")" >&2; exit 1 ;;
esac
[ -n "$id" ] || { echo "no robot id in Harbor's answer" >&2; exit 1; }
# The password is the appliance's whether or not Harbor took it at creation.
curl -sf -o /dev/null -u "$auth" -H 'Content-Type: application/json' \
  -X PATCH "$api/robots/$id" -d '{"secret":"'"$ROBOT_PASSWORD"'"}'
echo "robot\$hearth-runner (id $id) has the appliance's password"
"#;

/// The step that gives the runners a Harbor robot account: its login as a
/// Secret in the runners' namespace (their `HARBOR_*` variables), and a Job
/// (Harbor's core image, which has curl) that makes it in Harbor.
fn harbor_robot(a: &Appliance, secrets: &Secrets) -> Step {
    let password = secrets.harbor_robot_password();
    let login = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": charts::HARBOR_ROBOT_SECRET, "namespace": charts::ARC_RUNNERS_NAMESPACE},
        "type": "Opaque",
        "data": {"username": b64(charts::HARBOR_ROBOT), "password": b64(&password), "registry": b64(&a.harbor_ip().to_string())},
    });
    let job_secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hearth-robot-setup", "namespace": charts::HARBOR_NAMESPACE},
        "type": "Opaque",
        "data": {"admin-password": b64(secrets.get(Secret::HarborAdmin)), "robot-password": b64(&password)},
    });
    let env = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "hearth-robot-setup", "key": key}}});
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hearth-robot", "namespace": charts::HARBOR_NAMESPACE},
        "spec": {
            "backoffLimit": 30,
            "template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{
                    "name": "robot",
                    "image": charts::HARBOR_CORE_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", ROBOT_SCRIPT],
                    "env": [env("HARBOR_ADMIN_PASSWORD", "admin-password"), env("ROBOT_PASSWORD", "robot-password")],
                }],
            }},
        },
    });
    let name = "75-harbor-robot";
    let mut st = step(
        name,
        Some(("robot", &[job])),
        vec![Wait::Condition {
            namespace: charts::HARBOR_NAMESPACE.into(),
            object: "job/hearth-robot".into(),
            condition: "Complete".into(),
        }],
        900,
    );
    st.files.insert(0, secret_file(name, "secrets", &[job_secret, login]));
    st
}

/// The Git server (unless the user's repository is named), the repository of
/// everything so far, and last the root Application. With the in-cluster
/// repository the plan waits for the root to be Synced and Healthy; the
/// user's repository may still be empty, so then the plan only applies it.
fn gitops_steps(a: &Appliance, secrets: &Secrets, plan: &mut Plan) {
    if a.gitops.repo.is_none() {
        plan.steps.push(gitops::git_server_step(a, secrets));
    }
    let files = gitops::repository(a, plan);
    let repo = gitops::commit(a, &files);
    let root = format!("application/{}", gitops::ROOT_APP);
    let waits = match a.gitops.repo {
        Some(_) => vec![],
        None => ["sync", "health"]
            .into_iter()
            .zip(["Synced", "Healthy"])
            .map(|(what, value)| Wait::Value {
                namespace: ARGOCD_NAMESPACE.into(),
                object: root.clone(),
                path: format!("{{.status.{what}.status}}"),
                value: value.into(),
            })
            .collect(),
    };
    let mut step = step("90-app-of-apps", Some(("app-of-apps", &[gitops::root_application(a)])), waits, 1800);
    if let Some(credentials) = gitops::repo_credentials(a, secrets) {
        step.files.insert(0, secret_file("90-app-of-apps", "repo-credentials", &[credentials]));
    }
    plan.steps.push(step);
    plan.gitops = Some(gitops::Repo { head: repo.head.hex(), bundle: repo.bundle(), files });
}

/// Flannel's network is the appliance's pod CIDR.
fn flannel(a: &Appliance, objects: &mut [Object]) -> Result<(), PlatformError> {
    let c = Component::Flannel;
    let cm = manifest::find_mut(objects, "ConfigMap", "kube-flannel-cfg")
        .ok_or_else(|| shape(c, "ConfigMap kube-flannel-cfg"))?;
    let text = cm["data"]["net-conf.json"].as_str().ok_or_else(|| shape(c, "net-conf.json"))?;
    let mut conf: Value = serde_json::from_str(text).map_err(|e| shape(c, format!("net-conf.json as JSON ({e})")))?;
    conf["Network"] = json!(String::from(a.cluster.pod_cidr));
    cm["data"]["net-conf.json"] = json!(serde_json::to_string_pretty(&conf).expect("JSON serialises") + "\n");
    Ok(())
}

/// The default StorageClass; volumes under the appliance's path; the helper
/// pod's image pinned.
fn local_path(a: &Appliance, objects: &mut [Object]) -> Result<(), PlatformError> {
    let c = Component::LocalPath;
    let sc =
        manifest::find_mut(objects, "StorageClass", "local-path").ok_or_else(|| shape(c, "StorageClass local-path"))?;
    sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] = json!("true");
    let cm = manifest::find_mut(objects, "ConfigMap", "local-path-config")
        .ok_or_else(|| shape(c, "ConfigMap local-path-config"))?;
    let text = cm["data"]["config.json"].as_str().ok_or_else(|| shape(c, "config.json"))?;
    let mut conf: Value = serde_json::from_str(text).map_err(|e| shape(c, format!("config.json as JSON ({e})")))?;
    let maps = conf["nodePathMap"].as_array_mut().ok_or_else(|| shape(c, "config.json nodePathMap"))?;
    for m in maps.iter_mut() {
        m["paths"] = json!([a.platform.storage_path]);
    }
    cm["data"]["config.json"] = json!(serde_json::to_string_pretty(&conf).expect("JSON serialises") + "\n");
    let helper = cm["data"]["helperPod.yaml"].as_str().ok_or_else(|| shape(c, "helperPod.yaml"))?;
    let mut pod: Value =
        serde_saphyr::from_str(helper).map_err(|e| shape(c, format!("helperPod.yaml as YAML ({e})")))?;
    for container in pod["spec"]["containers"].as_array_mut().ok_or_else(|| shape(c, "helper pod containers"))? {
        container["image"] = json!(LOCAL_PATH_HELPER_IMAGE);
    }
    cm["data"]["helperPod.yaml"] = json!(serde_json::to_string_pretty(&pod).expect("JSON serialises") + "\n");
    Ok(())
}

/// The automatic pool, the fixed pool (`autoAssign: false`) and their L2
/// announcement.
fn metallb_pools(a: &Appliance) -> Vec<Object> {
    let pool = |name: &str, ranges: Vec<String>, auto: bool| {
        json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system"},
            "spec": {"addresses": ranges, "autoAssign": auto},
        })
    };
    let mut out = Vec::new();
    let auto = a.auto_ranges();
    let mut names = Vec::new();
    if !auto.is_empty() {
        out.push(pool(AUTO_POOL, auto.iter().map(ToString::to_string).collect(), true));
        names.push(AUTO_POOL);
    }
    out.push(pool(FIXED_POOL, vec![a.fixed_pool().to_string()], false));
    names.push(FIXED_POOL);
    out.push(json!({
        "apiVersion": "metallb.io/v1beta1",
        "kind": "L2Advertisement",
        "metadata": {"name": "hearth", "namespace": "metallb-system"},
        "spec": {"ipAddressPools": names},
    }));
    out
}

/// The platform CA as a TLS Secret.
fn ca_secret(pki: &Pki) -> Object {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hearth-platform-ca", "namespace": "cert-manager"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&pki.platform_ca.cert_pem), "tls.key": b64(&pki.platform_ca.key_pem)},
    })
}

/// The CA ClusterIssuer that signs with the platform CA's Secret.
fn ca_issuer() -> Object {
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": CA_ISSUER},
        "spec": {"ca": {"secretName": "hearth-platform-ca"}},
    })
}

/// The controller's LoadBalancer Service asks MetalLB for `ingress_ip`.
fn ingress_nginx(a: &Appliance, objects: &mut [Object]) -> Result<(), PlatformError> {
    let c = Component::IngressNginx;
    let svc = manifest::find_mut(objects, "Service", "ingress-nginx-controller")
        .ok_or_else(|| shape(c, "Service ingress-nginx-controller"))?;
    svc["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"] = json!(a.ingress_ip().to_string());
    Ok(())
}

/// Argo CD's namespace (its install.yaml names none: it is applied with `-n`).
pub const ARGOCD_NAMESPACE: &str = "argocd";

/// Argo CD's health check for an Application, which Argo CD no longer has
/// built in (since 1.8): without it a parent in an app-of-apps is Healthy
/// before its children are, and sync waves do not wait for them.
const APPLICATION_HEALTH_LUA: &str = "\
health = {status = \"Progressing\", message = \"\"}
if obj.status ~= nil and obj.status.health ~= nil then
  health.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    health.message = obj.status.health.message
  end
end
return health
";

/// Argo CD in its namespace, offline and at its fixed address: every object
/// that is namespaced gets `argocd` (and the Namespace is added); every
/// `imagePullPolicy: Always` becomes `IfNotPresent` (the images are
/// preloaded); argocd-server is a LoadBalancer at `argocd_ip`, its TLS
/// certificate (`argocd-server-tls`, which the server picks up) issued by the
/// platform CA for that address. `argocd-cm` tracks resources by annotation
/// (the upstream objects carry `app.kubernetes.io/instance` labels of their
/// own, some in immutable selectors) and restores Application health.
///
/// `argocd-secret` is taken out of `objects` and returned filled: the admin
/// password's bcrypt hash and the session key, from the appliance's secrets.
fn argocd(a: &Appliance, secrets: &Secrets, objects: &mut Vec<Object>) -> Result<Object, PlatformError> {
    let c = Component::ArgoCd;
    into_namespace(objects, ARGOCD_NAMESPACE);
    for o in objects.iter_mut() {
        for list in ["initContainers", "containers"] {
            let spec = match manifest::kind(o) {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &mut o["spec"]["template"]["spec"][list],
                _ => continue,
            };
            for container in spec.as_array_mut().into_iter().flatten() {
                if container["imagePullPolicy"] == "Always" {
                    container["imagePullPolicy"] = json!("IfNotPresent");
                }
            }
        }
    }
    let svc =
        manifest::find_mut(objects, "Service", "argocd-server").ok_or_else(|| shape(c, "Service argocd-server"))?;
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"] = json!(a.argocd_ip().to_string());
    let cm = manifest::find_mut(objects, "ConfigMap", "argocd-cm").ok_or_else(|| shape(c, "ConfigMap argocd-cm"))?;
    cm["data"]["application.resourceTrackingMethod"] = json!("annotation");
    cm["data"]["resource.customizations.health.argoproj.io_Application"] = json!(APPLICATION_HEALTH_LUA);
    let at = objects
        .iter()
        .position(|o| manifest::kind(o) == "Secret" && manifest::name(o) == "argocd-secret")
        .ok_or_else(|| shape(c, "Secret argocd-secret"))?;
    let mut secret = objects.remove(at);
    secret["data"] = json!({
        "admin.password": b64(&secrets.bcrypt(Secret::ArgocdAdmin)),
        "server.secretkey": b64(secrets.get(Secret::ArgocdServerKey)),
    });
    objects.push(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "argocd-server-tls", "namespace": ARGOCD_NAMESPACE},
        "spec": {
            "secretName": "argocd-server-tls",
            "issuerRef": {"kind": "ClusterIssuer", "name": CA_ISSUER},
            "commonName": "argocd-server",
            "ipAddresses": [a.argocd_ip().to_string()],
            "dnsNames": ["argocd-server", format!("argocd-server.{ARGOCD_NAMESPACE}.svc")],
        },
    }));
    Ok(secret)
}

/// An image the node image preloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preloaded {
    /// As the recipe names it.
    pub reference: String,
    /// Its pinned index or manifest digest, if known.
    pub digest: Option<Sha256>,
}

/// Refuses a plan that could not run offline: every container image must be
/// preloaded (by name, and by digest where the manifest pins one) and none
/// pulled `Always`. Each problem names the object, the image and the fix.
pub fn check(plan: &Plan, preloaded: &[Preloaded], recipe: &str) -> Result<(), PlatformError> {
    let mut have: BTreeMap<String, Vec<Option<Sha256>>> = BTreeMap::new();
    for p in preloaded {
        if let Ok(r) = Reference::parse(&p.reference) {
            have.entry(r.name()).or_default().push(p.digest.or(r.digest));
        }
    }
    let mut problems = Vec::new();
    for (path, o) in plan.objects()? {
        for (where_, spec) in manifest::pod_specs(&o) {
            for (container, image, policy) in manifest::containers(&spec) {
                let at = format!("{where_} container `{container}` (in {path})");
                let r = match Reference::parse(&image) {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                };
                let name =
                    if r.tag.is_none() && r.digest.is_none() { format!("{}:latest", r.name()) } else { r.name() };
                let ok = have.get(&name).is_some_and(|ds| match r.digest {
                    Some(d) => ds.contains(&Some(d)),
                    None => true,
                });
                if !ok {
                    let digest = r.digest.map(|d| format!("digest = \"{}\"\n", d.oci())).unwrap_or_default();
                    problems.push(format!(
                        "{at}: image `{image}` is not preloaded by {recipe}; add\n    [[images]]\n    reference = \"{name}\"\n    {digest}",
                    ));
                }
                if policy.as_deref() == Some("Always") {
                    problems.push(format!(
                        "{at}: pulls `{image}` with imagePullPolicy: Always (offline it must be IfNotPresent)"
                    ));
                }
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(PlatformError::NotHermetic(problems)) }
}
