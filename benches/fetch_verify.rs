//! Benchmarks for issue 2, each printed as a ratio against a baseline tool measured
//! in the same run, on the same bytes (median of several runs):
//!
//! - `hearth fetch` of a 2 GiB input from a loopback server (download, sha256 while
//!   streaming, entry sealed into the store) vs `curl -o` of the same URL;
//! - `hearth store verify` of a 1 GiB entry vs `openssl dgst -sha256` of its file.
//!
//! Sizes can be lowered for a quick look: `HEARTH_BENCH_FETCH_MIB=256 cargo bench`.

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_testsupport::{Behavior, Content, Server};
use sha2::Digest as _;

const RUNS: usize = 5;

fn mib_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `len` pseudo-random bytes and returns their sha256.
fn make_file(path: &Path, len: u64) -> String {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    let mut h = sha2::Sha256::new();
    let chunk = 4 << 20;
    let mut written = 0u64;
    let mut seed = 1u64;
    while written < len {
        let n = chunk.min((len - written) as usize);
        let buf = hearth_testsupport::pseudo_random(n, seed);
        seed += 1;
        h.update(&buf);
        f.write_all(&buf).unwrap();
        written += n as u64;
    }
    f.flush().unwrap();
    hex::encode(h.finalize())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
}

fn hearth(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.env("HEARTH_STORE", store).arg("--quiet");
    c
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fetch_verify: run with `cargo bench` to measure");
        return;
    }
    let work: PathBuf = std::env::var_os("HEARTH_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&work).unwrap();
    let fetch_len = mib_from_env("HEARTH_BENCH_FETCH_MIB", 2048) << 20;
    let verify_len = mib_from_env("HEARTH_BENCH_VERIFY_MIB", 1024) << 20;

    // --- fetch + verify vs curl -o ---
    let src = dir.path().join("input.bin");
    let sha = make_file(&src, fetch_len);
    let srv = Server::start();
    srv.route("/input.bin", Content::File(src.clone()), Behavior::Normal);
    let recipe = dir.path().join("bench.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"bench\"\n[output]\nvirtual_size = \"4GiB\"\nepoch = 0\n[base]\nname = \"input.bin\"\n\
             urls = [\"{}\"]\nsha256 = \"{sha}\"\nformat = \"raw\"\n",
            srv.url("/input.bin")
        ),
    )
    .unwrap();
    // Warm the page cache for both contenders.
    let _ = std::fs::read(&src).map(|b| b.len());
    let mut curl_t = Vec::new();
    let mut hearth_t = Vec::new();
    for i in 0..RUNS {
        let out = dir.path().join(format!("curl-{i}.bin"));
        curl_t.push(time(|| run(Command::new("curl").args(["-sS", "-o"]).arg(&out).arg(srv.url("/input.bin")))));
        std::fs::remove_file(&out).unwrap();
        let store = dir.path().join(format!("store-{i}"));
        hearth_t.push(time(|| run(hearth(&store).arg("fetch").arg(&recipe))));
        remove_store(&store);
    }
    let (c, h) = (median(curl_t), median(hearth_t));
    let gib = fetch_len as f64 / (1u64 << 30) as f64;
    println!(
        "fetch+verify {gib:.2} GiB from loopback: hearth {:.3} s ({:.0} MiB/s), curl -o {:.3} s ({:.0} MiB/s): ratio {:.2}x (target <= 1.10x)",
        h.as_secs_f64(),
        fetch_len as f64 / h.as_secs_f64() / 1048576.0,
        c.as_secs_f64(),
        fetch_len as f64 / c.as_secs_f64() / 1048576.0,
        h.as_secs_f64() / c.as_secs_f64()
    );

    // --- store verify vs openssl dgst ---
    let vsrc = dir.path().join("verify.bin");
    let vsha = make_file(&vsrc, verify_len);
    let store = dir.path().join("store-verify");
    run(hearth(&store).args(["store", "add"]).arg(&vsrc).args(["--sha256", &vsha, "--name", "verify.bin"]));
    std::fs::remove_file(&vsrc).unwrap();
    let entry = String::from_utf8(hearth(&store).args(["store", "ls", "--json"]).output().unwrap().stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&entry).unwrap();
    let entry_dir = PathBuf::from(v[0]["path"].as_str().unwrap());
    let file = entry_dir.join("verify.bin");
    let _ = std::fs::read(&file).map(|b| b.len());
    let mut ossl_t = Vec::new();
    let mut verify_t = Vec::new();
    for _ in 0..RUNS {
        ossl_t.push(time(|| run(Command::new("openssl").args(["dgst", "-sha256"]).arg(&file))));
        verify_t.push(time(|| run(hearth(&store).args(["store", "verify"]))));
    }
    let (o, h) = (median(ossl_t), median(verify_t));
    println!(
        "sha256 of a {:.2} GiB entry: hearth store verify {:.3} s ({:.0} MiB/s), openssl dgst -sha256 {:.3} s ({:.0} MiB/s): ratio {:.2}x (target <= 1.10x)",
        verify_len as f64 / (1u64 << 30) as f64,
        h.as_secs_f64(),
        verify_len as f64 / h.as_secs_f64() / 1048576.0,
        o.as_secs_f64(),
        verify_len as f64 / o.as_secs_f64() / 1048576.0,
        h.as_secs_f64() / o.as_secs_f64()
    );
    remove_store(&store);
}

/// Store entries are read-only; make them writable to delete.
fn remove_store(store: &Path) {
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(store).status();
    let _ = std::fs::remove_dir_all(store);
}
