//! The qcow2 reader against images written by the real `qemu-img`: every variant a
//! base image may come in must read back as the raw disk it was made from.

use std::process::Command;

use hearth_builder::format::qcow2::{Compression, Qcow2};

fn have_qemu_img() -> bool {
    hearth_testsupport::require_tool("qemu-img")
}

/// A raw disk with data, runs of zeros and a tail that is not cluster-aligned.
fn raw_disk() -> Vec<u8> {
    let mut v = Vec::with_capacity(5 << 20);
    let mut x = 0x1234_5678_9abc_def1u64;
    for block in 0..(5 * 256 + 3) {
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Zero runs, and compressible text-like runs, between random data.
            let byte = match block % 7 {
                0 | 1 => 0,
                2 => b"hearth "[(x % 7) as usize],
                _ => x as u8,
            };
            v.extend_from_slice(&[byte; 8]);
        }
    }
    v.truncate(5 * (1 << 20) + 3 * 4096 + 512);
    v
}

#[test]
fn reads_what_qemu_img_writes() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk();
    let raw_path = dir.path().join("disk.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let variants: [(&str, &[&str], Compression, u32); 5] = [
        ("plain-v3", &["-o", "compat=1.1"], Compression::Zlib, 3),
        ("plain-v2", &["-o", "compat=0.10"], Compression::Zlib, 2),
        ("zlib", &["-c", "-o", "compression_type=zlib"], Compression::Zlib, 3),
        ("zstd", &["-c", "-o", "compression_type=zstd"], Compression::Zstd, 3),
        ("zstd-4k-clusters", &["-c", "-o", "compression_type=zstd,cluster_size=4096"], Compression::Zstd, 3),
    ];
    for (name, args, compression, version) in variants {
        let out = dir.path().join(format!("{name}.qcow2"));
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .args(args)
            .arg(&raw_path)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "qemu-img convert {name}");
        let mut q = Qcow2::open(std::fs::File::open(&out).unwrap()).unwrap();
        assert_eq!((q.header().compression, q.header().version), (compression, version), "{name}");
        // qemu-img rounds the virtual size up to 512 bytes; compare what was written.
        assert!(q.size() >= raw.len() as u64, "{name}");
        let mut back = vec![0u8; raw.len()];
        q.read_at(0, &mut back).unwrap();
        assert!(back == raw, "{name}: virtual disk differs from the raw source");
        // Unaligned reads across cluster boundaries.
        let mut piece = vec![0u8; 70_001];
        q.read_at(65_530, &mut piece).unwrap();
        assert!(piece[..] == raw[65_530..65_530 + 70_001], "{name}: unaligned read");
    }
}

#[test]
fn a_truncated_image_is_an_error_not_a_panic() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.raw");
    std::fs::write(&raw_path, raw_disk()).unwrap();
    let out = dir.path().join("c.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&raw_path)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.truncate(bytes.len() / 2);
    let mut q = Qcow2::open(std::io::Cursor::new(bytes)).unwrap();
    let mut all = vec![0u8; 5 << 20];
    let err = q.read_at(0, &mut all).unwrap_err();
    assert!(err.to_string().contains("outside the file") || err.to_string().contains("does not decompress"), "{err}");
}

#[test]
fn qemu_img_accepts_what_hearth_writes() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk();
    let raw_path = dir.path().join("disk.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let out_path = dir.path().join("hearth.qcow2");
    let mut out = std::fs::File::create(&out_path).unwrap();
    hearth_builder::format::qcow2::write::write_qcow2(&raw[..], raw.len() as u64, &mut out, 2).unwrap();
    drop(out);
    let check = Command::new("qemu-img").args(["check", "--output=json"]).arg(&out_path).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "qemu-img check: {report}{}", String::from_utf8_lossy(&check.stderr));
    assert!(report.contains("\"compressed-clusters\""), "{report}");
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&out_path).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"compression-type\": \"zstd\""), "{info}");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw_path)
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(cmp.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&cmp.stdout));
    // qemu reads it the way our reader does.
    let back = dir.path().join("back.raw");
    let st = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&out_path).arg(&back).status().unwrap();
    assert!(st.success());
    assert!(std::fs::read(&back).unwrap()[..raw.len()] == raw[..]);
}
