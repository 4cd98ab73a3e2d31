//! The `hearth` command: argument parsing, error rendering and exit codes. The work
//! happens in the `cmd_*` modules and the `hearth_builder`/`hearth_appliance` crates.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod cmd_appliance;
mod cmd_build;
mod cmd_store;
mod dirs;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Global};

/// A failed command: the error chain plus, where one exists, what to do about it.
pub struct Failure {
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { error: e.into(), hint: None }
    }
}

pub type CmdResult = Result<(), Failure>;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.error);
            for cause in f.error.chain().skip(1) {
                eprintln!("  Caused by: {cause}");
            }
            if let Some(h) = f.hint {
                eprintln!("\nhint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Downloads hand out a fresh buffer of a few hundred KiB per network read. With
/// glibc's defaults such blocks are mmap'ed and unmapped one by one, and every
/// page of every chunk is faulted in anew (about a tenth of a download's CPU time).
/// Keeping them on the heap lets freed buffers be reused.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn run(cli: Cli) -> CmdResult {
    let g = &cli.global;
    match cli.command {
        Command::Fetch(a) => cmd_build::fetch(g, &a.recipe),
        Command::Store(c) => cmd_store::run(g, c),
        Command::Build(a) => cmd_build::build(g, &a.recipe, a.check),
        Command::Lock(a) => cmd_build::lock(g, &a.recipe, a.update),
        Command::Launch(a) => cmd_appliance::launch(g, &a),
        Command::Status(a) => cmd_appliance::status(g, &a),
        Command::Reinstall(a) => cmd_appliance::reinstall(g, &a),
        Command::Destroy(a) => cmd_appliance::destroy(g, &a),
        Command::Kubeconfig(a) => cmd_appliance::kubeconfig(g, &a),
        Command::Ca(a) => cmd_appliance::ca(g, &a),
        Command::Access(a) => cmd_appliance::access(g, &a),
        Command::Gitops(cli::GitopsCommand::Export(a)) => cmd_appliance::gitops_export(g, &a),
        Command::Ssh(a) => cmd_appliance::ssh(g, &a),
        Command::Console(a) => cmd_appliance::console(g, &a),
    }
}

/// Opens the store, naming it on failure.
pub fn open_store(g: &Global) -> anyhow::Result<hearth_builder::store::Store> {
    use anyhow::Context as _;
    let dir = dirs::store_dir(g)?;
    hearth_builder::store::Store::open(&dir).with_context(|| format!("opening the store at `{}`", dir.display()))
}
