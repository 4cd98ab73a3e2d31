//! `hearth store ...`: list, resolve, add, verify, collect, export, import.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use hearth_builder::digest::Sha256;
use hearth_builder::store::{self, Store, StorePath};

use crate::cli::{Global, StoreCommand};
use crate::{CmdResult, Failure};

pub fn run(g: &Global, cmd: StoreCommand) -> CmdResult {
    let store = crate::open_store(g)?;
    match cmd {
        StoreCommand::Ls { json } => ls(&store, json),
        StoreCommand::Path { entry } => {
            match entry {
                None => println!("{}", store.root().display()),
                Some(e) => println!("{}", store.entry_dir(&store.resolve(&e)?).display()),
            }
            Ok(())
        }
        StoreCommand::Add { file, sha256, name } => add(&store, &file, &sha256, name),
        StoreCommand::Verify { entries, json } => verify(&store, &entries, json),
        StoreCommand::Gc { dry_run } => {
            let report = store.gc(dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for p in &report.entries {
                println!("{verb} {p}");
            }
            for p in &report.debris {
                println!("{verb} {}", p.display());
            }
            if report.entries.is_empty() && report.debris.is_empty() {
                println!("nothing to collect");
            }
            Ok(())
        }
        StoreCommand::Export { entries, output, oci_archive: true } => oci_archive(&store, &entries, &output),
        StoreCommand::Export { entries, output, oci_archive: false } => export(&store, &entries, &output),
        StoreCommand::Import { bundle } => import(&store, &bundle),
    }
}

fn ls(store: &Store, json: bool) -> CmdResult {
    let entries = store.list()?;
    if json {
        let mut out = Vec::new();
        for p in &entries {
            let m = store.manifest(p)?;
            out.push(serde_json::json!({
                "path": store.entry_dir(p),
                "name": p.name(),
                "key": m.key,
                "size": m.outputs.values().map(|o| o.size).sum::<u64>(),
                "references": m.references,
            }));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in &entries {
            let m = store.manifest(p)?;
            let size: u64 = m.outputs.values().map(|o| o.size).sum();
            println!("{:>10}  {}", human(size), store.entry_dir(p).display());
        }
    }
    Ok(())
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn add(store: &Store, file: &Path, sha256: &str, name: Option<String>) -> CmdResult {
    let expected: Sha256 = Sha256::parse_oci(sha256).with_context(|| format!("--sha256 `{sha256}`"))?;
    let name = match name {
        Some(n) => n,
        None => store::sanitize_name(&file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
    };
    let (path, created) =
        store.add_file(file, expected, &name).with_context(|| format!("adding `{}` to the store", file.display()))?;
    if !created {
        eprintln!("already present");
    }
    println!("{}", store.entry_dir(&path).display());
    Ok(())
}

fn resolve_all(store: &Store, entries: &[String]) -> anyhow::Result<Vec<StorePath>> {
    if entries.is_empty() {
        return Ok(store.list()?);
    }
    entries.iter().map(|e| store.resolve(e).map_err(Into::into)).collect()
}

fn verify(store: &Store, entries: &[String], json: bool) -> CmdResult {
    let paths = resolve_all(store, entries)?;
    let problems = store.verify(&paths)?;
    if json {
        let out: Vec<_> = problems.iter().map(|p| serde_json::json!({"entry": p.entry, "problem": p.what})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"checked": paths.len(), "problems": out}))?);
    }
    if problems.is_empty() {
        if !json {
            println!("{} entries verified", paths.len());
        }
        return Ok(());
    }
    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    Err(Failure {
        error: anyhow::anyhow!(
            "{} of {} entries failed verification:\n  {}",
            count_entries(&problems),
            paths.len(),
            list.join("\n  ")
        ),
        hint: Some(
            "remove a damaged entry with `hearth store gc` after dropping its root, or re-import it from a bundle"
                .into(),
        ),
    })
}

fn count_entries(problems: &[store::Problem]) -> usize {
    let mut e: Vec<&str> = problems.iter().map(|p| p.entry.as_str()).collect();
    e.dedup();
    e.len()
}

fn oci_archive(store: &Store, entries: &[String], output: &Path) -> CmdResult {
    let [entry] = entries else {
        return Err(anyhow::anyhow!("--oci-archive takes exactly one image entry, {} given", entries.len()).into());
    };
    let path = store.resolve(entry)?;
    if !store.manifest(&path)?.outputs.contains_key("oci-layout") {
        return Err(anyhow::anyhow!("`{path}` is not an OCI image entry").into());
    }
    let dir = store.entry_dir(&path);
    write_output(output, |w| Ok(hearth_builder::oci::write_archive(&dir, 0, w)?))?;
    if output != Path::new("-") {
        println!("wrote OCI archive of `{path}` to `{}`", output.display());
    }
    Ok(())
}

/// Writes to `output` (or stdout for `-`) through a temporary sibling that is
/// renamed into place only when `write` succeeded, so no half file is left.
fn write_output(output: &Path, write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if output == Path::new("-") {
        let mut out = BufWriter::new(io::stdout().lock());
        write(&mut out)?;
        return Ok(out.flush()?);
    }
    let tmp = output
        .with_file_name(format!(".{}.partial", output.file_name().map(|s| s.to_string_lossy()).unwrap_or_default()));
    let result = (|| -> anyhow::Result<()> {
        let f = File::create(&tmp).with_context(|| format!("creating `{}`", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, output).with_context(|| format!("writing `{}`", output.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn export(store: &Store, entries: &[String], output: &Path) -> CmdResult {
    let paths: Vec<StorePath> = if entries.is_empty() {
        let mut all: Vec<StorePath> = store.roots()?.into_values().flatten().collect();
        all.sort();
        all.dedup();
        if all.is_empty() {
            return Err(anyhow::anyhow!("no roots to export; name the entries to export").into());
        }
        all
    } else {
        resolve_all(store, entries)?
    };
    let mut count = 0;
    write_output(output, |w| {
        count = store.export(&paths, w)?.len();
        Ok(())
    })?;
    if output == Path::new("-") {
        eprintln!("exported {count} entries");
    } else {
        println!("exported {count} entries to `{}`", output.display());
    }
    Ok(())
}

fn import(store: &Store, bundle: &Path) -> CmdResult {
    let summary = if bundle == Path::new("-") {
        store.import(BufReader::new(io::stdin().lock()))
    } else {
        let f = File::open(bundle).with_context(|| format!("opening bundle `{}`", bundle.display()))?;
        store.import(BufReader::with_capacity(1 << 20, f))
    }
    .with_context(|| format!("importing `{}`", bundle.display()))?;
    for p in &summary.added {
        println!("added   {}", store.entry_dir(p).display());
    }
    for p in &summary.present {
        println!("present {}", store.entry_dir(p).display());
    }
    println!("imported {} entries ({} already present)", summary.added.len(), summary.present.len());
    Ok(())
}
