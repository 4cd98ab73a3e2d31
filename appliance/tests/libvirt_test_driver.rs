//! The libvirt layer against libvirt's in-process `test:///default` driver (no
//! daemon): libvirt's own `default` network is reused with reservations added;
//! a hearth network is defined when asked; domains are defined and started;
//! destroy removes exactly hearth's objects while a domain and a network the
//! test defined itself stay untouched.

use std::path::Path;

use hearth_appliance::libvirt::{Libvirt, LibvirtError, NetworkUse};
use hearth_appliance::spec::{Appliance, Cidr, Range};
use hearth_appliance::xml;

fn domain_xml(a: &Appliance, node: &hearth_appliance::spec::NodeSpec) -> String {
    let d = Path::new("/mnt/k8s-storage");
    let (disk, seed, log) = (d.join("disk.qcow2"), d.join("seed.img"), d.join("console.log"));
    let files = xml::NodeFiles { disk: &disk, seed: &seed, console_log: &log };
    xml::domain(a, node, &files, &xml::Boot::Firmware, "qemu", 1)
}

const FOREIGN_DOMAIN: &str =
    "<domain type='test'><name>someone-elses-vm</name><memory>1024</memory><os><type>hvm</type></os></domain>";
const FOREIGN_NETWORK: &str =
    "<network><name>someone-elses-net</name><ip address='10.99.0.1' netmask='255.255.255.0'/></network>";

#[test]
fn reuse_define_and_destroy_only_what_is_ours() {
    let lv = Libvirt::open("test:///default").unwrap();
    virt::domain::Domain::define_xml(lv.connection(), FOREIGN_DOMAIN).unwrap();
    virt::network::Network::define_xml(lv.connection(), FOREIGN_NETWORK).unwrap();

    // libvirt's default network holds 192.168.122.0/24: reused, reservations added once.
    let a = Appliance::default();
    match lv.ensure_network(&a).unwrap() {
        NetworkUse::Reused { name, added, started, live_pending, note } => {
            assert_eq!((name.as_str(), added, started, live_pending), ("default", 3, false, true));
            assert!(note.unwrap().contains("includes the MetalLB pool"), "its .2-.254 range is worth a warning");
        }
        other => panic!("{other:?}"),
    }
    // It runs: the live state gets them separately (launch does it while the domains start).
    assert_eq!(lv.add_live_reservations(&a).unwrap(), 3);
    assert!(matches!(lv.ensure_network(&a).unwrap(), NetworkUse::Reused { added: 0, .. }));
    let net = lv.network_xml("default").unwrap();
    assert!(net.contains("ip='192.168.122.10'") && net.contains("ip='192.168.122.12'"), "{net}");

    for node in &a.nodes {
        lv.define_and_start(&a.name, &a.domain_name(node), &domain_xml(&a, node)).unwrap();
    }
    assert_eq!(lv.owned_domains(&a.name).unwrap().len(), 3);
    assert!(lv.is_running("k8s-myhome-k8s-worker-2").unwrap());
    // A domain name held by someone else is refused, not replaced.
    let mut clash = a.clone();
    clash.nodes[0].name = "x".into();
    let e = lv.define_and_start(&a.name, "someone-elses-vm", &domain_xml(&clash, &clash.nodes[0])).unwrap_err();
    assert!(matches!(e, LibvirtError::ForeignDomain(_)), "{e}");

    let removed = lv.destroy(&a, false).unwrap();
    assert_eq!(removed.domains.len(), 3);
    assert_eq!((removed.network, removed.reservations), (None, 3));
    assert!(!lv.network_xml("default").unwrap().contains("192.168.122.10"));
    assert!(virt::domain::Domain::lookup_by_name(lv.connection(), "someone-elses-vm").is_ok());
    assert!(virt::network::Network::lookup_by_name(lv.connection(), "someone-elses-net").is_ok());
    assert!(lv.owned_domains(&a.name).unwrap().is_empty());
    // Destroying again is a no-op.
    assert_eq!(lv.destroy(&a, false).unwrap(), Default::default());

    // hearth's own network on another subnet: defined, then removed with the appliance.
    let mut own = Appliance { name: "lab2".into(), ..Default::default() };
    own.network.name = "lab2-net".into();
    own.network.cidr = Cidr::try_from("10.77.0.0/24".to_owned()).unwrap();
    own.network.gateway = "10.77.0.1".parse().unwrap();
    own.network.dhcp = Range { start: "10.77.0.200".parse().unwrap(), end: "10.77.0.250".parse().unwrap() };
    own.cluster.metallb_pool = Range { start: "10.77.0.100".parse().unwrap(), end: "10.77.0.150".parse().unwrap() };
    for (i, n) in own.nodes.iter_mut().enumerate() {
        n.ip = format!("10.77.0.{}", 10 + i).parse().unwrap();
    }
    own.validate().unwrap();
    assert_eq!(lv.ensure_network(&own).unwrap(), NetworkUse::Defined("lab2-net".into()));
    assert_eq!(lv.ensure_network(&own).unwrap(), NetworkUse::Present("lab2-net".into()));
    assert!(xml::owned_by(&lv.network_xml("lab2-net").unwrap(), "lab2"));
    assert_eq!(lv.destroy(&own, false).unwrap().network.as_deref(), Some("lab2-net"));
    assert!(lv.network_xml("lab2-net").is_err());

    // A foreign network with the name but another subnet is refused by name.
    let mut wrong = Appliance::default();
    wrong.network.name = "someone-elses-net".into();
    let e = lv.ensure_network(&wrong).unwrap_err().to_string();
    assert!(e.contains("libvirt network `someone-elses-net` is not hearth's"), "{e}");
}
