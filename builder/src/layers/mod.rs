//! Applying a recipe's layers to an image tree, without unpacking anything as
//! the user who runs the build: tar members become tree nodes whose contents go
//! to a spill file (an external source of the tree), never to the host's paths.
//!
//! Order: debs (dependencies checked first, then unpacked and registered in the
//! dpkg database as "unpacked", so that `dpkg --configure -a` on first boot runs
//! their maintainer scripts), archives, files, OCI image archives, then scrub.
//!
//! Files: `spill` (the spill file), `tar` (members into the tree, release
//! archives of any compression), `dpkg` (dependency check, unpacking and
//! registering packages), `scrub`.

mod dpkg;
mod scrub;
mod spill;
mod tar;

use std::io;

use crate::files::FileError;
use crate::format::deb::DebError;
use crate::tree::TreeError;

pub use dpkg::{DebLayer, Pkg, check_depends, install_deb, installed, open_deb, render_status};
pub use scrub::scrub;
pub use spill::{SPILL_SOURCE, Spill};
pub use tar::{ArchiveFormat, Unpack, unpack_archive, unpack_tar};

/// Where preloaded OCI archives go in the image.
pub const IMAGES_DIR: &str = "/var/lib/hearth/images";

/// Errors of layering.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A tar member whose name is unsafe.
    #[error("{origin}: member `{member}` {why}")]
    Hostile {
        /// The package or archive.
        origin: String,
        /// The member name.
        member: String,
        /// What is wrong.
        why: String,
    },
    /// A tree operation failed.
    #[error("{origin}: placing `{member}`")]
    Tree {
        /// The package or archive.
        origin: String,
        /// The member.
        member: String,
        /// The cause.
        #[source]
        source: TreeError,
    },
    /// An unmet dependency.
    #[error("package `{package}` {field} `{relation}`, which is not satisfied: {found}")]
    Unmet {
        /// The package.
        package: String,
        /// `depends on` / `pre-depends on`.
        field: &'static str,
        /// The relation as written.
        relation: String,
        /// What was found instead.
        found: String,
    },
    /// A package that cannot be parsed.
    #[error("{origin}")]
    Deb {
        /// The package.
        origin: String,
        /// The cause.
        #[source]
        source: DebError,
    },
    /// An owner that does not resolve.
    #[error("owner `{0}` is not a user:group of the image (see its /etc/passwd and /etc/group)")]
    Owner(String),
    /// A host file (the spill file, an input).
    #[error(transparent)]
    File(#[from] FileError),
    /// A tar or compressed stream that cannot be read. Not a file: `what` names
    /// the package or archive (with the format found) and the member.
    #[error("{what}")]
    Stream {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn stream_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError {
    let what = what.into();
    move |source| LayerError::Stream { what, source }
}

/// Resolves `user:group` (names or numbers) against the image's passwd/group.
pub fn resolve_owner(owner: &str, passwd: &str, group: &str) -> Result<(u32, u32), LayerError> {
    let (u, g) = owner.split_once(':').ok_or_else(|| LayerError::Owner(owner.to_owned()))?;
    let lookup = |name: &str, db: &str| -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        db.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok()).flatten()
        })
    };
    Ok((
        lookup(u, passwd).ok_or_else(|| LayerError::Owner(owner.to_owned()))?,
        lookup(g, group).ok_or_else(|| LayerError::Owner(owner.to_owned()))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_by_name_or_number() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\netcd:x:998:997::/var/lib/etcd:/usr/sbin/nologin\n";
        let group = "root:x:0:\netcd:x:997:\n";
        assert_eq!(resolve_owner("etcd:etcd", passwd, group).unwrap(), (998, 997));
        assert_eq!(resolve_owner("0:5", passwd, group).unwrap(), (0, 5));
        assert!(resolve_owner("nobody:root", passwd, group).is_err());
    }
}
