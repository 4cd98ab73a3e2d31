//! Support for hearth's end-to-end tests and benchmarks: a real HTTP/1.1 server on
//! loopback whose routes can misbehave on purpose (wrong bytes, cut connections,
//! error statuses, trickles, redirects, throttling), counting what it served; and
//! the one check every suite makes for the external tools it needs.
//!
//! It is hand-written on tokio's TCP so that faults sit exactly where a test wants
//! them; it speaks enough HTTP for real clients (curl, reqwest): GET, `Range:
//! bytes=N-`, `Connection: close`.

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes a route serves.
#[derive(Clone)]
pub enum Content {
    /// From memory.
    Memory(Arc<Vec<u8>>),
    /// From a file, streamed.
    File(PathBuf),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Memory(v) => v.len() as u64,
            Content::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }
}

/// How a route behaves.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Serve the content, honouring `Range`.
    Normal,
    /// Serve the content with one byte flipped in the middle.
    WrongBytes,
    /// For the first `times` requests, announce the full length but close the
    /// connection after `after` body bytes.
    CutAfter {
        /// Body bytes sent before the cut.
        after: u64,
        /// How many requests are cut.
        times: u32,
    },
    /// Always answer with this status.
    Status(u16),
    /// Answer the first `times` requests with `status`, then serve normally.
    FailThen {
        /// The status.
        status: u16,
        /// How many times.
        times: u32,
    },
    /// Send `chunk` bytes every `every`, forever.
    Trickle {
        /// Bytes per tick.
        chunk: usize,
        /// Tick.
        every: Duration,
    },
    /// 302 to another path on this server.
    Redirect(String),
    /// Serve at most this many bytes per second.
    Throttle(u64),
}

/// Extra per-route settings.
#[derive(Clone, Debug, Default)]
pub struct RouteOpts {
    /// `Content-Type` to send.
    pub content_type: Option<String>,
    /// Require `Authorization: Bearer <token>`, else 401 with this challenge.
    pub bearer: Option<(String, String)>,
}

struct Route {
    content: Content,
    behavior: Behavior,
    opts: RouteOpts,
    requests: u64,
    bytes_sent: u64,
    headers: Vec<String>,
}

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
}

/// A running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    /// Binds 127.0.0.1 on a free port and serves on a private runtime.
    pub fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(sock, st).await;
                });
            }
        });
        Server { addr, state, _rt: rt }
    }

    /// Adds (or replaces) a route.
    pub fn route(&self, path: &str, content: Content, behavior: Behavior) {
        self.state.lock().unwrap().routes.insert(
            path.to_owned(),
            Route { content, behavior, opts: RouteOpts::default(), requests: 0, bytes_sent: 0, headers: Vec::new() },
        );
    }

    /// Adds a route from memory with settings.
    pub fn serve_with(&self, path: &str, bytes: Vec<u8>, behavior: Behavior, opts: RouteOpts) {
        self.state.lock().unwrap().routes.insert(
            path.to_owned(),
            Route {
                content: Content::Memory(Arc::new(bytes)),
                behavior,
                opts,
                requests: 0,
                bytes_sent: 0,
                headers: Vec::new(),
            },
        );
    }

    /// Adds a route serving bytes from memory.
    pub fn serve(&self, path: &str, bytes: Vec<u8>, behavior: Behavior) {
        self.route(path, Content::Memory(Arc::new(bytes)), behavior);
    }

    /// Changes a route's behaviour (keeps its counters).
    pub fn set_behavior(&self, path: &str, behavior: Behavior) {
        self.state.lock().unwrap().routes.get_mut(path).expect("route").behavior = behavior;
    }

    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen on a path.
    pub fn requests(&self, path: &str) -> u64 {
        self.state.lock().unwrap().routes.get(path).map_or(0, |r| r.requests)
    }

    /// Body bytes sent on a path.
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.state.lock().unwrap().routes.get(path).map_or(0, |r| r.bytes_sent)
    }

    /// Raw request headers seen on a path (one string per request).
    pub fn headers(&self, path: &str) -> Vec<String> {
        self.state.lock().unwrap().routes.get(path).map_or(Vec::new(), |r| r.headers.clone())
    }
}

async fn handle(mut sock: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let authorization = lines.clone().find_map(|l| {
        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_owned())
    });
    let range_start: Option<u64> = lines
        .clone()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_owned))
        .and_then(|r| r.trim_end_matches('-').parse().ok());

    let found = {
        let mut st = state.lock().unwrap();
        st.routes.get_mut(&path).map(|route| {
            route.requests += 1;
            route.headers.push(head.clone());
            (route.content.clone(), route.behavior.clone(), route.requests, route.opts.clone())
        })
    };
    let Some((content, behavior, nth, opts)) = found else {
        return respond(&mut sock, "404 Not Found", &[], b"not found\n").await;
    };
    if let Some((token, challenge)) = &opts.bearer
        && authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        let h = [format!("WWW-Authenticate: {challenge}")];
        return respond(&mut sock, "401 Unauthorized", &h, b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}").await;
    }
    let len = content.len();
    match behavior {
        Behavior::Status(code) => return respond(&mut sock, &status_line(code), &[], b"").await,
        Behavior::FailThen { status, times } if nth <= u64::from(times) => {
            return respond(&mut sock, &status_line(status), &[], b"").await;
        }
        Behavior::Redirect(to) => {
            return respond(&mut sock, "302 Found", &[format!("Location: {to}")], b"").await;
        }
        _ => {}
    }
    let start = range_start.unwrap_or(0);
    if range_start.is_some() && start >= len {
        return respond(&mut sock, "416 Range Not Satisfiable", &[format!("Content-Range: bytes */{len}")], b"").await;
    }
    let mut headers = vec![format!("Content-Length: {}", len - start)];
    if let Some(ct) = &opts.content_type {
        headers.push(format!("Content-Type: {ct}"));
    }
    let status = if range_start.is_some() {
        headers.push(format!("Content-Range: bytes {start}-{}/{len}", len - 1));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    write_head(&mut sock, status, &headers).await?;

    let limit = match behavior {
        Behavior::CutAfter { after, times } if nth <= u64::from(times) => Some(after),
        _ => None,
    };
    let (chunk_size, pause, rate) = match behavior {
        Behavior::Trickle { chunk, every } => (chunk, Some(every), None),
        Behavior::Throttle(bps) => (64 * 1024, None, Some(bps)),
        _ => (1 << 20, None, None),
    };
    if let (Content::File(p), Behavior::Normal) = (&content, &behavior) {
        // Serve files as a production server (nginx) does: sendfile(2), no copy
        // through user space, so the server takes as little CPU from the client
        // under test as it can.
        let sent = send_file(sock, p.clone(), start, len - start).await?;
        state.lock().unwrap().routes.get_mut(&path).expect("route").bytes_sent += sent;
        return Ok(());
    }
    let flip_at = matches!(behavior, Behavior::WrongBytes).then_some(len / 2);
    let mut file = match &content {
        Content::File(p) => {
            let mut f = tokio::fs::File::open(p).await?;
            tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(start)).await?;
            Some(f)
        }
        Content::Memory(_) => None,
    };
    let mut pos = start;
    let mut sent = 0u64;
    let began = tokio::time::Instant::now();
    let mut chunk = vec![0u8; chunk_size];
    while pos < len {
        let mut n = chunk_size.min((len - pos) as usize);
        if let Some(l) = limit {
            if sent >= l {
                break;
            }
            n = n.min((l - sent) as usize);
        }
        match (&content, &mut file) {
            (Content::Memory(v), _) => chunk[..n].copy_from_slice(&v[pos as usize..pos as usize + n]),
            (Content::File(_), Some(f)) => f.read_exact(&mut chunk[..n]).await.map(|_| ())?,
            _ => unreachable!(),
        }
        if let Some(f) = flip_at
            && f >= pos
            && f < pos + n as u64
        {
            chunk[(f - pos) as usize] ^= 0xff;
        }
        if sock.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        pos += n as u64;
        sent += n as u64;
        state.lock().unwrap().routes.get_mut(&path).expect("route").bytes_sent += n as u64;
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
        if let Some(bps) = rate {
            let due = Duration::from_secs_f64(sent as f64 / bps as f64);
            tokio::time::sleep_until(began + due).await;
        }
    }
    let _ = sock.flush().await;
    let _ = sock.shutdown().await;
    Ok(())
}

async fn send_file(sock: TcpStream, path: PathBuf, offset: u64, count: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let std_sock = sock.into_std()?;
    std_sock.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut off = offset as libc::off_t;
        let end = offset + count;
        while (off as u64) < end {
            let want = ((end - off as u64) as usize).min(1 << 30);
            // SAFETY: both descriptors are open for the duration of the call and
            // `off` is a valid pointer the kernel updates.
            let n = unsafe { libc::sendfile(std_sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
        }
        let _ = std_sock.shutdown(std::net::Shutdown::Write);
        Ok(off as u64 - offset)
    })
    .await
    .expect("sendfile task")
}

fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    format!("{code} {reason}")
}

async fn write_head(sock: &mut TcpStream, status: &str, headers: &[String]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await
}

async fn respond(sock: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) -> std::io::Result<()> {
    let mut h = headers.to_vec();
    h.push(format!("Content-Length: {}", body.len()));
    write_head(sock, status, &h).await?;
    sock.write_all(body).await?;
    let _ = sock.shutdown().await;
    Ok(())
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures need no files.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    // Spread the seed so that neighbouring seeds give unrelated streams.
    let mut x = (seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether an external tool is on PATH. A missing tool skips the test loudly on a
/// developer's machine and fails it under CI or `tests/ci.sh`
/// (`HEARTH_REQUIRE_TOOLS`), where it must exist.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("HEARTH_REQUIRE_TOOLS").is_some();
        assert!(!required, "`{tool}` is required here (CI or HEARTH_REQUIRE_TOOLS) but is not installed");
        eprintln!("SKIPPED: `{tool}` is not installed (README's test command installs it)");
    }
    found
}
