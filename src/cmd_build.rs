//! `hearth fetch`, `hearth lock` and `hearth build`: a recipe's inputs into the
//! store, its pins into its pins file, its image into the store.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use hearth_builder::store::Store;
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

/// What the three verbs share: the store, the progress display and a fetcher
/// that reports to it.
struct Session {
    store: Store,
    progress: Arc<Progress>,
    fetcher: Fetcher,
}

impl Session {
    fn open(g: &Global) -> anyhow::Result<Session> {
        let store = crate::open_store(g)?;
        let progress = Arc::new(Progress::new(g.quiet));
        let fetcher = Fetcher::new(fetch_options(g)?, progress.clone())?;
        Ok(Session { store, progress, fetcher })
    }

    /// Runs `work` to completion on a fresh runtime, then clears the progress bars.
    fn run<T>(&self, work: impl Future<Output = T>) -> anyhow::Result<T> {
        let out = runtime()?.block_on(work);
        self.progress.finish();
        Ok(out)
    }
}

pub fn fetch(g: &Global, recipe_path: &Path) -> CmdResult {
    let loaded = recipe::load_recipe(recipe_path)?;
    let result = match fill::check_pinned(&loaded) {
        Ok(()) => {
            let s = Session::open(g)?;
            s.run(fill::fill(&s.fetcher, &s.store, &loaded))?.map(|report| (report, s.store))
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
    let s = Session::open(g)?;
    let result = s.run(lock::lock(&s.fetcher, &s.store, &loaded, update))?;
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
    let s = Session::open(g)?;
    let report = s.run(fill::fill(&s.fetcher, &s.store, &loaded))?.map_err(hint)?;
    let (store, progress) = (&s.store, s.progress.as_ref());
    let context = || format!("building `{}`", recipe_path.display());
    if check {
        let (path, differ) = build::check(store, &loaded, &report.inputs, progress).with_context(context)?;
        if differ.is_empty() {
            println!("{}: rebuilt bit for bit", store.entry_dir(&path).display());
            return Ok(());
        }
        return Err(Failure {
            error: anyhow::anyhow!("`{path}` is not reproducible; these outputs differ:\n  {}", differ.join("\n  ")),
            hint: None,
        });
    }
    let built = build::build(store, &loaded, &report.inputs, progress).with_context(context)?;
    if !built.built && !g.quiet {
        eprintln!("already built");
    }
    println!("{}", store.entry_dir(&built.path).display());
    Ok(())
}
