//! The GitOps repository of an appliance and the Git server that holds it.
//!
//! After first boot has applied the plan, Argo CD keeps the same objects from
//! a Git repository laid out as the seed describes:
//!
//! ```text
//! README.md
//! manifests/00-bootstrap/app-of-apps.yaml   the root Application (first boot applies it last)
//! manifests/00-bootstrap/apps/NN-name.yaml  one Application a plan step, sync wave NN
//! manifests/infrastructure/NAME/*.yaml      steps 10-59: the files the plan applied
//! manifests/platform/NAME/*.yaml            steps 60-89: Argo CD itself, the Git server
//! manifests/applications/README.md         the user's own Applications go here
//! ```
//!
//! The root Application follows `manifests/00-bootstrap` (itself included), so
//! a new file in `apps/` is a new Application. Files holding secrets (the
//! platform CA's key, Argo CD's password hash, credentials) are never in the
//! repository: the plan applies them once and no Application owns them.
//!
//! By default the repository lives on a Git server inside the cluster: Gitea
//! (rootless image, SQLite, data on the default StorageClass). It speaks Git's
//! smart HTTP to Argo CD, takes a first push that creates the repository, is a
//! single preloaded image with `git` inside (which the seeding Job uses), and
//! gives the user a web view and pull requests on the same server (a
//! ClusterIP Service: from the host, `kubectl -n hearth-git port-forward
//! svc/git 3000`). First boot
//! seeds it from a bundle on the control plane's seed; the Job pushes only
//! when the repository is absent, so later pushes by the user are kept.
//! With `[gitops] repo` Argo CD follows the user's repository instead, filled
//! with `hearth gitops export`.

use std::collections::BTreeMap;

use serde_json::json;

use super::manifest::{self, Object};
use super::{ARGOCD_NAMESPACE, Plan, PlanFile, Step, Wait, b64};
use crate::secrets::{Secret, Secrets};
use crate::spec::Appliance;

/// The namespace of the in-cluster Git server.
pub const GIT_NAMESPACE: &str = "hearth-git";

/// The Git server's image (Gitea, rootless).
pub const GIT_SERVER_IMAGE: &str = "docker.io/gitea/gitea:1.22.6-rootless";

/// The Git server's user that owns the repository.
pub const GIT_USER: &str = "hearth";

/// The root Application (app-of-apps).
pub const ROOT_APP: &str = "hearth-root";

/// The repository's path in the plan directory on the control plane.
pub const BUNDLE: &str = "gitops/platform.bundle";

/// Where the plan directory is on the control plane (first boot copies the
/// seed's `platform/` there).
pub const PLAN_DIR_ON_NODE: &str = "/etc/hearth/platform";

/// The in-cluster repository's URL, as Argo CD reaches it.
pub fn in_cluster_url(a: &Appliance) -> String {
    format!("http://git.{GIT_NAMESPACE}.svc.{}:3000/{GIT_USER}/platform.git", a.cluster.dns_domain)
}

/// The repository Argo CD follows.
pub fn repo_url(a: &Appliance) -> String {
    a.gitops.repo.clone().unwrap_or_else(|| in_cluster_url(a))
}

/// The plan's repository: its files and the commit hearth made of them.
#[derive(Clone, PartialEq, Eq)]
pub struct Repo {
    /// Path to contents.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The commit id.
    pub head: String,
    /// A Git bundle of the commit.
    pub bundle: Vec<u8>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("files", &self.files.keys()).field("head", &self.head).finish()
    }
}

/// The commit of `files` for appliance `a` (what launch seeds and export writes).
pub fn commit(a: &Appliance, files: &BTreeMap<String, Vec<u8>>) -> super::git::Repository {
    super::git::Repository::commit(files, &format!("hearth: the platform of appliance {}\n", a.name))
}

/// `NN` and `name` of a step `NN-name`.
fn split_step(step: &str) -> (u32, &str) {
    let (n, name) = step.split_once('-').unwrap_or(("0", step));
    (n.parse().unwrap_or(0), name)
}

/// Where a step's files go in the repository.
fn step_dir(step: &str) -> String {
    let (n, name) = split_step(step);
    let group = if n < 60 { "infrastructure" } else { "platform" };
    format!("manifests/{group}/{name}")
}

/// Differences Argo CD must not undo: CA bundles that webhooks' controllers
/// (cert-manager's cainjector, MetalLB's, ingress-nginx's patch Job) write
/// into the objects after they are applied.
fn injected_ca_bundles() -> serde_json::Value {
    json!([
        {
            "group": "admissionregistration.k8s.io",
            "kind": "ValidatingWebhookConfiguration",
            "jqPathExpressions": [".webhooks[]?.clientConfig.caBundle"],
        },
        {
            "group": "admissionregistration.k8s.io",
            "kind": "MutatingWebhookConfiguration",
            "jqPathExpressions": [".webhooks[]?.clientConfig.caBundle"],
        },
        {
            "group": "apiextensions.k8s.io",
            "kind": "CustomResourceDefinition",
            "jqPathExpressions": [".spec.conversion.webhook?.clientConfig.caBundle"],
        },
    ])
}

/// The Application that keeps `step`'s files, in sync wave NN; server-side
/// apply where the step needed it; retried where the step was (a webhook
/// that serves late); self-healing, never pruning the platform.
fn application(a: &Appliance, step: &Step) -> Object {
    let (wave, name) = split_step(&step.name);
    // A store that needs Pulumi Cloud is Degraded while it is out of reach
    // (Argo CD checks ClusterSecretStore health): it must not hold back the
    // platform's waves, so it comes after them.
    let needs_network = step.files.iter().any(|f| !f.secret && f.body.contains("\"kind\": \"ClusterSecretStore\""));
    let wave = if needs_network { 99 } else { wave };
    let mut options = vec!["RespectIgnoreDifferences=true"];
    if step.server_side {
        options.push("ServerSideApply=true");
    }
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": ARGOCD_NAMESPACE,
            "annotations": {"argocd.argoproj.io/sync-wave": wave.to_string()},
        },
        "spec": {
            "project": "default",
            "source": {
                "repoURL": repo_url(a),
                "targetRevision": a.gitops.revision(),
                "path": step_dir(&step.name),
            },
            "destination": {"server": "https://kubernetes.default.svc"},
            "syncPolicy": {
                "automated": {"prune": false, "selfHeal": true},
                "syncOptions": options,
                "retry": {"limit": 20, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}},
            },
            "ignoreDifferences": injected_ca_bundles(),
        },
    })
}

/// The Application for the user's own: `manifests/applications`, last.
fn user_applications(a: &Appliance) -> Object {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": "applications",
            "namespace": ARGOCD_NAMESPACE,
            "annotations": {"argocd.argoproj.io/sync-wave": "100"},
        },
        "spec": {
            "project": "default",
            "source": {
                "repoURL": repo_url(a),
                "targetRevision": a.gitops.revision(),
                "path": "manifests/applications",
                "directory": {"recurse": true},
            },
            "destination": {"server": "https://kubernetes.default.svc"},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
        },
    })
}

/// The root Application: every file under `manifests/00-bootstrap`, itself
/// included; it prunes an Application whose file is removed (the platform's
/// objects stay: no Application has a deletion finalizer).
pub fn root_application(a: &Appliance) -> Object {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": ROOT_APP, "namespace": ARGOCD_NAMESPACE},
        "spec": {
            "project": "default",
            "source": {
                "repoURL": repo_url(a),
                "targetRevision": a.gitops.revision(),
                "path": "manifests/00-bootstrap",
                "directory": {"recurse": true},
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": ARGOCD_NAMESPACE},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
        },
    })
}

/// Argo CD's credentials for the user's repository (a labelled Secret), when
/// the appliance names a token file.
pub fn repo_credentials(a: &Appliance, secrets: &Secrets) -> Option<Object> {
    let (repo, token) = (a.gitops.repo.as_ref()?, secrets.user_token(crate::secrets::UserToken::Gitops)?);
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "hearth-gitops-repo",
            "namespace": ARGOCD_NAMESPACE,
            "labels": {"argocd.argoproj.io/secret-type": "repository"},
        },
        "type": "Opaque",
        "data": {"type": b64("git"), "url": b64(repo), "username": b64(a.gitops.username()), "password": b64(token)},
    }))
}

/// The shell of the Job that seeds the Git server: push the bundle's branch
/// unless the repository already has one (the user's pushes are kept).
const SEED_SCRIPT: &str = r#"set -eu
url="http://git.hearth-git.svc:3000/hearth/platform.git"
export HOME=/tmp GIT_TERMINAL_PROMPT=0
if git ls-remote --exit-code "$url" refs/heads/main >/dev/null 2>&1; then
  echo "the repository is there already: kept"
  exit 0
fi
rm -rf /tmp/platform.git
git clone --quiet --bare /seed/platform.bundle /tmp/platform.git
git -C /tmp/platform.git \
  -c credential.helper='!f() { test "$1" = get && printf "username=hearth\npassword=%s\n" "$GIT_PASSWORD"; }; f' \
  push "$url" refs/heads/main:refs/heads/main
echo "seeded $url"
"#;

/// Makes (or resets) the `hearth` user before Gitea starts.
const SETUP_SCRIPT: &str = r#"set -eu
gitea migrate
if gitea admin user list | awk '{print $2}' | grep -qx hearth; then
  gitea admin user change-password --username hearth --password "$GIT_PASSWORD" --must-change-password=false
else
  gitea admin user create --admin --username hearth --password "$GIT_PASSWORD" \
    --email hearth@hearth.invalid --must-change-password=false
fi
"#;

/// The in-cluster Git server: Gitea on a volume of the default StorageClass,
/// and the Job that seeds it from the bundle in the plan directory on the
/// control plane. Returns the objects and, apart, the Secret of its password.
pub fn git_server(a: &Appliance, secrets: &Secrets) -> (Vec<Object>, Object) {
    let ns = GIT_NAMESPACE;
    let password_env = json!({
        "name": "GIT_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "git-admin", "key": "password"}},
    });
    // Gitea encrypts what it stores (2FA secrets, tokens) with SECRET_KEY;
    // left empty it falls back to a key every Gitea shares.
    let secret_key_env = json!({
        "name": "GITEA__security__SECRET_KEY",
        "valueFrom": {"secretKeyRef": {"name": "git-admin", "key": "secret-key"}},
    });
    let mut env = vec![password_env.clone(), secret_key_env];
    for (k, v) in [
        ("GITEA__database__DB_TYPE", "sqlite3".to_owned()),
        ("GITEA__security__INSTALL_LOCK", "true".into()),
        ("GITEA__server__HTTP_PORT", "3000".into()),
        ("GITEA__server__ROOT_URL", format!("http://git.{ns}.svc.{}:3000/", a.cluster.dns_domain)),
        ("GITEA__server__DISABLE_SSH", "true".into()),
        ("GITEA__server__OFFLINE_MODE", "true".into()),
        ("GITEA__service__DISABLE_REGISTRATION", "true".into()),
        ("GITEA__repository__DEFAULT_BRANCH", "main".into()),
        ("GITEA__repository__ENABLE_PUSH_CREATE_USER", "true".into()),
        ("GITEA__repository__DEFAULT_PUSH_CREATE_PRIVATE", "false".into()),
        // `cron.update_checker` (a dot in a section name is written _0x2E_).
        ("GITEA__cron_0x2E_update_checker__ENABLED", "false".into()),
    ] {
        env.push(json!({"name": k, "value": v}));
    }
    let mounts = json!([
        {"name": "data", "mountPath": "/var/lib/gitea", "subPath": "data"},
        {"name": "data", "mountPath": "/etc/gitea", "subPath": "config"},
    ]);
    let labels = json!({"app.kubernetes.io/name": "gitea", "app.kubernetes.io/part-of": "hearth"});
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "gitea-data", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gitea", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app.kubernetes.io/name": "gitea"}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true},
                        "initContainers": [{
                            "name": "setup",
                            "image": GIT_SERVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["sh", "-c", SETUP_SCRIPT],
                            "env": env,
                            "volumeMounts": mounts,
                        }],
                        "containers": [{
                            "name": "gitea",
                            "image": GIT_SERVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "env": env,
                            "ports": [{"name": "http", "containerPort": 3000}],
                            "readinessProbe": {"httpGet": {"path": "/api/healthz", "port": "http"}, "periodSeconds": 5},
                            "volumeMounts": mounts,
                        }],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "gitea-data"}}],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "git", "namespace": ns},
            "spec": {
                "selector": {"app.kubernetes.io/name": "gitea"},
                "ports": [{"name": "http", "port": 3000, "targetPort": "http"}],
            },
        }),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "gitops-seed", "namespace": ns},
            "spec": {
                "backoffLimit": 30,
                "template": {
                    "spec": {
                        "restartPolicy": "OnFailure",
                        // The bundle is in the plan directory (root's, 0700) on the control plane.
                        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
                        "securityContext": {"runAsUser": 0},
                        "containers": [{
                            "name": "seed",
                            "image": GIT_SERVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", SEED_SCRIPT],
                            "env": [password_env],
                            "volumeMounts": [{"name": "seed", "mountPath": "/seed", "readOnly": true}],
                        }],
                        "volumes": [{
                            "name": "seed",
                            "hostPath": {"path": format!("{PLAN_DIR_ON_NODE}/gitops"), "type": "Directory"},
                        }],
                    },
                },
            },
        }),
    ];
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "git-admin", "namespace": ns},
        "type": "Opaque",
        "data": {
            "username": b64(GIT_USER),
            "password": b64(secrets.get(Secret::GitAdmin)),
            "secret-key": b64(secrets.get(Secret::GitSecretKey)),
        },
    });
    (objects, secret)
}

/// The step that runs the Git server and seeds it.
pub fn git_server_step(a: &Appliance, secrets: &Secrets) -> Step {
    let (objects, secret) = git_server(a, secrets);
    let mut s = super::step(
        "80-git-server",
        Some(("git-server", &objects)),
        vec![
            Wait::Rollout { namespace: GIT_NAMESPACE.into(), object: "deployment/gitea".into() },
            Wait::Condition {
                namespace: GIT_NAMESPACE.into(),
                object: "job/gitops-seed".into(),
                condition: "Complete".into(),
            },
        ],
        900,
    );
    s.files.insert(0, super::secret_file("80-git-server", "git-admin", &[secret]));
    s
}

/// The repository of `plan` (every step so far): the files of its steps but
/// the secret ones, an Application for each, the root Application and the
/// READMEs.
pub fn repository(a: &Appliance, plan: &Plan) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut table = String::new();
    for step in &plan.steps {
        let public: Vec<&PlanFile> = step.files.iter().filter(|f| !f.secret).collect();
        if public.is_empty() {
            continue;
        }
        let dir = step_dir(&step.name);
        for f in &public {
            let name = f.path.rsplit('/').next().expect("a path has a last part");
            files.insert(format!("{dir}/{name}"), f.body.clone().into_bytes());
        }
        let app = application(a, step);
        table.push_str(&format!("| {} | `{}` | `{dir}` |\n", split_step(&step.name).0, manifest::name(&app)));
        files.insert(format!("manifests/00-bootstrap/apps/{}.yaml", step.name), manifest::emit(&[app]).into_bytes());
    }
    files.insert(
        "manifests/00-bootstrap/apps/99-applications.yaml".into(),
        manifest::emit(&[user_applications(a)]).into_bytes(),
    );
    files.insert("manifests/00-bootstrap/app-of-apps.yaml".into(), manifest::emit(&[root_application(a)]).into_bytes());
    files.insert(
        "manifests/applications/README.md".into(),
        format!(
            "# Your applications\n\nPut Argo CD `Application` objects (or plain manifests) here. The `applications`\nApplication syncs this directory after the platform, pruning what you remove.\nImages pushed to Harbor at `{}` pull on every node without further setup.\n",
            a.harbor_ip()
        )
        .into_bytes(),
    );
    files.insert(
        "README.md".into(),
        format!(
            "# Platform of appliance `{name}`\n\nGenerated by `hearth launch` (and `hearth gitops export`) from the pinned upstream\nmanifests and `appliance.toml`. First boot applied the same files in this order;\nArgo CD keeps them from here (`manifests/00-bootstrap/app-of-apps.yaml` is the root).\nFiles holding secrets are not in this repository.\n\n| wave | Application | path |\n|---|---|---|\n{table}| 100 | `applications` | `manifests/applications` |\n",
            name = a.name
        )
        .into_bytes(),
    );
    files
}
