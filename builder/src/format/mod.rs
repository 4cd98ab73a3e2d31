//! Byte-level image formats. **Architecture invariant:** nothing here spawns a
//! process, touches the network, the clock or the environment; everything works
//! on bytes and on `Read`/`Write`/`Seek`, so that it can be property-tested and
//! fuzzed.

pub mod deb;
pub mod endian;
pub mod ext4;
pub mod gpt;
pub mod qcow2;

/// 64 KiB of zeros, to compare against.
static ZEROS: [u8; 65536] = [0; 65536];

/// Whether `buf` is all zeros (memcmp-fast).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}
