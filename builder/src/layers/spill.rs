//! The spill file: an append-only file that holds what layers add to the image,
//! an external source of the tree.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::LayerError;
use crate::files::FileError;
use crate::tree::Data;

/// Source number of the spill file in trees built here.
pub const SPILL_SOURCE: u32 = 1;

/// The append-only file that holds layer contents.
pub struct Spill {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Spill {
    /// A spill file at `path` (created, truncated).
    pub fn create(path: &Path) -> Result<Spill, LayerError> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .map_err(FileError::at("creating", path))?;
        Ok(Spill { file, path: path.to_owned(), len: 0 })
    }

    /// Appends exactly `size` bytes from `r`. A read error that carries a
    /// [`FileError`] (a [`crate::files::PathReader`]) stays one; any other is
    /// a [`LayerError::Stream`] on `what()`.
    pub fn append(&mut self, r: &mut dyn Read, size: u64, what: impl FnOnce() -> String) -> Result<Data, LayerError> {
        let read_err = |e: io::Error| match e.downcast::<FileError>() {
            Ok(file) => LayerError::File(file),
            Err(source) => LayerError::Stream { what: what(), source },
        };
        let start = self.len;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = match r.read(&mut buf[..left.min(1 << 20) as usize]) {
                Ok(0) => {
                    let missing = format!("{left} of {size} bytes missing");
                    return Err(read_err(io::Error::new(io::ErrorKind::UnexpectedEof, missing)));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            self.file.write_all_at(&buf[..n], self.len).map_err(FileError::at("writing", &self.path))?;
            self.len += n as u64;
            left -= n as u64;
        }
        Ok(Data::external(SPILL_SOURCE, start, size))
    }

    /// Appends bytes.
    pub fn append_bytes(&mut self, bytes: &[u8]) -> Result<Data, LayerError> {
        self.append(&mut &bytes[..], bytes.len() as u64, || "bytes in memory".into())
    }

    /// Appends whatever `write` produces, returning it as one piece. An error
    /// that carries a [`FileError`] (reading what is written) stays one; any
    /// other is a failure to write the spill file.
    pub fn append_with(
        &mut self,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<Data, LayerError> {
        struct Appender<'a>(&'a mut Spill);
        impl io::Write for Appender<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.file.write_all_at(buf, self.0.len)?;
                self.0.len += buf.len() as u64;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let start = self.len;
        let path = self.path.clone();
        let mut w = io::BufWriter::with_capacity(1 << 20, Appender(self));
        write(&mut w).and_then(|()| io::Write::flush(&mut w)).map_err(FileError::carried_or("writing", &path))?;
        drop(w);
        Ok(Data::external(SPILL_SOURCE, start, self.len - start))
    }

    /// Reads back (the writer's source).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was spilled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
