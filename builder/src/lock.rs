//! `hearth lock`: pins what a recipe leaves unpinned. A download is hashed while
//! it streams and kept as its store entry (so the next fetch is free); an image tag
//! is resolved to the digest of the index or manifest the registry serves. The pins
//! file keeps only pins of inputs the recipe still has and does not pin itself.

use std::path::Path;

use futures_util::StreamExt;

use crate::digest::Sha256;
use crate::fetch::{FetchError, Fetcher};
use crate::files::{self, FileError};
use crate::oci::{self, OciError};
use crate::recipe::{self, Input, InputKind, LoadedRecipe, Pins};
use crate::store::{Claim, EntryKey, OutputRecord, Outputs, Store, StoreError};

/// Mode of the pins file: it is written for the user's repository, so that the
/// umask does not decide.
const PINS_MODE: u32 = 0o644;

/// Errors of locking.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Locking needs the network.
    #[error("`hearth lock` resolves inputs on the network, and --offline forbids it")]
    Offline,
    /// Inputs that could not be resolved; the pins file was not changed.
    #[error("{} input(s) could not be resolved; `{}` is unchanged:\n  {}", failures.len(), pins_file.display(), failures.join("\n  "))]
    Failed {
        /// The pins file.
        pins_file: std::path::PathBuf,
        /// One block per input.
        failures: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the pins file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What a lock run did.
#[derive(Debug, Default)]
pub struct LockReport {
    /// Inputs resolved by this run, with their pins.
    pub resolved: Vec<(String, Sha256)>,
    /// Pins kept from the pins file.
    pub kept: usize,
    /// Whether the pins file changed.
    pub changed: bool,
}

/// Resolves the recipe's unpinned inputs (with `update`, also those the pins
/// file pins) and writes the pins file beside the recipe.
pub async fn lock(
    fetcher: &Fetcher,
    store: &Store,
    loaded: &LoadedRecipe,
    update: bool,
) -> Result<LockReport, LockError> {
    if fetcher.client().is_none() {
        return Err(LockError::Offline);
    }
    let old = if update { Pins::default() } else { loaded.pins.clone() };
    let unpinned_by_recipe: Vec<Input> = recipe::inputs_of(&loaded.recipe, &loaded.text, &Pins::default())
        .into_iter()
        .filter(|i| i.pin.is_none())
        .collect();
    let mut new = Pins::default();
    let mut todo = Vec::new();
    for input in unpinned_by_recipe {
        match old.by_id.get(&input.id) {
            Some(pin) => {
                new.by_id.insert(input.id.clone(), *pin);
            }
            None => todo.push(input),
        }
    }
    let kept = new.by_id.len();
    let results: Vec<(Input, Result<Sha256, String>)> =
        futures_util::stream::iter(todo.into_iter().map(|input| async move {
            let r = resolve_one(fetcher, store, &input).await;
            (input, r)
        }))
        .buffered(fetcher.options().jobs.max(1))
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut resolved = Vec::new();
    for (input, r) in results {
        match r {
            Ok(pin) => {
                new.by_id.insert(input.id.clone(), pin);
                resolved.push((input.id, pin));
            }
            Err(e) => failures.push(format!("{} (line {}): {}", input.id, input.line, e.replace('\n', "\n    "))),
        }
    }
    if !failures.is_empty() {
        return Err(LockError::Failed { pins_file: loaded.pins_path.clone(), failures });
    }
    let changed = new != loaded.pins || !loaded.pins_path.exists();
    if changed {
        files::write_atomic(&loaded.pins_path, new.render().as_bytes(), PINS_MODE)?;
    }
    Ok(LockReport { resolved, kept, changed })
}

async fn resolve_one(fetcher: &Fetcher, store: &Store, input: &Input) -> Result<Sha256, String> {
    let urls = match &input.kind {
        InputKind::Image { reference, .. } => {
            return oci::resolve(fetcher, reference).await.map_err(|e: OciError| crate::report::error_chain(&e));
        }
        InputKind::Base { urls }
        | InputKind::Deb { urls }
        | InputKind::Archive { urls }
        | InputKind::File { urls }
        | InputKind::Manifest { urls } => urls,
    };
    let tmp = store.root().join(".tmp").join(format!("lock.{}.{}", std::process::id(), fetcher.task_id()));
    let result = async {
        let (sha, size) = fetcher.download_unpinned(&input.name, urls, &tmp).await?;
        keep_as_entry(fetcher, store, &tmp, &input.name, sha, size).await?;
        Ok::<_, FetchError>(sha)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| crate::report::error_chain(&e))
}

/// Moves a freshly hashed download into the store as its fixed-output entry.
async fn keep_as_entry(
    fetcher: &Fetcher,
    store: &Store,
    file: &Path,
    name: &str,
    sha: Sha256,
    size: u64,
) -> Result<(), FetchError> {
    if let Claim::Vacant(pending) = fetcher.claim(store, &EntryKey::Fixed(sha), name).await? {
        let dest = pending.dir().join(name);
        std::fs::rename(file, &dest).map_err(FileError::at("moving download into place", &dest))?;
        let mut outputs = Outputs::default();
        outputs.files.insert(name.to_owned(), OutputRecord { sha256: sha, size, executable: false });
        tokio::task::spawn_blocking(move || pending.commit(outputs)).await.expect("commit task panicked")?;
    }
    Ok(())
}
