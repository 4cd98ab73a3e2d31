//! GPT: reading a disk's partition table, checking it, and writing it anew for
//! a disk of another size with the root partition moved or resized. GUIDs,
//! attributes, names and partition numbers are kept; the protective MBR, both
//! headers and both entry arrays (with their CRC32s) are written where the
//! specification puts them.

use std::io::{self, Read, Seek, SeekFrom};

use super::endian::{le16, le32, le64};

/// Bytes per logical block.
pub const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
/// Most entries accepted (the usual table has 128).
const MAX_ENTRIES: u32 = 1024;

/// Errors of GPT handling.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// No valid primary header.
    #[error("no GPT: {0}")]
    NotGpt(String),
    /// A checksum did not match.
    #[error("GPT {what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Header or entries.
        what: &'static str,
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// The table is inconsistent.
    #[error("invalid GPT: {0}")]
    Invalid(String),
    /// I/O.
    #[error("reading GPT")]
    Io(#[from] io::Error),
}

/// One partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based index in the entry array (what `/dev/sdaN` and sgdisk call it).
    pub number: u32,
    /// Partition type GUID (on-disk byte order).
    pub type_guid: [u8; 16],
    /// Unique partition GUID (on-disk byte order).
    pub part_guid: [u8; 16],
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name, UTF-16LE as stored.
    pub name: [u8; 72],
}

impl Partition {
    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
    /// The name as text.
    pub fn name_string(&self) -> String {
        let units: Vec<u16> = self.name.chunks_exact(2).map(|c| le16(c, 0)).take_while(|u| *u != 0).collect();
        String::from_utf16_lossy(&units)
    }
}

/// A partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID (on-disk byte order).
    pub disk_guid: [u8; 16],
    /// Entries in the array (usually 128).
    pub num_entries: u32,
    /// Bytes per entry (usually 128).
    pub entry_size: u32,
    /// The used entries, by number.
    pub partitions: Vec<Partition>,
}

/// The Linux filesystem data partition type, as stored.
pub const LINUX_FS_TYPE: [u8; 16] = guid_bytes("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// Converts a textual GUID to its mixed-endian on-disk bytes.
pub const fn guid_bytes(text: &str) -> [u8; 16] {
    const fn hex(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let t = text.as_bytes();
    let mut raw = [0u8; 16];
    let mut i = 0;
    let mut j = 0;
    while i < t.len() {
        if t[i] == b'-' {
            i += 1;
            continue;
        }
        raw[j] = hex(t[i]) << 4 | hex(t[i + 1]);
        j += 1;
        i += 2;
    }
    // The first three fields are little-endian on disk.
    [
        raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9], raw[10], raw[11], raw[12],
        raw[13], raw[14], raw[15],
    ]
}

/// Formats on-disk GUID bytes as text.
pub fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

impl Gpt {
    /// Reads the primary table of a disk of `disk_bytes` bytes.
    pub fn read(disk: &mut (impl Read + Seek), disk_bytes: u64) -> Result<Gpt, GptError> {
        let last_lba = (disk_bytes / SECTOR).checked_sub(1).ok_or_else(|| GptError::NotGpt("disk is empty".into()))?;
        let mut hdr = [0u8; SECTOR as usize];
        disk.seek(SeekFrom::Start(SECTOR))?;
        disk.read_exact(&mut hdr)?;
        if &hdr[..8] != SIGNATURE {
            return Err(GptError::NotGpt("no `EFI PART` signature at LBA 1".into()));
        }
        let size = le32(&hdr, 12);
        if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
            return Err(GptError::Invalid(format!("header size {size}")));
        }
        let stored = le32(&hdr, 16);
        let mut copy = hdr;
        copy[16..20].fill(0);
        let computed = crc32fast::hash(&copy[..size as usize]);
        if stored != computed {
            return Err(GptError::Checksum { what: "header", stored, computed });
        }
        let first_usable = le64(&hdr, 40);
        let last_usable = le64(&hdr, 48);
        let entries_lba = le64(&hdr, 72);
        let num_entries = le32(&hdr, 80);
        let entry_size = le32(&hdr, 84);
        if num_entries == 0
            || num_entries > MAX_ENTRIES
            || entry_size < 128
            || !entry_size.is_multiple_of(8)
            || entry_size > 4096
        {
            return Err(GptError::Invalid(format!("{num_entries} entries of {entry_size} bytes")));
        }
        let array_bytes = u64::from(num_entries) * u64::from(entry_size);
        if entries_lba < 2 || entries_lba.saturating_mul(SECTOR).saturating_add(array_bytes) > disk_bytes {
            return Err(GptError::Invalid(format!("entry array at LBA {entries_lba} lies outside the disk")));
        }
        if first_usable > last_usable || last_usable > last_lba {
            return Err(GptError::Invalid(format!(
                "usable range {first_usable}..={last_usable} on a disk of {} sectors",
                last_lba + 1
            )));
        }
        let mut array = vec![0u8; array_bytes as usize];
        disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
        disk.read_exact(&mut array)?;
        let stored = le32(&hdr, 88);
        let computed = crc32fast::hash(&array);
        if stored != computed {
            return Err(GptError::Checksum { what: "entry array", stored, computed });
        }
        let mut partitions = Vec::new();
        for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
            let type_guid: [u8; 16] = e[..16].try_into().expect("16");
            if type_guid == [0; 16] {
                continue;
            }
            let p = Partition {
                number: i as u32 + 1,
                type_guid,
                part_guid: e[16..32].try_into().expect("16"),
                first_lba: le64(e, 32),
                last_lba: le64(e, 40),
                attributes: le64(e, 48),
                name: e[56..128].try_into().expect("72"),
            };
            if p.first_lba > p.last_lba || p.first_lba < first_usable || p.last_lba > last_usable {
                return Err(GptError::Invalid(format!(
                    "partition {} spans {}..={}, outside the usable {first_usable}..={last_usable}",
                    p.number, p.first_lba, p.last_lba
                )));
            }
            partitions.push(p);
        }
        let gpt = Gpt { disk_guid: hdr[56..72].try_into().expect("16"), num_entries, entry_size, partitions };
        gpt.check_overlaps()?;
        Ok(gpt)
    }

    /// Fails if two partitions share a sector.
    pub fn check_overlaps(&self) -> Result<(), GptError> {
        let mut by_start: Vec<&Partition> = self.partitions.iter().collect();
        by_start.sort_by_key(|p| p.first_lba);
        for w in by_start.windows(2) {
            if w[1].first_lba <= w[0].last_lba {
                return Err(GptError::Invalid(format!(
                    "partitions {} ({}..={}) and {} ({}..={}) overlap",
                    w[0].number, w[0].first_lba, w[0].last_lba, w[1].number, w[1].first_lba, w[1].last_lba
                )));
            }
        }
        Ok(())
    }

    /// The partition with this number.
    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// Sectors the entry array takes.
    pub fn array_sectors(&self) -> u64 {
        (u64::from(self.num_entries) * u64::from(self.entry_size)).div_ceil(SECTOR)
    }

    /// First usable LBA on any disk (after MBR, header and array).
    pub fn first_usable(&self) -> u64 {
        2 + self.array_sectors()
    }

    /// Last usable LBA on a disk of `disk_sectors` sectors.
    pub fn last_usable(&self, disk_sectors: u64) -> u64 {
        disk_sectors - 2 - self.array_sectors()
    }

    /// Renders the table for a disk of `disk_sectors` sectors: the bytes of LBA
    /// 0..first_usable (protective MBR, primary header, array) and of the backup
    /// (array then header), with the sector where the backup starts.
    pub fn render(&self, disk_sectors: u64) -> Result<RenderedGpt, GptError> {
        let first_usable = self.first_usable();
        let last_usable = self.last_usable(disk_sectors);
        for p in &self.partitions {
            if p.first_lba < first_usable || p.last_lba > last_usable || p.first_lba > p.last_lba {
                return Err(GptError::Invalid(format!(
                    "partition {} ({}..={}) does not fit a disk of {disk_sectors} sectors",
                    p.number, p.first_lba, p.last_lba
                )));
            }
            if p.number == 0 || p.number > self.num_entries {
                return Err(GptError::Invalid(format!("partition number {}", p.number)));
            }
        }
        self.check_overlaps()?;
        let mut array = vec![0u8; (self.array_sectors() * SECTOR) as usize];
        for p in &self.partitions {
            let o = (p.number as usize - 1) * self.entry_size as usize;
            let e = &mut array[o..o + 128];
            e[..16].copy_from_slice(&p.type_guid);
            e[16..32].copy_from_slice(&p.part_guid);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            e[56..128].copy_from_slice(&p.name);
        }
        let array_crc = crc32fast::hash(&array[..(u64::from(self.num_entries) * u64::from(self.entry_size)) as usize]);
        let last_lba = disk_sectors - 1;
        let backup_array_lba = last_lba - self.array_sectors();
        let header = |current: u64, backup: u64, entries: u64| {
            let mut h = vec![0u8; SECTOR as usize];
            h[..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&REVISION.to_le_bytes());
            h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
            h[24..32].copy_from_slice(&current.to_le_bytes());
            h[32..40].copy_from_slice(&backup.to_le_bytes());
            h[40..48].copy_from_slice(&first_usable.to_le_bytes());
            h[48..56].copy_from_slice(&last_usable.to_le_bytes());
            h[56..72].copy_from_slice(&self.disk_guid);
            h[72..80].copy_from_slice(&entries.to_le_bytes());
            h[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
            h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let mut primary = protective_mbr(disk_sectors);
        primary.extend(header(1, last_lba, 2));
        primary.extend_from_slice(&array);
        let mut backup = array;
        backup.extend(header(last_lba, 1, backup_array_lba));
        Ok(RenderedGpt { primary, backup, backup_lba: backup_array_lba })
    }
}

/// The bytes of a GPT for one disk size.
#[derive(Clone, Debug)]
pub struct RenderedGpt {
    /// LBA 0 up to the first usable sector.
    pub primary: Vec<u8>,
    /// The backup array and header, to be written at `backup_lba`.
    pub backup: Vec<u8>,
    /// Where `backup` goes.
    pub backup_lba: u64,
}

fn protective_mbr(disk_sectors: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, first: u64, last: u64) -> Partition {
        let mut name = [0u8; 72];
        for (i, c) in format!("p{number}").encode_utf16().enumerate() {
            name[i * 2..i * 2 + 2].copy_from_slice(&c.to_le_bytes());
        }
        Partition {
            number,
            type_guid: LINUX_FS_TYPE,
            part_guid: [number as u8; 16],
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name,
        }
    }

    fn disk_with(gpt: &Gpt, sectors: u64) -> Vec<u8> {
        let r = gpt.render(sectors).unwrap();
        let mut disk = vec![0u8; (sectors * SECTOR) as usize];
        disk[..r.primary.len()].copy_from_slice(&r.primary);
        let o = (r.backup_lba * SECTOR) as usize;
        disk[o..o + r.backup.len()].copy_from_slice(&r.backup);
        disk
    }

    #[test]
    fn guids_print_as_written() {
        assert_eq!(guid_string(&LINUX_FS_TYPE), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }

    #[test]
    fn overlapping_partitions_are_named() {
        let gpt = Gpt {
            disk_guid: [7; 16],
            num_entries: 128,
            entry_size: 128,
            partitions: vec![part(1, 2048, 4095), part(2, 4000, 8191)],
        };
        let e = gpt.render(16384).unwrap_err().to_string();
        assert!(e.contains("partitions 1 (2048..=4095) and 2 (4000..=8191) overlap"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn render_then_read_round_trips(
            guid in proptest::array::uniform16(0u8..),
            sizes in proptest::collection::vec(1u64..5000, 1..6),
            extra in 0u64..100_000,
        ) {
            let mut partitions = Vec::new();
            let mut next = 2048;
            for (i, s) in sizes.iter().enumerate() {
                partitions.push(part(i as u32 + 1, next, next + s - 1));
                next += s;
            }
            let gpt = Gpt { disk_guid: guid, num_entries: 128, entry_size: 128, partitions };
            let sectors = next + 34 + extra;
            let disk = disk_with(&gpt, sectors);
            let back = Gpt::read(&mut std::io::Cursor::new(&disk), disk.len() as u64).unwrap();
            proptest::prop_assert_eq!(back, gpt);
        }
    }

    #[test]
    fn corrupted_tables_are_refused() {
        let gpt = Gpt { disk_guid: [1; 16], num_entries: 128, entry_size: 128, partitions: vec![part(1, 2048, 4095)] };
        let mut disk = disk_with(&gpt, 8192);
        disk[512 + 600] ^= 1; // inside the entry array
        let e = Gpt::read(&mut std::io::Cursor::new(&disk), disk.len() as u64).unwrap_err();
        assert!(matches!(e, GptError::Checksum { what: "entry array", .. }), "{e}");
        let mut disk = disk_with(&gpt, 8192);
        disk[512 + 80] = 0xff; // number of entries
        assert!(Gpt::read(&mut std::io::Cursor::new(&disk), disk.len() as u64).is_err());
    }
}
