//! `hearth fetch`: fill the store with a recipe's inputs.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use hearth_builder::{build, config, fetch::Fetcher, fill, lock, recipe};

use crate::cli::Global;
use crate::progress::Progress;
use crate::{CmdResult, Failure};

/// Fetch options from the user's configuration, the environment and `--offline`.
pub fn fetch_options(g: &Global) -> anyhow::Result<hearth_builder::fetch::FetchOptions> {
    let path = config::default_path();
    let mut opts = config::load_fetch_options(path.as_deref(), &|k| std::env::var(k).ok())
        .context("loading hearth's configuration")?;
    opts.offline = g.offline;
    Ok(opts)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub fn fetch(g: &Global, recipe_path: &Path) -> CmdResult {
    let loaded = recipe::load_recipe(recipe_path)?;
    let result = match fill::check_pinned(&loaded) {
        Ok(()) => {
            let store = crate::open_store(g)?;
            let progress = Arc::new(Progress::new(g.quiet));
            let fetcher = Fetcher::new(fetch_options(g)?, progress.clone())?;
            let r = runtime()?.block_on(fill::fill(&fetcher, &store, &loaded)).map(|report| (report, store));
            progress.finish();
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((report, store)) => {
            if g.verbose > 0 || report.downloaded() > 0 {
                print!("{report}");
            }
            let n = report.inputs.len();
            if report.downloaded() == 0 {
                println!("all {n} inputs of `{}` are already in the store; nothing to do", recipe_path.display());
            } else {
                println!("fetched {} of {n} inputs into `{}`", report.downloaded(), store.root().display());
            }
            Ok(())
        }
        Err(e) => {
            let hint = e.hint(&recipe_path.display().to_string());
            Err(Failure {
                error: anyhow::Error::new(e).context(format!("fetching the inputs of `{}`", recipe_path.display())),
                hint,
            })
        }
    }
}

pub fn lock(g: &Global, recipe_path: &Path, update: bool) -> CmdResult {
    let loaded = recipe::load_recipe(recipe_path)?;
    let store = crate::open_store(g)?;
    let progress = Arc::new(Progress::new(g.quiet));
    let fetcher = Fetcher::new(fetch_options(g)?, progress.clone())?;
    let result = runtime()?.block_on(lock::lock(&fetcher, &store, &loaded, update));
    progress.finish();
    let report = result.with_context(|| format!("locking `{}`", recipe_path.display()))?;
    for (id, pin) in &report.resolved {
        println!("pinned  {id} = {}", pin.oci());
    }
    if report.changed {
        println!("wrote `{}`: {} resolved, {} kept", loaded.pins_path.display(), report.resolved.len(), report.kept);
    } else {
        println!("`{}` is up to date ({} pins)", loaded.pins_path.display(), report.kept);
    }
    Ok(())
}

pub fn build(g: &Global, recipe_path: &Path, check: bool) -> CmdResult {
    let loaded = recipe::load_recipe(recipe_path)?;
    let hint = |e: fill::FillError| {
        let hint = e.hint(&recipe_path.display().to_string());
        Failure { error: anyhow::Error::new(e).context(format!("building `{}`", recipe_path.display())), hint }
    };
    fill::check_pinned(&loaded).map_err(hint)?;
    let store = crate::open_store(g)?;
    let progress = Arc::new(Progress::new(g.quiet));
    let fetcher = Fetcher::new(fetch_options(g)?, progress.clone())?;
    let filled = runtime()?.block_on(fill::fill(&fetcher, &store, &loaded));
    progress.finish();
    let report = filled.map_err(hint)?;
    let context = || format!("building `{}`", recipe_path.display());
    if check {
        let (path, differ) = build::check(&store, &loaded, &report.inputs, progress.as_ref()).with_context(context)?;
        if differ.is_empty() {
            println!("{}: rebuilt bit for bit", store.entry_dir(&path).display());
            return Ok(());
        }
        return Err(Failure {
            error: anyhow::anyhow!("`{path}` is not reproducible; these outputs differ:\n  {}", differ.join("\n  ")),
            hint: None,
        });
    }
    let built = build::build(&store, &loaded, &report.inputs, progress.as_ref()).with_context(context)?;
    if !built.built && !g.quiet {
        eprintln!("already built");
    }
    println!("{}", store.entry_dir(&built.path).display());
    Ok(())
}
