//! Content digests: the `Sha256` newtype, streaming hashing, and the Nix base-32
//! encoding used for the hash part of store paths.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::Digest as _;

/// Size of the read buffer used when hashing files: large enough that the
/// per-call overhead vanishes next to SHA-NI throughput.
pub const HASH_BUF_SIZE: usize = 1 << 20;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

/// Why a string is not a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// Wrong number of hex digits.
    #[error("a sha256 has 64 hex digits, `{value}` has {len}")]
    Length {
        /// The offending text.
        value: String,
        /// Its length in characters.
        len: usize,
    },
    /// Not hexadecimal.
    #[error("`{value}` is not hexadecimal")]
    NotHex {
        /// The offending text.
        value: String,
    },
    /// An OCI digest with another algorithm.
    #[error("unsupported digest algorithm in `{value}` (only sha256 is accepted)")]
    Algorithm {
        /// The offending text.
        value: String,
    },
}

impl Sha256 {
    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Digest of everything a reader yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Self, u64)> {
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; HASH_BUF_SIZE];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `sha256:<hex>`, the OCI form.
    pub fn oci(&self) -> String {
        format!("sha256:{}", self.hex())
    }

    /// Parses `sha256:<hex>` (OCI) or bare hex.
    pub fn parse_oci(value: &str) -> Result<Self, DigestParseError> {
        match value.split_once(':') {
            Some(("sha256", hex)) => hex.parse(),
            Some(_) => Err(DigestParseError::Algorithm { value: value.to_owned() }),
            None => value.parse(),
        }
    }
}

impl FromStr for Sha256 {
    type Err = DigestParseError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let len = value.chars().count();
        if len != 64 {
            return Err(DigestParseError::Length { value: value.to_owned(), len });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(value.to_ascii_lowercase(), &mut out)
            .map_err(|_| DigestParseError::NotHex { value: value.to_owned() })?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::parse_oci(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 that also counts the bytes it saw.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: sha2::Sha256,
    len: u64,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The digest and the byte count.
    pub fn finish(self) -> (Sha256, u64) {
        (Sha256(self.inner.finalize().into()), self.len)
    }
}

/// Nix's base-32 alphabet (no e, o, u, t: fewer accidental words).
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Encodes bytes the way Nix prints store-path hashes.
pub fn nix_base32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = (bytes[i] as u16) >> j;
        let hi = if i + 1 < bytes.len() { (bytes[i + 1] as u16) << (8 - j) } else { 0 };
        out.push(NIX_BASE32[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// The 32-character hash part of a store path for a key string: the first 160
/// bits of the key's SHA-256, in Nix base-32.
pub fn store_hash_part(key: &str) -> String {
    let digest = Sha256::of(key.as_bytes());
    nix_base32(&digest.0[..20])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_hex() {
        let hex = "32a9d30d18803da72f5936cf2b7b9efcb4d0bb63c67933f17e3bdfd1751de3f3";
        let d: Sha256 = hex.parse().unwrap();
        assert_eq!(d.to_string(), hex);
        assert_eq!(Sha256::parse_oci(&format!("sha256:{hex}")).unwrap(), d);
        assert_eq!(d.hex().to_uppercase().parse::<Sha256>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!("abc".parse::<Sha256>(), Err(DigestParseError::Length { len: 3, .. })));
        let not_hex = "z".repeat(64);
        assert!(matches!(not_hex.parse::<Sha256>(), Err(DigestParseError::NotHex { .. })));
        assert!(matches!(
            Sha256::parse_oci(&format!("sha512:{}", "0".repeat(64))),
            Err(DigestParseError::Algorithm { .. })
        ));
    }

    #[test]
    fn known_answer() {
        assert_eq!(Sha256::of(b"abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let (d, n) = Sha256::of_reader(&b"abc"[..]).unwrap();
        assert_eq!((d, n), (Sha256::of(b"abc"), 3));
    }

    proptest::proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(0u8..)) {
            let d = Sha256(bytes);
            proptest::prop_assert_eq!(d.hex().parse::<Sha256>().unwrap(), d);
            proptest::prop_assert_eq!(Sha256::parse_oci(&d.oci()).unwrap(), d);
        }

        #[test]
        fn nix_base32_is_injective_and_well_formed(a in proptest::array::uniform20(0u8..), b in proptest::array::uniform20(0u8..)) {
            let (ea, eb) = (nix_base32(&a), nix_base32(&b));
            proptest::prop_assert_eq!(ea.len(), 32);
            proptest::prop_assert!(ea.bytes().all(|c| NIX_BASE32.contains(&c)));
            proptest::prop_assert_eq!(ea == eb, a == b);
        }
    }

    #[test]
    fn nix_base32_matches_nix() {
        // `nix hash convert --to nix32 sha256:ba7816bf...` (the digest of "abc").
        let d = Sha256::of(b"abc");
        assert_eq!(nix_base32(&d.0), "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
        assert_eq!(store_hash_part("x").len(), 32);
    }
}
