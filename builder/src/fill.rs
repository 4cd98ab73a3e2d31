//! Filling the store with a recipe's inputs (`hearth fetch`): every pinned
//! download and image, in parallel, each exactly once; then a GC root that keeps
//! them.

use std::fmt;

use futures_util::StreamExt;

use crate::digest::Sha256;
use crate::fetch::{FetchError, Fetcher, FileRequest};
use crate::oci::{self, OciError};
use crate::recipe::{Input, InputKind, LoadedRecipe};
use crate::store::{Store, StoreError, StorePath};

/// Errors of a fill.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// Inputs without a pin.
    #[error("{} input(s) of `{recipe}` are not pinned:\n  {}", unpinned.len(), unpinned.join("\n  "))]
    Unpinned {
        /// The recipe file.
        recipe: String,
        /// `id (line N)` for each.
        unpinned: Vec<String>,
    },
    /// Inputs missing while offline.
    #[error("{} input(s) are not in the store and --offline forbids downloading them:\n  {}", missing.len(), missing.join("\n  "))]
    Offline {
        /// A description of each.
        missing: Vec<String>,
    },
    /// Inputs that failed.
    #[error("{} of {total} input(s) failed:\n  {}", failures.len(), failures.join("\n  "))]
    Failed {
        /// How many were attempted.
        total: usize,
        /// One block per failure.
        failures: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FillError {
    /// What the user can do about it.
    pub fn hint(&self, recipe_arg: &str) -> Option<String> {
        match self {
            FillError::Unpinned { .. } => {
                Some(format!("run `hearth lock {recipe_arg}` on a connected machine to pin them"))
            }
            FillError::Offline { .. } => Some(
                "add each file with `hearth store add FILE --sha256 HASH`, or carry a bundle made by \
                 `hearth store export` on a connected machine and run `hearth store import BUNDLE`"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The outcome for one input.
#[derive(Clone, Debug)]
pub struct Filled {
    /// The input.
    pub input: Input,
    /// Its store entry.
    pub path: StorePath,
    /// False when it was already present.
    pub downloaded: bool,
}

/// What a fill did.
#[derive(Clone, Debug)]
pub struct FillReport {
    /// Every input, in recipe order.
    pub inputs: Vec<Filled>,
}

impl FillReport {
    /// How many inputs were downloaded by this run.
    pub fn downloaded(&self) -> usize {
        self.inputs.iter().filter(|i| i.downloaded).count()
    }
}

impl fmt::Display for FillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.inputs {
            writeln!(f, "{:<9} {}", if i.downloaded { "fetched" } else { "present" }, i.path)?;
        }
        Ok(())
    }
}

/// Name of the GC root that keeps a recipe's inputs.
pub fn root_name(recipe: &LoadedRecipe) -> String {
    format!("inputs-{}", recipe.recipe.name.get_ref())
}

/// Fails naming every input that has no pin in the recipe or its pins file.
pub fn check_pinned(recipe: &LoadedRecipe) -> Result<(), FillError> {
    pinned(recipe).map(drop)
}

/// Every input with its pin, or the error naming those without.
fn pinned(recipe: &LoadedRecipe) -> Result<Vec<(Input, Sha256)>, FillError> {
    let mut pinned = Vec::new();
    let mut unpinned = Vec::new();
    for input in recipe.inputs() {
        match input.pin {
            Some(pin) => pinned.push((input, pin)),
            None => unpinned.push(format!("{} (line {})", input.id, input.line)),
        }
    }
    if unpinned.is_empty() {
        Ok(pinned)
    } else {
        Err(FillError::Unpinned { recipe: recipe.path.display().to_string(), unpinned })
    }
}

/// Makes sure every input of `recipe` is in `store`.
pub async fn fill(fetcher: &Fetcher, store: &Store, recipe: &LoadedRecipe) -> Result<FillReport, FillError> {
    let inputs = pinned(recipe)?;
    let outcomes: Vec<Outcome> =
        futures_util::stream::iter(inputs.into_iter().map(|(input, pin)| fill_one(fetcher, store, input, pin)))
            .buffered(fetcher.options().jobs.max(1))
            .collect()
            .await;

    let total = outcomes.len();
    let mut missing = Vec::new();
    let mut failures = Vec::new();
    let mut filled = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Filled(f) => filled.push(f),
            Outcome::Offline(input, pin) => {
                let from = match &input.kind {
                    InputKind::Image { reference, .. } => format!("image {reference}@{}", pin.oci()),
                    InputKind::Base { urls }
                    | InputKind::Deb { urls }
                    | InputKind::Archive { urls }
                    | InputKind::File { urls }
                    | InputKind::Manifest { urls } => format!("sha256 {pin}, from {}", urls.join(" or ")),
                };
                missing.push(format!("{} (line {}): {from}", input.id, input.line));
            }
            Outcome::Failed(input, e) => {
                failures.push(format!("{} (line {}): {}", input.id, input.line, e.replace('\n', "\n    ")))
            }
        }
    }
    if !missing.is_empty() && failures.is_empty() {
        return Err(FillError::Offline { missing });
    }
    if !failures.is_empty() || !missing.is_empty() {
        failures.extend(missing.into_iter().map(|m| format!("{m}: not in the store (offline)")));
        return Err(FillError::Failed { total, failures });
    }
    let paths: Vec<StorePath> = filled.iter().map(|f| f.path.clone()).collect();
    store.add_root(&root_name(recipe), &paths)?;
    Ok(FillReport { inputs: filled })
}

enum Outcome {
    Filled(Filled),
    /// Missing, and the network is off limits.
    Offline(Input, Sha256),
    /// The error chain, on one line per cause.
    Failed(Input, String),
}

async fn fill_one(fetcher: &Fetcher, store: &Store, input: Input, pin: Sha256) -> Outcome {
    let result = match &input.kind {
        InputKind::Image { reference, platform } => oci::pull(fetcher, store, reference, pin, platform, &input.name)
            .await
            .map(|p| (p.path, p.downloaded))
            .map_err(|e| (matches!(e, OciError::Offline { .. }), crate::report::error_chain(&e))),
        InputKind::Base { urls }
        | InputKind::Deb { urls }
        | InputKind::Archive { urls }
        | InputKind::File { urls }
        | InputKind::Manifest { urls } => {
            let req = FileRequest { name: input.name.clone(), urls: urls.clone(), sha256: pin };
            fetcher
                .fetch_file(store, &req)
                .await
                .map(|f| (f.path, f.downloaded))
                .map_err(|e| (matches!(e, FetchError::Offline { .. }), crate::report::error_chain(&e)))
        }
    };
    match result {
        Ok((path, downloaded)) => Outcome::Filled(Filled { input, path, downloaded }),
        Err((true, _)) => Outcome::Offline(input, pin),
        Err((false, chain)) => Outcome::Failed(input, chain),
    }
}
