//! Blocks encoded on worker threads, results handed back in the order the
//! blocks were submitted: the engine of the block-parallel compressors
//! ([`crate::pgzip`], [`crate::pzstd`]). Order, not timing, decides the
//! output, so layers stay reproducible whatever the number of cores.

use std::collections::BTreeMap;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

pub struct OrderedPool<J, R> {
    jobs: Option<mpsc::Sender<(u64, J)>>,
    /// `Err` for a block whose encoder panicked.
    results: mpsc::Receiver<(u64, Result<R, Panicked>)>,
    workers: Vec<JoinHandle<()>>,
    next_index: u64,
    next_out: u64,
    done: BTreeMap<u64, R>,
    in_flight: usize,
    max_in_flight: usize,
}

/// One worker per core (at most 8): compression is the only work they do.
fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

impl<J: Send + 'static, R: Send + 'static> OrderedPool<J, R> {
    /// Starts [`threads`] workers, each with a state from `state` (encoder
    /// contexts made once, reused per block), running `encode` on every
    /// job. At most `per_thread` jobs per worker wait or run at a time:
    /// that bounds the memory held in blocks.
    pub fn new<S, F>(per_thread: usize, state: impl Fn() -> S, encode: F) -> OrderedPool<J, R>
    where
        S: Send + 'static,
        F: Fn(&mut S, J) -> R + Clone + Send + 'static,
    {
        let n = threads();
        let (job_tx, job_rx) = mpsc::channel::<(u64, J)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (res_tx, res_rx) = mpsc::channel();
        let workers = (0..n)
            .map(|_| {
                let (rx, tx, encode) = (job_rx.clone(), res_tx.clone(), encode.clone());
                let mut st = state();
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((index, job)) = job else { return };
                    // A panic is returned as this block's result: the
                    // writer waiting for it fails instead of waiting for
                    // ever. The state may be broken: the worker stops.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        encode(&mut st, job)
                    }));
                    let failed = r.is_err();
                    if tx.send((index, r.map_err(|_| Panicked))).is_err() || failed {
                        return;
                    }
                })
            })
            .collect();
        OrderedPool {
            jobs: Some(job_tx),
            results: res_rx,
            workers,
            next_index: 0,
            next_out: 0,
            done: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: n * per_thread.max(1),
        }
    }

    /// Queues `job`; while too many are in flight, passes finished results
    /// to `sink` in order.
    pub fn submit(&mut self, job: J, sink: &mut dyn FnMut(R) -> io::Result<()>) -> io::Result<()> {
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send((self.next_index, job))
            .map_err(|_| stopped())?;
        self.next_index += 1;
        self.in_flight += 1;
        while self.in_flight >= self.max_in_flight {
            self.collect_one(sink)?;
        }
        Ok(())
    }

    /// Passes every remaining result to `sink`, in order.
    pub fn drain(&mut self, sink: &mut dyn FnMut(R) -> io::Result<()>) -> io::Result<()> {
        while self.in_flight > 0 {
            self.collect_one(sink)?;
        }
        Ok(())
    }

    fn collect_one(&mut self, sink: &mut dyn FnMut(R) -> io::Result<()>) -> io::Result<()> {
        let (i, r) = self.results.recv().map_err(|_| stopped())?;
        let r = r.map_err(|Panicked| {
            io::Error::other(format!("a compression worker panicked on block {i}"))
        })?;
        self.in_flight -= 1;
        self.done.insert(i, r);
        while let Some(r) = self.done.remove(&self.next_out) {
            self.next_out += 1;
            sink(r)?;
        }
        Ok(())
    }
}

/// A block's encoder panicked.
struct Panicked;

fn stopped() -> io::Error {
    io::Error::other("the compression workers stopped")
}

impl<J, R> Drop for OrderedPool<J, R> {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_submission_order() {
        // Later jobs finish first: the sink must still see 0, 1, 2, ...
        let mut pool = OrderedPool::new(
            2,
            || (),
            |_: &mut (), i: u64| {
                std::thread::sleep(std::time::Duration::from_millis(20 - i % 20));
                i
            },
        );
        let mut seen = Vec::new();
        for i in 0..40u64 {
            pool.submit(i, &mut |r| {
                seen.push(r);
                Ok(())
            })
            .unwrap();
        }
        pool.drain(&mut |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_worker_fails_the_write_instead_of_hanging() {
        let mut pool = OrderedPool::new(
            2,
            || (),
            |_: &mut (), i: u64| {
                if i == 5 {
                    panic!("encoder bug");
                }
                i
            },
        );
        let mut sink = |_r: u64| Ok(());
        let r = (0..40u64)
            .try_for_each(|i| pool.submit(i, &mut sink))
            .and_then(|()| pool.drain(&mut sink));
        let e = r.unwrap_err();
        assert!(e.to_string().contains("panicked on block 5"), "{e}");
    }
}
