//! `hearth launch | status | reinstall | destroy | kubeconfig | ssh | console`:
//! the appliance verbs. The spec comes from an appliance.toml (or the built-in
//! layout), the image from the store (never fetched here), the state from the
//! appliance's state directory; `hearth_appliance` does the work.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hearth_appliance::launch::{self, Image, Options};
use hearth_appliance::libvirt::{Libvirt, NetworkUse};
use hearth_appliance::ready::{Checker, Stage, Status};
use hearth_appliance::spec::{self, Appliance};
use hearth_appliance::state::{Launched, LaunchedNode, State};
use hearth_builder::{build, recipe};

use crate::cli::{ApplianceArg, ApplianceJsonArg, Global, KubeconfigArgs, LaunchArgs, NodeArg, SshArgs};
use crate::{CmdResult, Failure};

/// The spec to use: the named file, else ./appliance.toml, else the default.
/// Relative paths in a file are taken from the file's directory.
fn load_spec(arg: Option<&Path>) -> anyhow::Result<Appliance> {
    let local = Path::new("appliance.toml");
    let path = match arg {
        Some(p) => p,
        None if local.exists() => local,
        None => return Ok(Appliance::default()),
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let mut a = spec::parse_spec(&text).with_context(|| format!("in `{}`", path.display()))?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if arg.is_some() || base != Path::new(".") {
        for p in [&mut a.recipe, &mut a.storage_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(k) = a.ssh_public_key.as_mut().filter(|k| k.is_relative()) {
            *k = base.join(&*k);
        }
    }
    Ok(a)
}

/// Where appliance state lives: `--state`, else the default for this user.
fn state_root(g: &Global) -> anyhow::Result<PathBuf> {
    if let Some(s) = &g.state {
        return Ok(s.clone());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/hearth/appliances"));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| anyhow::anyhow!("neither --state, XDG_STATE_HOME nor HOME is set"))?;
    Ok(base.join("hearth").join("appliances"))
}

/// Connects to libvirt; a refused connection gets a hint about the daemon.
fn open_libvirt(uri: &str) -> Result<Libvirt, Failure> {
    Libvirt::open(uri).map_err(|e| Failure {
        error: e.into(),
        hint: Some(format!(
            "is libvirtd running and may this user use `{uri}`? (`sudo systemctl start libvirtd`; or join the \
             `libvirt` group; `libvirt_uri` in appliance.toml picks another)"
        )),
    })
}

fn store_root_name(a: &Appliance) -> String {
    format!("appliance-{}", a.name)
}

fn domain_type(a: &Appliance) -> String {
    a.domain_type.clone().unwrap_or_else(|| if Path::new("/dev/kvm").exists() { "kvm" } else { "qemu" }.into())
}

/// The user's public key: the configured one, else ~/.ssh/id_ed25519.pub.
fn ssh_public_key(a: &Appliance) -> anyhow::Result<Option<(PathBuf, String)>> {
    let path = match &a.ssh_public_key {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".ssh/id_ed25519.pub"),
            None => return Ok(None),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(k) => Ok(Some((path, k.trim().to_owned()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && a.ssh_public_key.is_none() => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the SSH public key `{}`", path.display())),
    }
}

/// A status line that redraws in place on a terminal and is printed only when
/// it says something new otherwise.
struct Live {
    bar: Option<indicatif::ProgressBar>,
    last: String,
    quiet: bool,
}

impl Live {
    fn new(quiet: bool) -> Live {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Live { bar, last: String::new(), quiet }
    }

    fn update(&mut self, text: &str) {
        match &self.bar {
            Some(b) => b.set_message(text.to_owned()),
            None => {
                // The seconds counter at the end changes every time: compare without it.
                let key = text.rsplit_once(" (").map_or(text, |(k, _)| k).to_owned();
                if key != self.last && !self.quiet {
                    #[allow(clippy::print_stderr)]
                    {
                        eprintln!("{text}");
                    }
                    self.last = key;
                }
            }
        }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            #[allow(clippy::print_stderr)]
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn note(g: &Global, text: &str) {
    if !g.quiet {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{text}");
        }
    }
}

/// The stored image for `a`: found by its recipe, never built or fetched here.
fn find_image(g: &Global, a: &Appliance) -> Result<PathBuf, Failure> {
    let store = crate::open_store(g)?;
    let loaded =
        recipe::load_recipe(&a.recipe).with_context(|| format!("reading the recipe of appliance `{}`", a.name))?;
    match build::find_image(&store, &loaded) {
        Ok(p) => {
            store.add_root(&store_root_name(a), std::slice::from_ref(&p))?;
            Ok(store.entry_dir(&p))
        }
        Err(e @ build::BuildError::NotBuilt { .. }) => Err(Failure {
            error: anyhow::Error::new(e).context(format!("launching appliance `{}`", a.name)),
            hint: Some(format!(
                "build it first: `hearth build {}` (offline: `hearth store import BUNDLE`, then build)",
                a.recipe.display()
            )),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Prepares and starts generation `generation` of `a` from `image`.
fn bring_up(
    g: &Global,
    lv: &Libvirt,
    a: &Appliance,
    state: &State,
    image: &Path,
    generation: u32,
) -> anyhow::Result<Launched> {
    let started = Instant::now();
    let key = ssh_public_key(a)?;
    if key.is_none() {
        note(g, "note: no SSH public key (~/.ssh/id_ed25519.pub or `ssh_public_key`): `hearth ssh` will not get in");
    }
    let dtype = domain_type(a);
    let (mut pki_done, mut prepared) = (Duration::ZERO, Duration::ZERO);
    let record = |plans: &[launch::NodePlan]| Launched {
        appliance: a.clone(),
        image: image.to_owned(),
        generation,
        domain_type: dtype.clone(),
        nodes: plans
            .iter()
            .map(|p| LaunchedNode {
                name: p.node.clone(),
                domain: p.domain.clone(),
                disk: p.disk.clone(),
                seed: p.seed.clone(),
                console_log: p.console_log.clone(),
            })
            .collect(),
    };
    let (net, plans) = launch::up(
        lv,
        a,
        || {
            state.pki()?;
            pki_done = started.elapsed();
            let plans = launch::prepare(
                a,
                &Image::in_entry(image),
                &Options {
                    state: state.dir(),
                    storage: &a.storage_dir,
                    generation,
                    ssh_key: key.as_ref().map(|(_, k)| k.as_str()),
                    domain_type: &dtype,
                },
            );
            prepared = started.elapsed();
            plans
        },
        // Recorded before any domain is defined, so destroy knows even a half launch.
        |plans| Ok(state.save_launched(&record(plans))?),
    )
    .with_context(|| format!("launching appliance `{}`", a.name))?;
    let launched = record(&plans);
    if g.verbose > 0 {
        note(
            g,
            &format!(
                "host side: PKI {:.2} s, overlays and seeds {:.2} s (the network alongside), domains {:.2} s",
                pki_done.as_secs_f64(),
                (prepared - pki_done).as_secs_f64(),
                (started.elapsed() - prepared).as_secs_f64()
            ),
        );
    }
    match net {
        NetworkUse::Defined(n) => note(g, &format!("network `{n}`: defined and started")),
        NetworkUse::Present(n) => note(g, &format!("network `{n}`: hearth's, present")),
        NetworkUse::Reused { name, added, started, note: warn, .. } => {
            note(
                g,
                &format!(
                    "network `{name}`: reused, {added} DHCP reservations added{}",
                    if started { ", started (it was inactive)" } else { "" }
                ),
            );
            if let Some(w) = warn {
                note(g, &format!("warning: {w}"));
            }
        }
    }
    note(
        g,
        &format!(
            "started {} VMs of appliance `{}` (generation {generation}); host side took {:.2} s",
            plans.len(),
            a.name,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(launched)
}

/// Waits until `until`, with a live line; prints the status table at the end.
fn wait_and_report(
    g: &Global,
    lv: &Libvirt,
    state: &State,
    l: &Launched,
    until: Stage,
    timeout: Option<u64>,
) -> CmdResult {
    let kubeconfig = state.admin_kubeconfig(&l.appliance)?;
    let mut checker = Checker::new(lv, l, &kubeconfig)?;
    let live = std::cell::RefCell::new(Live::new(g.quiet));
    let timeouts = |s: Stage| timeout.map_or_else(|| s.default_timeout(), Duration::from_secs);
    let result = checker.wait(until, &timeouts, &mut |t| live.borrow_mut().update(t), &mut |s, t| {
        live.borrow().line(&format!("  reached {:<8} after {:>6.1} s", s.name(), t.as_secs_f64()));
    });
    let live = live.into_inner();
    live.finish();
    match result {
        Ok(st) => {
            print_status(&st, false)?;
            Ok(())
        }
        Err(e) => Err(Failure {
            error: anyhow::Error::new(e).context(format!("waiting for appliance `{}`", l.appliance.name)),
            hint: Some(
                "`hearth status` shows each node's first-boot stage; `hearth console NODE` shows its console".into(),
            ),
        }),
    }
}

pub fn launch(g: &Global, args: &LaunchArgs) -> CmdResult {
    let a = load_spec(args.appliance.as_deref())?;
    let state = State::new(&state_root(g)?, &a.name);
    let _lock = state.lock()?;
    let lv = open_libvirt(&a.libvirt_uri)?;
    let (image, generation) = match state.launched()? {
        Some(l) => {
            let mut missing = Vec::new();
            let mut stopped = Vec::new();
            for n in &l.nodes {
                if !lv.domain_exists(&n.domain)? {
                    missing.push(n.domain.clone());
                } else if !lv.is_running(&n.domain)? {
                    stopped.push(n.domain.clone());
                }
            }
            if missing.len() == l.nodes.len() {
                // Nothing of it runs here (a half launch, or libvirt was reset): launch anew.
                (l.image.clone(), l.generation)
            } else if !missing.is_empty() {
                return Err(Failure {
                    error: anyhow::anyhow!(
                        "appliance `{}` is partly gone: no domain {}",
                        l.appliance.name,
                        missing.join(", ")
                    ),
                    hint: Some("`hearth reinstall` recreates its VMs from the stored image".into()),
                });
            } else {
                if stopped.is_empty() {
                    note(g, &format!("appliance `{}` is already running; nothing changed", l.appliance.name));
                    let kubeconfig = state.admin_kubeconfig(&l.appliance)?;
                    let st = Checker::new(&lv, &l, &kubeconfig)?.status()?;
                    return print_status(&st, false);
                }
                for d in &stopped {
                    lv.start(&l.appliance.name, d)?;
                    note(g, &format!("started stopped domain `{d}`"));
                }
                return wait_and_report(g, &lv, &state, &l, args.wait, args.timeout);
            }
        }
        None => (find_image(g, &a)?, 1),
    };
    let l = bring_up(g, &lv, &a, &state, &image, generation)?;
    wait_and_report(g, &lv, &state, &l, args.wait, args.timeout)
}

pub fn reinstall(g: &Global, args: &LaunchArgs) -> CmdResult {
    let a = load_spec(args.appliance.as_deref())?;
    let state = State::new(&state_root(g)?, &a.name);
    let _lock = state.lock()?;
    let Some(l) = state.launched()? else {
        return Err(Failure {
            error: anyhow::anyhow!("appliance `{}` was never launched here ({})", a.name, state.dir().display()),
            hint: Some("`hearth launch` creates it".into()),
        });
    };
    let started = Instant::now();
    if !l.image.join("disk.qcow2").exists() {
        return Err(Failure {
            error: anyhow::anyhow!(
                "the image of appliance `{}` is gone from the store: `{}`",
                a.name,
                l.image.display()
            ),
            hint: Some(format!("`hearth build {}`, then `hearth destroy` and `hearth launch`", a.recipe.display())),
        });
    }
    let lv = open_libvirt(&l.appliance.libvirt_uri)?;
    let removed = launch::teardown(&lv, &l.appliance, &l.appliance.storage_dir, true)?;
    state.forget_host_keys()?;
    note(
        g,
        &format!(
            "removed {} VMs with their overlays and seeds in {:.2} s; the PKI and the image stay",
            removed.domains.len(),
            started.elapsed().as_secs_f64()
        ),
    );
    // The spec on record: a reinstall recreates what was launched.
    let next = bring_up(g, &lv, &l.appliance, &state, &l.image, l.generation + 1)?;
    note(g, &format!("reinstall host side took {:.2} s", started.elapsed().as_secs_f64()));
    wait_and_report(g, &lv, &state, &next, args.wait, args.timeout)
}

pub fn destroy(g: &Global, args: &ApplianceArg) -> CmdResult {
    let a = load_spec(args.appliance.as_deref())?;
    let state = State::new(&state_root(g)?, &a.name);
    let _lock = state.lock()?;
    let recorded = state.launched()?;
    if recorded.is_none() {
        // Still make sure nothing of ours is left in libvirt (a lost record).
        let lv = open_libvirt(&a.libvirt_uri)?;
        if lv.owned_domains(&a.name)?.is_empty() && !owns_network(&lv, &a)? {
            state.remove()?;
            #[allow(clippy::print_stdout)]
            {
                println!("appliance `{}` does not exist here: nothing to destroy", a.name);
            }
            return Ok(());
        }
    }
    let target = recorded.as_ref().map_or(&a, |l| &l.appliance);
    let lv = open_libvirt(&target.libvirt_uri)?;
    let removed = launch::teardown(&lv, target, &target.storage_dir, false)?;
    if let Ok(store) = crate::open_store(g) {
        store.remove_root(&store_root_name(target))?;
    }
    state.remove()?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "destroyed appliance `{}`: {} domains{}{}; state `{}` removed",
            target.name,
            removed.domains.len(),
            removed.network.as_ref().map(|n| format!(", network `{n}`")).unwrap_or_default(),
            if removed.reservations > 0 {
                format!(", {} DHCP reservations on `{}`", removed.reservations, target.network.name)
            } else {
                String::new()
            },
            state.dir().display()
        );
    }
    Ok(())
}

fn owns_network(lv: &Libvirt, a: &Appliance) -> anyhow::Result<bool> {
    Ok(match lv.network_xml(&a.network.name) {
        Ok(x) => {
            hearth_appliance::xml::owned_by(&x, &a.name)
                || a.nodes.iter().any(|n| x.contains(&hearth_appliance::cloudinit::mac_address(&a.name, &n.name)))
        }
        Err(_) => false,
    })
}

fn launched_or_fail(g: &Global, arg: Option<&Path>) -> Result<(State, Launched), Failure> {
    let a = load_spec(arg)?;
    let state = State::new(&state_root(g)?, &a.name);
    match state.launched()? {
        Some(l) => Ok((state, l)),
        None => Err(Failure {
            error: anyhow::anyhow!("appliance `{}` is not launched here ({})", a.name, state.dir().display()),
            hint: Some("`hearth launch` creates it".into()),
        }),
    }
}

pub fn status(g: &Global, args: &ApplianceJsonArg) -> CmdResult {
    let (state, l) = launched_or_fail(g, args.appliance.as_deref())?;
    let lv = open_libvirt(&l.appliance.libvirt_uri)?;
    let kubeconfig = state.admin_kubeconfig(&l.appliance)?;
    let st = Checker::new(&lv, &l, &kubeconfig)?.status()?;
    print_status(&st, args.json)
}

#[allow(clippy::print_stdout)]
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
                if n.ip_answers { "yes" } else { "no" }.into(),
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
    match st.pending {
        None => println!("ready: every stage reached"),
        Some(s) => println!("pending: {}", hearth_appliance::ready::describe(st, s)),
    }
    Ok(())
}

pub fn kubeconfig(g: &Global, args: &KubeconfigArgs) -> CmdResult {
    let (state, l) = launched_or_fail(g, args.appliance.as_deref())?;
    let path = state.admin_kubeconfig(&l.appliance)?;
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
    #[allow(clippy::print_stdout)]
    {
        print!("{ours}");
    }
    Ok(())
}

fn node_of<'a>(
    l: &'a Launched,
    node: &str,
) -> Result<(&'a hearth_appliance::spec::NodeSpec, &'a LaunchedNode), Failure> {
    l.appliance.nodes.iter().zip(&l.nodes).find(|(n, _)| n.name == node).ok_or_else(|| Failure {
        error: anyhow::anyhow!("appliance `{}` has no node `{node}`", l.appliance.name),
        hint: Some(format!(
            "its nodes: {}",
            l.appliance.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    })
}

pub fn ssh(g: &Global, args: &SshArgs) -> CmdResult {
    use std::os::unix::process::CommandExt as _;
    let (state, l) = launched_or_fail(g, args.appliance.as_deref())?;
    let (spec, _) = node_of(&l, &args.node)?;
    let mut cmd = std::process::Command::new("ssh");
    if let Some((public, _)) = ssh_public_key(&l.appliance)? {
        let private = public.with_extension("");
        if private.exists() {
            cmd.arg("-i").arg(private);
        }
    }
    cmd.arg("-o")
        .arg(format!("UserKnownHostsFile={}", state.known_hosts().display()))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg(format!("{}@{}", l.appliance.ssh_user, spec.ip));
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let e = cmd.exec();
    Err(anyhow::Error::new(e).context("running `ssh` (is openssh-client installed?)").into())
}

pub fn console(g: &Global, args: &NodeArg) -> CmdResult {
    use std::os::unix::process::CommandExt as _;
    let (_, l) = launched_or_fail(g, args.appliance.as_deref())?;
    let (_, rec) = node_of(&l, &args.node)?;
    note(g, &format!("console of `{}` (log: `{}`); leave with Ctrl+]", rec.domain, rec.console_log.display()));
    let e = std::process::Command::new("virsh").args(["-c", &l.appliance.libvirt_uri, "console", &rec.domain]).exec();
    Err(anyhow::Error::new(e).context("running `virsh console` (libvirt-clients)").into())
}
