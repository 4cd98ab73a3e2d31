//! Debian packages: the dependency check against the base's dpkg status and the
//! recipe, unpacking, and registration as "unpacked" (`.list`, maintainer
//! scripts, conffiles left as `.dpkg-new`) so that `dpkg --configure -a` on
//! first boot runs their scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use super::{LayerError, Spill, Unpack, stream_err, unpack_tar};
use crate::format::deb::{self, DebError, Stanza};
use crate::tree::{Kind, Meta, Node, Tree};

/// A package as the dependency check sees it.
#[derive(Clone, Debug)]
pub struct Pkg {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `(name, version)` it provides.
    pub provides: Vec<(String, Option<String>)>,
    /// Where it comes from (`the base`, `the recipe`).
    pub origin: &'static str,
}

impl Pkg {
    /// From a control stanza.
    pub fn from_stanza(s: &Stanza, origin: &'static str) -> Option<Pkg> {
        let provides = s
            .get("Provides")
            .and_then(|p| deb::parse_relations(p).ok())
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .map(|r| (r.name, r.version.map(|(_, v)| v)))
            .collect();
        Some(Pkg { name: s.get("Package")?.to_owned(), version: s.get("Version")?.to_owned(), provides, origin })
    }
}

/// Installed packages of a dpkg status file (`install ok installed` only).
pub fn installed(status: &str) -> Vec<Pkg> {
    deb::parse_stanzas(status)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.get("Status").is_some_and(|v| v.ends_with("ok installed")))
        .filter_map(|s| Pkg::from_stanza(s, "the base"))
        .collect()
}

/// Checks Pre-Depends and Depends of `control` against `available`.
pub fn check_depends(control: &Stanza, available: &[Pkg]) -> Result<(), LayerError> {
    let package = control.get("Package").unwrap_or("?").to_owned();
    for (field, label) in [("Pre-Depends", "pre-depends on"), ("Depends", "depends on")] {
        let Some(text) = control.get(field) else { continue };
        let groups = deb::parse_relations(text)
            .map_err(|source| LayerError::Deb { origin: format!("package `{package}`"), source })?;
        for alts in groups {
            let ok = alts.iter().any(|rel| {
                available.iter().any(|p| {
                    let direct =
                        p.name == rel.name && rel.version.as_ref().is_none_or(|(op, v)| op.holds(&p.version, v));
                    let provided = p.provides.iter().any(|(n, pv)| {
                        n == &rel.name
                            && match (&rel.version, pv) {
                                (None, _) => true,
                                (Some((op, v)), Some(pv)) => op.holds(pv, v),
                                (Some(_), None) => false,
                            }
                    });
                    direct || provided
                })
            });
            if !ok {
                let found: Vec<String> = alts
                    .iter()
                    .flat_map(|rel| available.iter().filter(move |p| p.name == rel.name))
                    .map(|p| format!("{} {} (in {})", p.name, p.version, p.origin))
                    .collect();
                let relation = alts.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" | ");
                return Err(LayerError::Unmet {
                    package: package.clone(),
                    field: label,
                    relation,
                    found: if found.is_empty() {
                        "not installed".into()
                    } else {
                        format!("found {}", found.join(", "))
                    },
                });
            }
        }
    }
    Ok(())
}

/// A .deb ready to unpack.
pub struct DebLayer {
    /// Its control stanza.
    pub control: Stanza,
    /// control.tar members: name -> bytes.
    pub control_files: BTreeMap<String, Vec<u8>>,
    /// The deb's bytes (for data.tar).
    pub deb: deb::Deb,
}

/// Opens a .deb and reads its control data.
pub fn open_deb(bytes: &[u8], origin: &str) -> Result<DebLayer, LayerError> {
    let err = |source| LayerError::Deb { origin: origin.to_owned(), source };
    let d = deb::open_deb(bytes).map_err(err)?;
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(deb::tar_reader(&d.control.name, &d.control.data).map_err(err)?);
    let entries = ar.entries().map_err(stream_err(format!("{origin}: reading control.tar")))?;
    for e in entries {
        let mut e = e.map_err(stream_err(format!("{origin}: reading control.tar")))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_owned();
        if name.contains('/') || e.header().size().unwrap_or(0) > 16 << 20 {
            continue;
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v).map_err(stream_err(format!("{origin}: reading control.tar")))?;
        files.insert(name, v);
    }
    drop(ar);
    let control_text = String::from_utf8_lossy(
        files.get("control").ok_or_else(|| err(DebError::Malformed("no control file in control.tar".into())))?,
    )
    .into_owned();
    let control = deb::parse_stanzas(&control_text)
        .map_err(err)?
        .into_iter()
        .next()
        .ok_or_else(|| err(DebError::Control("empty control file".into())))?;
    Ok(DebLayer { control, control_files: files, deb: d })
}

/// Unpacks a package and registers it as unpacked. `status` is the dpkg status
/// text, updated in place.
pub fn install_deb(
    tree: &mut Tree,
    spill: &mut Spill,
    layer: &DebLayer,
    status: &mut Vec<Stanza>,
    max_file: u64,
) -> Result<(), LayerError> {
    let pkg = layer.control.get("Package").unwrap_or("?").to_owned();
    let origin = format!("package `{pkg}`");
    let conffiles: BTreeSet<Vec<u8>> = layer
        .control_files
        .get("conffiles")
        .map(|c| {
            String::from_utf8_lossy(c).lines().map(|l| l.trim().as_bytes().to_vec()).filter(|l| !l.is_empty()).collect()
        })
        .unwrap_or_default();
    let reader = deb::tar_reader(&layer.deb.data.name, &layer.deb.data.data)
        .map_err(|source| LayerError::Deb { origin: origin.clone(), source })?;
    let placed = unpack_tar(tree, spill, reader, &Unpack::package(&origin, max_file))?;
    // Conffiles wait as `<path>.dpkg-new` for `dpkg --configure` to move them in.
    for c in &conffiles {
        let mut new = c.clone();
        new.extend_from_slice(b".dpkg-new");
        if let Ok(id) = tree.lookup(c, false) {
            let node = tree.node(id).clone();
            tree.remove(c).map_err(|source| LayerError::Tree {
                origin: origin.clone(),
                member: String::from_utf8_lossy(c).into(),
                source,
            })?;
            tree.insert(&new, node).map_err(|source| LayerError::Tree {
                origin: origin.clone(),
                member: String::from_utf8_lossy(c).into(),
                source,
            })?;
        }
    }
    // The dpkg database.
    let arch = layer.control.get("Architecture").unwrap_or("all");
    let key = if layer.control.get("Multi-Arch") == Some("same") { format!("{pkg}:{arch}") } else { pkg.clone() };
    let info = Meta::root(0o755);
    tree.mkdir_p(b"/var/lib/dpkg/info", &info).map_err(|source| LayerError::Tree {
        origin: origin.clone(),
        member: "/var/lib/dpkg/info".into(),
        source,
    })?;
    let mut list = String::from("/.\n");
    for p in &placed {
        let text = String::from_utf8_lossy(p);
        let text = text.trim_end_matches('/');
        if !text.is_empty() {
            list.push_str(text);
            list.push('\n');
        }
    }
    let mut info_files: Vec<(String, Vec<u8>)> = vec![(format!("{key}.list"), list.into_bytes())];
    for (name, bytes) in &layer.control_files {
        if name != "control" {
            info_files.push((format!("{key}.{name}"), bytes.clone()));
        }
    }
    for (name, bytes) in info_files {
        let exec =
            ["preinst", "postinst", "prerm", "postrm", "config"].iter().any(|s| name.ends_with(&format!(".{s}")));
        let data = spill.append_bytes(&bytes)?;
        let path = format!("/var/lib/dpkg/info/{name}");
        tree.insert(
            path.as_bytes(),
            Node { kind: Kind::File(data), meta: Meta::root(if exec { 0o755 } else { 0o644 }) },
        )
        .map_err(|source| LayerError::Tree { origin: origin.clone(), member: path.clone(), source })?;
    }
    let mut stanza = Stanza::default();
    stanza.set("Package", &pkg);
    stanza.set("Status", "install ok unpacked");
    for (k, v) in &layer.control.fields {
        if !k.eq_ignore_ascii_case("Package") {
            stanza.fields.push((k.clone(), v.clone()));
        }
    }
    if !conffiles.is_empty() {
        let lines: String =
            conffiles.iter().map(|c| format!("\n {} newconffile", String::from_utf8_lossy(c))).collect();
        stanza.set("Conffiles", &lines);
    }
    status.retain(|s| {
        !(s.get("Package") == Some(pkg.as_str())
            && s.get("Architecture").is_none_or(|a| a == arch || a == "all" || arch == "all"))
    });
    status.push(stanza);
    Ok(())
}

/// Renders a status file, stanzas sorted by package name as dpkg writes it.
pub fn render_status(status: &mut [Stanza]) -> String {
    status.sort_by(|a, b| (a.get("Package"), a.get("Architecture")).cmp(&(b.get("Package"), b.get("Architecture"))));
    status.iter().map(|s| format!("{}\n", s.render())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_name_what_was_found() {
        let base = installed(
            "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n\nPackage: mawk\nStatus: install ok installed\nVersion: 1.3.4\nProvides: awk\n",
        );
        let ok = deb::parse_stanzas("Package: a\nVersion: 1\nDepends: libc6 (>= 2.34), awk\n").unwrap().remove(0);
        check_depends(&ok, &base).unwrap();
        let bad = deb::parse_stanzas("Package: a\nVersion: 1\nPre-Depends: libc6 (>= 2.38)\n").unwrap().remove(0);
        let e = check_depends(&bad, &base).unwrap_err().to_string();
        assert_eq!(
            e,
            "package `a` pre-depends on `libc6 (>= 2.38)`, which is not satisfied: found libc6 2.36-9 (in the base)"
        );
        let missing = deb::parse_stanzas("Package: a\nVersion: 1\nDepends: libfoo | libbar\n").unwrap().remove(0);
        let e = check_depends(&missing, &base).unwrap_err().to_string();
        assert!(e.ends_with("`libfoo | libbar`, which is not satisfied: not installed"), "{e}");
    }
}
