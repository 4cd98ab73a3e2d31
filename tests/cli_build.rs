//! `hearth build` end to end on a small Ubuntu-shaped base: the image is judged
//! by qemu-img, sgdisk and e2fsck, read back file by file, and rebuilt bit for
//! bit in another store, directory, umask, TMPDIR, clock and (as root) user.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::base::{INITRD, KERNEL, make_base, make_deb};
use common::{Env, Run, require_tool, sha256_hex};
use hearth_builder::format::ext4::read::read_tree;
use hearth_builder::format::gpt::{Gpt, SECTOR};
use hearth_builder::tree::{Kind, Piece, Tree};
use hearth_testsupport::{Behavior, Server};

struct Fixture {
    env: Env,
    srv: Server,
    dir: PathBuf,
    recipe: PathBuf,
}

fn tools_present() -> bool {
    ["mke2fs", "sgdisk", "qemu-img", "dpkg-deb", "e2fsck", "debugfs"].iter().all(|t| require_tool(t))
}

fn tarball(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_uid(1001); // a CI runner's uid: must not reach the image
        h.set_cksum();
        b.append_data(&mut h, name, *body).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn serve(srv: &Server, path: &str, bytes: Vec<u8>) -> (String, String) {
    let sha = sha256_hex(&bytes);
    srv.serve(path, bytes, Behavior::Normal);
    (srv.url(path), sha)
}

fn fixture(extra_deb_depends: &str) -> Fixture {
    let env = Env::new();
    let dir = env.path("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    let srv = Server::start();
    let base = make_base(&dir);
    let hello = make_deb(
        &dir,
        "hello-hearth",
        &format!(
            "Package: hello-hearth\nVersion: 1.0\nArchitecture: amd64\nMaintainer: T <t@example.invalid>\n\
             Depends: libc6 (>= 2.30){extra_deb_depends}\nDescription: test package\n"
        ),
        &[("usr/bin/hello-hearth", b"#!/bin/sh\necho hello\n", 0o755)],
        &[("postinst", "#!/bin/sh\nset -e\necho configured > /var/lib/hello-hearth.configured\n")],
    );
    let conf = make_deb(
        &dir,
        "conf-hearth",
        "Package: conf-hearth\nVersion: 2.0\nArchitecture: all\nMaintainer: T <t@example.invalid>\n\
         Depends: hello-hearth (= 1.0)\nDescription: a package with a conffile\n",
        &[("etc/hearth.conf", b"key=value\n", 0o644), ("lib/hearth/helper", b"helper\n", 0o755)],
        &[("conffiles", "/etc/hearth.conf\n")],
    );
    let (base_url, base_sha) = serve(&srv, "/base.qcow2", std::fs::read(&base).unwrap());
    let (hello_url, hello_sha) = serve(&srv, "/hello.deb", std::fs::read(&hello).unwrap());
    let (conf_url, conf_sha) = serve(&srv, "/conf.deb", std::fs::read(&conf).unwrap());
    let (tools_url, tools_sha) =
        serve(&srv, "/tools.tar.gz", tarball(&[("tools-1.0/bin/tool", b"#!/bin/sh\n"), ("tools-1.0/README", b"doc")]));
    let (fetched_url, fetched_sha) = serve(&srv, "/fetched", b"fetched binary\n".to_vec());
    let fx_image = common::oci::fixture();
    let image_ref = common::oci::serve_image(&srv, &fx_image, "test/img", "1.0");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/unit.service"), "[Unit]\nDescription=from images/\n").unwrap();
    let recipe = dir.join("fixture.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "fixture-image"
[output]
virtual_size = "128MiB"
headroom = "8MiB"
epoch = 1700000000
[base]
name = "base.qcow2"
urls = ["{base_url}"]
sha256 = "{base_sha}"
format = "qcow2"
[[debs]]
name = "hello-hearth"
urls = ["{hello_url}"]
sha256 = "{hello_sha}"
[[debs]]
name = "conf-hearth"
urls = ["{conf_url}"]
sha256 = "{conf_sha}"
[[archives]]
name = "tools.tar.gz"
urls = ["{tools_url}"]
sha256 = "{tools_sha}"
prefix = "/opt/tools"
strip_components = 1
include = ["bin/"]
[[files]]
path = "/usr/local/bin/fetched"
urls = ["{fetched_url}"]
sha256 = "{fetched_sha}"
mode = "0750"
owner = "etcd:etcd"
[[files]]
path = "/etc/motd"
content = "built by hearth\n"
[[files]]
path = "/etc/systemd/system/unit.service"
source = "files/unit.service"
[[files]]
path = "/etc/systemd/system/multi-user.target.wants/unit.service"
symlink = "/etc/systemd/system/unit.service"
[[images]]
reference = "{image_ref}"
digest = "{image_digest}"
"#,
            image_digest = fx_image.index
        ),
    )
    .unwrap();
    Fixture { env, srv, dir, recipe }
}

fn outputs(entry: &str) -> BTreeMap<String, String> {
    ["disk.qcow2", "vmlinuz", "initrd.img", "manifest.json"]
        .iter()
        .map(|n| (n.to_string(), sha256_hex(&std::fs::read(Path::new(entry).join(n)).unwrap())))
        .collect()
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

/// Reads the root file system of a qcow2 disk: (tree, raw file holding it).
fn root_of(qcow: &Path, work: &Path) -> (Tree, File, Gpt) {
    let raw = work.join(format!("{}.raw", qcow.file_name().unwrap().to_string_lossy()));
    tool(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(qcow).arg(&raw));
    let f = File::open(&raw).unwrap();
    let len = f.metadata().unwrap().len();
    let gpt = Gpt::read(&mut File::open(&raw).unwrap(), len).unwrap();
    let root = gpt.partition(1).unwrap();
    let part = work.join(format!("{}.root", qcow.file_name().unwrap().to_string_lossy()));
    let mut bytes = vec![0u8; (root.sectors() * SECTOR) as usize];
    f.read_exact_at(&mut bytes, root.first_lba * SECTOR).unwrap();
    std::fs::write(&part, bytes).unwrap();
    let (tree, _) = read_tree(&mut File::open(&part).unwrap(), 0, 0).unwrap();
    (tree, File::open(&part).unwrap(), gpt)
}

fn file_bytes(tree: &Tree, src: &File, path: &str) -> Option<Vec<u8>> {
    let id = tree.lookup(path.as_bytes(), false).ok()?;
    let Kind::File(d) = &tree.node(id).kind else { return None };
    let mut out = vec![0u8; d.size as usize];
    for (at, p) in &d.pieces {
        if let Piece::External { offset, len, .. } = p {
            src.read_exact_at(&mut out[*at as usize..(*at + len) as usize], *offset).unwrap();
        }
    }
    Some(out)
}

#[test]
fn builds_a_valid_image_and_rebuilds_it_bit_for_bit() {
    if !tools_present() {
        return;
    }
    let fx = fixture("");
    let recipe = fx.recipe.to_str().unwrap();
    let r = fx.env.run(&["build", recipe]).ok();
    let entry = r.stdout.trim().to_owned();
    assert!(entry.contains("-fixture-image"), "{entry}");
    let qcow = Path::new(&entry).join("disk.qcow2");

    // Judged by the real tools.
    tool(Command::new("qemu-img").args(["check"]).arg(&qcow));
    let info = tool(Command::new("qemu-img").args(["info", "--output=json"]).arg(&qcow));
    assert!(info.contains("\"compression-type\": \"zstd\"") && info.contains("\"virtual-size\": 134217728"), "{info}");
    let work = fx.env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let (tree, src, gpt) = root_of(&qcow, &work);
    let raw = work.join("disk.qcow2.raw");
    assert!(tool(Command::new("sgdisk").arg("-v").arg(&raw)).contains("No problems found"));
    tool(Command::new("e2fsck").arg("-fn").arg(work.join("disk.qcow2.root")));
    assert_eq!(gpt.partitions.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 14, 15, 16]);
    let mut esp = vec![0u8; 36];
    File::open(&raw).unwrap().read_exact_at(&mut esp, 4096 * 512).unwrap();
    assert_eq!(&esp, b"ESP bytes that must travel unchanged");

    // Kernel and initrd come from the BOOT partition.
    assert_eq!(std::fs::read(Path::new(&entry).join("vmlinuz")).unwrap(), KERNEL);
    assert_eq!(std::fs::read(Path::new(&entry).join("initrd.img")).unwrap(), INITRD);

    // Layers.
    let get = |p: &str| file_bytes(&tree, &src, p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(get("/usr/bin/hello-hearth"), b"#!/bin/sh\necho hello\n");
    assert_eq!(get("/usr/lib/hearth/helper"), b"helper\n", "usr-merge: /lib/... lands in /usr/lib");
    assert_eq!(get("/etc/hearth.conf.dpkg-new"), b"key=value\n", "conffiles wait for dpkg --configure");
    assert!(file_bytes(&tree, &src, "/etc/hearth.conf").is_none());
    let status = String::from_utf8(get("/var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: hello-hearth\nStatus: install ok unpacked\n"), "{status}");
    assert!(status.contains("Package: conf-hearth\nStatus: install ok unpacked\n"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/hearth.conf newconffile\n"), "{status}");
    assert!(status.contains("Package: libc6\nStatus: install ok installed\n"), "{status}");
    assert_eq!(
        get("/var/lib/dpkg/info/hello-hearth.postinst"),
        b"#!/bin/sh\nset -e\necho configured > /var/lib/hello-hearth.configured\n"
    );
    let list = String::from_utf8(get("/var/lib/dpkg/info/conf-hearth.list")).unwrap();
    assert!(list.contains("/etc/hearth.conf\n") && list.contains("/lib/hearth/helper\n"), "{list}");
    assert_eq!(get("/opt/tools/bin/tool"), b"#!/bin/sh\n");
    assert!(tree.lookup(b"/opt/tools/README", false).is_err(), "include filter");
    let fetched = tree.node(tree.lookup(b"/usr/local/bin/fetched", false).unwrap());
    assert_eq!((fetched.meta.perm, fetched.meta.uid, fetched.meta.gid), (0o750, 998, 997));
    let tool_node = tree.node(tree.lookup(b"/opt/tools/bin/tool", false).unwrap());
    assert_eq!((tool_node.meta.uid, tool_node.meta.gid), (0, 0), "archives are root-owned");
    assert_eq!(get("/etc/motd"), b"built by hearth\n");
    assert_eq!(get("/etc/systemd/system/unit.service"), b"[Unit]\nDescription=from images/\n");
    let wants = tree.node(tree.lookup(b"/etc/systemd/system/multi-user.target.wants/unit.service", false).unwrap());
    assert_eq!(wants.kind, Kind::Symlink(b"/etc/systemd/system/unit.service".to_vec()));
    // The OCI archive, ready for `ctr images import`.
    let images: Vec<String> = match &tree.node(tree.lookup(b"/var/lib/hearth/images", false).unwrap()).kind {
        Kind::Dir(e) => e.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect(),
        _ => panic!("not a dir"),
    };
    assert_eq!(images.len(), 1, "{images:?}");
    let archive = get(&format!("/var/lib/hearth/images/{}", images[0]));
    let mut names: Vec<String> = tar::Archive::new(&archive[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.retain(|n| !n.starts_with("blobs/sha256/"));
    assert_eq!(names, ["blobs/", "index.json", "oci-layout"]);
    // Scrubbed.
    assert_eq!(get("/etc/machine-id"), b"");
    assert!(tree.lookup(b"/etc/ssh/ssh_host_ed25519_key", false).is_err());
    assert!(tree.lookup(b"/var/log/syslog", false).is_err());
    // Every other file of the base is there, unchanged, its mtime clamped.
    let base_dir = fx.env.path("base-check");
    std::fs::create_dir_all(&base_dir).unwrap();
    let (base_tree, base_src, _) = root_of(&fx.dir.join("base.qcow2"), &base_dir);
    for (path, id) in base_tree.walk_sorted() {
        let p = String::from_utf8_lossy(&path).into_owned();
        if ["/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key", "/var/log/syslog", "/var/lib/dpkg/status"]
            .contains(&p.as_str())
        {
            continue;
        }
        let out_id = tree.lookup(&path, false).unwrap_or_else(|_| panic!("{p} lost"));
        let (a, b) = (base_tree.node(id), tree.node(out_id));
        assert_eq!((a.meta.perm, a.meta.uid, a.meta.gid), (b.meta.perm, b.meta.uid, b.meta.gid), "{p}");
        assert_eq!(b.meta.mtime, a.meta.mtime.min(1_700_000_000), "{p}");
        if matches!(a.kind, Kind::File(_)) {
            assert_eq!(file_bytes(&tree, &src, &p), file_bytes(&base_tree, &base_src, &p), "{p}");
        }
    }

    // Found offline, as `hearth launch` will find it; absent from another store.
    let loaded = hearth_builder::recipe::load_recipe(&fx.recipe).unwrap();
    let store = hearth_builder::store::Store::open(&fx.env.store).unwrap();
    let found = hearth_builder::build::find_image(&store, &loaded).unwrap();
    assert_eq!(store.entry_dir(&found).display().to_string(), entry);
    let empty = hearth_builder::store::Store::open(fx.env.path("empty-store")).unwrap();
    let e = hearth_builder::build::find_image(&empty, &loaded).unwrap_err().to_string();
    assert!(e.contains("is not in the store (input `base/base.qcow2` is missing)"), "{e}");

    // A rebuild with everything in the store does nothing and prints the path.
    let again = fx.env.run(&["build", recipe]).ok();
    assert_eq!(again.stdout.trim(), entry);
    again.stderr_has("already built");
    fx.env.run(&["build", "--check", recipe]).ok().stdout_has("rebuilt bit for bit");
    let first = outputs(&entry);

    // Another store, directory, umask, TMPDIR, time zone and clock.
    let mut other = Env::new();
    let tmp = other.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    other.env("TMPDIR", tmp.to_str().unwrap()).env("TZ", "Asia/Tokyo");
    let mut cmd = other.cmd(&["build", recipe]);
    cmd.current_dir(&tmp);
    let faketime =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("faketime").is_file()));
    let mut wrapped = if faketime {
        let mut c = Command::new("faketime");
        c.arg("2031-02-03 04:05:06").arg(cmd.get_program()).args(cmd.get_args());
        c.env_clear().envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))).current_dir(&tmp);
        c
    } else {
        cmd
    };
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and touches only the child.
        unsafe {
            wrapped.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
    }
    let second = Run::from(wrapped.arg("--quiet").output().unwrap()).ok();
    let entry2 = second.stdout.trim().to_owned();
    assert_ne!(Path::new(&entry2).parent(), Path::new(&entry).parent());
    assert_eq!(Path::new(&entry2).file_name(), Path::new(&entry).file_name(), "same inputs, same store path");
    assert_eq!(outputs(&entry2), first);

    // As an unprivileged user, when this test runs as root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let shared = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let public = shared.path().join("recipe");
        std::fs::create_dir_all(public.join("files")).unwrap();
        std::fs::copy(&fx.recipe, public.join("fixture.toml")).unwrap();
        std::fs::copy(fx.dir.join("files/unit.service"), public.join("files/unit.service")).unwrap();
        for p in [shared.path(), public.as_path(), &public.join("files")] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        }
        let store = shared.path().join("store");
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_hearth"))
            .args(["--quiet", "--store"])
            .arg(&store)
            .arg("build")
            .arg(public.join("fixture.toml"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", shared.path())
            .current_dir(shared.path())
            .output()
            .unwrap();
        let r = Run::from(out).ok();
        let entry3 = r.stdout.trim().to_owned();
        assert_eq!(Path::new(&entry3).file_name(), Path::new(&entry).file_name());
        assert_eq!(outputs(&entry3), first, "built as nobody");
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&store).status();
    }
    // Not root: the builds above already ran unprivileged; CI, as root, runs the
    // root/unprivileged pair.

    // A changed input is another image.
    let text = std::fs::read_to_string(&fx.recipe).unwrap().replace("built by hearth", "built by hearth, changed");
    std::fs::write(&fx.recipe, text).unwrap();
    let changed = fx.env.run(&["build", recipe]).ok();
    assert_ne!(changed.stdout.trim(), entry);
    let _ = &fx.srv;
}

#[test]
fn an_unmet_dependency_fails_the_build_and_lands_nothing() {
    if !tools_present() {
        return;
    }
    let fx = fixture(", libfoo (>= 3)");
    let r = fx.env.run(&["build", fx.recipe.to_str().unwrap()]).fails();
    r.stderr_has("package `hello-hearth` depends on `libfoo (>= 3)`, which is not satisfied: not installed");
    assert!(!fx.env.entries().iter().any(|e| e.ends_with("-fixture-image")), "{:?}", fx.env.entries());
    assert!(std::fs::read_dir(fx.env.store.join(".tmp")).unwrap().next().is_none(), "work files left behind");
}

/// Rewrites the fixture's base through `damage` and serves that instead.
fn with_damaged_base(damage: impl FnOnce(&mut Vec<u8>)) -> (Fixture, String) {
    let fx = fixture("");
    let raw_path = fx.dir.join("base.raw");
    let mut raw = std::fs::read(&raw_path).unwrap();
    damage(&mut raw);
    let sha = sha256_hex(&raw);
    fx.srv.serve("/damaged.raw", raw, Behavior::Normal);
    let text = std::fs::read_to_string(&fx.recipe).unwrap();
    let start = text.find("[base]").unwrap();
    let end = text.find("[[debs]]").unwrap();
    let base = format!(
        "[base]\nname = \"damaged.raw\"\nurls = [\"{}\"]\nsha256 = \"{sha}\"\nformat = \"raw\"\n",
        fx.srv.url("/damaged.raw")
    );
    std::fs::write(&fx.recipe, format!("{}{base}{}", &text[..start], &text[end..])).unwrap();
    let recipe = fx.recipe.to_str().unwrap().to_owned();
    (fx, recipe)
}

#[test]
fn hostile_bases_are_clear_errors_and_land_nothing() {
    if !tools_present() {
        return;
    }
    // A qcow2 whose header claims an L1 table of 2^32-1 entries.
    let fx = fixture("");
    let mut q = std::fs::read(fx.dir.join("base.qcow2")).unwrap();
    q[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    let sha = sha256_hex(&q);
    fx.srv.serve("/base.qcow2", q, Behavior::Normal);
    let text = std::fs::read_to_string(&fx.recipe).unwrap();
    let old_sha = text.lines().find(|l| l.starts_with("sha256")).unwrap().to_owned();
    std::fs::write(&fx.recipe, text.replacen(&old_sha, &format!("sha256 = \"{sha}\""), 1)).unwrap();
    let r = fx.env.run(&["build", fx.recipe.to_str().unwrap()]).fails();
    r.stderr_has("reading the base image");
    r.stderr_has("corrupt qcow2 header: L1 table of 4294967295 entries is too large");
    assert!(!fx.env.entries().iter().any(|e| e.ends_with("-fixture-image")));

    // A raw base whose GPT has partition 16 (BOOT) overlapping the root.
    let (fx, recipe) = with_damaged_base(|raw| {
        let entries = 2 * 512usize;
        let e16 = entries + 15 * 128;
        raw[e16 + 40..e16 + 48].copy_from_slice(&24_600u64.to_le_bytes()); // past the root's first sector
        let crc = crc32fast::hash(&raw[entries..entries + 128 * 128]);
        raw[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
        raw[512 + 16..512 + 20].fill(0);
        let hcrc = crc32fast::hash(&raw[512..512 + 92]);
        raw[512 + 16..512 + 20].copy_from_slice(&hcrc.to_le_bytes());
    });
    let r = fx.env.run(&["build", &recipe]).fails();
    r.stderr_has("partition table of the base image");
    r.stderr_has("invalid GPT: partitions 16 (8192..=24600) and 1 (24576..=");
    r.stderr_has(") overlap");
    assert!(!fx.env.entries().iter().any(|e| e.ends_with("-fixture-image")));
    assert!(std::fs::read_dir(fx.env.store.join(".tmp")).unwrap().next().is_none(), "work files left behind");
}
