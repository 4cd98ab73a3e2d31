//! A small base image shaped like Ubuntu's cloud image: GPT with BIOS boot (14),
//! ESP (15), an ext4 BOOT (16) holding the kernel and initrd, and the ext4 root
//! (1) last on the disk; made rootless with mke2fs -d, sgdisk and qemu-img.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ROOT_UUID: &str = "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9";
pub const KERNEL: &[u8] = b"not really a kernel, but the bytes must travel\n";
pub const INITRD: &[u8] = b"not really an initrd either\n";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// Builds the base in `dir`; returns the qcow2.
pub fn make_base(dir: &Path) -> PathBuf {
    let root = dir.join("base-root");
    write(&root, "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\netcd:x:998:997::/var/lib/etcd:/usr/sbin/nologin\n");
    write(&root, "etc/group", b"root:x:0:\netcd:x:997:\n");
    write(&root, "etc/machine-id", b"0123456789abcdef0123456789abcdef\n");
    write(&root, "etc/hostname", b"base\n");
    write(&root, "etc/fstab", b"LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=BOOT /boot ext4 defaults 0 2\n");
    write(&root, "etc/ssh/ssh_host_ed25519_key", b"secret host key\n");
    write(&root, "var/log/syslog", b"Nov 27 13:00:00 base kernel: boot\n");
    write(
        &root,
        "var/lib/dpkg/status",
        b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\nDescription: libc\n\n\
          Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\nDescription: base\n",
    );
    write(&root, "usr/bin/true-ish", b"#!/bin/sh\nexit 0\n");
    write(&root, "usr/lib/os-release", b"ID=fixture\n");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    let boot = dir.join("base-boot");
    write(&boot, "vmlinuz-6.1.0-test", KERNEL);
    write(&boot, "initrd.img-6.1.0-test", INITRD);
    std::os::unix::fs::symlink("vmlinuz-6.1.0-test", boot.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink("initrd.img-6.1.0-test", boot.join("initrd.img")).unwrap();

    let root_img = dir.join("root.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "64bit,metadata_csum", "-L", "cloudimg-rootfs", "-U", ROOT_UUID])
        .args(["-E", "hash_seed=5d2f1c3e-9a8b-4c7d-8e6f-102132435465"])
        .arg("-d")
        .arg(&root)
        .arg(&root_img)
        .arg("40M"));
    let boot_img = dir.join("boot.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "BOOT", "-d"])
        .arg(&boot)
        .arg(&boot_img)
        .arg("8M"));

    let raw = dir.join("base.raw");
    let root_start = 24576u64;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(root_start * 512 + (40 << 20) + (1 << 20)).unwrap();
    drop(f);
    run(Command::new("sgdisk")
        .args(["-n", "14:2048:4095", "-t", "14:EF02", "-n", "15:4096:8191", "-t", "15:EF00"])
        .args(["-n", "16:8192:24575", "-t", "16:EA00", "-n", &format!("1:{root_start}:0"), "-t", "1:8300"])
        .arg(&raw));
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&std::fs::read(&boot_img).unwrap(), 8192 * 512).unwrap();
    f.write_all_at(&std::fs::read(&root_img).unwrap(), root_start * 512).unwrap();
    f.write_all_at(b"ESP bytes that must travel unchanged", 4096 * 512).unwrap();
    drop(f);
    let qcow = dir.join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd"])
        .arg(&raw)
        .arg(&qcow));
    qcow
}

/// Builds a .deb with dpkg-deb from `files` (path, content, mode) and control data.
pub fn make_deb(
    dir: &Path,
    name: &str,
    control: &str,
    files: &[(&str, &[u8], u32)],
    scripts: &[(&str, &str)],
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = dir.join(format!("deb-{name}"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::write(tree.join("DEBIAN/control"), control).unwrap();
    for (script, body) in scripts {
        let p = tree.join("DEBIAN").join(script);
        std::fs::write(&p, body).unwrap();
        let mode = if *script == "conffiles" { 0o644 } else { 0o755 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for (path, body, mode) in files {
        write(&tree, path, body);
        std::fs::set_permissions(tree.join(path), std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = dir.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&out));
    out
}
