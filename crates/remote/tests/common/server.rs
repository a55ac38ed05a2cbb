//! A small HTTP/1.1 server on 127.0.0.1 for the tests: files with Range support, redirects,
//! fixed statuses, JSON pages, bodies cut mid-way, generated bodies; it records every request.
//! Shared by the remote crate's tests (`common/mod.rs`) and the end-to-end `tests/remote.rs`
//! (included by `tests/tests.rs` with `#[path]`), so it uses only the standard library.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

pub enum Route {
    /// A file with Range support and an ETag.
    File { data: Arc<Vec<u8>>, etag: String },
    /// Like `File`, but the first full GET sends half the body and closes the connection.
    DropOnce {
        data: Arc<Vec<u8>>,
        etag: String,
        dropped: AtomicBool,
    },
    /// The first GET sends half the body and closes; every later request is closed
    /// without an answer.
    DropAlways {
        data: Arc<Vec<u8>>,
        etag: String,
        calls: AtomicUsize,
    },
    /// The first full GET sends half the body, then stalls for 3 s with the connection open.
    StallOnce {
        data: Arc<Vec<u8>>,
        stalled: AtomicBool,
    },
    /// The first full GET sends half the body and closes; the object then has a new ETag.
    ChangeAfterDrop {
        data: Arc<Vec<u8>>,
        calls: AtomicUsize,
    },
    /// Ignores Range headers (always 200 with the whole body); the first GET is cut.
    NoRanges { data: Arc<Vec<u8>>, cut: AtomicBool },
    /// 302 to this location.
    Redirect(String),
    /// This status with a short text body.
    Status(u16),
    /// HEAD answers like a file of `len` bytes; GET answers `status`.
    HeadOkGetStatus {
        len: usize,
        etag: String,
        status: u16,
    },
    /// A JSON body with an optional `Link` header.
    Json { body: String, link: Option<String> },
    /// `len` bytes of `pattern_byte(i)`, counting the bytes written in `sent`.
    Generated { len: u64, sent: Arc<AtomicU64> },
}

impl Route {
    pub fn file(data: &[u8], etag: &str) -> Route {
        Route::File {
            data: Arc::new(data.to_vec()),
            etag: etag.to_string(),
        }
    }
}

pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

pub struct Server {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Arc<Route>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listens on a free port of 127.0.0.1 until dropped.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Arc<Route>>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (Arc::clone(&routes), Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (r, s) = (Arc::clone(&r), Arc::clone(&s));
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                    let _ = handle(stream, &r, &s);
                });
            }
        });
        Server {
            addr,
            routes,
            seen,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, target: &str, route: Route) {
        self.routes
            .lock()
            .unwrap()
            .insert(target.to_string(), Arc::new(route));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn seen_path(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path() == path)
            .collect()
    }

    /// Requests with this method and path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path() == path)
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Arc<Route>>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let request = Seen {
        method,
        target,
        headers,
    };
    seen.lock().unwrap().push(request.clone());
    let route = {
        let routes = routes.lock().unwrap();
        routes
            .get(&request.target)
            .or_else(|| routes.get(request.path()))
            .cloned()
    };
    let mut out = stream;
    let Some(route) = route else {
        return respond_status(&mut out, 404);
    };
    let is_get = request.method == "GET";
    match &*route {
        Route::File { data, etag } => serve(&mut out, &request, data, etag, false),
        Route::DropOnce {
            data,
            etag,
            dropped,
        } => {
            let cut = is_get
                && request.header("range").is_none()
                && !dropped.swap(true, Ordering::SeqCst);
            serve(&mut out, &request, data, etag, cut)
        }
        Route::DropAlways { data, etag, calls } => {
            if !is_get {
                return serve(&mut out, &request, data, etag, false);
            }
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                serve(&mut out, &request, data, etag, true)
            } else {
                out.shutdown(Shutdown::Both)
            }
        }
        Route::StallOnce { data, stalled } => {
            if is_get && request.header("range").is_none() && !stalled.swap(true, Ordering::SeqCst)
            {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"s\"\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                out.write_all(head.as_bytes())?;
                out.write_all(&data[..data.len() / 2])?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_secs(3));
                return out.shutdown(Shutdown::Both);
            }
            serve(&mut out, &request, data, "s", false)
        }
        Route::ChangeAfterDrop { data, calls } => {
            let first = is_get && calls.fetch_add(1, Ordering::SeqCst) == 0;
            let etag = if first { "v1" } else { "v2" };
            serve(&mut out, &request, data, etag, first)
        }
        Route::NoRanges { data, cut } => {
            let plain = Seen {
                headers: Vec::new(),
                ..request.clone()
            };
            let first = is_get && !cut.swap(true, Ordering::SeqCst);
            serve(&mut out, &plain, data, "n", first)
        }
        Route::Redirect(location) => write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Route::Status(code) => respond_status(&mut out, *code),
        Route::HeadOkGetStatus { len, etag, status } => {
            if is_get {
                respond_status(&mut out, *status)
            } else {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: \"{etag}\"\r\nAccept-Ranges: bytes\r\nLast-Modified: Wed, 26 Nov 2025 10:00:00 GMT\r\nConnection: close\r\n\r\n"
                )
            }
        }
        Route::Json { body, link } => {
            let link = link
                .as_ref()
                .map(|l| format!("Link: {l}\r\n"))
                .unwrap_or_default();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{link}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Route::Generated { len, sent } => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: \"gen\"\r\nConnection: close\r\n\r\n"
            )?;
            let mut offset = 0u64;
            let mut block = vec![0u8; 64 << 10];
            while offset < *len {
                let n = block.len().min((*len - offset) as usize);
                for (i, b) in block[..n].iter_mut().enumerate() {
                    *b = pattern_byte(offset + i as u64);
                }
                out.write_all(&block[..n])?;
                offset += n as u64;
                sent.store(offset, Ordering::SeqCst);
            }
            Ok(())
        }
    }
}

fn respond_status(out: &mut TcpStream, code: u16) -> std::io::Result<()> {
    let body = format!("status {code}");
    write!(
        out,
        "HTTP/1.1 {code} Status\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serve `data` honouring `Range: bytes=A-` / `bytes=A-B`; with `cut`, send the headers of
/// the full answer but only half the body, then close.
fn serve(
    out: &mut TcpStream,
    request: &Seen,
    data: &[u8],
    etag: &str,
    cut: bool,
) -> std::io::Result<()> {
    let total = data.len();
    let range = request
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap_or(0);
            let end: usize = b.parse().map(|e: usize| e + 1).unwrap_or(total).min(total);
            (start, end)
        });
    let (status, start, end) = match range {
        Some((start, _)) if start >= total => {
            return write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some((start, end)) => ("206 Partial Content", start, end),
        None => ("200 OK", 0, total),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\nAccept-Ranges: bytes\r\nLast-Modified: Wed, 26 Nov 2025 10:00:00 GMT\r\nConnection: close\r\n",
        end - start
    );
    if range.is_some() {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end - 1
        ));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if request.method == "HEAD" {
        return Ok(());
    }
    if cut {
        let half = start + (end - start) / 2;
        out.write_all(&data[start..half])?;
        out.flush()?;
        return out.shutdown(Shutdown::Both);
    }
    out.write_all(&data[start..end])
}
