//! It boots: an image built on the Debian fixture base (real `hello` and `less`
//! packages, an OCI image, hearth's first-boot unit) is started by QEMU under
//! TCG with direct kernel boot from the stored kernel and initrd, on an overlay
//! larger than the image, with no network device. The serial console must show
//! the layered packages configured by `dpkg --configure -a`, the OCI archive
//! present and imported into containerd, and the root file system grown online
//! by cloud-init (growpart + resize2fs) to fill the disk.
//!
//! Runs when HEARTH_VM_TESTS=1 (tests/ci.sh sets it, with the fixture made by
//! tests/fixtures/debian-base.sh in HEARTH_FIXTURE_DIR).

#![allow(clippy::print_stderr)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::fixture::FixtureRecipe;
use hearth_testsupport::Server;

/// The guest's whole first boot under TCG must fit in this.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

struct Qemu(Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_image_boots_configures_its_packages_and_grows_online() {
    let Some(fixture) = common::fixture::vm_tests_fixture() else { return };
    let env = Env::new();
    let srv = Server::start();
    let FixtureRecipe { recipe, image_ref } = common::fixture::write_fixture_recipe(&env, &srv, &fixture, "");
    let built = Instant::now();
    let r = env.run(&["build", recipe.to_str().unwrap()]).ok();
    eprintln!("build on the Debian fixture: {:.1} s", built.elapsed().as_secs_f64());
    let entry = PathBuf::from(r.stdout.trim());
    // The root file system of the image built from the real Debian tree passes e2fsck.
    let raw = env.path("image.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(entry.join("disk.qcow2")).arg(&raw));
    let disk = std::fs::File::open(&raw).unwrap();
    let len = disk.metadata().unwrap().len();
    let table = hearth_builder::format::gpt::Gpt::read(&mut std::fs::File::open(&raw).unwrap(), len).unwrap();
    let root = table.partition(1).unwrap();
    let mut bytes = vec![0u8; (root.sectors() * 512) as usize];
    std::os::unix::fs::FileExt::read_exact_at(&disk, &mut bytes, root.first_lba * 512).unwrap();
    let root_img = env.path("root.ext4");
    std::fs::write(&root_img, bytes).unwrap();
    let fsck = Command::new("e2fsck").arg("-fn").arg(&root_img).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the Debian image:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert!(Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap().status.success());
    drop(disk);
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&root_img);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("manifest.json")).unwrap()).unwrap();
    let image_root: u64 = manifest["info"]["root-bytes"].as_str().unwrap().parse().unwrap();

    // A thin overlay larger than the image, as the appliance's disks are.
    let vm = env.path("vm");
    std::fs::create_dir_all(&vm).unwrap();
    let overlay = vm.join("overlay.qcow2");
    let disk_bytes: u64 = 5 << 30;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(entry.join("disk.qcow2"))
        .arg(&overlay)
        .arg(disk_bytes.to_string()));
    std::fs::write(vm.join("meta-data"), "instance-id: hearth-boot-test\nlocal-hostname: fixture\n").unwrap();
    std::fs::write(
        vm.join("user-data"),
        "#cloud-config\ngrowpart:\n  mode: auto\n  devices: ['/']\nresize_rootfs: true\n",
    )
    .unwrap();
    run(Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(vm.join("seed.iso"))
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(vm.join("user-data"))
        .arg(vm.join("meta-data")));
    let console = vm.join("console.log");
    let started = Instant::now();
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "2"])
            .args(["-display", "none", "-nic", "none", "-no-reboot", "-monitor", "none"])
            .arg("-kernel")
            .arg(entry.join("vmlinuz"))
            .arg("-initrd")
            .arg(entry.join("initrd.img"))
            .args(["-append", "root=LABEL=cloudimg-rootfs ro console=ttyS0 ds=nocloud systemd.show_status=false"])
            .arg("-drive")
            .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
            .arg("-drive")
            .arg(format!("if=virtio,format=raw,readonly=on,file={}", vm.join("seed.iso").display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let mut seen = common::fixture::Stages::default();
    let log = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        seen.see(&log, started.elapsed().as_secs_f64());
        if log.contains("hearth-firstboot: done") || log.contains("hearth-firstboot: error") {
            break log;
        }
        assert!(started.elapsed() < BOOT_TIMEOUT, "no first boot within {BOOT_TIMEOUT:?}; console:\n{log}");
        std::thread::sleep(Duration::from_secs(2));
    };
    for (line, t) in &seen.0 {
        eprintln!("{t:>6.1} s  {}", line.trim());
    }
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("hearth-firstboot: ")).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(!has("error"), "first boot failed:\n{}", lines.join("\n"));
    let configured =
        |pkg: &str| lines.iter().any(|l| l.contains(&format!("configured {pkg} ")) && l.trim_end().ends_with(" ii"));
    assert!(configured("hello") && configured("less"), "{}", lines.join("\n"));
    assert!(has("archive /var/lib/hearth/images/"), "{}", lines.join("\n"));
    assert!(has(&format!("ctr k8s.io image {image_ref}")), "{}", lines.join("\n"));
    let root = lines.iter().find(|l| l.contains("hearth-firstboot: root ")).expect("root line");
    let words: Vec<&str> = root.split_whitespace().collect();
    let fs_bytes: u64 = words[words.iter().position(|w| *w == "fs-bytes").unwrap() + 1].parse().unwrap();
    let disk: u64 = words[words.iter().position(|w| *w == "disk-bytes").unwrap() + 1].parse().unwrap();
    assert_eq!(disk, disk_bytes);
    assert!(
        fs_bytes > image_root + (1 << 30) && fs_bytes > disk_bytes * 8 / 10,
        "root did not grow: {fs_bytes} bytes on a {disk_bytes}-byte disk (image root {image_root})\n{root}"
    );
}
