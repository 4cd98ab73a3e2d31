//! `hearth fetch` against a real loopback HTTP server that misbehaves on purpose.
//! After every failure the store holds no entry and no unverified bytes.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Item, sha256_hex, write_recipe};
use hearth_testsupport::{Behavior, Server, pseudo_random};

fn one_input_recipe(env: &Env, srv: &Server, behavior: Behavior, len: usize) -> (Vec<u8>, String) {
    let bytes = pseudo_random(len, len as u64);
    srv.serve("/base.img", bytes.clone(), behavior);
    let base = Item::new("base", "base.img", &srv.url("/base.img"), &bytes);
    let recipe = env.path("r.toml");
    write_recipe(&recipe, &base, &[]);
    (bytes, recipe.display().to_string())
}

#[test]
fn fetch_fills_the_store_once_and_a_second_run_does_nothing() {
    let env = Env::new();
    let srv = Server::start();
    let base = pseudo_random(300_000, 1);
    let deb = pseudo_random(5_000, 2);
    let tool = pseudo_random(70_000, 3);
    srv.serve("/base.img", base.clone(), Behavior::Normal);
    srv.serve("/hello.deb", deb.clone(), Behavior::Normal);
    srv.serve("/tool", tool.clone(), Behavior::Normal);
    let recipe = env.path("r.toml");
    write_recipe(
        &recipe,
        &Item::new("base", "base.img", &srv.url("/base.img"), &base),
        &[
            Item::new("debs", "hello", &srv.url("/hello.deb"), &deb),
            Item::new("files", "tool", &srv.url("/tool"), &tool),
        ],
    );
    let r = env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    r.stdout_has("fetched 3 of 3 inputs");
    assert_eq!(env.entries().len(), 3, "{:?}", env.entries());
    let again = env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    again.stdout_has("already in the store; nothing to do");
    for p in ["/base.img", "/hello.deb", "/tool"] {
        assert_eq!(srv.requests(p), 1, "{p} requested twice");
    }
    env.run(&["store", "verify"]).ok().stdout_has("3 entries verified");
    // Each entry holds the bytes that were served.
    let path = env.run(&["store", "path", &env.entries()[0]]).ok().stdout.trim().to_owned();
    let inside: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(inside.len(), 2, "{inside:?}");
    assert!(env.partials().is_empty());
}

#[test]
fn wrong_bytes_name_the_url_and_both_hashes_and_leave_nothing() {
    let env = Env::new();
    let srv = Server::start();
    let (bytes, recipe) = one_input_recipe(&env, &srv, Behavior::WrongBytes, 100_000);
    let r = env.run(&["fetch", &recipe]).fails();
    r.stderr_has(&srv.url("/base.img"));
    r.stderr_has(&format!("expected sha256: {}", sha256_hex(&bytes)));
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0xff;
    r.stderr_has(&format!("computed sha256: {}", sha256_hex(&flipped)));
    r.stderr_has("base/base.img (line 6)");
    assert_eq!(srv.requests("/base.img"), 1, "a digest mismatch must not be retried");
    assert!(env.entries().is_empty());
    assert!(env.partials().is_empty(), "unverified bytes left: {:?}", env.partials());
}

#[test]
fn a_cut_connection_is_resumed_with_range() {
    let env = Env::new();
    let srv = Server::start();
    let len = 400_000;
    let (_, recipe) = one_input_recipe(&env, &srv, Behavior::CutAfter { after: 150_000, times: 1 }, len);
    env.run(&["fetch", &recipe]).ok();
    assert_eq!(srv.requests("/base.img"), 2);
    let headers = srv.headers("/base.img");
    assert!(headers[1].to_ascii_lowercase().contains("range: bytes=150000-"), "{}", headers[1]);
    assert_eq!(srv.bytes_sent("/base.img"), len as u64, "resume must not resend bytes");
    env.run(&["store", "verify"]).ok();
}

#[test]
fn not_found_is_not_retried_and_leaves_nothing() {
    let env = Env::new();
    let srv = Server::start();
    let (_, recipe) = one_input_recipe(&env, &srv, Behavior::Status(404), 1000);
    let r = env.run(&["fetch", &recipe]).fails();
    r.stderr_has(&format!("HTTP 404 Not Found from `{}`", srv.url("/base.img")));
    assert_eq!(srv.requests("/base.img"), 1);
    assert!(env.entries().is_empty());
}

#[test]
fn service_unavailable_twice_then_ok_is_retried() {
    let env = Env::new();
    let srv = Server::start();
    let (_, recipe) = one_input_recipe(&env, &srv, Behavior::FailThen { status: 503, times: 2 }, 10_000);
    let r = env.run(&["fetch", &recipe]).ok();
    r.stderr_has("HTTP 503");
    r.stderr_has("retrying");
    assert_eq!(srv.requests("/base.img"), 3);
    assert_eq!(env.entries().len(), 1);
}

#[test]
fn a_trickle_trips_the_low_speed_timeout() {
    let mut env = Env::new();
    env.env("HEARTH_FETCH_LOW_SPEED_TIME_S", "1")
        .env("HEARTH_FETCH_LOW_SPEED_LIMIT", "10000")
        .env("HEARTH_FETCH_ATTEMPTS", "2");
    let srv = Server::start();
    let behavior = Behavior::Trickle { chunk: 10, every: Duration::from_millis(100) };
    let (_, recipe) = one_input_recipe(&env, &srv, behavior, 1_000_000);
    let began = Instant::now();
    let r = env.run(&["fetch", &recipe]).fails();
    r.stderr_has(&format!("`{}` stalled: less than 10000 bytes/s over 1 s", srv.url("/base.img")));
    assert_eq!(srv.requests("/base.img"), 2);
    assert!(began.elapsed() < Duration::from_secs(30));
    assert!(env.entries().is_empty());
}

#[test]
fn redirects_are_followed() {
    let env = Env::new();
    let srv = Server::start();
    let bytes = pseudo_random(20_000, 9);
    srv.serve("/real.img", bytes.clone(), Behavior::Normal);
    srv.serve("/moved.img", Vec::new(), Behavior::Redirect(srv.url("/real.img")));
    let recipe = env.path("r.toml");
    write_recipe(&recipe, &Item::new("base", "base.img", &srv.url("/moved.img"), &bytes), &[]);
    env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    assert_eq!((srv.requests("/moved.img"), srv.requests("/real.img")), (1, 1));
}

#[test]
fn mirrors_replace_url_prefixes_and_file_urls_work() {
    let mut env = Env::new();
    let srv = Server::start();
    let bytes = pseudo_random(30_000, 4);
    srv.serve("/mirror/pool/base.img", bytes.clone(), Behavior::Normal);
    // The recipe names an address that must never be contacted: the rule replaces it.
    env.env("HEARTH_MIRRORS", &format!("https://upstream.invalid/={}/mirror/", srv.base()));
    let local = pseudo_random(1234, 5);
    let local_path = env.path("local.bin");
    std::fs::write(&local_path, &local).unwrap();
    let recipe = env.path("r.toml");
    write_recipe(
        &recipe,
        &Item::new("base", "base.img", "https://upstream.invalid/pool/base.img", &bytes),
        &[Item::new("files", "local", &format!("file://{}", local_path.display()), &local)],
    );
    env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    assert_eq!(srv.requests("/mirror/pool/base.img"), 1);
    assert_eq!(env.entries().len(), 2);
}

#[test]
fn a_second_url_is_tried_after_the_first_fails() {
    let env = Env::new();
    let srv = Server::start();
    let bytes = pseudo_random(5_000, 6);
    srv.serve("/gone", Vec::new(), Behavior::Status(404));
    srv.serve("/here", bytes.clone(), Behavior::Normal);
    let recipe = env.path("r.toml");
    let text = format!(
        "name = \"t\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 0\n[base]\nname = \"b\"\n\
         urls = [\"{}\", \"{}\"]\nsha256 = \"{}\"\nformat = \"raw\"\n",
        srv.url("/gone"),
        srv.url("/here"),
        sha256_hex(&bytes)
    );
    std::fs::write(&recipe, text).unwrap();
    env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    assert_eq!((srv.requests("/gone"), srv.requests("/here")), (1, 1));
}

#[test]
fn kill_9_mid_download_then_rerun_resumes() {
    let env = Env::new();
    let srv = Server::start();
    let len = 8 << 20;
    let (_, recipe) = one_input_recipe(&env, &srv, Behavior::Throttle(2 << 20), len);
    let mut child = env
        .cmd(&["fetch", &recipe])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.bytes_sent("/base.img") < (2 << 20) {
        assert!(Instant::now() < deadline, "download never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let first = srv.bytes_sent("/base.img");
    assert!(env.entries().is_empty(), "a killed fetch left an entry");
    srv.set_behavior("/base.img", Behavior::Normal);
    env.run(&["fetch", &recipe]).ok();
    let second = srv.bytes_sent("/base.img") - first;
    assert!(second < len as u64, "rerun sent {second} bytes, the whole file is {len}: no resume");
    let last = srv.headers("/base.img").pop().unwrap().to_ascii_lowercase();
    assert!(last.contains("range: bytes="), "{last}");
    env.run(&["store", "verify"]).ok();
    assert!(env.partials().is_empty());
}

#[test]
fn two_fetches_at_once_download_once() {
    let env = Env::new();
    let srv = Server::start();
    let len = 2 << 20;
    let (_, recipe) = one_input_recipe(&env, &srv, Behavior::Throttle(4 << 20), len);
    let a = env.cmd(&["fetch", &recipe]).spawn().unwrap();
    let b = env.cmd(&["fetch", &recipe]).spawn().unwrap();
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(srv.requests("/base.img"), 1, "both processes downloaded");
    assert_eq!(srv.bytes_sent("/base.img"), len as u64);
    assert_eq!(env.entries().len(), 1);
    env.run(&["store", "verify"]).ok();
}

#[test]
fn offline_names_every_missing_input_and_opens_no_socket() {
    let env = Env::new();
    let srv = Server::start();
    let bytes = pseudo_random(1000, 7);
    srv.serve("/base.img", bytes.clone(), Behavior::Normal);
    srv.serve("/x.deb", bytes.clone(), Behavior::Normal);
    let recipe = env.path("r.toml");
    write_recipe(
        &recipe,
        &Item::new("base", "base.img", &srv.url("/base.img"), &bytes),
        &[Item::new("debs", "x", &srv.url("/x.deb"), b"other")],
    );
    let r = env.run(&["--offline", "fetch", recipe.to_str().unwrap()]).fails();
    r.stderr_has("2 input(s) are not in the store and --offline forbids downloading them");
    r.stderr_has(&format!("base/base.img (line 6): sha256 {}", sha256_hex(&bytes)));
    r.stderr_has("debs/x (line 11)");
    r.stderr_has("hearth store add FILE --sha256 HASH");
    r.stderr_has("hearth store import BUNDLE");
    assert_eq!(srv.requests("/base.img") + srv.requests("/x.deb"), 0);
    // The offline way in: add the file by hand, then the base is satisfied.
    let f = env.path("base.img");
    std::fs::write(&f, &bytes).unwrap();
    env.run(&["store", "add", f.to_str().unwrap(), "--sha256", &sha256_hex(&bytes)]).ok();
    let r = env.run(&["--offline", "fetch", recipe.to_str().unwrap()]).fails();
    r.stderr_has("1 input(s) are not in the store");
}

#[test]
fn bad_recipes_are_clear_errors_and_write_nothing() {
    let env = Env::new();
    let cases: [(&str, &str, &str); 4] = [
        ("name = \"x\"\n[output\n", "TOML parse error at line 2", "malformed"),
        (
            "name = \"x\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 0\n[base]\nname = \"b\"\nurls = [\"http://127.0.0.1:9/b\"]\nsha256 = \"abcd\"\nformat = \"raw\"\n",
            "a sha256 has 64 hex digits, `abcd` has 4",
            "short sha",
        ),
        (
            "name = \"x\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 0\n[base]\nname = \"b\"\nurls = [\"ftp://127.0.0.1/b\"]\nformat = \"raw\"\n",
            "unsupported URL scheme `ftp`",
            "ftp",
        ),
        (
            "name = \"x\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 0\n[base]\nname = \"b\"\nurls = [\"http://127.0.0.1:9/b\"]\nformat = \"raw\"\n",
            "base/b (line 6)",
            "unpinned",
        ),
    ];
    for (text, needle, what) in cases {
        let recipe = env.path("bad.toml");
        std::fs::write(&recipe, text).unwrap();
        let r = env.run(&["fetch", recipe.to_str().unwrap()]);
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        r.stderr_has(needle);
        r.stderr_has("bad.toml");
        assert!(env.entries().is_empty(), "{what} wrote entries");
    }
    let r = env.run(&["fetch", env.path("bad.toml").to_str().unwrap()]);
    r.stderr_has("hearth lock");
    let r = env.run(&["fetch", "does-not-exist.toml"]).fails();
    r.stderr_has("reading `does-not-exist.toml`");
}

#[test]
fn the_default_recipe_loads_and_names_exactly_its_unpinned_inputs() {
    let env = Env::new();
    let mut cmd = env.cmd(&["--offline", "fetch"]);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let r = common::Run::from(cmd.output().unwrap()).fails();
    // README lists these two as left to `hearth lock`; keep both in step.
    r.stderr_has("29 input(s) of `images/ubuntu-24.04-k8s-1.29.toml` are not pinned");
    r.stderr_has("debs/conntrack (line");
    r.stderr_has("images/registry.k8s.io/kube-proxy:v1.29.15 (line");
    for image in [
        "docker.io/flannel/flannel:v0.25.5",
        "docker.io/flannel/flannel-cni-plugin:v1.5.1-flannel1",
        "docker.io/rancher/local-path-provisioner:v0.0.28",
        "docker.io/library/busybox:1.36.1",
        "quay.io/jetstack/cert-manager-controller:v1.15.5",
        "quay.io/jetstack/cert-manager-webhook:v1.15.5",
        "quay.io/jetstack/cert-manager-cainjector:v1.15.5",
        "quay.io/argoproj/argocd:v2.11.14",
        "ghcr.io/dexidp/dex:v2.38.0",
        "docker.io/library/redis:7.0.15-alpine",
        "docker.io/gitea/gitea:1.22.6-rootless",
        "docker.io/goharbor/harbor-core:v2.11.1",
        "docker.io/goharbor/nginx-photon:v2.11.1",
        "oci.external-secrets.io/external-secrets/external-secrets:v0.10.7",
        "ghcr.io/actions/gha-runner-scale-set-controller:0.9.3",
        "ghcr.io/actions/actions-runner:2.317.0",
    ] {
        r.stderr_has(&format!("images/{image} (line"));
    }
    for manifest in [
        "cert-manager.yaml",
        "harbor-1.15.1.tgz",
        "external-secrets-0.10.7.tgz",
        "gha-runner-scale-set-controller-0.9.3.tar.gz",
        "gha-runner-scale-set-0.9.3.tar.gz",
    ] {
        r.stderr_has(&format!("manifests/{manifest} (line"));
    }
    assert!(!env.store.exists(), "nothing may be written");
}
