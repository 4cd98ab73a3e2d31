//! libvirt XML for hearth's objects: the NAT network (when hearth defines its
//! own), DHCP host reservations, and each node's domain. Every object carries
//! hearth's ownership metadata, which is how hearth recognises what it may
//! change or remove: nothing without it is ever touched. Pure: strings out.

use std::fmt::Write as _;
use std::path::Path;

use crate::cloudinit::mac_address;
use crate::spec::{Appliance, NodeSpec};

/// XML namespace of hearth's metadata (a reserved name: never resolved).
pub const NAMESPACE: &str = "https://hearth.invalid/xmlns/appliance/1";
/// Kernel command line for direct kernel boot.
pub const CMDLINE: &str = "root=LABEL=cloudimg-rootfs ro console=ttyS0";

/// Escapes text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn path(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

/// hearth's ownership metadata element.
pub fn ownership(appliance: &str, node: Option<&str>, generation: Option<u32>) -> String {
    let mut s = format!(
        "    <hearth:appliance xmlns:hearth=\"{NAMESPACE}\">\n      <hearth:name>{}</hearth:name>\n",
        esc(appliance)
    );
    if let Some(n) = node {
        let _ = writeln!(s, "      <hearth:node>{}</hearth:node>", esc(n));
    }
    if let Some(g) = generation {
        let _ = writeln!(s, "      <hearth:generation>{g}</hearth:generation>");
    }
    s.push_str("    </hearth:appliance>\n");
    s
}

/// A DHCP host reservation (for `virNetworkUpdate` or a network definition).
pub fn dhcp_host(a: &Appliance, node: &NodeSpec) -> String {
    format!("<host mac='{}' name='{}' ip='{}'/>", mac_address(&a.name, &node.name), esc(&node.name), node.ip)
}

/// The network hearth defines when it does not reuse libvirt's `default`.
pub fn network(a: &Appliance) -> String {
    let n = &a.network;
    let mut hosts = String::new();
    for node in &a.nodes {
        let _ = writeln!(hosts, "      {}", dhcp_host(a, node));
    }
    format!(
        "<network>\n  <name>{name}</name>\n  <metadata>\n{own}  </metadata>\n  <forward mode='nat'/>\n  \
         <ip address='{gw}' netmask='{mask}'>\n    <dhcp>\n      <range start='{start}' end='{end}'/>\n{hosts}    </dhcp>\n  </ip>\n</network>\n",
        name = esc(&n.name),
        own = ownership(&a.name, None, None),
        gw = n.gateway,
        mask = n.cidr.netmask(),
        start = n.dhcp.start,
        end = n.dhcp.end,
    )
}

/// How a domain boots.
#[derive(Clone, Debug)]
pub enum Boot<'a> {
    /// Direct kernel boot from the image's kernel and initrd.
    Kernel {
        /// vmlinuz.
        kernel: &'a Path,
        /// initrd.img.
        initrd: &'a Path,
    },
    /// Firmware (BIOS) boot from the disk's own boot loader.
    Firmware,
}

/// Where a node's files are.
#[derive(Clone, Debug)]
pub struct NodeFiles<'a> {
    /// The thin overlay (qcow2, backed by the store image).
    pub disk: &'a Path,
    /// The NoCloud seed (raw, label `cidata`).
    pub seed: &'a Path,
    /// The serial console log.
    pub console_log: &'a Path,
}

/// A node's domain. `domain_type` is `kvm`, or `qemu` for TCG.
pub fn domain(
    a: &Appliance,
    node: &NodeSpec,
    files: &NodeFiles,
    boot: &Boot,
    domain_type: &str,
    generation: u32,
) -> String {
    let os = match boot {
        Boot::Kernel { kernel, initrd } => format!(
            "    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{CMDLINE}</cmdline>\n",
            path(kernel),
            path(initrd)
        ),
        Boot::Firmware => "    <boot dev='hd'/>\n".to_owned(),
    };
    let cpu = if domain_type == "kvm" { "  <cpu mode='host-passthrough'/>\n" } else { "" };
    format!(
        "<domain type='{domain_type}'>\n  <name>{name}</name>\n  <metadata>\n{own}  </metadata>\n  \
         <memory unit='MiB'>{mem}</memory>\n  <vcpu>{cpus}</vcpu>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n{os}  </os>\n  \
         <features>\n    <acpi/>\n    <apic/>\n  </features>\n{cpu}  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  \
         <on_crash>destroy</on_crash>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
         <source file='{disk}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='disk'>\n      \
         <driver name='qemu' type='raw'/>\n      <source file='{seed}'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>\n    \
         <interface type='network'>\n      <mac address='{mac}'/>\n      <source network='{net}'/>\n      <model type='virtio'/>\n    </interface>\n    \
         <serial type='pty'>\n      <log file='{log}' append='on'/>\n      <target port='0'/>\n    </serial>\n    <console type='pty'>\n      \
         <target type='serial' port='0'/>\n    </console>\n    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n  \
         </devices>\n</domain>\n",
        name = esc(&a.domain_name(node)),
        own = ownership(&a.name, Some(&node.name), Some(generation)),
        mem = node.memory_mib,
        cpus = node.vcpus,
        disk = path(files.disk),
        seed = path(files.seed),
        mac = mac_address(&a.name, &node.name),
        net = esc(&a.network.name),
        log = path(files.console_log),
    )
}

/// Whether an object's XML carries hearth's metadata for `appliance`.
pub fn owned_by(xml: &str, appliance: &str) -> bool {
    xml.contains(NAMESPACE) && xml.contains(&format!("<hearth:name>{}</hearth:name>", esc(appliance)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_ownership() {
        assert_eq!(esc("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
        let a = Appliance::default();
        assert!(owned_by(&network(&a), "k8s-myhome"));
        assert!(!owned_by(&network(&a), "other"));
        assert!(!owned_by("<network><name>default</name></network>", "k8s-myhome"));
    }
}
