//! Helpers shared by the CLI test suites: a private HOME and store per test, and
//! running the real `hearth` binary.

#![allow(dead_code, clippy::print_stderr)]

pub mod base;
pub mod fixture;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::Digest as _;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub home: PathBuf,
    pub extra_env: Vec<(String, String)>,
    pub net: Net,
}

/// The network `hearth` runs in.
pub enum Net {
    /// The test's own: fine for verbs that reach only loopback.
    Host,
    /// The verbs that probe nodes run in a fresh, empty network namespace
    /// (`unshare --net`): every node address is unreachable, nothing leaves the
    /// machine. The others (build, fetch from loopback servers) run here.
    Unshared,
    /// A named namespace the test made (`ip netns exec NAME`).
    Namespace(String),
}

/// Verbs that connect to node addresses (TCP to port 22, the API server).
/// Outside a namespace of the test's own they would send packets to
/// 192.168.122.0/24, so [`Env::cmd`] refuses them there.
const PROBING_VERBS: [&str; 4] = ["launch", "status", "reinstall", "ssh"];

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Env { dir, store, home, extra_env: Vec::new(), net: Net::Host }
    }

    /// An Env whose probing verbs run in a fresh network namespace each time.
    pub fn isolated() -> Env {
        Env { net: Net::Unshared, ..Env::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.extra_env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// A `hearth` command with this test's store, HOME and fast retry
    /// settings, in the test's network (see [`Net`]).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_hearth");
        let probing = args.iter().find(|a| PROBING_VERBS.contains(a));
        if let (Net::Host, Some(verb)) = (&self.net, probing) {
            panic!(
                "`hearth {verb}` probes node addresses: run it in a network namespace of the test's own \
                 (Env::isolated, or Net::Namespace), never in the host's network"
            );
        }
        let mut c = match &self.net {
            Net::Host => Command::new(bin),
            Net::Unshared if probing.is_none() => Command::new(bin),
            Net::Unshared => {
                let mut c = Command::new("unshare");
                c.arg("--net");
                if !rustix::process::geteuid().is_root() {
                    c.arg("--map-current-user");
                }
                c.arg("--").arg(bin);
                c
            }
            Net::Namespace(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
        };
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("HEARTH_STORE", &self.store)
            .env("HEARTH_FETCH_RETRY_BASE_MS", "50")
            .current_dir(self.dir.path());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run hearth"))
    }

    /// Store entries (names), sorted.
    pub fn entries(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.store) else { return Vec::new() };
        let mut v: Vec<String> =
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect();
        v.sort();
        v
    }

    /// Files under the store's partial-download directory.
    pub fn partials(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.store.join(".partial")) else { return Vec::new() };
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    pub fn fails(self) -> Run {
        assert_eq!(self.code, 1, "expected failure (exit 1)\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}:\n{}", self.stdout);
        self
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One downloadable input of a test recipe.
pub struct Item {
    pub kind: &'static str,
    pub name: String,
    pub url: String,
    pub sha256: String,
}

impl Item {
    pub fn new(kind: &'static str, name: &str, url: &str, bytes: &[u8]) -> Item {
        Item { kind, name: name.into(), url: url.into(), sha256: sha256_hex(bytes) }
    }
}

/// Writes a recipe whose base is `base` and whose other inputs are `items`.
pub fn write_recipe(path: &Path, base: &Item, items: &[Item]) {
    let mut t = format!(
        "name = \"test-image\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 1700000000\n\
         [base]\nname = \"{}\"\nurls = [\"{}\"]\nsha256 = \"{}\"\nformat = \"raw\"\n",
        base.name, base.url, base.sha256
    );
    for i in items {
        match i.kind {
            "files" => t.push_str(&format!(
                "[[files]]\npath = \"/usr/local/bin/{}\"\nurls = [\"{}\"]\nsha256 = \"{}\"\nmode = \"0755\"\n",
                i.name, i.url, i.sha256
            )),
            kind => t.push_str(&format!(
                "[[{kind}]]\nname = \"{}\"\nurls = [\"{}\"]\nsha256 = \"{}\"\n{}",
                i.name,
                i.url,
                i.sha256,
                if kind == "archives" { "prefix = \"/usr/local\"\n" } else { "" }
            )),
        }
    }
    std::fs::write(path, t).unwrap();
}

/// The suites' one tool check (not every suite calls it).
#[allow(unused_imports)]
pub use hearth_testsupport::require_tool;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
