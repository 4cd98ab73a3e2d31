//! The pinned fetcher: bounded parallel downloads into the store, verified by
//! sha256 while streaming.
//!
//! Per input: the candidate URLs are its URLs with mirror rules applied, tried in
//! order. Each candidate gets up to `attempts` tries for transient failures
//! (connection errors, stalls, truncated bodies, 5xx/408/429), with exponential
//! back-off; an HTTP 4xx or a digest mismatch moves on at once (a mismatch also
//! throws the bytes away). Bytes land in a resumable partial file under
//! `STORE/.partial`, which the next try continues with `Range`. The network task
//! hands each chunk to a writer thread and a hashing thread, so hashing costs no
//! extra pass and runs beside the I/O.
//!
//! With `offline`, no client is built and no socket is ever opened.

pub mod mirrors;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};
use tokio::time::Instant;

use crate::digest::{Hasher, Sha256};
use crate::files::{self, FileError};
use crate::report::SharedReporter;
use crate::store::{Claim, EntryKey, OutputRecord, Outputs, Store, StoreError, StorePath};
use mirrors::Mirrors;

/// Channel depth between the network task and the writer/hasher threads.
const PIPE_DEPTH: usize = 32;
/// Longest back-off between tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How the fetcher behaves. See [`crate::config`] for where values come from.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Downloads in parallel.
    pub jobs: usize,
    /// Tries per URL for transient failures.
    pub attempts: u32,
    /// First back-off; doubled after each try.
    pub retry_base: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Minimum average rate (bytes/s) over `low_speed_time` before a try is abandoned.
    pub low_speed_limit: u64,
    /// Window for `low_speed_limit`; also the longest wait for response headers.
    pub low_speed_time: Duration,
    /// Never touch the network.
    pub offline: bool,
    /// Mirror rules.
    pub mirrors: Mirrors,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            jobs: 4,
            attempts: 5,
            retry_base: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            low_speed_limit: 1024,
            low_speed_time: Duration::from_secs(30),
            offline: false,
            mirrors: Mirrors::default(),
        }
    }
}

/// Errors of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bytes do not have the pinned digest.
    #[error("digest mismatch for `{url}`\n  expected sha256: {expected}\n  computed sha256: {actual}")]
    DigestMismatch {
        /// Where the bytes came from.
        url: String,
        /// The pinned digest.
        expected: Sha256,
        /// The digest of what arrived.
        actual: Sha256,
    },
    /// An HTTP error status.
    #[error("HTTP {status} from `{url}`")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The transfer was too slow for too long.
    #[error("`{url}` stalled: less than {limit} bytes/s over {secs} s")]
    Stalled {
        /// The URL.
        url: String,
        /// The rate limit.
        limit: u64,
        /// The window.
        secs: u64,
    },
    /// The body ended early.
    #[error("`{url}` ended after {got} of {expected} bytes")]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes received in all.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// A connection or protocol error.
    #[error("requesting `{url}`")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A URL hearth cannot fetch.
    #[error("unsupported URL `{0}` (use http://, https:// or file://)")]
    Scheme(String),
    /// A local file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Every candidate URL failed.
    #[error("could not fetch `{label}` ({pin}):\n  {}", failures.join("\n  "))]
    AllFailed {
        /// What was fetched.
        label: String,
        /// `sha256 <hex>`, or `unpinned`.
        pin: String,
        /// One line per failed candidate.
        failures: Vec<String>,
    },
    /// The input is missing and the network is off limits.
    #[error("`{label}` (sha256 {sha256}) is not in the store and --offline forbids downloading it")]
    Offline {
        /// What was needed.
        label: String,
        /// Its pinned digest.
        sha256: Sha256,
    },
    /// A network request was attempted with --offline.
    #[error("--offline forbids requesting `{url}`")]
    NoNetwork {
        /// The URL.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("setting up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FetchError {
    /// Whether another try at the same URL may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Stalled { .. } | FetchError::Truncated { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            FetchError::Http { source, .. } => {
                // Without content decoding, a "decode" error is a body cut short.
                source.is_connect()
                    || source.is_timeout()
                    || source.is_body()
                    || source.is_decode()
                    || source.is_request()
            }
            _ => false,
        }
    }
}

/// One pinned download.
#[derive(Clone, Debug)]
pub struct Download {
    /// Shown in progress and errors.
    pub label: String,
    /// URLs before mirror rules, in order of preference.
    pub urls: Vec<String>,
    /// The pinned digest.
    pub sha256: Sha256,
    /// A bearer token to send (registries).
    pub bearer: Option<String>,
}

/// A fixed-output entry to make: a download saved as the file `name`.
#[derive(Clone, Debug)]
pub struct FileRequest {
    /// Entry and file name.
    pub name: String,
    /// URLs, in order.
    pub urls: Vec<String>,
    /// Pinned digest.
    pub sha256: Sha256,
}

/// Result of one fixed-output fetch.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The entry.
    pub path: StorePath,
    /// False when it was already in the store.
    pub downloaded: bool,
}

/// Downloads pinned inputs into a store.
pub struct Fetcher {
    opts: FetchOptions,
    client: Option<reqwest::Client>,
    reporter: SharedReporter,
    next_id: AtomicU64,
}

impl Fetcher {
    /// Builds a fetcher (and, unless offline, its HTTP client).
    pub fn new(opts: FetchOptions, reporter: SharedReporter) -> Result<Self, FetchError> {
        let client = if opts.offline {
            None
        } else {
            Some(
                reqwest::Client::builder()
                    .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(opts.connect_timeout)
                    .redirect(reqwest::redirect::Policy::limited(10))
                    .build()
                    .map_err(FetchError::Client)?,
            )
        };
        Ok(Fetcher { opts, client, reporter, next_id: AtomicU64::new(1) })
    }

    /// The options in force.
    pub fn options(&self) -> &FetchOptions {
        &self.opts
    }

    /// The reporter.
    pub fn reporter(&self) -> &SharedReporter {
        &self.reporter
    }

    /// The HTTP client; `None` when offline.
    pub fn client(&self) -> Option<&reqwest::Client> {
        self.client.as_ref()
    }

    /// A fresh progress id.
    pub fn task_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure each request's entry is in the store, at most `jobs` at a time.
    /// Results come back in request order.
    pub async fn fetch_files(&self, store: &Store, requests: &[FileRequest]) -> Vec<Result<Fetched, FetchError>> {
        futures_util::stream::iter(requests.iter().map(|r| self.fetch_file(store, r)))
            .buffered(self.opts.jobs.max(1))
            .collect()
            .await
    }

    /// Makes sure one fixed-output entry is in the store.
    pub async fn fetch_file(&self, store: &Store, req: &FileRequest) -> Result<Fetched, FetchError> {
        let key = EntryKey::Fixed(req.sha256);
        if let Some(path) = store.lookup(&key)? {
            return Ok(Fetched { path, downloaded: false });
        }
        if self.opts.offline {
            return Err(FetchError::Offline { label: req.name.clone(), sha256: req.sha256 });
        }
        let pending = match self.claim(store, &key, &req.name).await? {
            Claim::Present(path) => return Ok(Fetched { path, downloaded: false }),
            Claim::Vacant(p) => p,
        };
        let partial = store.partial_file(pending.path().hash(), &req.sha256);
        let dl = Download { label: req.name.clone(), urls: req.urls.clone(), sha256: req.sha256, bearer: None };
        let size = self.download(&dl, &partial).await?;
        let dest = pending.dir().join(&req.name);
        fs::rename(&partial, &dest).map_err(FileError::at("moving download into place", &dest))?;
        let mut outputs = Outputs::default();
        outputs.files.insert(req.name.clone(), OutputRecord { sha256: req.sha256, size, executable: false });
        let path = tokio::task::spawn_blocking(move || pending.commit(outputs)).await.expect("commit task panicked")?;
        Ok(Fetched { path, downloaded: true })
    }

    /// Claims an entry without blocking the runtime while another process holds it.
    pub async fn claim(&self, store: &Store, key: &EntryKey, name: &str) -> Result<Claim, FetchError> {
        let (store, key, name) = (store.clone(), key.clone(), name.to_owned());
        let reporter = self.reporter.clone();
        tokio::task::spawn_blocking(move || {
            store
                .claim(&key, &name, || reporter.note(&format!("waiting for another hearth process to finish `{name}`")))
        })
        .await
        .expect("lock task panicked")
        .map_err(FetchError::from)
    }

    /// Downloads `dl` into `partial` (resuming what is there), trying every
    /// candidate URL, and returns the size once the digest matched. On a mismatch
    /// the partial file is removed.
    pub async fn download(&self, dl: &Download, partial: &Path) -> Result<u64, FetchError> {
        let job = Job { label: &dl.label, urls: &dl.urls, expected: Some(dl.sha256), bearer: dl.bearer.as_deref() };
        self.run_job(&job, partial).await.map(|(_, size)| size)
    }

    /// Downloads an input that has no pin yet (for `hearth lock`) into `dest`,
    /// returning the digest and size of what arrived.
    pub async fn download_unpinned(
        &self,
        label: &str,
        urls: &[String],
        dest: &Path,
    ) -> Result<(Sha256, u64), FetchError> {
        let _ = fs::remove_file(dest);
        self.run_job(&Job { label, urls, expected: None, bearer: None }, dest).await
    }

    async fn run_job(&self, job: &Job<'_>, partial: &Path) -> Result<(Sha256, u64), FetchError> {
        let mut candidates: Vec<String> = Vec::new();
        for url in job.urls.iter().flat_map(|u| self.opts.mirrors.expand(u)) {
            if !candidates.contains(&url) {
                candidates.push(url);
            }
        }
        let id = self.task_id();
        let mut failures = Vec::new();
        let mut started = false;
        for url in &candidates {
            for attempt in 1..=self.opts.attempts {
                match self.try_once(url, job, partial, id, &mut started).await {
                    Ok(done) => {
                        self.reporter.fetch_done(id);
                        return Ok(done);
                    }
                    Err(e) => {
                        if matches!(e, FetchError::DigestMismatch { .. }) {
                            let _ = fs::remove_file(partial);
                        }
                        if e.is_transient() && attempt < self.opts.attempts {
                            let wait = backoff(self.opts.retry_base, attempt);
                            self.reporter.note(&format!(
                                "{} (try {attempt} of {}), retrying in {:.1} s",
                                crate::report::error_chain(&e),
                                self.opts.attempts,
                                wait.as_secs_f64()
                            ));
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        failures.push(crate::report::error_chain(&e).replace('\n', "\n    "));
                        break;
                    }
                }
            }
        }
        self.reporter.fetch_done(id);
        let pin = job.expected.map_or_else(|| "unpinned".to_owned(), |d| format!("sha256 {d}"));
        Err(FetchError::AllFailed { label: job.label.to_owned(), pin, failures })
    }

    async fn try_once(
        &self,
        url: &str,
        dl: &Job<'_>,
        partial: &Path,
        id: u64,
        started: &mut bool,
    ) -> Result<(Sha256, u64), FetchError> {
        let parsed = url::Url::parse(url).map_err(|_| FetchError::Scheme(url.to_owned()))?;
        match parsed.scheme() {
            "file" => return self.copy_local(&parsed, url, dl, partial, id, started).await,
            "http" | "https" => {}
            _ => return Err(FetchError::Scheme(url.to_owned())),
        }
        let client = self.client.as_ref().ok_or_else(|| FetchError::NoNetwork { url: url.to_owned() })?;

        let existing = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut req = client.get(parsed);
        if existing > 0 {
            req = req.header(RANGE, format!("bytes={existing}-"));
        }
        if let Some(token) = dl.bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let http_err = |source| FetchError::Http { url: url.to_owned(), source };
        let resp = tokio::time::timeout(self.opts.low_speed_time + self.opts.connect_timeout, req.send())
            .await
            .map_err(|_| self.stalled(url))?
            .map_err(http_err)?;
        let status = resp.status();
        let offset = match status {
            StatusCode::PARTIAL_CONTENT if existing > 0 && range_start(&resp) == Some(existing) => existing,
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::RANGE_NOT_SATISFIABLE if existing > 0 => {
                // Either the partial file is already complete, or it is longer than
                // the resource: check, and otherwise start over.
                let (actual, size) = hash_file(partial).await?;
                if dl.expected == Some(actual) {
                    return Ok((actual, size));
                }
                let _ = fs::remove_file(partial);
                return Err(FetchError::Truncated { url: url.to_owned(), got: 0, expected: size });
            }
            s => return Err(FetchError::Status { url: url.to_owned(), status: s }),
        };
        let total = resp.content_length().map(|n| n + offset);
        if !*started {
            self.reporter.fetch_start(id, dl.label, total);
            if let Some(t) = total {
                self.reporter.total_grow(t);
            }
            *started = true;
        }
        self.reporter.fetch_resumed(id, offset);

        let hasher = if offset > 0 { hash_prefix(partial).await? } else { Hasher::new() };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .append(offset > 0)
            .open(partial)
            .map_err(FileError::at("opening", partial))?;
        let sink = Sink::start(file, hasher, partial.to_owned());

        let mut stream = resp.bytes_stream();
        let mut received = offset;
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        let window_need = self.opts.low_speed_limit.saturating_mul(self.opts.low_speed_time.as_secs().max(1));
        let outcome: Result<(), FetchError> = loop {
            let deadline = window_start + self.opts.low_speed_time;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    if window_bytes < window_need {
                        break Err(self.stalled(url));
                    }
                    window_start = Instant::now();
                    window_bytes = 0;
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(http_err(e)),
                Ok(Some(Ok(chunk))) => {
                    let n = chunk.len() as u64;
                    received += n;
                    window_bytes += n;
                    if !sink.push(chunk).await {
                        break Ok(()); // the writer failed; its error comes from finish()
                    }
                    self.reporter.fetch_progress(id, n);
                    if Instant::now() >= deadline {
                        if window_bytes < window_need {
                            break Err(self.stalled(url));
                        }
                        window_start = Instant::now();
                        window_bytes = 0;
                    }
                }
            }
        };
        let (hasher, written) = sink.finish().await;
        written?;
        outcome?;
        if let Some(expected) = total
            && received < expected
        {
            return Err(FetchError::Truncated { url: url.to_owned(), got: received, expected });
        }
        let (actual, size) = hasher.finish();
        check_digest(url, dl.expected, actual)?;
        Ok((actual, size))
    }

    async fn copy_local(
        &self,
        parsed: &url::Url,
        url: &str,
        dl: &Job<'_>,
        partial: &Path,
        id: u64,
        started: &mut bool,
    ) -> Result<(Sha256, u64), FetchError> {
        let src = parsed.to_file_path().map_err(|_| FetchError::Scheme(url.to_owned()))?;
        let size = fs::metadata(&src).map_err(FileError::at("reading", &src))?.len();
        if !*started {
            self.reporter.fetch_start(id, dl.label, Some(size));
            self.reporter.total_grow(size);
            *started = true;
        }
        let dest = partial.to_owned();
        let (actual, size) =
            tokio::task::spawn_blocking(move || files::copy_hashing(&src, &dest)).await.expect("copy task panicked")?;
        self.reporter.fetch_progress(id, size);
        check_digest(url, dl.expected, actual)?;
        Ok((actual, size))
    }

    fn stalled(&self, url: &str) -> FetchError {
        FetchError::Stalled {
            url: url.to_owned(),
            limit: self.opts.low_speed_limit,
            secs: self.opts.low_speed_time.as_secs(),
        }
    }
}

/// One download as the retry loop sees it.
struct Job<'a> {
    label: &'a str,
    urls: &'a [String],
    expected: Option<Sha256>,
    bearer: Option<&'a str>,
}

fn check_digest(url: &str, expected: Option<Sha256>, actual: Sha256) -> Result<(), FetchError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(FetchError::DigestMismatch { url: url.to_owned(), expected, actual })
        }
        _ => Ok(()),
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << (attempt - 1).min(16)).min(MAX_BACKOFF)
}

/// The first byte position of a `Content-Range: bytes A-B/N` header.
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

async fn hash_prefix(path: &Path) -> Result<Hasher, FetchError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = File::open(&path).map_err(FileError::at("reading", &path))?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; crate::digest::HASH_BUF_SIZE];
        loop {
            let n = io::Read::read(&mut f, &mut buf).map_err(FileError::at("reading", &path))?;
            if n == 0 {
                break Ok(h);
            }
            h.update(&buf[..n]);
        }
    })
    .await
    .expect("hash task panicked")
}

async fn hash_file(path: &Path) -> Result<(Sha256, u64), FetchError> {
    Ok(hash_prefix(path).await?.finish())
}

/// The writer and hasher threads fed by one download.
struct Sink {
    to_writer: tokio::sync::mpsc::Sender<Bytes>,
    to_hasher: tokio::sync::mpsc::Sender<Bytes>,
    writer: std::thread::JoinHandle<Result<(), FetchError>>,
    hasher: std::thread::JoinHandle<Hasher>,
}

impl Sink {
    fn start(mut file: File, mut hasher: Hasher, path: PathBuf) -> Sink {
        let (to_writer, mut wrx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let (to_hasher, mut hrx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let writer = std::thread::spawn(move || {
            while let Some(chunk) = wrx.blocking_recv() {
                file.write_all(&chunk).map_err(FileError::at("writing", &path))?;
            }
            file.flush().map_err(FileError::at("writing", &path))?;
            Ok(())
        });
        let hasher = std::thread::spawn(move || {
            while let Some(chunk) = hrx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        Sink { to_writer, to_hasher, writer, hasher }
    }

    /// Hands a chunk to both threads; false if the writer has stopped.
    async fn push(&self, chunk: Bytes) -> bool {
        let hashed = self.to_hasher.send(chunk.clone()).await.is_ok();
        self.to_writer.send(chunk).await.is_ok() && hashed
    }

    async fn finish(self) -> (Hasher, Result<(), FetchError>) {
        drop(self.to_writer);
        drop(self.to_hasher);
        let (writer, hasher) = (self.writer, self.hasher);
        tokio::task::spawn_blocking(move || {
            let written = writer.join().expect("writer thread panicked");
            (hasher.join().expect("hasher thread panicked"), written)
        })
        .await
        .expect("join task panicked")
    }
}
