//! Where hearth keeps things when no flag says: as root under `/var/lib/hearth`,
//! otherwise under the user's XDG base directories.

use std::path::PathBuf;

use crate::cli::Global;

/// `flag` if given; as root `/var/lib/hearth/<leaf>`; else `$<xdg>/hearth/<leaf>`,
/// `$XDG_*` falling back to `$HOME/<home_rel>`.
fn default_dir(flag: Option<&PathBuf>, leaf: &str, xdg: &str, home_rel: &str, what: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.clone());
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/hearth").join(leaf));
    }
    let base = std::env::var_os(xdg)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_rel)))
        .ok_or_else(|| anyhow::anyhow!("neither --{what}, {xdg} nor HOME is set"))?;
    Ok(base.join("hearth").join(leaf))
}

/// The store: `--store`/`HEARTH_STORE`, else `/var/lib/hearth/store` as root,
/// else `$XDG_DATA_HOME/hearth/store`.
pub fn store_dir(g: &Global) -> anyhow::Result<PathBuf> {
    default_dir(g.store.as_ref(), "store", "XDG_DATA_HOME", ".local/share", "store")
}

/// Appliance state: `--state`/`HEARTH_STATE`, else `/var/lib/hearth/appliances`
/// as root, else `$XDG_STATE_HOME/hearth/appliances`.
pub fn state_root(g: &Global) -> anyhow::Result<PathBuf> {
    default_dir(g.state.as_ref(), "appliances", "XDG_STATE_HOME", ".local/state", "state")
}
