//! A deterministic writer of compressed qcow2 (version 3, 64 KiB clusters,
//! zstd): the same raw disk gives the same bytes on every machine, because the
//! layout is fixed here and the compressor is the zstd pinned by Cargo.lock,
//! not whatever `qemu-img` a distribution ships.
//!
//! Layout, written in one pass: the header cluster, then the data (each non-zero
//! cluster zstd-compressed and packed at byte granularity, or stored whole at a
//! cluster boundary when compression does not pay), then the L2 tables, the L1
//! table, the refcount blocks and the refcount table; the header is rewritten
//! last with their offsets. All-zero clusters are left unallocated.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{COMPRESSED, COPIED, HEADER_LEN, INCOMPAT_COMPRESSION, MAGIC};

/// log2 of the cluster size.
pub const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// zstd level (qemu's default for qcow2 is 3 too).
pub const ZSTD_LEVEL: i32 = 3;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
/// Clusters compressed per batch (spread over the worker threads).
const BATCH: usize = 64;

enum Slot {
    Zero,
    Compressed(Vec<u8>),
    Raw(Vec<u8>),
}

/// Writes `input` (a raw disk of `size` bytes) as compressed qcow2 to `out`,
/// compressing on `threads` threads. Returns the bytes written.
pub fn write_qcow2<R: Read, W: Write + Seek>(mut input: R, size: u64, out: &mut W, threads: usize) -> io::Result<u64> {
    let mut pos = 0u64;
    let mut read_at = |offset: u64, buf: &mut [u8]| {
        // Sequential by construction: skipped ranges are read and dropped.
        while pos < offset {
            let n = (offset - pos).min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n])?;
            pos += n as u64;
        }
        input.read_exact(buf)?;
        pos += buf.len() as u64;
        Ok(())
    };
    write_qcow2_sparse(&mut read_at, &[(0, size)], size, out, threads)
}

/// Like [`write_qcow2`], reading through `read_at` only the `data` ranges
/// (sorted `(offset, len)`); everything else is known to be zeros (the holes of
/// a sparse file) and is not read at all.
pub fn write_qcow2_sparse<W: Write + Seek>(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    data: &[(u64, u64)],
    size: u64,
    out: &mut W,
    threads: usize,
) -> io::Result<u64> {
    let n_clusters = size.div_ceil(CLUSTER);
    let per_l2 = CLUSTER / 8;
    let l1_size = n_clusters.div_ceil(per_l2);
    let mut l2: Vec<Vec<u64>> = Vec::new(); // by L1 index, allocated lazily
    let mut l2_of: Vec<Option<usize>> = vec![None; l1_size as usize];
    // Refcount increments per host cluster, for the data area.
    let mut refs: Vec<u16> = vec![1]; // the header cluster
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&vec![0u8; CLUSTER as usize])?;
    let mut pos = CLUSTER;
    let threads = threads.max(1);
    let mut cluster_idx = 0u64;
    // Clusters are visited in order, so one cursor walks the sorted ranges.
    let mut range = 0usize;
    while cluster_idx < n_clusters {
        // Read a batch of clusters.
        let count = (n_clusters - cluster_idx).min(BATCH as u64) as usize;
        let mut raws = Vec::with_capacity(count);
        for i in 0..count {
            let at = (cluster_idx + i as u64) * CLUSTER;
            let len = (size - at).min(CLUSTER);
            while range < data.len() && data[range].0 + data[range].1 <= at {
                range += 1;
            }
            let has_data = range < data.len() && data[range].0 < at + len;
            if !has_data {
                raws.push(None);
                continue;
            }
            let mut buf = vec![0u8; CLUSTER as usize];
            read_at(at, &mut buf[..len as usize])?;
            raws.push(Some(buf));
        }
        let slots = compress_batch(raws, threads)?;
        for (i, slot) in slots.into_iter().enumerate() {
            let virt = cluster_idx + i as u64;
            let entry = match slot {
                Slot::Zero => 0,
                Slot::Compressed(data) => {
                    let start = pos;
                    out.write_all(&data)?;
                    pos += data.len() as u64;
                    let first_sector = start >> 9;
                    let last_sector = (pos - 1) >> 9;
                    for c in (first_sector << 9) / CLUSTER..=((last_sector << 9) / CLUSTER) {
                        bump(&mut refs, c);
                    }
                    let shift = 62 - (CLUSTER_BITS - 8);
                    COMPRESSED | ((last_sector - first_sector) << shift) | start
                }
                Slot::Raw(data) => {
                    let aligned = pos.div_ceil(CLUSTER) * CLUSTER;
                    if aligned > pos {
                        out.write_all(&vec![0u8; (aligned - pos) as usize])?;
                    }
                    out.write_all(&data)?;
                    pos = aligned + CLUSTER;
                    bump(&mut refs, aligned / CLUSTER);
                    COPIED | aligned
                }
            };
            if entry != 0 {
                let l1_idx = (virt / per_l2) as usize;
                let table = *l2_of[l1_idx].get_or_insert_with(|| {
                    l2.push(vec![0u64; per_l2 as usize]);
                    l2.len() - 1
                });
                l2[table][(virt % per_l2) as usize] = entry;
            }
        }
        cluster_idx += count as u64;
    }
    // Metadata after the data, cluster-aligned.
    let data_end = pos.div_ceil(CLUSTER) * CLUSTER;
    if data_end > pos {
        out.write_all(&vec![0u8; (data_end - pos) as usize])?;
    }
    let mut next = data_end / CLUSTER;
    let l2_first = next;
    next += l2.len() as u64;
    let l1_first = next;
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    next += l1_clusters;
    // Refcount blocks and table must count themselves: iterate to a fixpoint.
    let (mut rb, mut rt) = (1u64, 1u64);
    loop {
        let total = next + rb + rt;
        let rb2 = total.div_ceil(REFS_PER_BLOCK);
        let rt2 = (rb2 * 8).div_ceil(CLUSTER);
        if (rb2, rt2) == (rb, rt) {
            break;
        }
        (rb, rt) = (rb2, rt2);
    }
    let rb_first = next;
    let rt_first = rb_first + rb;
    let total_clusters = rt_first + rt;
    refs.resize(total_clusters as usize, 0);
    for c in l2_first..total_clusters {
        refs[c as usize] = 1;
    }
    // L2 tables, in L1 order of allocation (which is virtual order).
    for table in &l2 {
        let mut b = Vec::with_capacity(CLUSTER as usize);
        for e in table {
            b.extend_from_slice(&e.to_be_bytes());
        }
        out.write_all(&b)?;
    }
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, t) in l2_of.iter().enumerate() {
        if let Some(t) = t {
            let off = (l2_first + *t as u64) * CLUSTER;
            l1[i * 8..i * 8 + 8].copy_from_slice(&(off | COPIED).to_be_bytes());
        }
    }
    out.write_all(&l1)?;
    let mut blocks = vec![0u8; (rb * CLUSTER) as usize];
    for (c, r) in refs.iter().enumerate() {
        blocks[c * 2..c * 2 + 2].copy_from_slice(&r.to_be_bytes());
    }
    out.write_all(&blocks)?;
    let mut table = vec![0u8; (rt * CLUSTER) as usize];
    for i in 0..rb {
        table[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&((rb_first + i) * CLUSTER).to_be_bytes());
    }
    out.write_all(&table)?;
    // The header.
    let mut h = vec![0u8; CLUSTER as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&(l1_first * CLUSTER).to_be_bytes());
    h[48..56].copy_from_slice(&(rt_first * CLUSTER).to_be_bytes());
    h[56..60].copy_from_slice(&(rt as u32).to_be_bytes());
    h[72..80].copy_from_slice(&INCOMPAT_COMPRESSION.to_be_bytes());
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h[100..104].copy_from_slice(&HEADER_LEN.to_be_bytes());
    h[104] = 1; // zstd
    // Header extensions: only the end marker (type 0, length 0) at HEADER_LEN.
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&h)?;
    out.flush()?;
    Ok(total_clusters * CLUSTER)
}

fn bump(refs: &mut Vec<u16>, cluster: u64) {
    let c = cluster as usize;
    if refs.len() <= c {
        refs.resize(c + 1, 0);
    }
    refs[c] += 1;
}

fn compressor() -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    c.include_checksum(false)?;
    c.include_contentsize(false)?;
    Ok(c)
}

fn compress_one(c: &mut zstd::bulk::Compressor<'static>, raw: Option<Vec<u8>>) -> io::Result<Slot> {
    let Some(raw) = raw else { return Ok(Slot::Zero) };
    if crate::format::is_zero(&raw) {
        return Ok(Slot::Zero);
    }
    let data = c.compress(&raw)?;
    // Stored whole when compression saves less than a sector.
    if data.len() as u64 >= CLUSTER - 512 { Ok(Slot::Raw(raw)) } else { Ok(Slot::Compressed(data)) }
}

fn compress_batch(raws: Vec<Option<Vec<u8>>>, threads: usize) -> io::Result<Vec<Slot>> {
    if threads == 1 || raws.len() == 1 {
        let mut c = compressor()?;
        return raws.into_iter().map(|r| compress_one(&mut c, r)).collect();
    }
    let per = raws.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Option<Vec<u8>>>> = Vec::new();
    let mut it = raws.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut c = compressor()?;
                    chunk.into_iter().map(|r| compress_one(&mut c, r)).collect::<io::Result<Vec<Slot>>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().expect("compression thread panicked")?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::qcow2::Qcow2;

    fn disk(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut x = 7u64;
        for (i, b) in v.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = match (i / 65536) % 4 {
                0 => 0,
                1 => x as u8,
                2 => b"text "[i % 5],
                _ => (i / 3000) as u8,
            };
        }
        v
    }

    #[test]
    fn round_trips_through_the_reader_and_is_deterministic() {
        let raw = disk((3 << 20) + 12345);
        let mut a = io::Cursor::new(Vec::new());
        write_qcow2(&raw[..], raw.len() as u64, &mut a, 2).unwrap();
        let mut b = io::Cursor::new(Vec::new());
        write_qcow2(&raw[..], raw.len() as u64, &mut b, 1).unwrap();
        assert!(a.get_ref() == b.get_ref(), "threads must not change the bytes");
        let mut q = Qcow2::open(io::Cursor::new(a.into_inner())).unwrap();
        let mut back = vec![0u8; raw.len()];
        q.read_at(0, &mut back).unwrap();
        assert!(back == raw);
    }
}
