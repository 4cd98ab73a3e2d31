//! libvirt, through the `virt` crate: the network (libvirt's `default` reused
//! when it holds the subnet, DHCP reservations added live; otherwise hearth's
//! own), node domains, and their removal. **Invariant:** hearth changes or
//! removes only objects whose XML carries its ownership metadata for this
//! appliance, plus the DHCP reservations with its own MACs on a reused network.

use std::net::Ipv4Addr;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::network::Network;
use virt::sys;

use crate::cloudinit::mac_address;
use crate::spec::{Appliance, Range};
use crate::xml;

/// Errors of libvirt calls.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// A libvirt call failed.
    #[error("libvirt: {op}")]
    Call {
        /// What was attempted (names the object).
        op: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// A network of that name exists, is not hearth's, and does not fit.
    #[error("libvirt network `{name}` is not hearth's and {why}")]
    ForeignNetwork {
        /// Its name.
        name: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A domain of that name exists and is not hearth's.
    #[error("libvirt domain `{0}` exists and was not made by hearth; it is left alone")]
    ForeignDomain(String),
}

fn call<T>(op: impl FnOnce() -> String, r: Result<T, virt::error::Error>) -> Result<T, LibvirtError> {
    r.map_err(|source| LibvirtError::Call { op: op(), source })
}

/// What [`Libvirt::ensure_network`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum NetworkUse {
    /// hearth's own network was defined and started.
    Defined(String),
    /// hearth's own network was there already.
    Present(String),
    /// A network hearth did not make holds the subnet and is used; `added`
    /// reservations were added. `note` warns about its DHCP range.
    Reused {
        /// Its name.
        name: String,
        /// Reservations added now.
        added: usize,
        /// Whether it was inactive and hearth started it.
        started: bool,
        /// It runs: [`Libvirt::add_live_reservations`] is still to be called.
        live_pending: bool,
        /// A warning worth showing.
        note: Option<String>,
    },
}

/// What [`Libvirt::destroy`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Domains destroyed and undefined.
    pub domains: Vec<String>,
    /// hearth's network, if it was removed.
    pub network: Option<String>,
    /// DHCP reservations removed from a reused network.
    pub reservations: usize,
}

/// The value of `attr='...'` in the first `<tag ...>` of `xml`.
fn attr(xml: &str, tag: &str, attr: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag} "))?;
    let rest = &xml[start..];
    let end = rest.find('>')?;
    let elem = &rest[..end];
    for quote in ['\'', '"'] {
        let key = format!("{attr}={quote}");
        if let Some(i) = elem.find(&key) {
            let v = &elem[i + key.len()..];
            return v.find(quote).map(|j| v[..j].to_owned());
        }
    }
    None
}

/// Adds (or removes) the appliance's DHCP reservations on network `net`,
/// in its persistent config and, when it runs, in its live state (as far as
/// `scope`, `VIR_NETWORK_UPDATE_AFFECT_*` bits, allows), each where it is
/// missing (or present): the two can differ after an interrupted run. Returns
/// how many nodes needed a change.
fn reservations(net: &Network, name: &str, a: &Appliance, add: bool, scope: u32) -> Result<usize, LibvirtError> {
    let active = call(|| format!("reading network `{name}`"), net.is_active())?;
    // The test driver keeps one definition and refuses the flag.
    let config = call(
        || format!("reading network `{name}`"),
        net.get_xml_desc(sys::VIR_NETWORK_XML_INACTIVE).or_else(|_| net.get_xml_desc(0)),
    )?;
    let live = if active { Some(call(|| format!("reading network `{name}`"), net.get_xml_desc(0))?) } else { None };
    let mut changed = 0;
    for node in &a.nodes {
        let mac = format!("mac='{}'", mac_address(&a.name, &node.name));
        let needs = |x: &str| x.contains(&mac) != add;
        let mut flags = 0;
        if needs(&config) {
            flags |= sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
        }
        if live.as_deref().is_some_and(needs) {
            flags |= sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
        }
        flags &= scope;
        if flags == 0 {
            continue;
        }
        let (command, what) = if add {
            (sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, "adding the DHCP reservation of")
        } else {
            (sys::VIR_NETWORK_UPDATE_COMMAND_DELETE, "removing the DHCP reservation of")
        };
        call(
            || format!("{what} `{}` on network `{name}`", node.name),
            net.update(command, sys::VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, &xml::dhcp_host(a, node), flags),
        )?;
        changed += 1;
    }
    Ok(changed)
}

/// A libvirt connection, closed when dropped (`virt` 0.4 does not close it).
pub struct Libvirt {
    conn: Connect,
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

impl Libvirt {
    /// Connects to `uri` (`qemu:///system`, or `test:///default` in tests).
    pub fn open(uri: &str) -> Result<Libvirt, LibvirtError> {
        // libvirt prints every error to stderr by default, expected ones (a
        // lookup that finds nothing) included; hearth reports errors itself.
        virt::error::clear_error_callback();
        Ok(Libvirt { conn: call(|| format!("connecting to `{uri}`"), Connect::open(Some(uri)))? })
    }

    /// Makes sure the appliance's network exists and carries its reservations.
    pub fn ensure_network(&self, a: &Appliance) -> Result<NetworkUse, LibvirtError> {
        let name = &a.network.name;
        let Ok(net) = Network::lookup_by_name(&self.conn, name) else {
            let net = call(|| format!("defining network `{name}`"), Network::define_xml(&self.conn, &xml::network(a)))?;
            call(|| format!("starting network `{name}`"), net.create())?;
            call(|| format!("marking network `{name}` autostart"), net.set_autostart(true))?;
            return Ok(NetworkUse::Defined(name.clone()));
        };
        let desc = call(|| format!("reading network `{name}`"), net.get_xml_desc(0))?;
        if xml::owned_by(&desc, &a.name) {
            if !call(|| format!("reading network `{name}`"), net.is_active())? {
                call(|| format!("starting network `{name}`"), net.create())?;
            }
            return Ok(NetworkUse::Present(name.clone()));
        }
        // Not ours: usable only if it is the same subnet with the same gateway.
        let gw = attr(&desc, "ip", "address");
        let mask = attr(&desc, "ip", "netmask");
        let prefix = attr(&desc, "ip", "prefix");
        let same_mask = mask.as_deref() == Some(&a.network.cidr.netmask().to_string())
            || prefix.as_deref() == Some(&a.network.cidr.len.to_string());
        if gw.as_deref() != Some(&a.network.gateway.to_string()) || !same_mask {
            return Err(LibvirtError::ForeignNetwork {
                name: name.clone(),
                why: format!(
                    "serves {}/{} rather than gateway {} on {}; choose another `network.name` in appliance.toml",
                    gw.unwrap_or_default(),
                    mask.or(prefix).unwrap_or_default(),
                    a.network.gateway,
                    String::from(a.network.cidr)
                ),
            });
        }
        let active = call(|| format!("reading network `{name}`"), net.is_active())?;
        let added = reservations(&net, name, a, true, sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG)?;
        // Defined but not started (Debian does not autostart `default`): the
        // domains cannot run without it, so start it, as virt-install would.
        let started = !active;
        if started {
            call(|| format!("starting network `{name}`"), net.create())?;
            // A network left running by a libvirtd that was killed comes back
            // inactive with its old live definition; libvirt 9.0 then keeps only
            // the last config update and starts from the stale definition. Check
            // both again now that it runs (normally nothing to do).
            let both = sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG | sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
            reservations(&net, name, a, true, both)?;
        }
        let range = attr(&desc, "range", "start")
            .zip(attr(&desc, "range", "end"))
            .and_then(|(s, e)| Some(Range { start: s.parse::<Ipv4Addr>().ok()?, end: e.parse::<Ipv4Addr>().ok()? }));
        let note = range.filter(|r| r.overlaps(&a.cluster.metallb_pool)).map(|r| {
            format!(
                "network `{name}` leases {r}, which includes the MetalLB pool {}: other VMs on it may take those addresses \
                 (narrow its range with `virsh net-edit {name}`)",
                a.cluster.metallb_pool
            )
        });
        Ok(NetworkUse::Reused { name: name.clone(), added, started, live_pending: active, note })
    }

    /// Adds the reservations [`Libvirt::ensure_network`] put in a running reused
    /// network's config to its live state too.
    pub fn add_live_reservations(&self, a: &Appliance) -> Result<usize, LibvirtError> {
        let name = &a.network.name;
        let net = call(|| format!("looking up network `{name}`"), Network::lookup_by_name(&self.conn, name))?;
        reservations(&net, name, a, true, sys::VIR_NETWORK_UPDATE_AFFECT_LIVE)
    }

    /// Names of the domains hearth made for `appliance`, sorted.
    pub fn owned_domains(&self, appliance: &str) -> Result<Vec<String>, LibvirtError> {
        let all = call(|| "listing domains".into(), self.conn.list_all_domains(0))?;
        let mut out = Vec::new();
        for d in all {
            let desc = call(|| "reading a domain".into(), d.get_xml_desc(0))?;
            if xml::owned_by(&desc, appliance) {
                out.push(call(|| "reading a domain name".into(), d.get_name())?);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Defines a domain from `xml` (named `name`) and starts it. Refuses to
    /// replace a domain hearth did not make.
    pub fn define_and_start(&self, appliance: &str, name: &str, xml_text: &str) -> Result<(), LibvirtError> {
        if let Ok(existing) = Domain::lookup_by_name(&self.conn, name) {
            let desc = call(|| format!("reading domain `{name}`"), existing.get_xml_desc(0))?;
            if !xml::owned_by(&desc, appliance) {
                return Err(LibvirtError::ForeignDomain(name.to_owned()));
            }
        }
        let dom = call(|| format!("defining domain `{name}`"), Domain::define_xml(&self.conn, xml_text))?;
        call(|| format!("starting domain `{name}`"), dom.create())?;
        Ok(())
    }

    /// Whether a domain of that name exists.
    pub fn domain_exists(&self, name: &str) -> Result<bool, LibvirtError> {
        let all = call(|| "listing domains".into(), self.conn.list_all_domains(0))?;
        for d in all {
            if call(|| "reading a domain name".into(), d.get_name())? == name {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Starts a defined domain hearth made (after a host reboot, say).
    pub fn start(&self, appliance: &str, name: &str) -> Result<(), LibvirtError> {
        let dom = call(|| format!("looking up domain `{name}`"), Domain::lookup_by_name(&self.conn, name))?;
        let desc = call(|| format!("reading domain `{name}`"), dom.get_xml_desc(0))?;
        if !xml::owned_by(&desc, appliance) {
            return Err(LibvirtError::ForeignDomain(name.to_owned()));
        }
        call(|| format!("starting domain `{name}`"), dom.create())?;
        Ok(())
    }

    /// Whether a domain is running.
    pub fn is_running(&self, name: &str) -> Result<bool, LibvirtError> {
        let dom = call(|| format!("looking up domain `{name}`"), Domain::lookup_by_name(&self.conn, name))?;
        call(|| format!("reading domain `{name}`"), dom.is_active())
    }

    /// Removes the appliance's domains, its network if hearth defined it, and its
    /// reservations on a network it reused. Nothing else.
    pub fn destroy(&self, a: &Appliance, keep_network: bool) -> Result<Removed, LibvirtError> {
        let mut removed = Removed::default();
        for name in self.owned_domains(&a.name)? {
            let dom = call(|| format!("looking up domain `{name}`"), Domain::lookup_by_name(&self.conn, &name))?;
            if call(|| format!("reading domain `{name}`"), dom.is_active())? {
                call(|| format!("stopping domain `{name}`"), dom.destroy())?;
            }
            call(|| format!("undefining domain `{name}`"), dom.undefine())?;
            removed.domains.push(name);
        }
        if keep_network {
            return Ok(removed);
        }
        let name = &a.network.name;
        if let Ok(net) = Network::lookup_by_name(&self.conn, name) {
            let desc = call(|| format!("reading network `{name}`"), net.get_xml_desc(0))?;
            if xml::owned_by(&desc, &a.name) {
                if call(|| format!("reading network `{name}`"), net.is_active())? {
                    call(|| format!("stopping network `{name}`"), net.destroy())?;
                }
                call(|| format!("undefining network `{name}`"), net.undefine())?;
                removed.network = Some(name.clone());
            } else {
                let both = sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG | sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
                removed.reservations = reservations(&net, name, a, false, both)?;
            }
        }
        Ok(removed)
    }

    /// Whether anything of appliance `a` is on its network: the network is
    /// hearth's own for it, or carries one of its node reservations.
    pub fn owns_network(&self, a: &Appliance) -> Result<bool, LibvirtError> {
        let Ok(net) = Network::lookup_by_name(&self.conn, &a.network.name) else { return Ok(false) };
        let desc = call(|| format!("reading network `{}`", a.network.name), net.get_xml_desc(0))?;
        Ok(xml::owned_by(&desc, &a.name) || a.nodes.iter().any(|n| desc.contains(&mac_address(&a.name, &n.name))))
    }

    /// The XML of a network (for tests and status).
    pub fn network_xml(&self, name: &str) -> Result<String, LibvirtError> {
        let net = call(|| format!("looking up network `{name}`"), Network::lookup_by_name(&self.conn, name))?;
        call(|| format!("reading network `{name}`"), net.get_xml_desc(0))
    }

    /// The underlying connection (tests define foreign objects through it).
    pub fn connection(&self) -> &Connect {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes() {
        let x = "<network><ip address='192.168.122.1' netmask=\"255.255.255.0\"><dhcp><range start='192.168.122.2' end='192.168.122.254'/>";
        assert_eq!(attr(x, "ip", "address").as_deref(), Some("192.168.122.1"));
        assert_eq!(attr(x, "ip", "netmask").as_deref(), Some("255.255.255.0"));
        assert_eq!(attr(x, "range", "end").as_deref(), Some("192.168.122.254"));
        assert_eq!(attr(x, "ip", "prefix"), None);
    }
}
