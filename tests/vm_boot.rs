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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, sha256_hex};
use hearth_testsupport::{Behavior, Server};

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

fn serve_file(srv: &Server, path: &Path) -> (String, String) {
    let bytes = std::fs::read(path).unwrap();
    let sha = sha256_hex(&bytes);
    let route = format!("/{}", path.file_name().unwrap().to_string_lossy());
    srv.serve(&route, bytes, Behavior::Normal);
    (srv.url(&route), sha)
}

fn one_deb(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}*.deb in {}", dir.display()))
}

#[test]
fn the_image_boots_configures_its_packages_and_grows_online() {
    if std::env::var("HEARTH_VM_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED: VM tests run with HEARTH_VM_TESTS=1 (tests/ci.sh sets it)");
        return;
    }
    let fixture =
        PathBuf::from(std::env::var("HEARTH_FIXTURE_DIR").expect("HEARTH_FIXTURE_DIR names the fixture directory"));
    let env = Env::new();
    let srv = Server::start();
    let (base_url, base_sha) = serve_file(&srv, &fixture.join("debian-12-base.qcow2"));
    let hello = one_deb(&fixture.join("debs"), "hello_");
    let less = one_deb(&fixture.join("debs"), "less_");
    let (hello_url, hello_sha) = serve_file(&srv, &hello);
    let (less_url, less_sha) = serve_file(&srv, &less);
    let fx_image = common::oci::fixture();
    let image_ref = common::oci::serve_image(&srv, &fx_image, "test/img", "1.0");
    let dir = env.path("recipe");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let images_files = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/files");
    for f in ["hearth-firstboot", "hearth-firstboot.service"] {
        std::fs::copy(images_files.join(f), dir.join("files").join(f)).unwrap();
    }
    let recipe = dir.join("fixture.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "debian-fixture"
[output]
virtual_size = "3GiB"
headroom = "256MiB"
epoch = 1700000000
[base]
name = "debian-12-base.qcow2"
urls = ["{base_url}"]
sha256 = "{base_sha}"
format = "qcow2"
[[debs]]
name = "hello"
urls = ["{hello_url}"]
sha256 = "{hello_sha}"
[[debs]]
name = "less"
urls = ["{less_url}"]
sha256 = "{less_sha}"
[[files]]
path = "/usr/local/lib/hearth/firstboot"
source = "files/hearth-firstboot"
mode = "0755"
[[files]]
path = "/etc/systemd/system/hearth-firstboot.service"
source = "files/hearth-firstboot.service"
[[files]]
path = "/etc/systemd/system/multi-user.target.wants/hearth-firstboot.service"
symlink = "/etc/systemd/system/hearth-firstboot.service"
[[images]]
reference = "{image_ref}"
digest = "{image_digest}"
"#,
            image_digest = fx_image.index
        ),
    )
    .unwrap();
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
    let mut seen: Vec<(String, f64)> = Vec::new();
    let log = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        for line in
            log.lines().filter(|l| l.contains("hearth-firstboot: stage") || l.contains("hearth-firstboot: done"))
        {
            if !seen.iter().any(|(l, _)| l == line) {
                seen.push((line.to_owned(), started.elapsed().as_secs_f64()));
            }
        }
        if log.contains("hearth-firstboot: done") || log.contains("hearth-firstboot: error") {
            break log;
        }
        assert!(started.elapsed() < BOOT_TIMEOUT, "no first boot within {BOOT_TIMEOUT:?}; console:\n{log}");
        std::thread::sleep(Duration::from_secs(2));
    };
    for (line, t) in &seen {
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
