//! What an existing appliance is, and what `launch` does about each answer,
//! on libvirt's `test:///default` driver (its state lives while one
//! connection is open, so the test holds one and the library opens its own).
//! The appliance's network is on loopback (127.20.0.0/24): the readiness probes
//! of `launch` connect to 127.20.0.x only, never to a real host.

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use hearth_appliance::libvirt::Libvirt;
use hearth_appliance::lifecycle::{self, Error, Event, Events, Existing, Host, Wait};
use hearth_appliance::ready::{Probe, Stage};
use hearth_appliance::spec::{Appliance, parse_spec};
use hearth_appliance::state::{Launched, LaunchedNode, State};
use hearth_appliance::xml::{self, Boot, NodeFiles};
use hearth_builder::store::Store;
use virt::domain::Domain;

/// The seed's layout moved onto loopback, on a network of its own. (Tests in
/// one process share the driver's state: each gets its own name.)
fn loopback_appliance(name: &str) -> Appliance {
    parse_spec(&format!(
        "name = \"{name}\"\nlibvirt_uri = \"test:///default\"\ndomain_type = \"qemu\"\n\
         [network]\nname = \"hearth-lo\"\ncidr = \"127.20.0.0/24\"\ngateway = \"127.20.0.1\"\n\
         dhcp = {{ start = \"127.20.0.151\", end = \"127.20.0.254\" }}\n\
         [cluster]\nmetallb_pool = {{ start = \"127.20.0.100\", end = \"127.20.0.150\" }}\n\
         [[nodes]]\nname = \"cp\"\nrole = \"control-plane\"\nip = \"127.20.0.10\"\nvcpus = 2\nmemory_mib = 2048\ndisk_gib = 10\n\
         [[nodes]]\nname = \"w1\"\nrole = \"worker\"\nip = \"127.20.0.11\"\nvcpus = 1\nmemory_mib = 1024\ndisk_gib = 10\n\
         [[nodes]]\nname = \"w2\"\nrole = \"worker\"\nip = \"127.20.0.12\"\nvcpus = 1\nmemory_mib = 1024\ndisk_gib = 10\n",
    ))
    .expect("a valid loopback appliance")
}

/// Records the events' debug form.
#[derive(Default)]
struct Recorder(RefCell<Vec<String>>);

impl Events for Recorder {
    fn event(&self, e: &Event<'_>) {
        self.0.borrow_mut().push(format!("{e:?}"));
    }
}

/// Records a launch of `a` and defines and starts its domains on `lv`.
fn launched_on(lv: &Libvirt, a: &Appliance, state: &State, dir: &Path) -> Vec<String> {
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let mut nodes = Vec::new();
    for n in &a.nodes {
        let domain = a.domain_name(n);
        let (disk, seed, log) = (
            dir.join(format!("{domain}.qcow2")),
            dir.join(format!("{domain}.seed.iso")),
            dir.join(format!("{domain}.console.log")),
        );
        let files = NodeFiles { disk: &disk, seed: &seed, console_log: &log };
        let boot = Boot::Kernel { kernel: &dir.join("vmlinuz"), initrd: &dir.join("initrd.img") };
        lv.define_and_start(&a.name, &domain, &xml::domain(a, n, &files, &boot, "qemu", 1)).unwrap();
        nodes.push(LaunchedNode { name: n.name.clone(), domain, disk, seed, console_log: log });
    }
    let domains = nodes.iter().map(|n| n.domain.clone()).collect();
    state
        .save_launched(&Launched {
            appliance: a.clone(),
            image: dir.to_owned(),
            generation: 1,
            domain_type: "qemu".into(),
            nodes,
            platform: None,
        })
        .unwrap();
    domains
}

#[test]
fn every_answer_of_existing() {
    let dir = tempfile::tempdir().unwrap();
    let a = loopback_appliance("lo-existing");
    let state = State::new(&dir.path().join("state"), &a.name);
    let lv = Libvirt::open("test:///default").unwrap();

    assert!(matches!(lifecycle::existing(&lv, &state).unwrap(), Existing::NotLaunched));
    let domains = launched_on(&lv, &a, &state, dir.path());
    assert!(matches!(lifecycle::existing(&lv, &state).unwrap(), Existing::Running(_)));

    let dom = Domain::lookup_by_name(lv.connection(), &domains[1]).unwrap();
    dom.destroy().unwrap();
    match lifecycle::existing(&lv, &state).unwrap() {
        Existing::Stopped { stopped, .. } => assert_eq!(stopped, [domains[1].clone()]),
        other => panic!("expected Stopped, got {other:?}"),
    }

    dom.undefine().unwrap();
    match lifecycle::existing(&lv, &state).unwrap() {
        Existing::PartlyGone { missing, .. } => assert_eq!(missing, [domains[1].clone()]),
        other => panic!("expected PartlyGone, got {other:?}"),
    }

    for d in [&domains[0], &domains[2]] {
        let dom = Domain::lookup_by_name(lv.connection(), d).unwrap();
        dom.destroy().unwrap();
        dom.undefine().unwrap();
    }
    match lifecycle::existing(&lv, &state).unwrap() {
        Existing::Gone(l) => assert_eq!(l.generation, 1),
        other => panic!("expected Gone, got {other:?}"),
    }
}

#[test]
fn launch_starts_stopped_domains_reports_a_running_one_and_refuses_a_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = loopback_appliance("lo");
    let root = dir.path().join("state");
    let state = State::new(&root, &a.name);
    let store = Store::open(dir.path().join("store")).unwrap();
    let lv = Libvirt::open("test:///default").unwrap();
    let domains = launched_on(&lv, &a, &state, dir.path());
    let events = Recorder::default();
    let host = Host { state_root: root.clone(), home: None, events: &events };
    let wait = Wait { until: Stage::Running, timeout: Some(Duration::from_secs(10)) };

    // Running: only a look, nothing changed; the probes meet loopback.
    let st = lifecycle::launch(&host, &a, &store, &wait).unwrap();
    assert!(events.0.borrow().iter().any(|e| e.starts_with("AlreadyRunning")), "{:?}", events.0.borrow());
    assert!(st.nodes.iter().all(|n| n.vm == "running"));
    assert!(
        st.nodes.iter().all(|n| matches!(n.ip_probe, Probe::Refused | Probe::Accepted)),
        "loopback answers: {:?}",
        st.nodes.iter().map(|n| n.ip_probe).collect::<Vec<_>>()
    );

    // Stopped: started again, then waited for.
    Domain::lookup_by_name(lv.connection(), &domains[2]).unwrap().destroy().unwrap();
    events.0.borrow_mut().clear();
    let st = lifecycle::launch(&host, &a, &store, &wait).unwrap();
    let seen = events.0.borrow().join("\n");
    assert!(seen.contains(&format!("StartedStopped {{ domain: \"{}\" }}", domains[2])), "{seen}");
    assert!(seen.contains("Reached { stage: Running"), "{seen}");
    assert!(st.pending.is_some_and(|p| p > Stage::Running));
    assert!(lv.is_running(&domains[2]).unwrap());

    // Partly gone: refused, with the reinstall hint; nothing is defined anew.
    let dom = Domain::lookup_by_name(lv.connection(), &domains[0]).unwrap();
    dom.destroy().unwrap();
    dom.undefine().unwrap();
    let err = lifecycle::launch(&host, &a, &store, &wait).unwrap_err();
    assert!(matches!(&err, Error::PartlyGone { missing, .. } if missing == &[domains[0].clone()]), "{err}");
    assert!(err.to_string().contains(&format!("appliance `lo` is partly gone: no domain {}", domains[0])));
    assert!(err.hint().unwrap().contains("hearth reinstall"));
    assert!(!lv.domain_exists(&domains[0]).unwrap());
}
