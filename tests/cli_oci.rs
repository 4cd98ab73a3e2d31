//! OCI images: pulls by digest through the registry API, from the loopback test
//! server (anonymous bearer-token flow, redirect to blob storage) and from Debian's
//! real `docker-registry` with an image pushed by `skopeo`; tampering is caught.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::oci::{Fixture, INDEX_TYPE, MANIFEST_TYPE, fixture};
use common::{Env, Item, free_port, require_tool, sha256_hex, write_recipe};
use hearth_testsupport::{Behavior, RouteOpts, Server};

fn image_recipe(env: &Env, srv_for_base: &Server, reference: &str, digest: &str) -> String {
    srv_for_base.serve("/base.img", b"base".to_vec(), Behavior::Normal);
    let recipe = env.path("r.toml");
    write_recipe(&recipe, &Item::new("base", "base.img", &srv_for_base.url("/base.img"), b"base"), &[]);
    let mut text = std::fs::read_to_string(&recipe).unwrap();
    text.push_str(&format!("[[images]]\nreference = \"{reference}\"\ndigest = \"{digest}\"\n"));
    std::fs::write(&recipe, text).unwrap();
    recipe.display().to_string()
}

fn image_entry(env: &Env) -> std::path::PathBuf {
    let name = env.entries().into_iter().find(|e| e.contains("test_img")).expect("image entry");
    env.store.join(name)
}

fn blob_files(entry: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(entry.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn pull_with_anonymous_token_and_blob_redirect() {
    let env = Env::new();
    let srv = Server::start();
    // Blob storage is another origin, as a CDN or bucket is.
    let storage_srv = Server::start();
    let fx = fixture();
    let token = "anon-token-123";
    let challenge =
        format!(r#"Bearer realm="{}/token",service="test-registry",scope="repository:test/img:pull""#, srv.base());
    srv.serve("/token", format!(r#"{{"token":"{token}"}}"#).into_bytes(), Behavior::Normal);
    for (digest, (bytes, media)) in &fx.blobs {
        let kind = if *media == INDEX_TYPE || *media == MANIFEST_TYPE { "manifests" } else { "blobs" };
        let path = format!("/v2/test/img/{kind}/{digest}");
        let opts = RouteOpts { content_type: Some(media.to_string()), bearer: Some((token.into(), challenge.clone())) };
        if media.contains("layer") {
            // Layers live in "blob storage": the registry redirects there.
            let storage = format!("/storage/{digest}");
            storage_srv.serve(&storage, bytes.clone(), Behavior::Normal);
            srv.serve_with(&path, Vec::new(), Behavior::Redirect(storage_srv.url(&storage)), opts);
        } else {
            srv.serve_with(&path, bytes.clone(), Behavior::Normal, opts);
        }
    }
    let reference = format!("127.0.0.1:{}/test/img:1.0", srv.base().rsplit(':').next().unwrap());
    let recipe = image_recipe(&env, &srv, &reference, &fx.index);
    env.run(&["fetch", &recipe]).ok();

    let token_req = srv.headers("/token").pop().expect("token requested");
    assert!(
        token_req.contains("service=test-registry") && token_req.contains("scope=repository%3Atest%2Fimg%3Apull"),
        "{token_req}"
    );
    for d in &fx.amd64 {
        if fx.blobs[d].1.contains("layer") {
            let h = storage_srv.headers(&format!("/storage/{d}")).pop().unwrap().to_ascii_lowercase();
            assert!(!h.contains("authorization"), "the token leaked to blob storage: {h}");
        }
    }
    let entry = image_entry(&env);
    let mut want = fx.amd64.clone();
    want.sort();
    assert_eq!(blob_files(&entry), want, "exactly the amd64 closure is stored");
    for d in &fx.arm64_only {
        assert!(!blob_files(&entry).contains(d));
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], fx.index.as_str());
    assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], reference.as_str());
    env.run(&["store", "verify"]).ok();

    // A second fetch asks the registry nothing.
    let before = srv.requests("/token");
    env.run(&["fetch", &recipe]).ok().stdout_has("nothing to do");
    assert_eq!(srv.requests("/token"), before);

    // The OCI archive is deterministic and readable by skopeo.
    let a = env.path("a.tar");
    let b = env.path("b.tar");
    let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
    env.run(&["store", "export", "--oci-archive", &name, "-o", a.to_str().unwrap()]).ok();
    env.run(&["store", "export", "--oci-archive", &name, "-o", b.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    if require_tool("skopeo") {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--override-arch",
                "amd64",
                "--override-os",
                "linux",
                &format!("oci-archive:{}", a.display()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Architecture"], "amd64");
    }
}

#[test]
fn a_manifest_that_does_not_match_its_pin_is_rejected() {
    let env = Env::new();
    let srv = Server::start();
    let fx = fixture();
    // Serve the arm64 manifest's bytes where the index digest was pinned.
    let (arm_manifest, _) = &fx.blobs[&fx.arm64_only[0]];
    srv.serve_with(
        &format!("/v2/test/img/manifests/{}", fx.index),
        arm_manifest.clone(),
        Behavior::Normal,
        RouteOpts { content_type: Some(MANIFEST_TYPE.into()), bearer: None },
    );
    let reference = format!("127.0.0.1:{}/test/img:1.0", srv.base().rsplit(':').next().unwrap());
    let recipe = image_recipe(&env, &srv, &reference, &fx.index);
    let r = env.run(&["fetch", &recipe]).fails();
    r.stderr_has("does not match its pin");
    r.stderr_has(&format!("expected: {}", fx.index));
    assert!(!env.entries().iter().any(|e| e.contains("test_img")));
}

/// Debian's docker-registry on a loopback port, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    root: std::path::PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = free_port();
        let root = dir.join("registry-data");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { child, port, root };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return reg;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_layout(fx: &Fixture, dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for (d, (bytes, _)) in &fx.blobs {
        std::fs::write(dir.join("blobs/sha256").join(d.trim_start_matches("sha256:")), bytes).unwrap();
    }
    let size = fx.blobs[&fx.index].0.len();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{INDEX_TYPE}","digest":"{}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"1.0"}}}}]}}"#,
            fx.index
        ),
    )
    .unwrap();
}

#[test]
fn pull_from_a_real_registry_and_catch_a_tampered_blob() {
    if !require_tool("docker-registry") || !require_tool("skopeo") {
        return;
    }
    let env = Env::new();
    let fx = fixture();
    let layout = env.path("layout");
    write_layout(&fx, &layout);
    let reg = Registry::start(env.dir.path());
    let dest = format!("docker://127.0.0.1:{}/test/img:1.0", reg.port);
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!("oci:{}:1.0", layout.display()))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));

    let srv = Server::start();
    let reference = format!("127.0.0.1:{}/test/img:1.0", reg.port);
    let recipe = image_recipe(&env, &srv, &reference, &fx.index);
    env.run(&["fetch", &recipe]).ok();
    let entry = image_entry(&env);
    let mut want = fx.amd64.clone();
    want.sort();
    assert_eq!(blob_files(&entry), want);
    env.run(&["store", "verify"]).ok();

    // Flip a byte of the amd64 layer inside the registry's storage.
    let layer = fx.amd64.iter().find(|d| fx.blobs[*d].1.contains("layer")).unwrap();
    let hex = layer.trim_start_matches("sha256:");
    let data = reg.root.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let fresh = Env::new();
    let r = fresh.run(&["fetch", &recipe]).fails();
    r.stderr_has(&format!("digest mismatch for `http://127.0.0.1:{}/v2/test/img/blobs/{layer}`", reg.port));
    r.stderr_has(&format!("expected sha256: {hex}"));
    assert!(!fresh.entries().iter().any(|e| e.contains("test_img")), "{:?}", fresh.entries());
}

#[test]
fn lock_pins_unpinned_downloads_and_tags_then_fetch_uses_them() {
    let env = Env::new();
    let srv = Server::start();
    let fx = fixture();
    for (digest, (bytes, media)) in &fx.blobs {
        let kind = if *media == INDEX_TYPE || *media == MANIFEST_TYPE { "manifests" } else { "blobs" };
        let opts = RouteOpts { content_type: Some(media.to_string()), bearer: None };
        srv.serve_with(&format!("/v2/test/img/{kind}/{digest}"), bytes.clone(), Behavior::Normal, opts);
    }
    let index = fx.blobs[&fx.index].0.clone();
    let opts = RouteOpts { content_type: Some(INDEX_TYPE.into()), bearer: None };
    srv.serve_with("/v2/test/img/manifests/1.0", index, Behavior::Normal, opts);
    let deb = b"pretend this is a .deb".to_vec();
    srv.serve("/hello.deb", deb.clone(), Behavior::Normal);
    srv.serve("/base.img", b"base".to_vec(), Behavior::Normal);
    let reference = format!("127.0.0.1:{}/test/img:1.0", srv.base().rsplit(':').next().unwrap());
    let recipe = env.path("img.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"t\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 0\n[base]\nname = \"base.img\"\nurls = [\"{}\"]\n\
             sha256 = \"{}\"\nformat = \"raw\"\n[[debs]]\nname = \"hello\"\nurls = [\"{}\"]\n[[images]]\nreference = \"{reference}\"\n",
            srv.url("/base.img"),
            sha256_hex(b"base"),
            srv.url("/hello.deb")
        ),
    )
    .unwrap();
    let recipe_arg = recipe.to_str().unwrap();
    let r = env.run(&["fetch", recipe_arg]).fails();
    r.stderr_has("2 input(s)");
    r.stderr_has("not pinned");
    r.stderr_has(&format!("hearth lock {recipe_arg}"));

    env.run(&["--offline", "lock", recipe_arg]).fails().stderr_has("--offline forbids it");
    let r = env.run(&["lock", recipe_arg]).ok();
    r.stdout_has(&format!("pinned  debs/hello = sha256:{}", sha256_hex(&deb)));
    r.stdout_has(&format!("pinned  images/{reference} = {}", fx.index));
    let lock = std::fs::read_to_string(env.path("img.lock")).unwrap();
    assert!(lock.contains(&format!("\"debs/hello\" = \"{}\"", sha256_hex(&deb))), "{lock}");
    assert!(
        lock.contains(&format!("\"images/{reference}\" = \"{}\"", fx.index.trim_start_matches("sha256:"))),
        "{lock}"
    );

    // The lock's download was kept: fetch fetches the image only.
    env.run(&["fetch", recipe_arg]).ok();
    assert_eq!(srv.requests("/hello.deb"), 1);
    let r = env.run(&["lock", recipe_arg]).ok();
    r.stdout_has("is up to date (2 pins)");
    assert_eq!(srv.requests("/v2/test/img/manifests/1.0"), 1);
    assert_eq!(std::fs::read_to_string(env.path("img.lock")).unwrap(), lock);
}
