//! `hearth launch | status | reinstall | destroy | kubeconfig | ssh | console`:
//! argument parsing and rendering only. The verbs, and every decision in them,
//! are `hearth_appliance::lifecycle`'s; this module picks the state root and
//! the store, renders its events, the status table and errors with hints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use hearth_appliance::lifecycle::{self, Destroyed, Event, Events, Host};
use hearth_appliance::ready::Status;

use crate::cli::{
    AccessArgs, ApplianceArg, ApplianceJsonArg, CaArgs, ExportArgs, Global, KubeconfigArgs, LaunchArgs, NodeArg,
    SshArgs,
};
use crate::progress::Live;
use crate::{CmdResult, Failure};

/// A library error with its hint.
fn failure(e: lifecycle::Error) -> Failure {
    let hint = e.hint();
    Failure { error: e.into(), hint }
}

/// Where the verbs run: the state root (`--state`, else the default for this
/// user) and HOME (for the default SSH key).
fn host<'a>(g: &Global, events: &'a dyn Events) -> anyhow::Result<Host<'a>> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    Ok(Host { state_root: crate::dirs::state_root(g)?, home, events })
}

/// Renders the verbs' events: notes on stderr, the wait's live line.
struct Notes {
    live: Live,
    verbose: bool,
    quiet: bool,
}

impl Notes {
    fn new(g: &Global) -> Self {
        Notes { live: Live::new(g.quiet), verbose: g.verbose > 0, quiet: g.quiet }
    }
}

fn note(g: &Global, text: &str) {
    if !g.quiet {
        eprintln!("{text}");
    }
}

impl Events for Notes {
    fn event(&self, e: &Event<'_>) {
        use lifecycle::NetworkUse;
        let secs = |d: &Duration| d.as_secs_f64();
        let line = match e {
            Event::NoSshKey => {
                "note: no SSH public key (~/.ssh/id_ed25519.pub or `ssh_public_key`): `hearth ssh` will not get in"
                    .into()
            }
            Event::RecordLacks { component } => format!(
                "note: `{component}` is on in the spec, but this appliance was launched without its input: it \
                 stays off (`hearth destroy` and `hearth launch` with a recipe that has it add it)"
            ),
            Event::NoPlatform => {
                "note: the recipe has no platform manifests ([[manifests]]): no CNI and no platform will be \
                                  installed, so the nodes stay NotReady"
                    .into()
            }
            Event::HostSide { pki, render, files, domains } if self.verbose => format!(
                "host side: PKI {:.2} s, platform {:.2} s, overlays and seeds {:.2} s (the network alongside), domains {:.2} s",
                secs(pki),
                secs(render),
                secs(files),
                secs(domains)
            ),
            Event::HostSide { .. } => return,
            Event::Network(NetworkUse::Defined(n)) => format!("network `{n}`: defined and started"),
            Event::Network(NetworkUse::Present(n)) => format!("network `{n}`: hearth's, present"),
            Event::Network(NetworkUse::Reused { name, added, started, note, .. }) => {
                let mut s = format!(
                    "network `{name}`: reused, {added} DHCP reservations added{}",
                    if *started { ", started (it was inactive)" } else { "" }
                );
                if let Some(w) = note {
                    s.push_str(&format!("\nwarning: {w}"));
                }
                s
            }
            Event::Started { appliance, vms, generation, took } => format!(
                "started {vms} VMs of appliance `{appliance}` (generation {generation}); host side took {:.2} s",
                secs(took)
            ),
            Event::AlreadyRunning { appliance } => {
                format!("appliance `{appliance}` is already running; nothing changed")
            }
            Event::StartedStopped { domain } => format!("started stopped domain `{domain}`"),
            Event::TornDown { vms, took } => format!(
                "removed {vms} VMs with their overlays and seeds in {:.2} s; the PKI and the image stay",
                secs(took)
            ),
            Event::Reinstalled { took } => format!("reinstall host side took {:.2} s", secs(took)),
            Event::Waiting(text) => return self.live.update(text),
            Event::Reached { stage, after } => {
                format!("  reached {:<8} after {:>6.1} s", stage.name(), secs(after))
            }
        };
        if !self.quiet {
            for l in line.lines() {
                self.live.line(l);
            }
        }
    }
}

fn wait_of(args: &LaunchArgs) -> lifecycle::Wait {
    lifecycle::Wait { until: args.wait, timeout: args.timeout.map(Duration::from_secs) }
}

pub fn launch(g: &Global, args: &LaunchArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let store = crate::open_store(g)?;
    let notes = Notes::new(g);
    let result = lifecycle::launch(&host(g, &notes)?, &a, &store, &wait_of(args));
    notes.live.finish();
    print_status(&result.map_err(failure)?, false)
}

pub fn reinstall(g: &Global, args: &LaunchArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let notes = Notes::new(g);
    let result = lifecycle::reinstall(&host(g, &notes)?, &a, &wait_of(args));
    notes.live.finish();
    print_status(&result.map_err(failure)?, false)
}

pub fn destroy(g: &Global, args: &ApplianceArg) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let store = crate::open_store(g).ok();
    let notes = Notes::new(g);
    match lifecycle::destroy(&host(g, &notes)?, &a, store.as_ref()).map_err(failure)? {
        Destroyed::Nothing { name } => println!("appliance `{name}` does not exist here: nothing to destroy"),
        Destroyed::Removed { appliance, removed, state_dir } => println!(
            "destroyed appliance `{}`: {} domains{}{}; state `{}` removed",
            appliance.name,
            removed.domains.len(),
            removed.network.as_ref().map(|n| format!(", network `{n}`")).unwrap_or_default(),
            if removed.reservations > 0 {
                format!(", {} DHCP reservations on `{}`", removed.reservations, appliance.network.name)
            } else {
                String::new()
            },
            state_dir.display()
        ),
    }
    Ok(())
}

pub fn status(g: &Global, args: &ApplianceJsonArg) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let notes = Notes::new(g);
    let st = lifecycle::status(&host(g, &notes)?, &a).map_err(failure)?;
    print_status(&st, args.json)
}

fn print_status(st: &Status, json: bool) -> CmdResult {
    if json {
        println!("{}", serde_json::to_string_pretty(st)?);
        return Ok(());
    }
    println!(
        "appliance {} (generation {}): API {} {}",
        st.appliance,
        st.generation,
        st.api_endpoint,
        if st.api_ready { "ready" } else { "not ready" }
    );
    let rows: Vec<[String; 7]> = st
        .nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                n.role.clone(),
                n.ip.to_string(),
                n.vm.clone(),
                if n.ip_answers { "yes".into() } else { format!("no ({})", n.ip_probe.name()) },
                n.firstboot.clone().unwrap_or_else(|| "-".into()),
                n.kubernetes.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = ["NODE", "ROLE", "IP", "VM", "ANSWERS", "FIRST BOOT", "KUBERNETES"];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    match &st.platform {
        Some(p) if p.unhealthy.is_empty() => println!("platform: {} pods, all healthy", p.pods),
        Some(p) => println!("platform: {} pods, {} not healthy: {}", p.pods, p.unhealthy.len(), p.unhealthy.join("; ")),
        None => println!("platform: unknown (the API does not answer)"),
    }
    if let Some(c) = st.platform.as_ref().map(|p| &p.components) {
        let mut by_component: Vec<(&str, usize, usize)> = Vec::new();
        for w in &c.workloads {
            match by_component.last_mut() {
                Some((name, n, ready)) if *name == w.component => {
                    *n += 1;
                    *ready += usize::from(w.ready);
                }
                _ => by_component.push((&w.component, 1, usize::from(w.ready))),
            }
        }
        for (name, n, ready) in by_component {
            println!("  {name:<14} {ready}/{n} workloads ready");
        }
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        println!("  {:<14} {}", "ingress", or_dash(c.ingress_ip.as_deref()));
        println!(
            "  {:<14} {}",
            "ca issuer",
            match c.issuer_ready {
                Some(true) => "Ready",
                Some(false) => "not Ready",
                None => "-",
            }
        );
        println!("  {:<14} {}", "storage class", or_dash(c.default_storage_class.as_deref()));
        if c.workloads.iter().any(|w| w.component == "harbor") {
            println!("  {:<14} {}", "harbor health", or_dash(c.harbor_health.as_deref()));
        }
        for app in &c.applications {
            let state = format!(
                "{}/{}",
                or_dash(Some(&app.sync).filter(|s| !s.is_empty()).map(String::as_str)),
                or_dash(Some(&app.health).filter(|s| !s.is_empty()).map(String::as_str))
            );
            println!("  {:<14} {state}", format!("app {}", app.name));
        }
        if let Some(p) = &c.pending {
            println!("  first missing: {p}");
        }
    }
    match st.pending {
        None => println!("ready: every stage reached"),
        Some(s) => println!("pending: {}", hearth_appliance::ready::describe(st, s)),
    }
    Ok(())
}

pub fn kubeconfig(g: &Global, args: &KubeconfigArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let (l, path) = lifecycle::admin_kubeconfig(&host(g, &Notes::new(g))?, &a).map_err(failure)?;
    let ours = std::fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    if let Some(out) = &args.output {
        hearth_appliance::files::write_atomic(out, ours.as_bytes(), 0o600)?;
        note(g, &format!("wrote the admin kubeconfig of `{}` to `{}` (0600)", l.appliance.name, out.display()));
        return Ok(());
    }
    if args.merge {
        let target = std::env::var_os("KUBECONFIG")
            .and_then(|k| std::env::split_paths(&k).next())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
            .ok_or_else(|| anyhow::anyhow!("neither KUBECONFIG nor HOME is set"))?;
        let existing = match std::fs::read_to_string(&target) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading `{}`", target.display())).into()),
        };
        let merged = hearth_appliance::kubeconfig::merge(existing.as_deref(), &ours)
            .with_context(|| format!("merging into `{}`", target.display()))?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
        }
        hearth_appliance::files::write_atomic(&target, merged.as_bytes(), 0o600)?;
        note(
            g,
            &format!(
                "merged appliance `{}` into `{}` and made it the current context",
                l.appliance.name,
                target.display()
            ),
        );
        return Ok(());
    }
    print!("{ours}");
    Ok(())
}

pub fn ca(g: &Global, args: &CaArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let pem = lifecycle::platform_ca(&host(g, &Notes::new(g))?, &a).map_err(failure)?;
    match &args.output {
        Some(out) => {
            hearth_appliance::files::write_atomic(out, pem.as_bytes(), 0o644)?;
            note(g, &format!("wrote the platform CA of `{}` to `{}`", a.name, out.display()));
        }
        None => print!("{pem}"),
    }
    Ok(())
}

pub fn access(g: &Global, args: &AccessArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let notes = Notes::new(g);
    let h = host(g, &notes)?;
    if let Some(name) = &args.show {
        println!("{}", lifecycle::secret(&h, &a, name).map_err(failure)?);
        return Ok(());
    }
    let doors = lifecycle::access(&h, &a).map_err(failure)?;
    for d in &doors {
        println!("{}", d.what);
        println!("  url:      {}", d.url);
        if d.what == "GitOps repository" && a.gitops.repo.is_none() {
            println!("            (inside the cluster; from here: kubectl -n hearth-git port-forward svc/git 3000)");
        }
        if let Some(user) = d.user {
            println!("  user:     {user}");
        }
        if let Some((s, path)) = &d.secret {
            println!("  password: in {} (hearth access --show {})", path.display(), s.name());
        }
    }
    println!("TLS certificates are from the platform CA: `hearth ca` prints it.");
    Ok(())
}

pub fn gitops_export(g: &Global, args: &ExportArgs) -> CmdResult {
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let head = lifecycle::gitops_export(&host(g, &Notes::new(g))?, &a, &args.dir).map_err(failure)?;
    note(
        g,
        &format!("wrote the GitOps repository of `{}` to `{}` (commit {head} on main)", a.name, args.dir.display()),
    );
    println!("{}", args.dir.display());
    Ok(())
}

pub fn ssh(g: &Global, args: &SshArgs) -> CmdResult {
    use std::os::unix::process::CommandExt as _;
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let notes = Notes::new(g);
    let mut cmd = lifecycle::ssh_command(&host(g, &notes)?, &a, &args.node, &args.command).map_err(failure)?;
    let e = cmd.exec();
    Err(anyhow::Error::new(e).context("running `ssh` (is openssh-client installed?)").into())
}

pub fn console(g: &Global, args: &NodeArg) -> CmdResult {
    use std::os::unix::process::CommandExt as _;
    let a = lifecycle::load_spec(args.appliance.as_deref()).map_err(failure)?;
    let notes = Notes::new(g);
    let (mut cmd, node) = lifecycle::console_command(&host(g, &notes)?, &a, &args.node).map_err(failure)?;
    note(g, &format!("console of `{}` (log: `{}`); leave with Ctrl+]", node.domain, node.console_log.display()));
    let e = cmd.exec();
    Err(anyhow::Error::new(e).context(format!("running `{}` (is it installed?)", cmd.get_program().display())).into())
}
