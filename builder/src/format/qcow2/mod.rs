//! qcow2: the reader (`read`: version 2 and 3, zlib and zstd clusters, for base
//! images) and hearth's deterministic writer (`write`: version 3, zstd, for the
//! images it builds), and the on-disk constants they share.

pub mod read;
pub mod write;

pub use read::{Compression, Header, Qcow2, Qcow2Error, parse_header};

/// The header's magic.
const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bytes of the version 3 header hearth writes (up to the compression type).
const HEADER_LEN: u32 = 112;
/// An L1 or L2 entry's "refcount is exactly one" flag.
const COPIED: u64 = 1 << 63;
/// An L2 entry's "compressed cluster" flag.
const COMPRESSED: u64 = 1 << 62;
/// Incompatible feature: the header carries a compression type.
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
