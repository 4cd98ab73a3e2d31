//! The deterministic OCI archive of an image-layout entry, for `ctr images
//! import`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::files::{FileError, PathReader};
use crate::store;

/// Writes an image-layout entry as a deterministic tar (sorted members, uid/gid
/// 0, mtime `mtime`, modes 0644/0755): the archive `ctr images import` takes.
/// An error reading the layout carries a [`FileError`] naming the file (see
/// [`FileError::carried_or`]); others come from `out`.
pub fn write_archive(layout: &Path, mtime: u64, out: impl Write) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(layout, layout, &mut paths)?;
    paths.retain(|(rel, _)| rel != store::MANIFEST_FILE);
    paths.sort();
    let mut tar = tar::Builder::new(out);
    for (rel, is_dir) in paths {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        if is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, format!("{rel}/"), io::empty())?;
        } else {
            let f = PathReader::open(&layout.join(&rel))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(f.size()?);
            tar.append_data(&mut h, &rel, f)?;
        }
    }
    tar.into_inner()?.flush()
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> Result<(), FileError> {
    for item in fs::read_dir(dir).map_err(FileError::at("reading", dir))? {
        let item = item.map_err(FileError::at("reading", dir))?;
        let rel = item.path().strip_prefix(base).expect("under base").to_string_lossy().into_owned();
        if item.file_type().map_err(FileError::at("reading", &item.path()))?.is_dir() {
            out.push((rel, true));
            collect(base, &item.path(), out)?;
        } else {
            out.push((rel, false));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("blobs/sha256/ab"), b"x").unwrap();
        fs::write(dir.path().join("index.json"), b"{}").unwrap();
        fs::write(dir.path().join("oci-layout"), b"{}").unwrap();
        fs::write(dir.path().join(store::MANIFEST_FILE), b"{}").unwrap();
        let mut a = Vec::new();
        write_archive(dir.path(), 0, &mut a).unwrap();
        let mut b = Vec::new();
        write_archive(dir.path(), 0, &mut b).unwrap();
        assert_eq!(a, b);
        let mut t = tar::Archive::new(&a[..]);
        let names: Vec<String> =
            t.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["blobs/", "blobs/sha256/", "blobs/sha256/ab", "index.json", "oci-layout"]);
    }
}
