//! ext4: on-disk constants shared by the reader and the writer.
//!
//! The writer makes a deliberately plain ext4 that the Ubuntu 24.04 kernel and
//! e2fsprogs 1.47 accept: 4 KiB blocks, 256-byte inodes, extents, a journal,
//! `meta_bg` group descriptors (so that the kernel can grow it online with no
//! reserved GDT blocks), sparse superblock backups, linear directories, in-inode
//! extended attributes, no checksums, no flex_bg. Everything is derived from the
//! tree and the options: the same input gives the same bytes.

pub mod read;
pub mod write;

/// Block size the writer uses.
pub const BLOCK: u64 = 4096;
/// Blocks per group at 4 KiB.
pub const BLOCKS_PER_GROUP: u64 = 32768;
/// Inode record size.
pub const INODE_SIZE: u64 = 256;
/// Bytes of the inode beyond the 128-byte core the writer uses.
pub const EXTRA_ISIZE: u16 = 32;
/// First inode that is not reserved.
pub const FIRST_INO: u32 = 11;
/// Root directory inode.
pub const ROOT_INO: u32 = 2;
/// Journal inode.
pub const JOURNAL_INO: u32 = 8;
/// Superblock magic.
pub const MAGIC: u16 = 0xEF53;
/// Extent header magic.
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// In-inode/xattr-block magic.
pub const XATTR_MAGIC: u32 = 0xEA02_0000;
/// jbd2 magic.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;

/// `s_feature_compat` bits.
pub mod compat {
    /// Has a journal.
    pub const HAS_JOURNAL: u32 = 0x4;
    /// Extended attributes.
    pub const EXT_ATTR: u32 = 0x8;
    /// Reserved GDT blocks for growth.
    pub const RESIZE_INODE: u32 = 0x10;
    /// Hashed directories.
    pub const DIR_INDEX: u32 = 0x20;
}
/// `s_feature_incompat` bits.
pub mod incompat {
    /// File type in directory entries.
    pub const FILETYPE: u32 = 0x2;
    /// Journal needs recovery.
    pub const RECOVER: u32 = 0x4;
    /// Meta block groups.
    pub const META_BG: u32 = 0x10;
    /// Extents.
    pub const EXTENTS: u32 = 0x40;
    /// 64-bit block numbers.
    pub const BIT64: u32 = 0x80;
    /// Flexible block groups.
    pub const FLEX_BG: u32 = 0x200;
    /// Data inline in inodes.
    pub const INLINE_DATA: u32 = 0x8000;
}
/// `s_feature_ro_compat` bits.
pub mod ro_compat {
    /// Sparse superblock backups.
    pub const SPARSE_SUPER: u32 = 0x1;
    /// Files over 2 GiB.
    pub const LARGE_FILE: u32 = 0x2;
    /// i_blocks in file-system blocks.
    pub const HUGE_FILE: u32 = 0x8;
    /// Group descriptor checksums.
    pub const GDT_CSUM: u32 = 0x10;
    /// More than 65000 subdirectories.
    pub const DIR_NLINK: u32 = 0x20;
    /// Large inodes.
    pub const EXTRA_ISIZE: u32 = 0x40;
    /// Metadata checksums.
    pub const METADATA_CSUM: u32 = 0x400;
}

/// Inode flag: uses extents.
pub const EXTENTS_FL: u32 = 0x80000;
/// Inode flag: has inline data.
pub const INLINE_DATA_FL: u32 = 0x1000_0000;

/// Whether group `g` holds a superblock backup under sparse_super.
pub fn has_super(g: u64) -> bool {
    fn power_of(mut n: u64, base: u64) -> bool {
        while n.is_multiple_of(base) && n > 1 {
            n /= base;
        }
        n == 1
    }
    g == 0 || g == 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
}

/// Extended attribute name prefixes and their index in on-disk entries.
pub const XATTR_PREFIXES: [(&[u8], u8); 6] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
    (b"system.", 7),
];

/// e2fsprogs' hash of an extended attribute entry (name, then value words).
pub fn xattr_entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &c in name {
        // The name bytes are signed chars in the reference implementation.
        hash = (hash << 5) ^ (hash >> 27) ^ (c as i8 as i32 as u32);
    }
    let mut padded = value.to_vec();
    padded.resize(value.len().div_ceil(4) * 4, 0);
    for w in padded.chunks_exact(4) {
        hash = (hash << 16) ^ (hash >> 16) ^ crate::format::endian::le32(w, 0);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let groups: Vec<u64> = (0..100).filter(|g| has_super(*g)).collect();
        assert_eq!(groups, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }
}
