//! The node-side executor (`images/files/hearth-platform`, run by /bin/sh as
//! on the node) against a recording kubectl STAND-IN on the host, shared by
//! the executor's tests: no cluster exists here, so the stand-in only logs
//! what it was asked (with the sha256 of each applied file) and fails where a
//! test tells it to.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_appliance::platform::Plan;

/// The recording stand-in for kubectl. `FAIL_MATCH`: fail calls whose
/// arguments contain it, `FAIL_TIMES` times (then succeed); `NODES`: how many
/// lines `get nodes` prints.
pub const KUBECTL_STAND_IN: &str = r#"#!/bin/sh
# STAND-IN for kubectl (hearth's executor test): records, runs nothing.
log="$STAND_IN_LOG"
args="$*"
f=""; prev=""
for a in "$@"; do [ "$prev" = "-f" ] && f=$a; prev=$a; done
[ -n "$f" ] && args="$args sha256=$(sha256sum "$f" | cut -d' ' -f1)"
echo "$args" | sed "s|--kubeconfig [^ ]* ||" >>"$log"
if [ -n "${FAIL_MATCH:-}" ] && echo "$*" | grep -q -- "$FAIL_MATCH"; then
  n=$(cat "$log.fails" 2>/dev/null || echo 0)
  if [ "$n" -lt "${FAIL_TIMES:-1000}" ]; then echo $((n + 1)) >"$log.fails"; echo "stand-in: failing $*" >&2; exit 1; fi
fi
case "$args" in *"get nodes"*) i=0; while [ "$i" -lt "${NODES:-3}" ]; do echo "node-$i Ready"; i=$((i + 1)); done ;; esac
exit 0
"#;

pub struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    pub fn new(plan: &Plan) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("kubectl"), KUBECTL_STAND_IN).unwrap();
        fs::set_permissions(bin.join("kubectl"), fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path().join("plan");
        for f in plan.files() {
            fs::create_dir_all(p.join(&f.path).parent().unwrap()).unwrap();
            fs::write(p.join(&f.path), &f.body).unwrap();
        }
        fs::write(p.join("plan"), plan.to_text()).unwrap();
        Rig { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs the executor; returns (success, console, kubectl calls of this run).
    pub fn run(&self, env: &[(&str, &str)]) -> (bool, String, Vec<String>) {
        let log = self.path("kubectl.log");
        let _ = fs::remove_file(&log);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/files/hearth-platform");
        let mut cmd = Command::new("sh");
        cmd.arg(script)
            .arg(self.path("plan"))
            .env("PATH", format!("{}:/usr/bin:/bin", self.path("bin").display()))
            .env("STAND_IN_LOG", &log)
            .env("HEARTH_PLATFORM_STATE", self.path("state"))
            .env("HEARTH_PLATFORM_LOG", self.path("platform.log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let calls = fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), calls)
    }
}

pub fn sha(body: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(body.as_bytes()))
}
