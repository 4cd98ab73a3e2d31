//! qcow2 reading: version 2 and 3, uncompressed, zlib- and zstd-compressed
//! clusters, zero clusters. Pure: works on any `Read + Seek`.
//!
//! Refused with a clear error: backing files, encryption, external data files,
//! extended L2 entries, and any header whose tables would not fit the file or the
//! virtual size (so a hostile header cannot make us allocate or seek wildly).

use std::io::{self, Read, Seek, SeekFrom};

use super::{COMPRESSED, INCOMPAT_COMPRESSION, MAGIC};
use crate::format::endian::{be32, be64};

/// Largest L1 table accepted (qemu's own limit is 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Offset bits of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_ZERO: u64 = 1;

/// Errors reading qcow2.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Not qcow2 at all.
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    /// A header field out of range.
    #[error("corrupt qcow2 header: {0}")]
    BadHeader(String),
    /// A feature hearth does not read.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// A table entry pointing outside the file.
    #[error("corrupt qcow2: {what} at offset {offset} lies outside the file ({file_len} bytes)")]
    OutOfBounds {
        /// Which structure.
        what: &'static str,
        /// Where it points.
        offset: u64,
        /// The file's size.
        file_len: u64,
    },
    /// A compressed cluster that does not decompress to a full cluster.
    #[error("corrupt qcow2: compressed cluster at host offset {offset} does not decompress ({reason})")]
    BadCluster {
        /// Host offset.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// I/O.
    #[error("reading qcow2")]
    Io(#[from] io::Error),
}

/// Cluster compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (qcow2's default).
    Zlib,
    /// zstd frames.
    Zstd,
}

/// The parsed header.
#[derive(Clone, Debug)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table is.
    pub l1_offset: u64,
    /// How compressed clusters are compressed.
    pub compression: Compression,
}

/// Parses and checks a header (the first 112 bytes or more).
pub fn parse_header(buf: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
    let be32 = |o: usize| be32(buf, o);
    let be64 = |o: usize| be64(buf, o);
    if buf.len() < 72 || &buf[..4] != MAGIC {
        return Err(Qcow2Error::BadMagic);
    }
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Unsupported(format!("version {version}")));
    }
    if be64(8) != 0 || be32(16) != 0 {
        return Err(Qcow2Error::Unsupported("backing file (use a self-contained image)".into()));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Qcow2Error::BadHeader(format!("cluster_bits {cluster_bits} outside 9..=21")));
    }
    let size = be64(24);
    if size > 1 << 52 {
        return Err(Qcow2Error::BadHeader(format!("virtual size {size} is absurd")));
    }
    if be32(32) != 0 {
        return Err(Qcow2Error::Unsupported("encryption".into()));
    }
    let l1_size = be32(36);
    let l1_offset = be64(40);
    let cluster = 1u64 << cluster_bits;
    let per_l2 = cluster / 8;
    let needed = size.div_ceil(cluster).div_ceil(per_l2);
    if u64::from(l1_size) < needed {
        return Err(Qcow2Error::BadHeader(format!("L1 table of {l1_size} entries cannot map {size} bytes")));
    }
    if u64::from(l1_size) * 8 > MAX_L1_BYTES {
        return Err(Qcow2Error::BadHeader(format!("L1 table of {l1_size} entries is too large")));
    }
    if l1_offset % cluster != 0 || l1_offset.saturating_add(u64::from(l1_size) * 8) > file_len {
        return Err(Qcow2Error::OutOfBounds { what: "L1 table", offset: l1_offset, file_len });
    }
    let mut compression = Compression::Zlib;
    if version == 3 {
        if buf.len() < 104 {
            return Err(Qcow2Error::BadHeader("v3 header shorter than 104 bytes".into()));
        }
        let incompat = be64(72);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "incompatible feature bits {:#x}",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        if incompat & INCOMPAT_DIRTY != 0 {
            return Err(Qcow2Error::Unsupported(
                "dirty image (refcounts need repair: run `qemu-img check -r all`)".into(),
            ));
        }
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::BadHeader("image is marked corrupt".into()));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::Unsupported("external data file".into()));
        }
        if incompat & INCOMPAT_EXTL2 != 0 {
            return Err(Qcow2Error::Unsupported("extended L2 entries".into()));
        }
        let header_len = be32(100);
        if incompat & INCOMPAT_COMPRESSION != 0 {
            if header_len < 105 || buf.len() < 105 {
                return Err(Qcow2Error::BadHeader("compression type bit set without the field".into()));
            }
            compression = match buf[104] {
                0 => Compression::Zlib,
                1 => Compression::Zstd,
                other => return Err(Qcow2Error::Unsupported(format!("compression type {other}"))),
            };
        }
    }
    Ok(Header { version, cluster_bits, size, l1_size, l1_offset, compression })
}

/// A qcow2 image opened for reading its virtual disk.
pub struct Qcow2<R> {
    inner: R,
    header: Header,
    file_len: u64,
    l1: Vec<u64>,
    /// The L2 table last used: (its host offset, entries).
    l2: Option<(u64, Vec<u64>)>,
    /// The compressed cluster last decompressed: (descriptor, bytes).
    cluster: Option<(u64, Vec<u8>)>,
    pos: u64,
}

impl<R: Read + Seek> Qcow2<R> {
    /// Opens an image, reading its header and L1 table.
    pub fn open(mut inner: R) -> Result<Self, Qcow2Error> {
        let file_len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 512.min(file_len as usize)];
        inner.read_exact(&mut buf)?;
        let header = parse_header(&buf, file_len)?;
        inner.seek(SeekFrom::Start(header.l1_offset))?;
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        inner.read_exact(&mut raw)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2 { inner, header, file_len, l1, l2: None, cluster: None, pos: 0 })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits
    }

    /// Reads virtual bytes at `offset` into `buf` (zeros past unallocated space).
    pub fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), Qcow2Error> {
        if offset.saturating_add(buf.len() as u64) > self.header.size {
            return Err(Qcow2Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the virtual disk")));
        }
        while !buf.is_empty() {
            let cs = self.cluster_size();
            let in_cluster = offset % cs;
            let n = (cs - in_cluster).min(buf.len() as u64) as usize;
            self.read_in_cluster(offset - in_cluster, in_cluster, &mut buf[..n])?;
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn read_in_cluster(&mut self, cluster_start: u64, within: u64, out: &mut [u8]) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let per_l2 = cs / 8;
        let cluster_idx = cluster_start / cs;
        let l1_idx = (cluster_idx / per_l2) as usize;
        let l2_idx = (cluster_idx % per_l2) as usize;
        let l2_offset = self.l1[l1_idx] & OFFSET_MASK;
        if l2_offset == 0 {
            out.fill(0);
            return Ok(());
        }
        if self.l2.as_ref().is_none_or(|(o, _)| *o != l2_offset) {
            self.check_bounds("L2 table", l2_offset, cs)?;
            self.inner.seek(SeekFrom::Start(l2_offset))?;
            let mut raw = vec![0u8; cs as usize];
            self.inner.read_exact(&mut raw)?;
            let table = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
            self.l2 = Some((l2_offset, table));
        }
        let entry = self.l2.as_ref().expect("loaded").1[l2_idx];
        if entry & COMPRESSED != 0 {
            let data = self.compressed_cluster(entry)?;
            out.copy_from_slice(&data[within as usize..within as usize + out.len()]);
            return Ok(());
        }
        let host = entry & OFFSET_MASK;
        if entry & L2_ZERO != 0 || host == 0 {
            out.fill(0);
            return Ok(());
        }
        self.check_bounds("data cluster", host, cs)?;
        self.inner.seek(SeekFrom::Start(host + within))?;
        self.inner.read_exact(out)?;
        Ok(())
    }

    fn check_bounds(&self, what: &'static str, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        if offset.saturating_add(len) > self.file_len {
            return Err(Qcow2Error::OutOfBounds { what, offset, file_len: self.file_len });
        }
        Ok(())
    }

    fn compressed_cluster(&mut self, entry: u64) -> Result<&[u8], Qcow2Error> {
        if self.cluster.as_ref().is_none_or(|(e, _)| *e != entry) {
            let bits = self.header.cluster_bits;
            let x = 62 - (bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = ((entry & ((1u64 << 62) - 1)) >> x) + 1;
            let len = (sectors * 512 - (host & 511)).min(self.file_len.saturating_sub(host));
            if host >= self.file_len {
                return Err(Qcow2Error::OutOfBounds {
                    what: "compressed cluster",
                    offset: host,
                    file_len: self.file_len,
                });
            }
            self.inner.seek(SeekFrom::Start(host))?;
            let mut raw = vec![0u8; len as usize];
            self.inner.read_exact(&mut raw)?;
            let cs = self.cluster_size() as usize;
            let data = decompress(self.header.compression, &raw, cs)
                .map_err(|reason| Qcow2Error::BadCluster { offset: host, reason })?;
            self.cluster = Some((entry, data));
        }
        Ok(&self.cluster.as_ref().expect("set").1)
    }
}

/// Decompresses one cluster (exactly `cluster_size` bytes must come out; what
/// follows the compressed stream inside its last sector is ignored).
fn decompress(kind: Compression, raw: &[u8], cluster_size: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; cluster_size];
    match kind {
        Compression::Zlib => {
            let mut d = flate2::Decompress::new(false);
            d.decompress(raw, &mut out, flate2::FlushDecompress::Finish).map_err(|e| e.to_string())?;
            if d.total_out() as usize != cluster_size {
                return Err(format!("{} of {cluster_size} bytes", d.total_out()));
            }
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(raw).map_err(|e| e.to_string())?.single_frame();
            dec.read_exact(&mut out).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

impl<R: Read + Seek> Read for Qcow2<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.header.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n]).map_err(|e| match e {
            Qcow2Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Qcow2<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.header.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, cluster_bits: u32, size: u64, l1_size: u32, l1_offset: u64) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn hostile_headers_are_refused_cheaply() {
        assert!(matches!(parse_header(b"QFI", 3), Err(Qcow2Error::BadMagic)));
        let h = header(3, 40, 1 << 20, 1, 65536);
        assert!(matches!(parse_header(&h, 1 << 20), Err(Qcow2Error::BadHeader(_))));
        // An L1 table of 2^32-1 entries would need 32 GiB of memory.
        let h = header(3, 16, 1 << 40, u32::MAX, 65536);
        assert!(matches!(parse_header(&h, 1 << 20), Err(Qcow2Error::BadHeader(_))));
        // L1 table beyond the end of the file.
        let h = header(3, 16, 1 << 30, 2, 1 << 30);
        assert!(matches!(parse_header(&h, 1 << 20), Err(Qcow2Error::OutOfBounds { .. })));
        let mut h = header(3, 16, 1 << 30, 2, 65536);
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert!(matches!(parse_header(&h, 1 << 20), Err(Qcow2Error::Unsupported(_))));
        let ok = header(3, 16, 1 << 30, 2, 65536);
        let parsed = parse_header(&ok, 1 << 20).unwrap();
        assert_eq!((parsed.cluster_bits, parsed.compression), (16, Compression::Zlib));
    }

    #[test]
    fn unallocated_reads_as_zeros() {
        let mut img = header(3, 16, 1 << 20, 1, 65536);
        img.resize(65536 + 65536, 0);
        let mut q = Qcow2::open(io::Cursor::new(img)).unwrap();
        let mut buf = vec![1u8; 4096];
        q.read_at(12345, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        assert!(q.read_at((1 << 20) - 10, &mut buf).is_err());
    }
}
