//! File helpers for the store, the build and the appliance: one error that names
//! the operation and the file, writing a file whole (by rename, with its mode from
//! the start, synced with its directory), removing a file or a sealed tree that
//! may be gone, and copying while hashing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{self, Sha256};

/// A file operation that failed, naming the file. Where bytes go to or come from
/// a handed-in stream rather than a file, `path` is a path-like label of what
/// they are (the image path of a file in an image, the output named by the user).
#[derive(Debug, thiserror::Error)]
#[error("{op} `{}`", path.display())]
pub struct FileError {
    /// What was being done.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// For `map_err`: the failure of `op` on `path`.
    pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |source| FileError { op, path: path.to_owned(), source }
    }

    /// For `map_err` on an `io::Error` from a callback or adapter that may carry
    /// a `FileError` of its own (see `From<FileError> for io::Error`): that one,
    /// else the failure of `op` on `path`. So a stream copied from one file into
    /// another names the side that failed.
    pub fn carried_or<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |e| e.downcast::<FileError>().unwrap_or_else(FileError::at(op, path))
    }
}

/// For `Read`/`Write` adapters and callbacks that must return `io::Error`: the
/// `FileError` travels inside and comes out again by [`FileError::carried_or`].
impl From<FileError> for io::Error {
    fn from(e: FileError) -> io::Error {
        io::Error::other(e)
    }
}

/// A reader of the file `path` whose errors carry a [`FileError`] naming it, for
/// code that copies it into a stream (see [`FileError::carried_or`]).
pub struct PathReader<R> {
    inner: R,
    path: PathBuf,
}

impl PathReader<File> {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let inner = File::open(path).map_err(FileError::at("opening", path))?;
        Ok(PathReader { inner, path: path.to_owned() })
    }

    /// The file's size.
    pub fn size(&self) -> Result<u64, FileError> {
        Ok(self.inner.metadata().map_err(FileError::at("reading", &self.path))?.len())
    }
}

impl<R: Read> Read for PathReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| FileError::at("reading", &self.path)(e).into())
    }
}

/// The directory a path is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `path` whole: into a temporary sibling created with `mode` (set again,
/// in case a crashed attempt left the sibling with another mode; so a secret is
/// never readable by others, not even briefly), synced, renamed over `path`, and
/// the directory synced so that the rename survives a crash. A failure leaves
/// `path` as it was.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(FileError::at("writing", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(FileError::at("setting the mode of", &tmp))?;
        f.write_all(body).and_then(|()| f.sync_all()).map_err(FileError::at("writing", &tmp))?;
        fs::rename(&tmp, path).map_err(FileError::at("renaming into place", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Removes a file; a missing one is fine.
pub fn remove_if_present(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FileError::at("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a file or a whole tree, even one sealed read-only; a missing one is
/// fine.
pub fn remove_tree(path: &Path) -> Result<(), FileError> {
    fn unseal(p: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(p)?;
        if meta.is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
            for item in fs::read_dir(p)? {
                unseal(&item?.path())?;
            }
        }
        Ok(())
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::at("removing", path)(e)),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).map_err(FileError::at("removing", path)),
        Ok(_) => {}
    }
    unseal(path).map_err(FileError::at("unsealing", path))?;
    fs::remove_dir_all(path).map_err(FileError::at("removing", path))
}

/// Flushes a directory's entries (a rename into it) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(FileError::at("syncing directory", dir))
}

/// Copies `src` to a new file `dest`, returning the digest and size of the bytes.
pub fn copy_hashing(src: &Path, dest: &Path) -> Result<(Sha256, u64), FileError> {
    let mut input = File::open(src).map_err(FileError::at("opening", src))?;
    let mut out = File::create(dest).map_err(FileError::at("creating", dest))?;
    let mut hasher = digest::Hasher::new();
    let mut buf = vec![0u8; digest::HASH_BUF_SIZE];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FileError::at("reading", src)(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(FileError::at("writing", dest))?;
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_the_mode_from_the_start_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        // Debris of a crashed attempt with a looser mode.
        let tmp = dir.path().join(format!(".secret.key.{}.partial", std::process::id()));
        fs::write(&tmp, b"old").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!tmp.exists());
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        // A file that cannot be written names itself; the old content stays.
        let e = write_atomic(&dir.path().join("missing/x"), b"x", 0o644).unwrap_err();
        assert_eq!(e.op, "writing");
        assert!(e.to_string().contains("missing/.x."), "{e}");
    }

    #[test]
    fn a_carried_error_names_its_own_file() {
        let inner: io::Error = FileError::at("reading", Path::new("/in"))(io::ErrorKind::NotFound.into()).into();
        let e = FileError::carried_or("writing", Path::new("/out"))(inner);
        assert_eq!((e.op, e.path.as_path()), ("reading", Path::new("/in")));
        let e = FileError::carried_or("writing", Path::new("/out"))(io::ErrorKind::StorageFull.into());
        assert_eq!(e.to_string(), "writing `/out`");
    }

    #[test]
    fn removing_what_may_be_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        remove_if_present(&file).unwrap();
        fs::write(&file, b"x").unwrap();
        remove_if_present(&file).unwrap();
        assert!(!file.exists());
        let tree = dir.path().join("sealed");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/f"), b"x").unwrap();
        fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap();
    }
}
