//! The platform section of `status` against a FAKE API server: a loopback
//! HTTP server (tests/support) answering the paths the `kube` client asks
//! with Kubernetes JSON shaped as a real apiserver returns it (lists with
//! kind, apiVersion and resourceVersion; objects with their status). No
//! cluster runs here; the client, the paths and the decoding are the real ones.

use hearth_appliance::ready::{self, Components};
use hearth_appliance::spec::Appliance;
use hearth_testsupport::{Behavior, Server};
use serde_json::{Value, json};

const TS: &str = "2026-12-03T10:00:00Z";

fn meta(ns: &str, name: &str) -> Value {
    json!({"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "resourceVersion": "4711",
           "generation": 1, "creationTimestamp": TS})
}

fn template(app: &str) -> Value {
    json!({"selector": {"matchLabels": {"app": app}},
           "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": app, "image": "x"}]}}})
}

fn deployment(ns: &str, name: &str, available: bool) -> Value {
    let cond = if available {
        json!({"type": "Available", "status": "True", "lastUpdateTime": TS, "lastTransitionTime": TS,
               "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."})
    } else {
        json!({"type": "Available", "status": "False", "lastUpdateTime": TS, "lastTransitionTime": TS,
               "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."})
    };
    json!({"metadata": meta(ns, name), "spec": template(name),
           "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                      "readyReplicas": if available { 1 } else { 0 },
                      "conditions": [cond, {"type": "Progressing", "status": "True", "lastUpdateTime": TS,
                                            "lastTransitionTime": TS, "reason": "NewReplicaSetAvailable"}]}})
}

fn daemonset(ns: &str, name: &str, ready: i32) -> Value {
    json!({"metadata": meta(ns, name), "spec": template(name),
           "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0,
                      "numberReady": ready, "observedGeneration": 1}})
}

fn list(kind: &str, api: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "4711"}, "items": items}),
    )
    .unwrap()
}

fn serve_json(srv: &Server, path: &str, body: Vec<u8>) {
    srv.serve_with(
        path,
        body,
        Behavior::Normal,
        hearth_testsupport::RouteOpts { content_type: Some("application/json".into()), ..Default::default() },
    );
}

struct Cluster {
    srv: Server,
}

impl Cluster {
    fn deployments(&self, ns: &str, items: Vec<Value>) {
        serve_json(
            &self.srv,
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            list("DeploymentList", "apps/v1", items),
        );
    }
    fn daemonsets(&self, ns: &str, items: Vec<Value>) {
        serve_json(
            &self.srv,
            &format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
            list("DaemonSetList", "apps/v1", items),
        );
    }
    fn harbor_health(&self, components: &[(&str, &str)]) {
        let all = components.iter().all(|(_, s)| *s == "healthy");
        let body = json!({
            "status": if all { "healthy" } else { "unhealthy" },
            "components": components.iter().map(|(n, s)| json!({"name": n, "status": s})).collect::<Vec<_>>(),
        });
        serve_json(
            &self.srv,
            "/api/v1/namespaces/harbor/services/harbor-core:http-web/proxy/api/v2.0/health",
            serde_json::to_vec(&body).unwrap(),
        );
    }
    fn applications(&self, items: Vec<Value>) {
        serve_json(
            &self.srv,
            "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications",
            list("ApplicationList", "argoproj.io/v1alpha1", items),
        );
    }
    fn issuer(&self, ready: bool) {
        let body = json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "hearth-ca", "uid": "u", "resourceVersion": "9", "generation": 1, "creationTimestamp": TS},
        "spec": {"ca": {"secretName": "hearth-platform-ca"}},
        "status": {"conditions": [if ready {
            json!({"type": "Ready", "status": "True", "lastTransitionTime": TS, "reason": "KeyPairVerified",
                   "message": "Signing CA verified", "observedGeneration": 1})
        } else {
            json!({"type": "Ready", "status": "False", "lastTransitionTime": TS, "reason": "ErrGetKeyPair",
                   "message": "Error getting keypair for CA issuer: secrets \"hearth-platform-ca\" not found",
                   "observedGeneration": 1})
        }]}});
        serve_json(&self.srv, "/apis/cert-manager.io/v1/clusterissuers/hearth-ca", serde_json::to_vec(&body).unwrap());
    }
    fn ingress_service(&self, ip: Option<&str>) {
        let lb = ip.map_or(json!({}), |ip| json!({"ingress": [{"ip": ip, "ipMode": "VIP"}]}));
        let body = json!({"kind": "Service", "apiVersion": "v1", "metadata": meta("ingress-nginx", "ingress-nginx-controller"),
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
                     "selector": {"app.kubernetes.io/component": "controller"}, "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": lb}});
        serve_json(
            &self.srv,
            "/api/v1/namespaces/ingress-nginx/services/ingress-nginx-controller",
            serde_json::to_vec(&body).unwrap(),
        );
    }

    fn look(&self) -> Components {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let config = kube::Config::new(self.srv.base().parse().unwrap());
            let client = kube::Client::try_from(config).unwrap();
            ready::components(&client, &Appliance::default()).await
        })
    }
}

#[test]
fn the_platform_section_names_the_first_thing_missing_with_its_reason() {
    let c = Cluster { srv: Server::start() };
    c.daemonsets("kube-flannel", vec![daemonset("kube-flannel", "kube-flannel-ds", 3)]);
    c.deployments("kube-flannel", vec![]);
    c.deployments("local-path-storage", vec![deployment("local-path-storage", "local-path-provisioner", true)]);
    c.daemonsets("local-path-storage", vec![]);
    serve_json(
        &c.srv,
        "/apis/storage.k8s.io/v1/storageclasses",
        list(
            "StorageClassList",
            "storage.k8s.io/v1",
            vec![
                json!({"metadata": {"name": "local-path", "uid": "s", "resourceVersion": "3", "creationTimestamp": TS,
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                        "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
                        "volumeBindingMode": "WaitForFirstConsumer"}),
            ],
        ),
    );
    c.deployments("metallb-system", vec![deployment("metallb-system", "controller", false)]);
    c.daemonsets("metallb-system", vec![daemonset("metallb-system", "speaker", 3)]);
    c.deployments(
        "cert-manager",
        ["cert-manager", "cert-manager-cainjector", "cert-manager-webhook"]
            .iter()
            .map(|n| deployment("cert-manager", n, true))
            .collect(),
    );
    c.daemonsets("cert-manager", vec![]);
    c.issuer(false);
    c.deployments("ingress-nginx", vec![deployment("ingress-nginx", "ingress-nginx-controller", true)]);
    c.daemonsets("ingress-nginx", vec![]);
    c.ingress_service(None);
    c.deployments("argocd", vec![deployment("argocd", "argocd-server", true)]);
    c.daemonsets("argocd", vec![]);
    let sts = |ready: i32| {
        json!({"metadata": meta("argocd", "argocd-application-controller"),
               "spec": {"replicas": 1, "serviceName": "argocd-application-controller",
                        "selector": {"matchLabels": {"app": "c"}},
                        "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}},
               "status": {"replicas": 1, "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": 1}})
    };
    let serve_sts = |ready: i32| {
        serve_json(
            &c.srv,
            "/apis/apps/v1/namespaces/argocd/statefulsets",
            list("StatefulSetList", "apps/v1", vec![sts(ready)]),
        )
    };
    serve_sts(0);

    // A Deployment not yet available: pending, with its reason.
    let st = c.look();
    assert_eq!(
        st.pending.as_deref(),
        Some(
            "metallb: Deployment metallb-system/controller not available: MinimumReplicasUnavailable \
             (Deployment does not have minimum availability.)"
        )
    );
    assert_eq!(st.workloads.len(), 10, "{:#?}", st.workloads);
    assert_eq!(st.default_storage_class.as_deref(), Some("local-path"));
    assert_eq!(st.issuer_ready, Some(false));

    // Then the issuer, with cert-manager's own words.
    c.deployments("metallb-system", vec![deployment("metallb-system", "controller", true)]);
    let st = c.look();
    assert!(
        st.pending
            .as_deref()
            .is_some_and(|p| p.starts_with("cert-manager: ClusterIssuer hearth-ca not Ready: ErrGetKeyPair")),
        "{st:#?}"
    );

    // A DaemonSet short of pods.
    c.daemonsets("kube-flannel", vec![daemonset("kube-flannel", "kube-flannel-ds", 2)]);
    assert_eq!(c.look().pending.as_deref(), Some("flannel: DaemonSet kube-flannel/kube-flannel-ds 2 of 3 pods ready"));
    c.daemonsets("kube-flannel", vec![daemonset("kube-flannel", "kube-flannel-ds", 3)]);

    // Then the ingress address.
    c.issuer(true);
    let st = c.look();
    assert_eq!(
        st.pending.as_deref(),
        Some(
            "ingress-nginx: Service ingress-nginx/ingress-nginx-controller has no load-balancer address (wants 192.168.122.101)"
        )
    );
    c.ingress_service(Some("192.168.122.101"));
    // Then Argo CD's application controller (a StatefulSet).
    assert_eq!(
        c.look().pending.as_deref(),
        Some("argo-cd: StatefulSet argocd/argocd-application-controller 0 of 1 replicas ready")
    );
    serve_sts(1);
    // Then the in-cluster Git server (an absent namespace lists empty).
    c.deployments("hearth-git", vec![]);
    assert_eq!(c.look().pending.as_deref(), Some("argo-cd: nothing deployed in namespace hearth-git yet"));
    c.deployments("hearth-git", vec![deployment("hearth-git", "gitea", true)]);
    // Then the Applications: none yet, so the root is missing.
    c.applications(vec![]);
    assert_eq!(c.look().pending.as_deref(), Some("argo-cd: the root Application hearth-root is not there yet"));
    // An OutOfSync one, with Argo CD's words; the root is listed last.
    c.applications(vec![
        application("hearth-root", None, "Synced", "Progressing", None),
        application("metallb", Some("30"), "OutOfSync", "Healthy", Some("one or more objects failed to apply")),
        application("flannel", Some("10"), "Synced", "Healthy", None),
    ]);
    let st = c.look();
    let names: Vec<&str> = st.applications.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["flannel", "metallb", "hearth-root"]);
    assert_eq!(
        st.pending.as_deref(),
        Some("argo-cd: Application metallb is OutOfSync/Healthy: one or more objects failed to apply")
    );
    c.applications(vec![
        application("hearth-root", None, "Synced", "Healthy", None),
        application("metallb", Some("30"), "Synced", "Healthy", None),
        application("flannel", Some("10"), "Synced", "Healthy", None),
    ]);
    // Then Harbor: its workloads, then its own health (through the API
    // server's service proxy), an unhealthy database named.
    assert_eq!(c.look().pending.as_deref(), Some("harbor: nothing deployed in namespace harbor yet"));
    c.deployments(
        "harbor",
        vec![deployment("harbor", "harbor-core", true), deployment("harbor", "harbor-nginx", true)],
    );
    c.daemonsets("harbor", vec![]);
    assert_eq!(c.look().pending.as_deref(), Some("harbor: /api/v2.0/health does not answer yet"));
    c.harbor_health(&[("core", "healthy"), ("database", "unhealthy"), ("registry", "healthy")]);
    let st = c.look();
    assert_eq!(st.harbor_health.as_deref(), Some("unhealthy (database: unhealthy)"));
    assert_eq!(st.pending.as_deref(), Some("harbor: /api/v2.0/health says unhealthy (database: unhealthy)"));
    c.harbor_health(&[("core", "healthy"), ("database", "healthy"), ("registry", "healthy")]);
    // Then External Secrets and ARC's controller.
    assert_eq!(
        c.look().pending.as_deref(),
        Some("external-secrets: nothing deployed in namespace external-secrets yet")
    );
    c.deployments(
        "external-secrets",
        ["external-secrets", "external-secrets-webhook", "external-secrets-cert-controller"]
            .iter()
            .map(|n| deployment("external-secrets", n, true))
            .collect(),
    );
    c.deployments("arc-systems", vec![deployment("arc-systems", "arc-gha-rs-controller", false)]);
    assert_eq!(
        c.look().pending.as_deref(),
        Some(
            "arc: Deployment arc-systems/arc-gha-rs-controller not available: MinimumReplicasUnavailable \
             (Deployment does not have minimum availability.)"
        )
    );
    c.deployments("arc-systems", vec![deployment("arc-systems", "arc-gha-rs-controller", true)]);
    let st = c.look();
    assert_eq!(st.pending, None, "{st:#?}");
    assert_eq!(st.harbor_health.as_deref(), Some("healthy"));
    assert_eq!(st.ingress_ip.as_deref(), Some("192.168.122.101"));
    assert!(st.workloads.iter().all(|w| w.ready));
}

/// An Argo CD Application as the API returns it.
fn application(name: &str, wave: Option<&str>, sync: &str, health: &str, message: Option<&str>) -> Value {
    let mut metadata = meta("argocd", name);
    if let Some(w) = wave {
        metadata["annotations"] = json!({"argocd.argoproj.io/sync-wave": w});
    }
    let mut status = json!({"sync": {"status": sync, "revision": "0123abcd"}, "health": {"status": health}});
    if let Some(m) = message {
        status["conditions"] = json!([{"type": "SyncError", "message": m, "lastTransitionTime": TS}]);
    }
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": metadata,
           "spec": {"project": "default", "destination": {"server": "https://kubernetes.default.svc"},
                    "source": {"repoURL": "http://git.hearth-git.svc.cluster.local:3000/hearth/platform.git", "path": "x"}},
           "status": status})
}
