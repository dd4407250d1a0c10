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
