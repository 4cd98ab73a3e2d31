//! The platform rendered from the real upstream manifests at their pinned
//! tags (`shared/upstream/`, byte for byte), judged by real tools: Helm v3.17.1
//! builds cert-manager's static manifest from its chart as its release does,
//! kubernetes-validate checks every object against Kubernetes v1.29.0's
//! schemas, the rendered CRDs judge the custom resources (jsonschema), and
//! PyYAML reads the upstream files independently of hearth's YAML reader.
//! `tests/tools/k8s-tools.sh` installs the tools and names them in
//! HEARTH_HELM, HEARTH_K8S_VALIDATE and HEARTH_K8S_PYTHON.

#![allow(clippy::print_stderr)]

mod executor_rig;
mod upstream_charts;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_appliance::launch::PlatformInputs;
use hearth_appliance::pki::{Ca, Pki};
use hearth_appliance::platform::{self, Component, Plan, Preloaded, Sources, manifest};
use hearth_appliance::secrets::{Secret, Secrets};
use hearth_appliance::spec::Appliance;
use hearth_builder::digest::Sha256;

fn upstream() -> Option<PathBuf> {
    let dir = std::env::var_os("HEARTH_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream"));
    if dir.join("FILES.tsv").exists() {
        return Some(dir);
    }
    let required = std::env::var_os("CI").is_some() || std::env::var_os("HEARTH_REQUIRE_TOOLS").is_some();
    assert!(!required, "the upstream files are required here: no {}", dir.display());
    eprintln!("SKIPPED: no upstream files at {} (HEARTH_UPSTREAM)", dir.display());
    None
}

/// A tool named by an environment variable (set by tests/tools/k8s-tools.sh).
fn tool(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            let required = std::env::var_os("CI").is_some() || std::env::var_os("HEARTH_REQUIRE_TOOLS").is_some();
            assert!(!required, "{var} must name an installed tool (tests/tools/k8s-tools.sh)");
            eprintln!("SKIPPED: {var} is not set (tests/tools/k8s-tools.sh)");
            None
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The platform's inputs from the upstream files: the manifests, the charts
/// (directories), and the test setup's Helm binary.
fn inputs(helm: &Path, up: &Path, work: &Path) -> PlatformInputs {
    let arc = up.join("actions-runner-controller-gha-runner-scale-set-0.9.3/charts");
    PlatformInputs {
        sources: sources(helm, up, work),
        charts: std::collections::BTreeMap::from([
            (Component::Harbor, (up.join("harbor-helm-v1.15.1"), None)),
            (Component::ExternalSecrets, (upstream_charts::external_secrets_chart(up, work), None)),
            (Component::Arc, (arc.join("gha-runner-scale-set-controller"), None)),
            (Component::ArcRunners, (arc.join("gha-runner-scale-set"), None)),
        ]),
        helm: Some(helm.to_owned()),
        preloaded: default_recipe_images(),
        record: Default::default(),
    }
}

fn render(a: &Appliance, secrets: &Secrets, helm: &Path, up: &Path, work: &Path) -> Plan {
    inputs(helm, up, work).render(a, &pki(), secrets, &work.join("scratch")).unwrap()
}

fn sources(helm: &Path, up: &Path, work: &Path) -> Sources {
    let read = |rel: &str| fs::read_to_string(up.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Sources::from([
        (Component::Flannel, read("flannel-v0.25.5/Documentation/kube-flannel.yml")),
        (Component::LocalPath, read("local-path-provisioner-v0.0.28/deploy/local-path-storage.yaml")),
        (Component::Metallb, read("metallb-v0.14.8/config/manifests/metallb-native.yaml")),
        (Component::CertManager, upstream_charts::cert_manager_static(helm, up, work)),
        (Component::IngressNginx, read("ingress-nginx-controller-v1.11.5/deploy/static/provider/cloud/deploy.yaml")),
        (Component::ArgoCd, read("argo-cd-v2.11.14/manifests/install.yaml")),
    ])
}

/// Fixed PKI contents: the render must not depend on fresh keys.
fn pki() -> Pki {
    let ca = |n: &str| Ca { cert_pem: format!("-----CERT {n}-----\n"), key_pem: format!("-----KEY {n}-----\n") };
    Pki {
        ca: ca("ca"),
        front_proxy_ca: ca("front-proxy-ca"),
        etcd_ca: ca("etcd-ca"),
        platform_ca: ca("platform-ca"),
        sa_key_pem: "-----KEY sa-----\n".into(),
        sa_pub_pem: "-----PUB sa-----\n".into(),
        token: "abcdef.0123456789abcdef".into(),
    }
}

/// Fixed secrets: the render must not depend on fresh ones.
fn secrets() -> Secrets {
    Secrets::for_tests("platform_upstream")
}

/// What the default recipe preloads.
fn default_recipe_images() -> Vec<Preloaded> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/ubuntu-24.04-k8s-1.29.toml");
    let recipe: toml::Value = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    recipe["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Preloaded {
            reference: i["reference"].as_str().unwrap().to_owned(),
            digest: i.get("digest").map(|d| Sha256::parse_oci(d.as_str().unwrap()).unwrap()),
        })
        .collect()
}

struct Setup {
    _work: tempfile::TempDir,
    plan: Plan,
    files: Vec<PathBuf>,
    python: Option<PathBuf>,
    up: PathBuf,
}

/// The default appliance with everything optional configured too: a Pulumi
/// ESC store and a GitHub runner scale set, with (fixed) user tokens.
fn configured() -> (Appliance, Secrets) {
    use hearth_appliance::secrets::UserToken;
    let mut a = Appliance::default();
    a.platform.pulumi.organization = Some("home".into());
    a.platform.pulumi.project = Some("lab".into());
    a.platform.pulumi.environment = Some("prod".into());
    a.platform.pulumi.token = Some("pulumi.token".into());
    a.platform.arc.github_config_url = Some("https://github.com/user/repo".into());
    a.platform.arc.credentials = Some("github.token".into());
    a.validate().unwrap();
    let s = secrets()
        .with_user_token(UserToken::Pulumi, "pul-0123456789abcdef0123456789abcdef01234567".into())
        .with_user_token(UserToken::Github, "ghp_0123456789abcdefghijklmnopqrstuvwxyz".into());
    (a, s)
}

fn setup() -> Option<Setup> {
    setup_with(&Appliance::default(), &secrets())
}

fn setup_with(a: &Appliance, secrets: &Secrets) -> Option<Setup> {
    let up = upstream()?;
    let helm = tool("HEARTH_HELM")?;
    let work = tempfile::tempdir().unwrap();
    let plan = render(a, secrets, &helm, &up, work.path());
    let mut files = Vec::new();
    for f in plan.files() {
        let p = work.path().join("plan").join(&f.path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &f.body).unwrap();
        files.push(p);
    }
    Some(Setup { python: std::env::var_os("HEARTH_K8S_PYTHON").map(PathBuf::from), _work: work, plan, files, up })
}

#[test]
fn the_default_platform_renders_in_order_with_the_appliance_patches() {
    let Some(s) = setup() else { return };
    let names: Vec<&str> = s.plan.steps.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "10-flannel",
            "11-nodes",
            "20-local-path",
            "30-metallb",
            "31-metallb-pools",
            "40-cert-manager",
            "41-ca-issuer",
            "50-ingress-nginx",
            "60-argo-cd",
            "70-harbor",
            "71-external-secrets",
            "73-arc",
            "80-git-server",
            "90-app-of-apps"
        ]
    );
    let objects: Vec<manifest::Object> = s.plan.objects().unwrap().into_iter().map(|(_, o)| o).collect();
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| manifest::kind(o) == kind && manifest::name(o) == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let net: serde_json::Value =
        serde_json::from_str(find("ConfigMap", "kube-flannel-cfg")["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(net["Network"], "10.244.0.0/16");
    assert_eq!(net["Backend"]["Type"], "vxlan", "the rest of Flannel's config stays");
    let lp = find("ConfigMap", "local-path-config");
    let conf: serde_json::Value = serde_json::from_str(lp["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(conf["nodePathMap"][0]["paths"], serde_json::json!(["/var/lib/hearth/local-path"]));
    assert!(lp["data"]["helperPod.yaml"].as_str().unwrap().contains(platform::LOCAL_PATH_HELPER_IMAGE));
    assert_eq!(
        find("StorageClass", "local-path")["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    let svc = find("Service", "ingress-nginx-controller");
    assert_eq!(svc["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"], "192.168.122.101");
    assert_eq!(
        find("IPAddressPool", "hearth-fixed")["spec"]["addresses"],
        serde_json::json!(["192.168.122.100-192.168.122.102"])
    );
    assert_eq!(find("IPAddressPool", "hearth-fixed")["spec"]["autoAssign"], false);
    assert_eq!(
        find("IPAddressPool", "hearth-auto")["spec"]["addresses"],
        serde_json::json!(["192.168.122.103-192.168.122.150"])
    );
    assert_eq!(find("ClusterIssuer", "hearth-ca")["spec"]["ca"]["secretName"], "hearth-platform-ca");
    // Argo CD: in its namespace, nothing pulled Always, its server at .102 with
    // a certificate for that address from the platform CA.
    let argo = s.plan.steps.iter().find(|st| st.name == "60-argo-cd").unwrap();
    let argo_objects = manifest::parse(&argo.files[0].body, "argo").unwrap();
    let upstream_argo = fs::read_to_string(s.up.join("argo-cd-v2.11.14/manifests/install.yaml")).unwrap();
    assert_eq!(upstream_argo.matches("imagePullPolicy: Always").count(), 8);
    assert!(!argo.files[0].body.contains("\"imagePullPolicy\": \"Always\""));
    for o in &argo_objects {
        let cluster_scoped = ["CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"];
        assert!(
            cluster_scoped.contains(&manifest::kind(o)) || manifest::namespace(o) == "argocd",
            "{}",
            manifest::describe(o)
        );
    }
    let server = find("Service", "argocd-server");
    assert_eq!(
        (server["spec"]["type"].as_str(), server["metadata"]["namespace"].as_str()),
        (Some("LoadBalancer"), Some("argocd"))
    );
    assert_eq!(server["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"], "192.168.122.102");
    let cert = find("Certificate", "argocd-server-tls");
    assert_eq!(cert["spec"]["ipAddresses"], serde_json::json!(["192.168.122.102"]));
    assert_eq!(cert["spec"]["issuerRef"]["name"], "hearth-ca");
    // Its CRDs are too large for client-side apply.
    assert!(argo.server_side, "Argo CD's CRDs exceed the last-applied annotation");
    assert!(argo.waits.iter().any(
        |w| matches!(w, platform::Wait::Rollout { object, .. } if object == "statefulset/argocd-application-controller")
    ));

    // The plan the node runs: waits for every workload, the jobs, the LB address.
    let text = s.plan.to_text();
    for line in [
        "step 10-flannel 600\n",
        "rollout kube-flannel daemonset/kube-flannel-ds\n",
        "nodes 3\n",
        "step 31-metallb-pools 300 retry\n",
        "rollout metallb-system deployment/controller\n",
        "condition - clusterissuer/hearth-ca Ready\n",
        "condition ingress-nginx job/ingress-nginx-admission-create Complete\n",
        "value ingress-nginx service/ingress-nginx-controller {.status.loadBalancer.ingress[0].ip} 192.168.122.101\n",
        "step 80-git-server 900\n",
        "condition hearth-git job/gitops-seed Complete\n",
        "value argocd application/hearth-root {.status.sync.status} Synced\n",
        "value argocd application/hearth-root {.status.health.status} Healthy\n",
    ] {
        assert!(text.contains(line), "plan lacks {line:?}:\n{text}");
    }
    // Only the CA issuer's file holds a secret; only Argo CD needs server-side apply.
    let secret: Vec<&str> = s.plan.files().filter(|f| f.secret).map(|f| f.path.as_str()).collect();
    assert_eq!(
        secret,
        [
            "41-ca-issuer/platform-ca.yaml",
            "60-argo-cd/argocd-secret.yaml",
            "70-harbor/secrets.yaml",
            "71-external-secrets/secrets.yaml",
            "80-git-server/git-admin.yaml"
        ]
    );
    // Harbor: at .100 with the platform CA's certificate, none of the chart's
    // insecure defaults, every secret the appliance's, no Trivy.
    let all: String = s.plan.files().map(|f| f.body.as_str()).collect();
    for default in ["Harbor12345", "not-a-secure-key", "changeit", "harbor_registry_password", "core.harbor.domain"] {
        assert!(!all.contains(default), "the chart's default `{default}` is in the plan");
    }
    assert!(!all.contains("trivy-adapter"), "Trivy is off");
    let harbor = find("Service", "harbor");
    assert_eq!(harbor["spec"]["type"], "LoadBalancer");
    assert_eq!(harbor["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"], "192.168.122.100");
    assert_eq!(find("Certificate", "harbor-tls")["spec"]["ipAddresses"], serde_json::json!(["192.168.122.100"]));
    let harbor_secrets = &s.plan.files().find(|f| f.path == "70-harbor/secrets.yaml").unwrap().body;
    let b64 = |v: &str| hearth_appliance::kubeconfig::base64_encode::encode(v.as_bytes());
    for secret in [Secret::HarborAdmin, Secret::HarborSecretKey, Secret::HarborDatabase, Secret::HarborXsrf] {
        assert!(harbor_secrets.contains(&b64(secrets().get(secret))), "{secret:?} is not Harbor's");
    }
    assert!(harbor_secrets.contains(&b64(&secrets().harbor_token().key_pem)), "the token key is the appliance's");
    let ext = find("ConfigMap", "harbor-core");
    assert_eq!(ext["data"]["EXT_ENDPOINT"], "https://192.168.122.100");
    // Argo CD's admin password is the appliance's, as a bcrypt hash Argo CD
    // compares logins with; its session key is the appliance's too.
    let argocd_secret = manifest::parse(&argo.files[1].body, "argocd-secret").unwrap().remove(0);
    let data =
        |k: &str| argocd_secret["data"][k].as_str().unwrap_or_else(|| panic!("argocd-secret lacks {k}")).to_owned();
    let python = s.python.clone().expect("HEARTH_K8S_PYTHON");
    let check = |password: &str| {
        run(Command::new(&python)
            .args(["-c", "import base64, bcrypt, sys; print(bcrypt.checkpw(sys.argv[1].encode(), base64.b64decode(sys.argv[2])), base64.b64decode(sys.argv[3]).decode())"])
            .args([password, &data("admin.password"), &data("server.secretkey")]))
    };
    assert_eq!(
        check(secrets().get(Secret::ArgocdAdmin)).trim(),
        format!("True {}", secrets().get(Secret::ArgocdServerKey))
    );
    assert!(check("not the password").starts_with("False"), "the bcrypt oracle can fail");
    assert!(!argo.files[0].body.contains("admin.password"), "the secret is only in its own file");
    let cm = find("ConfigMap", "argocd-cm");
    assert_eq!(cm["data"]["application.resourceTrackingMethod"], "annotation");
    assert!(
        cm["data"]["resource.customizations.health.argoproj.io_Application"]
            .as_str()
            .unwrap()
            .contains("obj.status.health")
    );
    let ssa: Vec<&str> = s.plan.steps.iter().filter(|st| st.server_side).map(|st| st.name.as_str()).collect();
    assert_eq!(ssa, ["60-argo-cd", "73-arc"], "Argo CD's and ARC's CRDs exceed the last-applied annotation");

    // The same appliance and state render the same bytes.
    let again = render(&Appliance::default(), &secrets(), &tool("HEARTH_HELM").unwrap(), &s.up, s._work.path());
    assert_eq!(again, s.plan);
    // Another appliance's secrets change the secret files, and in Harbor's
    // objects only the pods' checksums of those secrets.
    let other = render(
        &Appliance::default(),
        &Secrets::for_tests("another appliance"),
        &tool("HEARTH_HELM").unwrap(),
        &s.up,
        s._work.path(),
    );
    let no_checksums = |t: &str| t.lines().filter(|l| !l.contains("\"checksum/")).collect::<Vec<_>>().join("\n");
    for (mine, theirs) in s.plan.files().zip(other.files()) {
        assert_eq!(mine.path, theirs.path);
        // The platform CA is the PKI's, and ESO's webhook Secret is empty.
        let differ = ["60-argo-cd/argocd-secret.yaml", "70-harbor/secrets.yaml", "80-git-server/git-admin.yaml"]
            .contains(&mine.path.as_str());
        assert_eq!(mine.body != theirs.body, differ || mine.path == "70-harbor/harbor.yaml", "{}", mine.path);
        assert_eq!(no_checksums(&mine.body) != no_checksums(&theirs.body), differ, "{}", mine.path);
    }
}

#[test]
fn every_rendered_object_is_valid_for_kubernetes_1_29_and_its_crds() {
    let (a, secrets) = configured();
    let Some(s) = setup_with(&a, &secrets) else { return };
    let Some(validate) = tool("HEARTH_K8S_VALIDATE") else { return };
    let out = run(Command::new(&validate).args(["-k", "1.29.0", "--strict", "--no-warn"]).args(&s.files));
    assert!(!out.contains("ERROR"), "{out}");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/validate-crs.py");
    let python = s.python.clone().expect("HEARTH_K8S_PYTHON");
    let out = run(Command::new(&python).arg(&script).args(&s.files));
    assert!(out.contains("custom resources: 9 checked, 0 problems"), "{out}");
    // The Pulumi store needs Pulumi Cloud: its Application waits behind the
    // platform's waves instead of holding them back.
    let repo = s.plan.gitops.as_ref().unwrap();
    let app = String::from_utf8_lossy(&repo.files["manifests/00-bootstrap/apps/72-pulumi-esc.yaml"]).into_owned();
    assert!(app.contains("\"argocd.argoproj.io/sync-wave\": \"99\""), "{app}");
    // The runners get Harbor's robot account: its login in their namespace,
    // in their environment, made in Harbor by a Job after the runner set.
    let names: Vec<&str> = s.plan.steps.iter().map(|st| st.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n}: {names:?}"));
    assert!(at("74-arc-runners") < at("75-harbor-robot") && at("75-harbor-robot") < at("90-app-of-apps"));
    let runners = &s.plan.files().find(|f| f.path == "74-arc-runners/arc-runner-set.yaml").unwrap().body;
    assert!(runners.contains("\"HARBOR_PASSWORD\"") && runners.contains("\"name\": \"harbor-robot\""), "{runners}");
    let robot = s.plan.files().find(|f| f.path == "75-harbor-robot/secrets.yaml").unwrap();
    assert!(robot.secret);
    let b64 = |v: &str| hearth_appliance::kubeconfig::base64_encode::encode(v.as_bytes());
    assert!(robot.body.contains(&b64(&secrets.harbor_robot_password())));
    // Nothing secret in the repository: not the user's tokens, not one of the appliance's.
    let mut forbidden: Vec<String> = secrets.values().map(|(_, v)| v.to_owned()).collect();
    forbidden.push(secrets.harbor_robot_password());
    forbidden.extend(
        [hearth_appliance::secrets::UserToken::Pulumi, hearth_appliance::secrets::UserToken::Github]
            .map(|t| secrets.user_token(t).unwrap().to_owned()),
    );
    for (path, body) in &repo.files {
        let text = String::from_utf8_lossy(body);
        for f in &forbidden {
            assert!(!text.contains(f.as_str()) && !text.contains(&b64(f)), "{path} holds a secret");
        }
    }
    for kind in [
        "Certificate harbor-tls",
        "ClusterSecretStore pulumi-esc",
        "AutoscalingRunnerSet hearth",
        "IPAddressPool hearth-auto",
        "IPAddressPool hearth-fixed",
        "L2Advertisement hearth",
        "ClusterIssuer hearth-ca",
        "Certificate argocd-server-tls",
        "Application hearth-root",
    ] {
        assert!(out.contains(&format!("{kind} against its CRD")), "{kind}:\n{out}");
    }

    // The oracles can fail: a pool with a number for its addresses, an unknown field.
    let bad = s._work.path().join("bad.yaml");
    let pools = fs::read_to_string(s.files.iter().find(|f| f.ends_with("pools.yaml")).unwrap()).unwrap();
    fs::write(&bad, pools.replace("\"autoAssign\": false", "\"autoAssign\": \"no\"")).unwrap();
    let crds = s.files.iter().find(|f| f.ends_with("metallb-native.yaml")).unwrap();
    let o = Command::new(&python).arg(&script).arg(crds).arg(&bad).output().unwrap();
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ERROR"));
    let svc = s._work.path().join("svc.yaml");
    fs::write(&svc, "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogus: 1\n").unwrap();
    let o = Command::new(&validate).args(["-k", "1.29.0", "--strict"]).arg(&svc).output().unwrap();
    assert!(!o.status.success(), "kubernetes-validate let an unknown field through");
}

#[test]
fn the_default_recipe_preloads_every_image_the_platform_runs() {
    let (a, secrets) = configured();
    let Some(s) = setup_with(&a, &secrets) else { return };
    let recipe = "images/ubuntu-24.04-k8s-1.29.toml";
    let images = default_recipe_images();
    platform::check(&s.plan, &images, recipe).unwrap();

    // Each platform image is needed: without it the check names the object and the fix.
    let platform_images: Vec<&Preloaded> = images
        .iter()
        .filter(|i| {
            !i.reference.starts_with("registry.k8s.io/kube-")
                && !["etcd", "coredns", "pause"].iter().any(|n| i.reference.contains(n))
        })
        .collect();
    assert!(platform_images.len() >= 10, "{platform_images:?}");
    for gone in platform_images {
        let fewer: Vec<Preloaded> = images.iter().filter(|i| *i != gone).cloned().collect();
        let e = platform::check(&s.plan, &fewer, recipe).unwrap_err().to_string();
        assert!(e.contains("is not preloaded by images/ubuntu-24.04-k8s-1.29.toml; add"), "{e}");
        let name = gone.reference.rsplit('/').next().unwrap();
        assert!(e.contains(name), "removing {} must be noticed:\n{e}", gone.reference);
    }

    // A digest the manifest pins must be the preloaded one.
    let mut other = images.clone();
    for i in &mut other {
        if i.reference.contains("ingress-nginx/controller") {
            i.digest = Some(Sha256::parse_oci(&format!("sha256:{}", "0".repeat(64))).unwrap());
        }
    }
    let e = platform::check(&s.plan, &other, recipe).unwrap_err().to_string();
    assert!(e.contains("Deployment ingress-nginx/ingress-nginx-controller container `controller`"), "{e}");

    // imagePullPolicy: Always is refused.
    let mut always = s.plan.clone();
    let f = always
        .steps
        .iter_mut()
        .flat_map(|st| st.files.iter_mut())
        .find(|f| f.path.ends_with("local-path.yaml"))
        .unwrap();
    f.body = f.body.replace("\"imagePullPolicy\": \"IfNotPresent\"", "\"imagePullPolicy\": \"Always\"");
    let e = platform::check(&always, &images, recipe).unwrap_err().to_string();
    assert!(e.contains("imagePullPolicy: Always"), "{e}");
}

#[test]
fn hearths_yaml_reading_agrees_with_pyyaml_on_every_upstream_manifest() {
    let Some(up) = upstream() else { return };
    let Some(python) = tool("HEARTH_K8S_PYTHON") else { return };
    for rel in [
        "flannel-v0.25.5/Documentation/kube-flannel.yml",
        "local-path-provisioner-v0.0.28/deploy/local-path-storage.yaml",
        "metallb-v0.14.8/config/manifests/metallb-native.yaml",
        "ingress-nginx-controller-v1.11.5/deploy/static/provider/cloud/deploy.yaml",
    ] {
        let text = fs::read_to_string(up.join(rel)).unwrap();
        let ours = manifest::parse(&text, rel).unwrap();
        let theirs = run(Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ])
            .arg(up.join(rel)));
        let theirs: Vec<serde_json::Value> = serde_json::from_str(&theirs).unwrap();
        assert_eq!(ours, theirs, "{rel}");
    }
}

#[test]
fn the_default_recipes_manifest_pins_are_the_upstream_files() {
    let Some(up) = upstream() else { return };
    let tsv = fs::read_to_string(up.join("FILES.tsv")).unwrap();
    // raw_url -> (component_dir, path, sha256)
    let rows: Vec<Vec<&str>> = tsv.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/ubuntu-24.04-k8s-1.29.toml");
    let recipe: toml::Value = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let manifests = recipe["manifests"].as_array().unwrap();
    let mut components: Vec<&str> = manifests.iter().map(|m| m["component"].as_str().unwrap()).collect();
    components.sort();
    assert_eq!(
        components,
        [
            "arc",
            "arc-runner-set",
            "argo-cd",
            "cert-manager",
            "external-secrets",
            "flannel",
            "harbor",
            "helm",
            "ingress-nginx",
            "local-path",
            "metallb"
        ]
    );
    let mut pinned = 0;
    for m in manifests {
        assert!(
            m["component"].as_str() == Some("helm") || Component::from_name(m["component"].as_str().unwrap()).is_some()
        );
        let url = m["urls"][0].as_str().unwrap();
        let component = m["component"].as_str().unwrap();
        let Some(sha) = m.get("sha256").and_then(|s| s.as_str()) else {
            assert!(
                ["cert-manager", "harbor", "external-secrets", "arc", "arc-runner-set"].contains(&component),
                "only release assets and packaged charts are left to hearth lock, not {component}"
            );
            continue;
        };
        if component == "helm" {
            // Helm's release tarball: pins.md's published sha256, not an upstream file here.
            assert_eq!(sha, "a5844ef2c38ef6ddf3b5a8f7d91e7e0e8ebc39a38bb3fc8013d629c1ef29c259");
            continue;
        }
        let row = rows.iter().find(|r| r[8] == url).unwrap_or_else(|| panic!("{url} is not in FILES.tsv"));
        assert_eq!(row[5], sha, "{url}");
        let bytes = fs::read(up.join(row[0]).join(row[4])).unwrap();
        assert_eq!(Sha256::of(&bytes).hex(), sha, "the upstream copy of {url}");
        pinned += 1;
    }
    assert_eq!(pinned, 5);
}

/// `lighttpd` serving `git http-backend` (CGI) on loopback: the smart HTTP
/// protocol the in-cluster Git server speaks to Argo CD.
struct GitHttp {
    child: std::process::Child,
    port: u16,
}

impl GitHttp {
    fn start(root: &Path, work: &Path) -> Option<GitHttp> {
        let lighttpd = ["/usr/sbin/lighttpd", "/usr/bin/lighttpd"].into_iter().map(PathBuf::from).find(|p| p.exists());
        let Some(lighttpd) = lighttpd else {
            let required = std::env::var_os("CI").is_some() || std::env::var_os("HEARTH_REQUIRE_TOOLS").is_some();
            assert!(!required, "lighttpd is required here (tests/setup-host.sh installs it)");
            eprintln!("SKIPPED: no lighttpd");
            return None;
        };
        let exec_path = run(Command::new("git").arg("--exec-path"));
        let backend = Path::new(exec_path.trim()).join("git-http-backend");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = work.join("lighttpd.conf");
        fs::write(
            &conf,
            format!(
                r#"server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{work}/lighttpd.err"
server.modules = ("mod_alias", "mod_cgi", "mod_setenv")
alias.url = ("/git/" => "{backend}/")
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ("" => "")
  setenv.set-environment = ("GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#,
                root = root.display(),
                work = work.display(),
                backend = backend.display()
            ),
        )
        .unwrap();
        // Dropped (killed and reaped) on every path, the panic below included.
        let server = GitHttp { child: Command::new(lighttpd).arg("-D").arg("-f").arg(&conf).spawn().unwrap(), port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "lighttpd did not listen on 127.0.0.1:{port}: {}",
            fs::read_to_string(work.join("lighttpd.err")).unwrap_or_default()
        );
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git").arg("-C").arg(dir).args(args).env("HOME", dir).env("GIT_CONFIG_NOSYSTEM", "1"))
}

#[test]
fn the_gitops_repository_is_real_git_served_over_smart_http_and_holds_no_secret() {
    let Some(s) = setup() else { return };
    let repo = s.plan.gitops.as_ref().expect("Argo CD is on: the plan has a repository");
    let work = s._work.path();
    let paths: Vec<&str> = repo.files.keys().map(String::as_str).collect();
    for want in [
        "README.md",
        "manifests/00-bootstrap/app-of-apps.yaml",
        "manifests/00-bootstrap/apps/10-flannel.yaml",
        "manifests/00-bootstrap/apps/60-argo-cd.yaml",
        "manifests/00-bootstrap/apps/80-git-server.yaml",
        "manifests/00-bootstrap/apps/99-applications.yaml",
        "manifests/infrastructure/flannel/kube-flannel.yaml",
        "manifests/infrastructure/ca-issuer/issuer.yaml",
        "manifests/platform/argo-cd/argo-cd.yaml",
        "manifests/platform/git-server/git-server.yaml",
        "manifests/applications/README.md",
    ] {
        assert!(paths.contains(&want), "the repository lacks {want}: {paths:?}");
    }
    // The root the plan applies last is the repository's.
    let root = s.plan.steps.last().unwrap();
    assert_eq!(root.files[0].body.as_bytes(), &repo.files["manifests/00-bootstrap/app-of-apps.yaml"][..]);
    // Argo CD adopts the very files the plan applied.
    let applied = s.plan.files().find(|f| f.path == "10-flannel/kube-flannel.yaml").unwrap();
    assert_eq!(applied.body.as_bytes(), &repo.files["manifests/infrastructure/flannel/kube-flannel.yaml"][..]);

    // No secret: not the generated ones, not the platform CA's key, not in base64.
    let b64 = |v: &str| hearth_appliance::kubeconfig::base64_encode::encode(v.as_bytes());
    let mut forbidden: Vec<String> = secrets().values().flat_map(|(_, v)| [v.to_owned(), b64(v)]).collect();
    forbidden.push(b64(&pki().platform_ca.key_pem));
    forbidden.push(b64(&secrets().bcrypt(Secret::ArgocdAdmin)));
    forbidden.push(b64(&secrets().harbor_token().key_pem));
    forbidden.push(b64(&secrets().htpasswd("harbor_registry_user", Secret::HarborRegistry)));
    for (path, body) in &repo.files {
        let text = String::from_utf8_lossy(body);
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "{path} holds a secret");
        }
    }
    let bundle_text = String::from_utf8_lossy(&repo.bundle);
    assert!(!forbidden.iter().any(|f| bundle_text.contains(f.as_str())));

    // The bundle: verified and cloned by git, fsck clean, the same commit.
    let bundle = work.join("platform.bundle");
    fs::write(&bundle, &repo.bundle).unwrap();
    let from_bundle = work.join("from-bundle");
    run(Command::new("git").arg("clone").arg("--quiet").arg(&bundle).arg(&from_bundle));
    git(&from_bundle, &["bundle", "verify", bundle.to_str().unwrap()]);
    assert_eq!(git(&from_bundle, &["rev-parse", "HEAD"]).trim(), repo.head);
    git(&from_bundle, &["fsck", "--strict", "--full", "--no-dangling"]);

    // The checkout `hearth gitops export` writes: the same commit, a clean
    // status, and fsck clean.
    let commit = platform::gitops::commit(&Appliance::default(), &repo.files);
    assert_eq!(commit.head.hex(), repo.head);
    let export = work.join("export");
    commit.write_checkout(&export).unwrap();
    git(&export, &["fsck", "--strict", "--full", "--no-dangling"]);
    assert_eq!(git(&export, &["rev-parse", "HEAD"]).trim(), repo.head);
    assert_eq!(git(&export, &["status", "--porcelain"]), "", "the export is a clean checkout");
    assert_eq!(git(&export, &["ls-files"]).lines().count(), repo.files.len());

    // Served by git http-backend, cloned over smart HTTP (protocol v2 shows
    // its `ls-refs` command in the packet trace).
    let srv = work.join("srv");
    fs::create_dir(&srv).unwrap();
    commit.write_bare(&srv.join("platform.git")).unwrap();
    git(&srv.join("platform.git"), &["fsck", "--strict", "--full", "--no-dangling"]);
    let Some(server) = GitHttp::start(&srv, work) else { return };
    let url = format!("http://127.0.0.1:{}/git/platform.git", server.port);
    let cloned = work.join("cloned");
    let out = Command::new("git")
        .args(["-c", "protocol.version=2", "clone", &url])
        .arg(&cloned)
        .env("GIT_TRACE_PACKET", "1")
        .env("HOME", work)
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clone over HTTP:\n{trace}");
    assert!(trace.contains("command=ls-refs") && trace.contains("command=fetch"), "not smart HTTP v2:\n{trace}");
    assert_eq!(git(&cloned, &["rev-parse", "HEAD"]).trim(), repo.head);
    for (path, body) in &repo.files {
        assert_eq!(&fs::read(cloned.join(path)).unwrap(), body, "{path} over HTTP");
    }

    // Its Applications are valid against Argo CD's CRD (rendered with it).
    let python = s.python.clone().expect("HEARTH_K8S_PYTHON");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/validate-crs.py");
    let apps: Vec<PathBuf> =
        repo.files.keys().filter(|p| p.starts_with("manifests/00-bootstrap/")).map(|p| cloned.join(p)).collect();
    let argo = cloned.join("manifests/platform/argo-cd/argo-cd.yaml");
    let out =
        run(Command::new(&python).arg(&script).args(["--known", "cert-manager.io/Certificate"]).arg(&argo).args(&apps));
    let n = apps.len();
    assert!(out.contains(&format!("custom resources: {n} checked, 0 problems")), "{out}");
    assert!(out.contains("Application hearth-root against its CRD"), "{out}");
    let validate = tool("HEARTH_K8S_VALIDATE").unwrap();
    let out = run(Command::new(&validate)
        .args(["-k", "1.29.0", "--strict", "--no-warn"])
        .arg(cloned.join("manifests/platform/git-server/git-server.yaml")));
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn gitops_export_writes_the_seeded_commit_and_access_names_where_each_password_is() {
    use hearth_appliance::lifecycle::{self, Host, Quiet};
    use hearth_appliance::state::{Launched, PlatformRecord, State};
    let Some(up) = upstream() else { return };
    let Some(helm) = tool("HEARTH_HELM") else { return };
    let work = tempfile::tempdir().unwrap();
    // A launched appliance as its record says: the manifests in files.
    let a = Appliance::default();
    let mut record = PlatformRecord { recipe: "test".into(), ..Default::default() };
    let all = inputs(&helm, &up, work.path());
    for (c, text) in &all.sources {
        let path = work.path().join(format!("{}.yaml", c.name()));
        fs::write(&path, text).unwrap();
        record.manifests.insert(c.name().to_owned(), path);
    }
    for (c, (chart, _)) in &all.charts {
        record.manifests.insert(c.name().to_owned(), chart.clone());
    }
    // As the recipe gives them: Helm as its release tarball, ARC's charts in a
    // source archive with the chart's directory inside (unpacked at launch).
    let pack = work.path().join("pack");
    fs::create_dir_all(pack.join("linux-amd64")).unwrap();
    fs::copy(&helm, pack.join("linux-amd64/helm")).unwrap();
    let tarball = work.path().join("helm-linux-amd64.tar.gz");
    run(Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&pack).arg("linux-amd64"));
    record.manifests.insert("helm".into(), tarball);
    let arc_archive = work.path().join("arc-source.tar.gz");
    let top = "actions-runner-controller-gha-runner-scale-set-0.9.3";
    fs::create_dir_all(pack.join(top)).unwrap();
    run(Command::new("cp").arg("-r").arg(up.join(format!("{top}/charts"))).arg(pack.join(top)));
    run(Command::new("tar").arg("-czf").arg(&arc_archive).arg("-C").arg(&pack).arg(top));
    record.manifests.insert("arc".into(), arc_archive);
    record.chart_dirs.insert("arc".into(), format!("{top}/charts/gha-runner-scale-set-controller"));
    let root = work.path().join("state");
    let state = State::new(&root, &a.name);
    state.save_launched(&Launched::new(&a, work.path(), 1, "qemu", &[], Some(&record))).unwrap();
    let h = Host { state_root: root.clone(), home: None, events: &Quiet };

    let dir = work.path().join("export");
    let head = lifecycle::gitops_export(&h, &a, &dir).unwrap();
    // The commit launch seeds: rendered from the same state and inputs.
    let loaded = PlatformInputs::load(&record).unwrap();
    let plan =
        loaded.render(&a, &state.pki().unwrap(), &state.secrets().unwrap(), &work.path().join("scratch")).unwrap();
    assert_eq!(head, plan.gitops.as_ref().unwrap().head);
    // The same plan as from the unpacked charts and the Helm binary.
    assert_eq!(
        plan,
        all.render(&a, &state.pki().unwrap(), &state.secrets().unwrap(), &work.path().join("scratch")).unwrap()
    );
    assert!(!work.path().join("scratch").exists(), "the scratch directory is removed");
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]).trim(), head);
    git(&dir, &["fsck", "--strict", "--full", "--no-dangling"]);
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");
    let e = lifecycle::gitops_export(&h, &a, &dir).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");

    // access: URLs, users and the files of the passwords, not the passwords.
    let doors = lifecycle::access(&h, &a).unwrap();
    let argo = doors.iter().find(|d| d.what == "Argo CD").unwrap();
    assert_eq!(argo.url, "https://192.168.122.102");
    assert_eq!(argo.user, Some("admin"));
    let (secret, path) = argo.secret.clone().unwrap();
    assert_eq!(secret, Secret::ArgocdAdmin);
    assert_eq!(fs::read_to_string(&path).unwrap().trim(), lifecycle::secret(&h, &a, "argocd-admin-password").unwrap());
    let harbor = doors.iter().find(|d| d.what == "Harbor").unwrap();
    assert!(harbor.url.starts_with("https://192.168.122.100"), "{}", harbor.url);
    assert_eq!(harbor.secret.as_ref().unwrap().0, Secret::HarborAdmin);
    let git_door = doors.iter().find(|d| d.what == "GitOps repository").unwrap();
    assert_eq!(git_door.url, "http://git.hearth-git.svc.cluster.local:3000/hearth/platform.git");
    let e = lifecycle::secret(&h, &a, "nope").unwrap_err();
    assert!(e.hint().unwrap().contains("argocd-admin-password"), "{:?}", e.hint());
}

#[test]
fn the_node_executor_bootstraps_the_whole_platform_in_order_and_the_root_application_last() {
    // The real default plan, run by the node's executor against the recording
    // kubectl STAND-IN (no cluster here: every wait succeeds at once).
    let Some(s) = setup() else { return };
    let rig = executor_rig::Rig::new(&s.plan);
    let (ok, console, calls) = rig.run(&[]);
    assert!(ok, "{console}");
    let applied: Vec<String> = calls
        .iter()
        .filter(|c| c.starts_with("apply "))
        .map(|c| {
            let file = c.split(" -f ").nth(1).unwrap().split(' ').next().unwrap();
            file.strip_prefix(&format!("{}/", rig.path("plan").display())).unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        applied,
        [
            "10-flannel/kube-flannel.yaml",
            "20-local-path/local-path.yaml",
            "30-metallb/metallb-native.yaml",
            "31-metallb-pools/pools.yaml",
            "40-cert-manager/cert-manager.yaml",
            "41-ca-issuer/platform-ca.yaml",
            "41-ca-issuer/issuer.yaml",
            "50-ingress-nginx/ingress-nginx.yaml",
            "60-argo-cd/argo-cd.yaml",
            "60-argo-cd/argocd-secret.yaml",
            "70-harbor/harbor.yaml",
            "70-harbor/secrets.yaml",
            "71-external-secrets/external-secrets.yaml",
            "71-external-secrets/secrets.yaml",
            "73-arc/arc.yaml",
            "80-git-server/git-admin.yaml",
            "80-git-server/git-server.yaml",
            "90-app-of-apps/app-of-apps.yaml",
        ]
    );
    // Every applied file is the host's, byte for byte; the large ones server-side.
    for c in calls.iter().filter(|c| c.starts_with("apply ")) {
        let path = c.split(" -f ").nth(1).unwrap().split(' ').next().unwrap();
        let rel = path.strip_prefix(&format!("{}/", rig.path("plan").display())).unwrap();
        let body = &s.plan.files().find(|f| f.path == rel).unwrap().body;
        assert!(c.ends_with(&format!("sha256={}", executor_rig::sha(body))), "{c}");
        let ssa = rel.starts_with("60-argo-cd/") || rel.starts_with("73-arc/");
        assert_eq!(c.contains("--server-side"), ssa, "{c}");
    }
    // The root, last, points at the in-cluster repository and waits for Argo CD's verdict.
    let root = manifest::parse(&s.plan.steps.last().unwrap().files[0].body, "root").unwrap().remove(0);
    assert_eq!(root["spec"]["source"]["repoURL"], "http://git.hearth-git.svc.cluster.local:3000/hearth/platform.git");
    assert_eq!(root["spec"]["source"]["path"], "manifests/00-bootstrap");
    let last_two: Vec<&String> = calls.iter().rev().take(2).collect();
    assert!(last_two.iter().any(|c| c.contains("application/hearth-root") && c.contains("=Healthy")), "{calls:#?}");
    assert!(console.contains("hearth-firstboot: platform ready"), "{console}");
}
