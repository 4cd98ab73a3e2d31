//! Fixed-width integers at byte offsets of on-disk structures: little-endian
//! for GPT and ext4, big-endian for qcow2. A slice too short for the field is a
//! bug in the caller (every caller checks lengths first), so it panics.

/// The little-endian `u16` at `b[o..o + 2]`.
pub fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// The little-endian `u32` at `b[o..o + 4]`.
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `b[o..o + 8]`.
pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The big-endian `u32` at `b[o..o + 4]`.
pub fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// The big-endian `u64` at `b[o..o + 8]`.
pub fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_at_offsets() {
        let b = [0xff, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&b, 1), 0x0201);
        assert_eq!(le32(&b, 1), 0x0403_0201);
        assert_eq!(le64(&b, 1), 0x0807_0605_0403_0201);
        assert_eq!(be32(&b, 1), 0x0102_0304);
        assert_eq!(be64(&b, 1), 0x0102_0304_0506_0708);
    }
}
