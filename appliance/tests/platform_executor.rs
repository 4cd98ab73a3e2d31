//! The node-side executor of the platform plan (`images/files/hearth-platform`,
//! run by /bin/sh as on the node) against a recording kubectl STAND-IN on the
//! host: no cluster exists here, so the stand-in only logs what it was asked
//! (with the sha256 of each applied file) and fails where a test tells it to.
//! Asserted: the order of applies and waits, byte-identical files, server-side
//! apply where the plan says, retries of a late webhook, and that a run cut
//! short resumes without repeating finished steps.

mod executor_rig;

use std::fs;

use executor_rig::{Rig, sha};
use hearth_appliance::platform::{Plan, PlanFile, Step, Wait};

fn file(path: &str, body: &str) -> PlanFile {
    PlanFile { path: path.into(), body: body.into(), secret: false }
}

fn plan() -> Plan {
    let step = |name: &str, files: Vec<PlanFile>, waits: Vec<Wait>, timeout_secs| Step {
        name: name.into(),
        files,
        server_side: false,
        retry_apply: false,
        waits,
        timeout_secs,
    };
    let mut big = step("10-big", vec![file("10-big/crds.yaml", "---\n{\"kind\": \"CRD\"}\n")], vec![], 5);
    big.server_side = true;
    let mut pools = step("20-pools", vec![file("20-pools/pools.yaml", "---\n{\"kind\": \"Pool\"}\n")], vec![], 8);
    pools.retry_apply = true;
    Plan {
        steps: vec![
            big,
            step("11-nodes", vec![], vec![Wait::Nodes { count: 3 }], 5),
            pools,
            step(
                "30-app",
                vec![file("30-app/app.yaml", "---\n{\"kind\": \"Deployment\"}\n")],
                vec![
                    Wait::Rollout { namespace: "app".into(), object: "deployment/app".into() },
                    Wait::Condition {
                        namespace: String::new(),
                        object: "clusterissuer/ca".into(),
                        condition: "Ready".into(),
                    },
                    Wait::Value {
                        namespace: "app".into(),
                        object: "service/app".into(),
                        path: "{.status.loadBalancer.ingress[0].ip}".into(),
                        value: "192.168.122.101".into(),
                    },
                ],
                5,
            ),
        ],
        gitops: None,
    }
}

#[test]
fn the_plan_runs_in_order_with_the_rendered_files() {
    let plan = plan();
    let rig = Rig::new(&plan);
    let (ok, console, calls) = rig.run(&[]);
    assert!(ok, "{console}");
    let f = |path: &str| plan.files().find(|f| f.path == path).unwrap().body.clone();
    let expected = [
        format!(
            "apply --server-side --force-conflicts --field-manager=hearth -f {} sha256={}",
            rig.path("plan/10-big/crds.yaml").display(),
            sha(&f("10-big/crds.yaml"))
        ),
        "get nodes --no-headers".to_owned(),
        "wait --for=condition=Ready nodes --all --timeout=10s".to_owned(),
        format!(
            "apply -f {} sha256={}",
            rig.path("plan/20-pools/pools.yaml").display(),
            sha(&f("20-pools/pools.yaml"))
        ),
        format!("apply -f {} sha256={}", rig.path("plan/30-app/app.yaml").display(), sha(&f("30-app/app.yaml"))),
    ];
    assert_eq!(calls[..5], expected, "{calls:#?}");
    assert!(calls[5].starts_with("-n app rollout status deployment/app --timeout="), "{calls:#?}");
    assert_eq!(calls[6], "wait --for=condition=Ready clusterissuer/ca --timeout=10s");
    assert_eq!(
        calls[7],
        "-n app wait --for=jsonpath={.status.loadBalancer.ingress[0].ip}=192.168.122.101 service/app --timeout=10s"
    );
    assert_eq!(calls.len(), 8, "{calls:#?}");
    for stage in ["stage platform-10-big", "stage platform-11-nodes", "stage platform-30-app", "platform ready"] {
        assert!(console.contains(&format!("hearth-firstboot: {stage}")), "{stage}:\n{console}");
    }

    // Everything done: a second run applies nothing.
    let (ok, console, calls) = rig.run(&[]);
    assert!(ok && calls.is_empty(), "{calls:?}\n{console}");
    assert!(console.contains("platform 30-app already done"), "{console}");
}

#[test]
fn a_late_webhook_is_retried_and_a_cut_run_resumes_without_repeating_steps() {
    let rig = Rig::new(&plan());
    // The pools' webhook refuses twice, then serves: retried within the step.
    let (ok, console, calls) = rig.run(&[("FAIL_MATCH", "pools.yaml"), ("FAIL_TIMES", "2")]);
    assert!(ok, "{console}");
    assert_eq!(calls.iter().filter(|c| c.contains("pools.yaml")).count(), 3, "{calls:#?}");
    let _ = fs::remove_file(rig.path("kubectl.log.fails"));
    for d in fs::read_dir(rig.path("state")).unwrap() {
        fs::remove_file(d.unwrap().path()).unwrap();
    }

    // Cut short: two nodes of three only, past the step's timeout.
    let (ok, console, _) = rig.run(&[("NODES", "2")]);
    assert!(!ok, "{console}");
    assert!(
        console.contains("hearth-firstboot: error: platform 11-nodes: 3 nodes Ready not reached within 5 s"),
        "{console}"
    );
    assert!(rig.path("state/10-big.done").exists() && !rig.path("state/11-nodes.done").exists());

    // The next boot resumes at the nodes: the first step is not applied again.
    let (ok, console, calls) = rig.run(&[]);
    assert!(ok, "{console}");
    assert!(console.contains("platform 10-big already done"), "{console}");
    assert!(!calls.iter().any(|c| c.contains("crds.yaml")), "{calls:#?}");
    assert!(calls.iter().any(|c| c.contains("app.yaml")), "{calls:#?}");

    // A file that fails without retry stops the plan and names it.
    let rig = Rig::new(&plan());
    let (ok, console, _) = rig.run(&[("FAIL_MATCH", "app.yaml")]);
    assert!(!ok);
    assert!(console.contains("error: platform 30-app: applying 30-app/app.yaml failed"), "{console}");
}
