//! Readiness and status, seen from the host: VM running (libvirt) -> IP answers
//! (a TCP connection to port 22 is accepted or refused: either way the guest's
//! stack is up at its fixed address) -> API ready (`/readyz` through the `kube`
//! client, with the admin kubeconfig the host made) -> every node Ready ->
//! platform healthy (every pod Running and ready, or Succeeded). Each node's
//! first-boot stage is read from its serial console log.
//!
//! [`Checker::status`] takes one look at everything; [`Checker::wait`] walks the
//! stages in order, each with its own timeout, reporting a live line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::libvirt::Libvirt;
use crate::state::Launched;

/// The stages of readiness, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Every domain is running.
    Running,
    /// Every node answers at its fixed IP.
    Ip,
    /// The API server answers `/readyz` with `ok`.
    Api,
    /// Every node is registered and Ready.
    Nodes,
    /// Every pod is Running and ready (or Succeeded).
    Platform,
}

impl Stage {
    /// All stages, in order.
    pub const ALL: [Stage; 5] = [Stage::Running, Stage::Ip, Stage::Api, Stage::Nodes, Stage::Platform];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Running => "running",
            Stage::Ip => "ip",
            Stage::Api => "api",
            Stage::Nodes => "nodes",
            Stage::Platform => "platform",
        }
    }

    /// How long each stage may take by default (generous: TCG guests are slow).
    pub fn default_timeout(self) -> Duration {
        Duration::from_secs(match self {
            Stage::Running => 60,
            Stage::Ip => 600,
            Stage::Api => 900,
            Stage::Nodes => 900,
            Stage::Platform => 1200,
        })
    }

    fn what(self) -> &'static str {
        match self {
            Stage::Running => "VMs running",
            Stage::Ip => "IPs answering",
            Stage::Api => "API server ready",
            Stage::Nodes => "nodes Ready",
            Stage::Platform => "platform healthy",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("`{s}` is not a stage (one of {})", Stage::ALL.map(Stage::name).join(", ")))
    }
}

/// The first-boot stage a console log shows: the last `hearth-firstboot:` line
/// that names a stage, `done`, or an error.
pub fn firstboot_stage(log: &str) -> Option<String> {
    let mut stage = None;
    for line in log.lines() {
        let Some(i) = line.find("hearth-firstboot: ") else { continue };
        let rest = line[i + "hearth-firstboot: ".len()..].trim_end();
        if let Some(s) = rest.strip_prefix("stage ") {
            stage = Some(s.to_owned());
        } else if rest.starts_with("error: ") {
            stage = Some(rest.to_owned());
        } else if rest == "done" || rest == "joined" || rest == "api ready" {
            stage = Some(rest.replace(' ', "-"));
        }
    }
    stage
}

/// What a TCP connection to a node's port 22 met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// Not tried (the VM does not run).
    NotProbed,
    /// Accepted: sshd listens.
    Accepted,
    /// Actively refused: the guest's stack is up, sshd is not (yet).
    Refused,
    /// No route to the address from here (no such network in this namespace).
    Unreachable,
    /// No answer in time.
    Timeout,
    /// Another error.
    Failed,
}

impl Probe {
    /// Whether the node's network stack answered (accepted or refused).
    pub fn answers(self) -> bool {
        matches!(self, Probe::Accepted | Probe::Refused)
    }

    /// A word for the table.
    pub fn name(self) -> &'static str {
        match self {
            Probe::NotProbed => "not probed",
            Probe::Accepted => "accepted",
            Probe::Refused => "refused",
            Probe::Unreachable => "unreachable",
            Probe::Timeout => "timeout",
            Probe::Failed => "failed",
        }
    }
}

/// Tries a TCP connection to `ip:22`.
pub fn probe(ip: Ipv4Addr, timeout: Duration) -> Probe {
    use std::io::ErrorKind as K;
    match TcpStream::connect_timeout(&SocketAddr::from((ip, 22)), timeout) {
        Ok(_) => Probe::Accepted,
        Err(e) => match e.kind() {
            K::ConnectionRefused => Probe::Refused,
            K::NetworkUnreachable | K::HostUnreachable => Probe::Unreachable,
            K::TimedOut | K::WouldBlock => Probe::Timeout,
            _ => Probe::Failed,
        },
    }
}

/// One node, as seen now.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// Fixed address.
    pub ip: Ipv4Addr,
    /// libvirt domain.
    pub domain: String,
    /// `running`, `stopped` or `missing`.
    pub vm: String,
    /// Whether the address answers.
    pub ip_answers: bool,
    /// What the connection to port 22 met.
    pub ip_probe: Probe,
    /// First-boot stage from the console log.
    pub firstboot: Option<String>,
    /// `Ready`, `NotReady`, or absent when the API does not list it.
    pub kubernetes: Option<String>,
}

/// The platform's pods and components.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Platform {
    /// Pods seen.
    pub pods: usize,
    /// `namespace/name: phase` of every pod not Running+ready nor Succeeded.
    pub unhealthy: Vec<String>,
    /// The components hearth installs.
    pub components: Components,
}

/// One Deployment or DaemonSet of a platform component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The component (`metallb`).
    pub component: String,
    /// `Deployment metallb-system/controller`.
    pub object: String,
    /// Available (Deployment) or every scheduled pod ready (DaemonSet).
    pub ready: bool,
    /// Why not, from its status.
    pub detail: String,
}

/// The platform components, as the API shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Components {
    /// Every workload of every enabled component, in plan order.
    pub workloads: Vec<Workload>,
    /// The ingress controller's load-balancer address.
    pub ingress_ip: Option<String>,
    /// Whether the CA ClusterIssuer is Ready (absent: not there).
    pub issuer_ready: Option<bool>,
    /// The default StorageClass.
    pub default_storage_class: Option<String>,
    /// Argo CD's Applications, in sync-wave order, the root last.
    pub applications: Vec<Application>,
    /// What Harbor's `/api/v2.0/health` says (absent: no answer).
    pub harbor_health: Option<String>,
    /// The first thing still missing, with its reason (absent: all there).
    pub pending: Option<String>,
}

/// An Argo CD Application as its status says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Application {
    /// Its name.
    pub name: String,
    /// `Synced`, `OutOfSync`, `Unknown` (empty: no status yet).
    pub sync: String,
    /// `Healthy`, `Progressing`, `Degraded`, `Missing`, ... (empty: none yet).
    pub health: String,
    /// Why, when Argo CD says (a health message, a condition, the last operation's).
    pub message: Option<String>,
}

impl Application {
    /// Synced and Healthy.
    pub fn ok(&self) -> bool {
        self.sync == "Synced" && self.health == "Healthy"
    }

    fn from_object(o: &kube::api::DynamicObject) -> (i64, Application) {
        let status = &o.data["status"];
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let message = text(&status["health"]["message"])
            .or_else(|| status["conditions"].as_array().and_then(|cs| cs.iter().find_map(|c| text(&c["message"]))))
            .or_else(|| {
                text(&status["operationState"]["message"]).filter(|_| status["operationState"]["phase"] != "Succeeded")
            });
        let wave = o
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("argocd.argoproj.io/sync-wave"))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        let app = Application {
            name: o.metadata.name.clone().unwrap_or_default(),
            sync: status["sync"]["status"].as_str().unwrap_or("").to_owned(),
            health: status["health"]["status"].as_str().unwrap_or("").to_owned(),
            message,
        };
        (wave, app)
    }
}

/// Argo CD's Applications in sync-wave order, the root (app-of-apps) last.
async fn applications(client: &kube::Client) -> Vec<Application> {
    let gvk = kube::api::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "applications");
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), crate::platform::ARGOCD_NAMESPACE, &ar);
    let Ok(list) = api.list(&ListParams::default()).await else { return Vec::new() };
    let mut apps: Vec<(bool, i64, Application)> = list
        .items
        .iter()
        .map(Application::from_object)
        .map(|(wave, app)| (app.name == crate::platform::gitops::ROOT_APP, wave, app))
        .collect();
    apps.sort_by(|x, y| (x.0, x.1, &x.2.name).cmp(&(y.0, y.1, &y.2.name)));
    apps.into_iter().map(|(_, _, app)| app).collect()
}

/// Namespace of each component's workloads (as the upstream manifests make them).
fn component_namespace(c: crate::platform::Component) -> &'static str {
    use crate::platform::Component as C;
    match c {
        C::Flannel => "kube-flannel",
        C::LocalPath => "local-path-storage",
        C::Metallb => "metallb-system",
        C::CertManager => "cert-manager",
        C::IngressNginx => "ingress-nginx",
        C::ArgoCd => crate::platform::ARGOCD_NAMESPACE,
        C::Harbor => crate::platform::charts::HARBOR_NAMESPACE,
        C::ExternalSecrets => crate::platform::charts::ESO_NAMESPACE,
        C::Arc => crate::platform::charts::ARC_NAMESPACE,
        C::ArcRunners => crate::platform::charts::ARC_RUNNERS_NAMESPACE,
    }
}

/// Harbor's own health (`/api/v2.0/health`), asked through the API server's
/// service proxy: `healthy`, or what is not, e.g. `unhealthy (database: unhealthy)`.
async fn harbor_health(client: &kube::Client) -> Option<String> {
    let path = format!(
        "/api/v1/namespaces/{}/services/harbor-core:http-web/proxy/api/v2.0/health",
        crate::platform::charts::HARBOR_NAMESPACE
    );
    let req = http::Request::get(path).body(Vec::new()).expect("a valid request");
    let text = tokio::time::timeout(Duration::from_secs(10), client.request_text(req)).await.ok()?.ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let status = v["status"].as_str()?.to_owned();
    let bad: Vec<String> = v["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "healthy")
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or("?"), c["status"].as_str().unwrap_or("?")))
        .collect();
    Some(if bad.is_empty() { status } else { format!("{status} ({})", bad.join(", ")) })
}

fn deployment_workload(component: &str, d: k8s_openapi::api::apps::v1::Deployment) -> Workload {
    let object =
        format!("Deployment {}/{}", d.metadata.namespace.unwrap_or_default(), d.metadata.name.unwrap_or_default());
    let available =
        d.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Available");
    let (ready, detail) = match available {
        Some(c) if c.status == "True" => (true, String::new()),
        Some(c) => {
            (false, format!("not available: {} ({})", c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
        }
        None => (false, "not available: no status yet".into()),
    };
    Workload { component: component.into(), object, ready, detail }
}

fn daemonset_workload(component: &str, d: k8s_openapi::api::apps::v1::DaemonSet) -> Workload {
    let object =
        format!("DaemonSet {}/{}", d.metadata.namespace.unwrap_or_default(), d.metadata.name.unwrap_or_default());
    let (want, ready) = d.status.map_or((0, 0), |s| (s.desired_number_scheduled, s.number_ready));
    Workload {
        component: component.into(),
        object,
        ready: want > 0 && ready == want,
        detail: if want > 0 && ready == want { String::new() } else { format!("{ready} of {want} pods ready") },
    }
}

fn statefulset_workload(component: &str, d: k8s_openapi::api::apps::v1::StatefulSet) -> Workload {
    let object =
        format!("StatefulSet {}/{}", d.metadata.namespace.unwrap_or_default(), d.metadata.name.unwrap_or_default());
    let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    Workload {
        component: component.into(),
        object,
        ready: ready >= want,
        detail: if ready >= want { String::new() } else { format!("{ready} of {want} replicas ready") },
    }
}

/// The platform components of `a`, through `client`: each component's
/// workloads, the ingress address, the CA issuer, the default StorageClass,
/// and the first thing missing in plan order.
pub async fn components(client: &kube::Client, a: &crate::spec::Appliance) -> Components {
    use crate::platform::Component as C;
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::storage::v1::StorageClass;
    let lp = ListParams::default();
    let mut out = Components::default();
    let mut pending: Vec<String> = Vec::new();
    for c in C::ALL.into_iter().filter(|c| c.enabled(a)) {
        let ns = component_namespace(c);
        let mut workloads = Vec::new();
        if let Ok(list) = Api::<Deployment>::namespaced(client.clone(), ns).list(&lp).await {
            workloads.extend(list.items.into_iter().map(|d| deployment_workload(c.name(), d)));
        }
        if let Ok(list) = Api::<DaemonSet>::namespaced(client.clone(), ns).list(&lp).await {
            workloads.extend(list.items.into_iter().map(|d| daemonset_workload(c.name(), d)));
        }
        if let Ok(list) = Api::<StatefulSet>::namespaced(client.clone(), ns).list(&lp).await {
            workloads.extend(list.items.into_iter().map(|d| statefulset_workload(c.name(), d)));
        }
        workloads.sort_by(|x, y| x.object.cmp(&y.object));
        // Runners come and go with jobs: an empty runner namespace is fine.
        if workloads.is_empty() && c != C::ArcRunners {
            pending.push(format!("{}: nothing deployed in namespace {ns} yet", c.name()));
        }
        for w in workloads.iter().filter(|w| !w.ready) {
            pending.push(format!("{}: {} {}", c.name(), w.object, w.detail));
        }
        out.workloads.extend(workloads);
        match c {
            C::LocalPath => {
                if let Ok(list) = Api::<StorageClass>::all(client.clone()).list(&lp).await {
                    out.default_storage_class = list
                        .items
                        .into_iter()
                        .filter(|sc| {
                            sc.metadata.annotations.as_ref().is_some_and(|an| {
                                an.get("storageclass.kubernetes.io/is-default-class").map(String::as_str)
                                    == Some("true")
                            })
                        })
                        .filter_map(|sc| sc.metadata.name)
                        .min();
                }
                if out.default_storage_class.is_none() {
                    pending.push("local-path: no default StorageClass yet".into());
                }
            }
            C::CertManager => {
                let gvk = kube::api::GroupVersionKind::gvk("cert-manager.io", "v1", "ClusterIssuer");
                let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "clusterissuers");
                let issuers: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
                let issuer = issuers.get_opt(crate::platform::CA_ISSUER).await.ok().flatten();
                let ready = issuer.as_ref().map(|i| {
                    i.data["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                });
                out.issuer_ready = ready;
                if ready != Some(true) {
                    let why = issuer
                        .and_then(|i| {
                            i.data["status"]["conditions"].as_array().and_then(|cs| {
                                cs.iter().find(|c| c["type"] == "Ready").map(|c| {
                                    format!(
                                        ": {} ({})",
                                        c["reason"].as_str().unwrap_or(""),
                                        c["message"].as_str().unwrap_or("")
                                    )
                                })
                            })
                        })
                        .unwrap_or_else(|| if ready.is_none() { " (not there yet)".into() } else { String::new() });
                    pending.push(format!("cert-manager: ClusterIssuer {} not Ready{why}", crate::platform::CA_ISSUER));
                }
            }
            C::IngressNginx => {
                let svc = Api::<Service>::namespaced(client.clone(), ns).get_opt("ingress-nginx-controller").await;
                out.ingress_ip =
                    svc.ok().flatten().and_then(|s| s.status?.load_balancer?.ingress?.into_iter().find_map(|i| i.ip));
                let want = a.ingress_ip().to_string();
                if out.ingress_ip.as_deref() != Some(want.as_str()) {
                    pending.push(format!(
                        "ingress-nginx: Service {ns}/ingress-nginx-controller has {} (wants {want})",
                        out.ingress_ip
                            .as_deref()
                            .map_or("no load-balancer address".into(), |ip| format!("address {ip}"))
                    ));
                }
            }
            C::ArgoCd => {
                if a.gitops.repo.is_none() {
                    let git = crate::platform::gitops::GIT_NAMESPACE;
                    if let Ok(list) = Api::<Deployment>::namespaced(client.clone(), git).list(&lp).await {
                        let ws: Vec<Workload> =
                            list.items.into_iter().map(|d| deployment_workload(c.name(), d)).collect();
                        if ws.is_empty() {
                            pending.push(format!("{}: nothing deployed in namespace {git} yet", c.name()));
                        }
                        for w in ws.iter().filter(|w| !w.ready) {
                            pending.push(format!("{}: {} {}", c.name(), w.object, w.detail));
                        }
                        out.workloads.extend(ws);
                    }
                }
                out.applications = applications(client).await;
                for app in out.applications.iter().filter(|app| !app.ok()) {
                    let state = match (app.sync.as_str(), app.health.as_str()) {
                        ("", "") => "has no status yet".to_owned(),
                        (s, h) => {
                            format!("is {}/{}", if s.is_empty() { "-" } else { s }, if h.is_empty() { "-" } else { h })
                        }
                    };
                    let why = app.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                    pending.push(format!("argo-cd: Application {} {state}{why}", app.name));
                }
                if !out.applications.iter().any(|app| app.name == crate::platform::gitops::ROOT_APP) {
                    pending.push(format!(
                        "argo-cd: the root Application {} is not there yet",
                        crate::platform::gitops::ROOT_APP
                    ));
                }
            }
            C::Harbor => {
                out.harbor_health = harbor_health(client).await;
                match out.harbor_health.as_deref() {
                    Some("healthy") => {}
                    Some(h) => pending.push(format!("harbor: /api/v2.0/health says {h}")),
                    None => pending.push("harbor: /api/v2.0/health does not answer yet".into()),
                }
            }
            C::Flannel | C::Metallb | C::ExternalSecrets | C::Arc | C::ArcRunners => {}
        }
    }
    out.pending = pending.into_iter().next();
    out
}

/// The appliance, as seen now.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Appliance name.
    pub appliance: String,
    /// Reinstall counter.
    pub generation: u32,
    /// `https://<control plane>:6443`.
    pub api_endpoint: String,
    /// Whether `/readyz` said `ok`.
    pub api_ready: bool,
    /// The nodes.
    pub nodes: Vec<NodeStatus>,
    /// Pods, when the API answered.
    pub platform: Option<Platform>,
    /// The first stage not reached yet (absent when all are).
    pub pending: Option<Stage>,
}

/// Errors of waiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// A stage did not complete in time.
    #[error("{what} not reached within {secs} s: {detail}")]
    Timeout {
        /// The stage.
        what: &'static str,
        /// Its timeout.
        secs: u64,
        /// What was still missing.
        detail: String,
    },
    /// libvirt.
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
}

/// Looks at an appliance: libvirt for the VMs, TCP for the IPs, the `kube`
/// client for the API.
pub struct Checker<'a> {
    lv: &'a Libvirt,
    launched: &'a Launched,
    kubeconfig: &'a Path,
    rt: tokio::runtime::Runtime,
    client: Option<kube::Client>,
}

impl<'a> Checker<'a> {
    /// A checker of `launched` on `lv`, talking to the API with `kubeconfig`.
    pub fn new(lv: &'a Libvirt, launched: &'a Launched, kubeconfig: &'a Path) -> std::io::Result<Checker<'a>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Checker { lv, launched, kubeconfig, rt, client: None })
    }

    fn client(&mut self) -> Result<kube::Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let path = self.kubeconfig;
        let client = self.rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            config.connect_timeout = Some(Duration::from_secs(3));
            config.read_timeout = Some(Duration::from_secs(10));
            kube::Client::try_from(config).map_err(|e| e.to_string())
        })?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn api_ready(&mut self) -> bool {
        let Ok(client) = self.client() else { return false };
        let req = http::Request::get("/readyz").body(Vec::new()).expect("a valid request");
        self.rt.block_on(async {
            matches!(
                tokio::time::timeout(Duration::from_secs(10), client.request_text(req)).await,
                Ok(Ok(body)) if body.trim() == "ok"
            )
        })
    }

    fn k8s_nodes(&mut self) -> Option<BTreeMap<String, bool>> {
        let client = self.client().ok()?;
        self.rt.block_on(async {
            let nodes: Api<Node> = Api::all(client);
            let list =
                tokio::time::timeout(Duration::from_secs(10), nodes.list(&ListParams::default())).await.ok()?.ok()?;
            Some(
                list.items
                    .into_iter()
                    .map(|n| {
                        let ready = n
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        (n.metadata.name.unwrap_or_default(), ready)
                    })
                    .collect(),
            )
        })
    }

    fn platform(&mut self) -> Option<Platform> {
        let client = self.client().ok()?;
        self.rt.block_on(async {
            let pods: Api<Pod> = Api::all(client.clone());
            let list =
                tokio::time::timeout(Duration::from_secs(10), pods.list(&ListParams::default())).await.ok()?.ok()?;
            let mut p = Platform { pods: list.items.len(), ..Platform::default() };
            for pod in list.items {
                let status = pod.status.unwrap_or_default();
                let phase = status.phase.unwrap_or_else(|| "Unknown".into());
                let ready =
                    status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
                if !(phase == "Succeeded" || (phase == "Running" && ready)) {
                    p.unhealthy.push(format!(
                        "{}/{}: {phase}{}",
                        pod.metadata.namespace.unwrap_or_default(),
                        pod.metadata.name.unwrap_or_default(),
                        if phase == "Running" { " (not ready)" } else { "" }
                    ));
                }
            }
            p.unhealthy.sort();
            p.components = components(&client, &self.launched.appliance).await;
            Some(p)
        })
    }

    fn vm_state(&self, domain: &str) -> Result<&'static str, WaitError> {
        if !self.lv.domain_exists(domain)? {
            return Ok("missing");
        }
        Ok(if self.lv.is_running(domain)? { "running" } else { "stopped" })
    }

    /// One look at everything.
    pub fn status(&mut self) -> Result<Status, WaitError> {
        let l = self.launched;
        let a = &l.appliance;
        let mut nodes = Vec::new();
        for (spec, rec) in a.nodes.iter().zip(&l.nodes) {
            let vm = self.vm_state(&rec.domain)?;
            let ip_probe = if vm == "running" { probe(spec.ip, Duration::from_millis(700)) } else { Probe::NotProbed };
            let log = std::fs::read_to_string(&rec.console_log).unwrap_or_default();
            nodes.push(NodeStatus {
                name: spec.name.clone(),
                role: match spec.role {
                    crate::spec::Role::ControlPlane => "control-plane".into(),
                    crate::spec::Role::Worker => "worker".into(),
                },
                ip: spec.ip,
                domain: rec.domain.clone(),
                vm: vm.into(),
                ip_answers: ip_probe.answers(),
                ip_probe,
                firstboot: firstboot_stage(&log),
                kubernetes: None,
            });
        }
        let cp_answers = nodes.iter().any(|n| n.role == "control-plane" && n.ip_answers);
        let api_ready = cp_answers && self.api_ready();
        let mut platform = None;
        if api_ready {
            if let Some(k) = self.k8s_nodes() {
                for n in &mut nodes {
                    n.kubernetes = k.get(&n.name).map(|r| if *r { "Ready" } else { "NotReady" }.to_owned());
                }
            }
            platform = self.platform();
        }
        let reached = |st: Stage| match st {
            Stage::Running => nodes.iter().all(|n| n.vm == "running"),
            Stage::Ip => nodes.iter().all(|n| n.ip_answers),
            Stage::Api => api_ready,
            Stage::Nodes => nodes.iter().all(|n| n.kubernetes.as_deref() == Some("Ready")),
            Stage::Platform => platform
                .as_ref()
                .is_some_and(|p| p.pods > 0 && p.unhealthy.is_empty() && p.components.pending.is_none()),
        };
        let pending = Stage::ALL.into_iter().find(|st| !reached(*st));
        Ok(Status {
            appliance: a.name.clone(),
            generation: l.generation,
            api_endpoint: format!("https://{}", a.api_endpoint()),
            api_ready,
            nodes,
            platform,
            pending,
        })
    }

    /// Walks the stages up to `until`, each within its timeout (`timeouts`
    /// overrides the defaults). `progress` gets a line whenever something
    /// changes and `done` the time each stage completed at.
    pub fn wait(
        &mut self,
        until: Stage,
        timeouts: &dyn Fn(Stage) -> Duration,
        progress: &mut dyn FnMut(&str),
        done: &mut dyn FnMut(Stage, Duration),
    ) -> Result<Status, WaitError> {
        let start = Instant::now();
        let mut stage_start = Instant::now();
        let mut next = 0;
        loop {
            let st = self.status()?;
            // Report every stage passed since the last look.
            while next < Stage::ALL.len()
                && Stage::ALL[next] <= until
                && st.pending.is_none_or(|p| p > Stage::ALL[next])
            {
                done(Stage::ALL[next], start.elapsed());
                next += 1;
                stage_start = Instant::now();
            }
            let Some(cur) = st.pending.filter(|p| *p <= until) else { return Ok(st) };
            let detail = describe(&st, cur);
            progress(&format!("waiting for {}: {detail} ({} s)", cur.what(), start.elapsed().as_secs()));
            let limit = timeouts(cur);
            if stage_start.elapsed() > limit {
                return Err(WaitError::Timeout { what: cur.what(), secs: limit.as_secs(), detail });
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// What is missing for `stage`, with each node's first-boot stage.
pub fn describe(st: &Status, stage: Stage) -> String {
    let boot = |n: &NodeStatus| n.firstboot.clone().unwrap_or_else(|| "booting".into());
    let missing: Vec<String> = match stage {
        Stage::Running => {
            st.nodes.iter().filter(|n| n.vm != "running").map(|n| format!("{} {}", n.name, n.vm)).collect()
        }
        Stage::Ip => st
            .nodes
            .iter()
            .filter(|n| !n.ip_answers)
            .map(|n| format!("{} ({}) silent, first boot: {}", n.name, n.ip, boot(n)))
            .collect(),
        Stage::Api => st
            .nodes
            .iter()
            .filter(|n| n.role == "control-plane")
            .map(|n| format!("{} not ready, first boot: {}", st.api_endpoint, boot(n)))
            .collect(),
        Stage::Nodes => st
            .nodes
            .iter()
            .filter(|n| n.kubernetes.as_deref() != Some("Ready"))
            .map(|n| {
                format!("{} {}, first boot: {}", n.name, n.kubernetes.as_deref().unwrap_or("not registered"), boot(n))
            })
            .collect(),
        Stage::Platform => match &st.platform {
            Some(p) if p.pods == 0 => vec!["no pods yet".into()],
            Some(p) => p.components.pending.iter().chain(p.unhealthy.iter().take(5)).cloned().collect(),
            None => vec!["the API does not list pods".into()],
        },
    };
    missing.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tells_the_first_boot_stage() {
        assert_eq!(firstboot_stage("[  1.0] kernel\nnothing yet\n"), None);
        let log = "x\r\n[  OK  ] Started\r\nhearth-firstboot: stage packages\r\nhearth-firstboot: configured hello 2 ii\r\n\
                   [  42.1] hearth-firstboot: stage images\r\n";
        assert_eq!(firstboot_stage(log).as_deref(), Some("images"));
        assert_eq!(firstboot_stage(&format!("{log}hearth-firstboot: joined\n")).as_deref(), Some("joined"));
        assert_eq!(firstboot_stage(&format!("{log}hearth-firstboot: done\n")).as_deref(), Some("done"));
        assert_eq!(
            firstboot_stage(&format!("{log}hearth-firstboot: error: kubeadm init failed\n")).as_deref(),
            Some("error: kubeadm init failed")
        );
    }

    #[test]
    fn stages_parse_by_name_and_are_ordered() {
        assert_eq!("api".parse::<Stage>().unwrap(), Stage::Api);
        assert!("apis".parse::<Stage>().unwrap_err().contains("running, ip, api, nodes, platform"));
        assert!(Stage::Running < Stage::Ip && Stage::Nodes < Stage::Platform);
    }

    #[test]
    fn a_closed_port_answers_and_a_listening_one_too() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ok = l.local_addr().unwrap();
        assert!(TcpStream::connect_timeout(&ok, Duration::from_secs(1)).is_ok());
        // Port 22 on loopback: refused (or a real sshd): either way it answers.
        assert!(probe(Ipv4Addr::LOCALHOST, Duration::from_secs(1)).answers());
    }
}
