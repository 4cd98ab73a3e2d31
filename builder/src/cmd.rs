//! The one way hearth runs other programs: the argv is kept for errors, stderr
//! is captured at the same time as stdout (no deadlock), and a failure carries
//! the exit status and the tail of stderr.

use std::process::{Command, Stdio};

/// Bytes of stderr kept in an error.
const STDERR_TAIL: usize = 1024;

/// A program that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// It could not be started.
    #[error("could not run `{argv}`")]
    Spawn {
        /// The command line.
        argv: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        argv: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
}

fn argv_of(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') { format!("'{a}'") } else { a.into_owned() }
    }));
    parts.join(" ")
}

/// The last [`STDERR_TAIL`] bytes of `stderr`, decoded lossily and trimmed. The
/// cut is made in bytes, before decoding: a character split by it becomes one
/// replacement character instead of a panic.
fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&stderr[start..]).trim().to_owned()
}

/// Runs `cmd` to completion; returns its stdout.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>, CmdError> {
    let argv = argv_of(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| CmdError::Spawn { argv: argv.clone(), source })?;
    if !out.status.success() {
        return Err(CmdError::Failed { argv, status: out.status.to_string(), stderr: tail(&out.stderr) });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_argv_status_and_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err().to_string();
        assert!(e.contains("`sh -c 'echo oops >&2; exit 3'` failed (exit status: 3): oops"), "{e}");
        assert!(matches!(run(&mut Command::new("/nonexistent/tool")), Err(CmdError::Spawn { .. })));
        assert_eq!(run(Command::new("printf").arg("hi")).unwrap(), b"hi");
    }

    #[test]
    fn a_stderr_tail_cut_inside_a_character_does_not_panic() {
        // 1000 three-byte characters (3000 bytes): the cut 1024 bytes from the
        // end lands on the last byte of the 659th.
        let script = "i=0; while [ $i -lt 1000 ]; do printf '\\342\\200\\246' >&2; i=$((i+1)); done; exit 1";
        let e = run(Command::new("sh").args(["-c", script])).unwrap_err();
        let CmdError::Failed { stderr, .. } = e else { panic!("{e:?}") };
        assert!(stderr.starts_with('\u{FFFD}'), "{stderr}");
        assert_eq!(stderr.chars().skip(1).collect::<String>(), "…".repeat(341));
    }
}
