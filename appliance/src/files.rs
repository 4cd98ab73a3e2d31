//! The file helpers the PKI, the state directory and launch share: writing a
//! file whole (by rename, with its mode from the start: secrets are never
//! readable by others, not even briefly) and removing one that may be gone.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{op} `{}`", path.display())]
pub struct FileError {
    /// What.
    pub op: &'static str,
    /// Which.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError { op, path: path.to_owned(), source }
}

/// Writes `path` by rename from a `.partial` sibling, with `mode` from the start.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = path.with_extension("partial");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("writing", &tmp))?;
    // An existing `.partial` keeps its old mode through `open`: set it.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(err("protecting", &tmp))?;
    f.write_all(body).and_then(|()| f.sync_all()).map_err(err("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(err("writing", path))
}

/// Removes a file; a missing one is fine.
pub fn remove_if_present(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err("removing", path)(e)),
        _ => Ok(()),
    }
}
