//! User configuration: `$XDG_CONFIG_HOME/hearth/config.toml` (or
//! `~/.config/hearth/config.toml`), overridden by environment variables.
//!
//! ```toml
//! [mirrors]
//! "https://dl.k8s.io/" = ["http://127.0.0.1:8080/k8s/"]
//!
//! [fetch]
//! jobs = 4             # parallel downloads
//! attempts = 5         # tries per URL on connection errors, timeouts and 5xx
//! retry_base_ms = 500  # first back-off; doubles each try
//! connect_timeout_s = 30
//! low_speed_limit = 1024  # bytes/s ...
//! low_speed_time_s = 30   # ... sustained this long, or the try is abandoned
//! ```
//!
//! Environment: `HEARTH_MIRRORS` adds rules (see [`Mirrors::parse_env`]);
//! `HEARTH_FETCH_<KEY>` (e.g. `HEARTH_FETCH_ATTEMPTS`) overrides a `[fetch]` key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::fetch::FetchOptions;
use crate::fetch::mirrors::{MirrorError, Mirrors};
use crate::files::FileError;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not valid.
    #[error("invalid configuration `{}`", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A mirror rule is wrong.
    #[error("in mirror configuration")]
    Mirror(#[from] MirrorError),
    /// An environment override is not a number.
    #[error("`{var}={value}` is not a whole number")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    fetch: FetchFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchFile {
    jobs: Option<u64>,
    attempts: Option<u64>,
    retry_base_ms: Option<u64>,
    connect_timeout_s: Option<u64>,
    low_speed_limit: Option<u64>,
    low_speed_time_s: Option<u64>,
}

/// The default configuration file for this user.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("hearth").join("config.toml"))
}

/// Loads fetch options from `path` (absent is fine) and the environment.
pub fn load_fetch_options(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FetchOptions, ConfigError> {
    let file = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                toml::from_str::<File>(&text).map_err(|source| ConfigError::Parse { path: p.to_owned(), source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(FileError::at("reading", p)(e).into()),
        },
        None => File::default(),
    };
    let mut mirrors = Mirrors::default();
    for (prefix, list) in &file.mirrors {
        mirrors.insert(prefix, list.clone())?;
    }
    if let Some(v) = env("HEARTH_MIRRORS") {
        mirrors.extend_env(&v)?;
    }
    let num = |key: &str, from_file: Option<u64>| -> Result<Option<u64>, ConfigError> {
        let var = format!("HEARTH_FETCH_{}", key.to_ascii_uppercase());
        match env(&var) {
            Some(value) => value.trim().parse().map(Some).map_err(|_| ConfigError::Env { var, value }),
            None => Ok(from_file),
        }
    };
    let d = FetchOptions::default();
    let f = &file.fetch;
    Ok(FetchOptions {
        jobs: num("jobs", f.jobs)?.map_or(d.jobs, |v| v.max(1) as usize),
        attempts: num("attempts", f.attempts)?.map_or(d.attempts, |v| v.max(1) as u32),
        retry_base: num("retry_base_ms", f.retry_base_ms)?.map_or(d.retry_base, Duration::from_millis),
        connect_timeout: num("connect_timeout_s", f.connect_timeout_s)?.map_or(d.connect_timeout, Duration::from_secs),
        low_speed_limit: num("low_speed_limit", f.low_speed_limit)?.unwrap_or(d.low_speed_limit),
        low_speed_time: num("low_speed_time_s", f.low_speed_time_s)?.map_or(d.low_speed_time, Duration::from_secs),
        offline: false,
        mirrors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "[mirrors]\n\"https://a/\" = [\"http://127.0.0.1:9/\"]\n[fetch]\nattempts = 2\n").unwrap();
        let env = |k: &str| (k == "HEARTH_FETCH_JOBS").then(|| "7".to_owned());
        let o = load_fetch_options(Some(&p), &env).unwrap();
        assert_eq!((o.attempts, o.jobs), (2, 7));
        assert_eq!(o.mirrors.expand("https://a/x"), vec!["http://127.0.0.1:9/x"]);
        std::fs::write(&p, "[fetch]\nattempt = 2\n").unwrap();
        let err = load_fetch_options(Some(&p), &|_| None).unwrap_err();
        assert!(crate::report::error_chain(&err).contains("unknown field `attempt`"));
    }
}
