//! The scrub: what must not travel in an image.

use crate::tree::{Data, Kind, Meta, Node, Tree};

/// Removes what must not travel in an image: machine identity, SSH host keys,
/// logs, caches that embed time, dpkg's backup files.
pub fn scrub(tree: &mut Tree) -> Vec<String> {
    let mut removed = Vec::new();
    let walk = tree.walk_sorted();
    for (path, id) in &walk {
        let p = String::from_utf8_lossy(path).into_owned();
        let is_file = !matches!(tree.node(*id).kind, Kind::Dir(_));
        let drop = (is_file && (p.starts_with("/etc/ssh/ssh_host_") || p.starts_with("/var/log/")))
            || (p.starts_with("/var/cache/apt/") && p.ends_with(".bin"))
            || (p.starts_with("/var/lib/dpkg/") && p.ends_with("-old"))
            || p == "/var/lib/dbus/machine-id"
            || p == "/var/lib/systemd/random-seed"
            || p == "/var/cache/ldconfig/aux-cache"
            || (p.starts_with("/var/lib/cloud/instances") && p != "/var/lib/cloud/instances")
            || p == "/var/lib/cloud/instance";
        if drop && tree.remove(path).unwrap_or(false) {
            removed.push(p);
        }
    }
    if let Ok(id) = tree.lookup(b"/etc/machine-id", false) {
        if let Kind::File(d) = &mut tree.node_mut(id).kind {
            *d = Data::default();
        }
    } else if tree.lookup(b"/etc", true).is_ok() {
        let _ = tree.insert(b"/etc/machine-id", Node { kind: Kind::File(Data::default()), meta: Meta::root(0o444) });
    }
    removed
}
