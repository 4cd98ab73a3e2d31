//! Reporting. Library code never prints: it calls a [`Reporter`], and the CLI
//! decides how (progress bars on a terminal, nothing otherwise). Errors that are
//! collected rather than returned (one per failed input or URL) become one line
//! each through [`error_chain`].

use std::sync::Arc;

/// Identifies one transfer in progress.
pub type TaskId = u64;

/// Receives progress from long operations. All methods have empty defaults so that
/// an implementation picks what it shows.
pub trait Reporter: Send + Sync {
    /// A download starts; `total` is its size when known.
    fn fetch_start(&self, _id: TaskId, _label: &str, _total: Option<u64>) {}
    /// `already` bytes were resumed from a previous, interrupted download.
    fn fetch_resumed(&self, _id: TaskId, _already: u64) {}
    /// `bytes` more bytes arrived.
    fn fetch_progress(&self, _id: TaskId, _bytes: u64) {}
    /// The download finished (successfully or not).
    fn fetch_done(&self, _id: TaskId) {}
    /// The overall amount to transfer grew by `bytes` (the total bar).
    fn total_grow(&self, _bytes: u64) {}
    /// A notice worth a line (retry, mirror fallback, waiting for a lock).
    fn note(&self, _message: &str) {}
}

/// A reporter that drops everything.
pub struct Silent;
impl Reporter for Silent {}

/// Shared handle to a reporter.
pub type SharedReporter = Arc<dyn Reporter>;

/// A shared silent reporter.
pub fn silent() -> SharedReporter {
    Arc::new(Silent)
}

/// Formats an error with its causes on one line (`error: cause: cause`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
