//! TCP proxies that cut, stall or rate-limit connections: outages on demand.

use super::*;

/// What a test proxy does with a chunk a client sent.
enum ProxyAction {
    Forward,
    /// Answer here instead, then close the connection.
    Reply(Vec<u8>),
    /// Forward, and let only this many bytes of the response through
    /// before cutting (or stalling) the connection.
    LimitResponse(usize),
}

/// A TCP proxy in front of a real server that cuts the first response to a
/// request containing `needle` after `cut_after` bytes (a connection that
/// breaks mid-transfer), and records every request head it forwards.
pub struct CuttingProxy {
    pub addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A loopback TCP proxy to `upstream`: each accepted connection gets its
/// own connection upstream, and `on_request` sees every chunk the client
/// sends. With `stall`, a limited response stops flowing but the connection
/// stays open (for a client to be killed during); otherwise it is cut.
/// Returns the proxy's address and the flag that stops accepting.
fn run_proxy<F>(
    upstream: &str,
    stall: bool,
    on_request: F,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>)
where
    F: Fn(&str) -> ProxyAction + Send + Sync + 'static,
{
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (up, stop2, on_request) = (upstream.to_string(), stop.clone(), Arc::new(on_request));
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let (mut client, _) = match l.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = client.set_nonblocking(false);
            let Ok(mut server) = std::net::TcpStream::connect(&up) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            // Response bytes still allowed through, once a request is limited.
            let budget = Arc::new(Mutex::new(None::<usize>));
            let (budget_r, on_request) = (budget.clone(), on_request.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    match on_request(&String::from_utf8_lossy(&buf[..n])) {
                        ProxyAction::Reply(reply) => {
                            let _ = client.write_all(&reply);
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        ProxyAction::LimitResponse(limit) => {
                            *budget_r.lock().unwrap() = Some(limit)
                        }
                        ProxyAction::Forward => {}
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s2.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut b = budget.lock().unwrap();
                    let Some(left) = b.as_mut() else {
                        drop(b);
                        if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        continue;
                    };
                    let room = (*left).min(n);
                    let _ = c2.write_all(&buf[..room]);
                    *left -= room;
                    if *left == 0 {
                        drop(b);
                        if stall {
                            std::thread::sleep(Duration::from_secs(120));
                        }
                        let _ = s2.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, stop)
}

impl CuttingProxy {
    pub fn start(upstream: &str, needle: &str, cut_after: usize) -> CuttingProxy {
        Self::start_mode(upstream, needle, cut_after, false, 1)
    }

    /// As [`CuttingProxy::start`], cutting the first `times` matching
    /// requests (each after `cut_after` bytes of its response).
    pub fn cutting(upstream: &str, needle: &str, cut_after: usize, times: usize) -> CuttingProxy {
        Self::start_mode(upstream, needle, cut_after, false, times)
    }

    /// As [`CuttingProxy::start`], but the response stalls (the connection
    /// stays open, nothing more arrives) instead of being cut: a transfer
    /// caught mid-way, for a client to be killed during.
    pub fn stalling(upstream: &str, needle: &str, after: usize) -> CuttingProxy {
        Self::start_mode(upstream, needle, after, true, 1)
    }

    fn start_mode(
        upstream: &str,
        needle: &str,
        cut_after: usize,
        stall: bool,
        times: usize,
    ) -> CuttingProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cuts = AtomicUsize::new(0);
        let (reqs, needle) = (requests.clone(), needle.to_string());
        let (addr, stop) = run_proxy(upstream, stall, move |text| {
            if !text.contains(" HTTP/1.1") {
                return ProxyAction::Forward;
            }
            reqs.lock().unwrap().push(text.to_string());
            if text.contains(&needle) && cuts.fetch_add(1, Ordering::SeqCst) < times {
                ProxyAction::LimitResponse(cut_after)
            } else {
                ProxyAction::Forward
            }
        });
        CuttingProxy {
            addr,
            requests,
            stop,
        }
    }

    /// The request heads forwarded so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TCP proxy in front of a real registry that answers requests whose
/// request line contains `needle` with `429 Too Many Requests` and
/// `Retry-After: <secs>` for `window` after the first such request (as a
/// rate-limited registry does), and forwards everything else. Records each
/// request line with its time and whether it was refused.
pub struct RateLimitProxy {
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, bool)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RateLimitProxy {
    pub fn start(
        upstream: &str,
        needle: &str,
        window: Duration,
        retry_after_secs: u64,
    ) -> RateLimitProxy {
        use std::sync::{Arc, Mutex};
        let log = Arc::new(Mutex::new(Vec::new()));
        let first: Mutex<Option<Instant>> = Mutex::new(None);
        let (log2, needle) = (log.clone(), needle.to_string());
        let (addr, stop) = run_proxy(upstream, false, move |text| {
            let Some(line) = text.lines().next().filter(|l| l.ends_with(" HTTP/1.1")) else {
                return ProxyAction::Forward;
            };
            let now = Instant::now();
            let limited = line.contains(&needle) && {
                let mut f = first.lock().unwrap();
                let start = *f.get_or_insert(now);
                now.duration_since(start) < window
            };
            log2.lock().unwrap().push((now, line.to_string(), limited));
            if !limited {
                return ProxyAction::Forward;
            }
            let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
            let head_only = line.starts_with("HEAD ");
            ProxyAction::Reply(
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after_secs}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    if head_only { "" } else { body }
                )
                .into_bytes(),
            )
        });
        RateLimitProxy { addr, log, stop }
    }

    /// (seconds since the first request, request line, refused with 429).
    pub fn requests(&self) -> Vec<(f64, String, bool)> {
        let log = self.log.lock().unwrap();
        let t0 = log.first().map(|e| e.0);
        log.iter()
            .map(|(t, l, r)| {
                (
                    t0.map_or(0.0, |t0| t.duration_since(t0).as_secs_f64()),
                    l.clone(),
                    *r,
                )
            })
            .collect()
    }
}

impl Drop for RateLimitProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What [`HttpProxy`] does with the requests it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Forward to the real server, adding Docker Hub's rate-limit headers.
    Forward,
    /// `429 Too Many Requests` with `Retry-After: <secs>`.
    TooMany { retry_after: u64 },
    /// `503 Service Unavailable`.
    Unavailable,
    /// Accept, read the request, never answer.
    Hang,
    /// Accept, then close the connection without a word.
    Drop,
}

/// An HTTP proxy in front of a real registry, switchable at run time
/// between forwarding and the ways an upstream misbehaves ([`Upstream`]).
/// Every forwarded answer carries `ratelimit-limit: 100;w=21600` and
/// `ratelimit-remaining: <n>;w=21600` (Docker Hub's headers), with `n`
/// set by the test. Every request line is recorded, answered or not.
pub struct HttpProxy {
    pub addr: String,
    mode: std::sync::Arc<std::sync::Mutex<Upstream>>,
    remaining: std::sync::Arc<std::sync::atomic::AtomicU64>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpProxy {
    pub fn start(upstream: &str) -> HttpProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let p = HttpProxy {
            addr,
            mode: Arc::new(Mutex::new(Upstream::Forward)),
            remaining: Arc::new(AtomicU64::new(100)),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (mode, remaining, log, stop) = (
            p.mode.clone(),
            p.remaining.clone(),
            p.log.clone(),
            p.stop.clone(),
        );
        let up = upstream.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (mode, remaining, log, stop, up) = (
                    mode.clone(),
                    remaining.clone(),
                    log.clone(),
                    stop.clone(),
                    up.clone(),
                );
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let m = *mode.lock().unwrap();
                    let left = remaining.load(Ordering::SeqCst);
                    serve_one(client, &up, m, left, &log, &stop);
                });
            }
        });
        p
    }

    pub fn set(&self, mode: Upstream) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The `ratelimit-remaining` forwarded answers carry from now on.
    pub fn set_remaining(&self, n: u64) {
        self.remaining.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request line so far (`GET /v2/…/manifests/latest`).
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests so far had `method` and contained `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.starts_with(&format!("{method} ")) && l.contains(part))
            .count()
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request on `client` (answers close the connection), as `mode` says.
fn serve_one(
    mut client: std::net::TcpStream,
    upstream: &str,
    mode: Upstream,
    remaining: u64,
    log: &std::sync::Mutex<Vec<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let line = text.lines().next().unwrap_or_default();
    let line = line.trim_end_matches(" HTTP/1.1").to_string();
    log.lock().unwrap().push(line.clone());
    let is_head = line.starts_with("HEAD ");
    let reply = |status: &str, extra: &str| {
        let body = format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"{status}"}}]}}"#);
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            if is_head { "" } else { body.as_str() }
        )
    };
    match mode {
        Upstream::TooMany { retry_after } => {
            let extra = format!("Retry-After: {retry_after}\r\nratelimit-limit: 100;w=21600\r\nratelimit-remaining: 0;w=21600\r\n");
            let _ = client.write_all(reply("429 Too Many Requests", &extra).as_bytes());
        }
        Upstream::Unavailable => {
            let _ = client.write_all(reply("503 Service Unavailable", "").as_bytes());
        }
        Upstream::Hang => {
            let until = Instant::now() + Duration::from_secs(120);
            while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Upstream::Drop => {}
        Upstream::Forward => {
            let Ok(mut server) = std::net::TcpStream::connect(upstream) else {
                return;
            };
            // One request per connection: ask the server to close after it.
            let mut fwd = String::new();
            let mut body_len = 0usize;
            for l in text.split("\r\n") {
                let lower = l.to_ascii_lowercase();
                if lower.starts_with("connection:") {
                    continue;
                }
                if let Some(v) = lower.strip_prefix("content-length:") {
                    body_len = v.trim().parse().unwrap_or(0);
                }
                if l.is_empty() {
                    break;
                }
                fwd.push_str(l);
                fwd.push_str("\r\n");
            }
            fwd.push_str("Connection: close\r\n\r\n");
            let mut body = vec![0u8; body_len];
            if client.read_exact(&mut body).is_err() || server.write_all(fwd.as_bytes()).is_err() {
                return;
            }
            let _ = server.write_all(&body);
            let mut resp = Vec::new();
            let _ = server.read_to_end(&mut resp);
            let Some(end) = resp.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let limits = format!(
                "\r\nratelimit-limit: 100;w=21600\r\nratelimit-remaining: {remaining};w=21600"
            );
            let _ = client.write_all(&resp[..end]);
            let _ = client.write_all(limits.as_bytes());
            let _ = client.write_all(&resp[end..]);
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
}
