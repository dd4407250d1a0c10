//! Live progress of layer downloads on a terminal; nothing at all when stderr
//! is not a terminal, so CI logs keep plain lines.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Progress {
    counter: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts a display of `label` towards `total` bytes when stderr is a terminal.
    pub fn start(label: &str, total: u64) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let ticker = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let (c, d, label) = (counter.clone(), done.clone(), label.to_string());
            std::thread::spawn(move || {
                let mut out = std::io::stderr();
                loop {
                    // Read before the count: once set, the count is final,
                    // and the last line printed shows it.
                    let finished = d.load(Ordering::Acquire);
                    let n = c.load(Ordering::Relaxed);
                    let _ = write!(
                        out,
                        "\r\x1b[2K{label}: {:.1}/{:.1} MB ({:.0}%)",
                        n as f64 / 1e6,
                        total as f64 / 1e6,
                        100.0 * n as f64 / total as f64
                    );
                    let _ = out.flush();
                    if finished {
                        let _ = writeln!(out);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        });
        Progress {
            counter,
            done,
            ticker,
        }
    }

    /// The counter to add received bytes to, when a display is running.
    pub fn counter(&self) -> Option<&AtomicU64> {
        self.ticker.as_ref().map(|_| self.counter.as_ref())
    }

    pub fn finish(mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
