//! Approximate mode's index work off the calling thread.
//!
//! Why: recording a decision stores its blocks in the index and prunes or
//! expires others under the index's write lock: ~0.2 ms for a 50 k-token
//! prompt's 3 200 new blocks, plus as many removals (~0.7 ms). On the event
//! loop that delayed health checks and small requests while large prompts
//! queued (bench/README.md, finding AS). Dynamo's router likewise hands its
//! decisions to the indexer's own task.
//!
//! Contract: jobs run one at a time on one thread (`kv-epp-approx`), in the
//! order they were queued. The queue holds at most `CAPACITY` jobs; `queue`
//! blocks the caller while it is full (backpressure, never unbounded memory).
//! A job returns false when its tracker was disposed meanwhile (counted in
//! `DISPOSED`); a job that panics is counted in `PANICKED`, and the thread
//! survives it. `stats` reads the queue depth and both counts (metrics).
//! Ordering: only among queued jobs. The router queues large decisions at
//! decision time and records small ones later on its own thread, so a small
//! decision may be recorded before a large one made earlier (expiries are
//! clamped, so the tracker's queue stays ordered), and a repeat of a large
//! prompt may not see its own blocks while the queue is backed up. `flush` returns once every job queued before it has run.
//! Failure modes: the thread cannot be spawned → `queue` returns an error and
//! the caller does the work itself.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{LazyLock, Mutex};

const CAPACITY: usize = 1024;

/// A unit of work; false when its tracker is gone.
pub type Work = Box<dyn FnOnce() -> bool + Send>;

enum Job {
    Run(Work),
    Flush(SyncSender<()>),
}

/// Jobs whose tracker was gone when they ran.
static DISPOSED: AtomicU64 = AtomicU64::new(0);
/// Jobs that panicked (a bug; their work is lost).
static PANICKED: AtomicU64 = AtomicU64::new(0);
/// Work jobs queued and not yet taken by the thread.
static QUEUED: AtomicU64 = AtomicU64::new(0);

/// The queue's state for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting, counting those whose `queue` call is blocked on a full queue
    /// (so it may exceed `CAPACITY` by the number of blocked callers).
    pub queued: u64,
    pub disposed: u64,
    pub panicked: u64,
}

pub fn stats() -> Stats {
    Stats {
        queued: QUEUED.load(Ordering::Relaxed),
        disposed: DISPOSED.load(Ordering::Relaxed),
        panicked: PANICKED.load(Ordering::Relaxed),
    }
}

static QUEUE: LazyLock<Mutex<Option<SyncSender<Job>>>> = LazyLock::new(|| Mutex::new(None));

fn sender() -> std::io::Result<SyncSender<Job>> {
    let mut q = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = q.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = sync_channel::<Job>(CAPACITY);
    std::thread::Builder::new().name("kv-epp-approx".into()).spawn(move || {
        for job in rx {
            match job {
                Job::Run(work) => {
                    QUEUED.fetch_sub(1, Ordering::Relaxed);
                    // A panicking job (a bug) is dropped; the thread lives on for the rest.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                        Ok(true) => {}
                        Ok(false) => {
                            DISPOSED.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            PANICKED.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    })?;
    *q = Some(tx.clone());
    Ok(tx)
}

fn send(job: Job) -> std::io::Result<()> {
    sender()?.send(job).map_err(|_| {
        // The thread is gone: forget it, so the next call starts another.
        *QUEUE.lock().unwrap_or_else(|p| p.into_inner()) = None;
        std::io::Error::other("the approximate-mode thread has stopped")
    })
}

/// Queues one unit of work.
pub fn queue(work: Work) -> std::io::Result<()> {
    // Counted before the send: the thread may take the job before `send` returns.
    QUEUED.fetch_add(1, Ordering::Relaxed);
    send(Job::Run(work)).inspect_err(|_| {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Waits until every job queued before this call has run.
pub fn flush() -> std::io::Result<()> {
    let (tx, rx) = sync_channel(1);
    send(Job::Flush(tx))?;
    rx.recv().map_err(|_| std::io::Error::other("the approximate-mode thread has stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_in_queue_order_and_flush_waits_for_them() {
        static SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
        let before = stats();
        for i in 0..3000u32 {
            // More than the queue holds: `queue` blocks until there is room, nothing is lost.
            queue(Box::new(move || {
                SEEN.lock().unwrap().push(i);
                i != 7 // job 7's tracker is "gone"
            }))
            .unwrap();
        }
        flush().unwrap();
        assert_eq!(*SEEN.lock().unwrap(), (0..3000).collect::<Vec<_>>());
        assert_eq!(stats().disposed, before.disposed + 1);
        assert_eq!(stats().queued, 0);
        // A job that panics is dropped and counted; the thread goes on.
        queue(Box::new(|| panic!("a bug in a job"))).unwrap();
        queue(Box::new(|| {
            SEEN.lock().unwrap().push(9999);
            true
        }))
        .unwrap();
        flush().unwrap();
        assert_eq!(SEEN.lock().unwrap().last(), Some(&9999));
        assert_eq!(stats().panicked, before.panicked + 1);
        assert_eq!(stats().disposed, before.disposed + 1);
        assert_eq!(stats().queued, 0);
        // Jobs waiting behind a busy one are counted until the thread takes them.
        let (go_tx, go_rx) = sync_channel::<()>(0);
        queue(Box::new(move || {
            go_rx.recv().unwrap();
            true
        }))
        .unwrap();
        for _ in 0..5 {
            queue(Box::new(|| true)).unwrap();
        }
        // The first job may or may not have been taken yet.
        let waiting = stats().queued;
        assert!((5..=6).contains(&waiting), "{waiting}");
        go_tx.send(()).unwrap();
        flush().unwrap();
        assert_eq!(stats().queued, 0);
    }
}
