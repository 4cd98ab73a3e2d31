//! Shared by the appliance's tool-judged tests.

#![allow(clippy::print_stderr, dead_code)]

use std::process::Command;

/// Whether `tool` runs (`tool arg`). Missing: a loud skip on a developer's
/// machine, a failure under CI or `tests/ci.sh` (HEARTH_REQUIRE_TOOLS).
pub fn require_tool(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool).arg(arg).output().is_ok();
    if !ok {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("HEARTH_REQUIRE_TOOLS").is_some();
        assert!(!required, "`{tool}` is required here but is not installed");
        eprintln!("SKIPPED: `{tool}` is not installed");
    }
    ok
}
