//! Approximate mode's decisions recorded off the calling thread.
//!
//! Why: recording a decision stores its blocks in the index and prunes or
//! expires others under the index's write lock: ~0.2 ms for a 50 k-token
//! prompt's 3 200 new blocks, plus up to one removal step (~1.5 ms). On the
//! event loop that delayed health checks and small requests while large
//! prompts queued (bench/README.md, finding AS). Dynamo's router likewise
//! hands its decisions to the indexer's own task.
//!
//! Contract: jobs run one at a time on one thread (`kv-epp-approx`), in the
//! order they were queued, each as the synchronous call would have run it.
//! The queue holds at most `CAPACITY` jobs; `queue` blocks the caller while
//! it is full (backpressure, never unbounded memory). A job whose tracker was
//! disposed meanwhile is dropped (counted in `dropped`). `flush` returns once
//! every job queued before it has run. Failure modes: the thread cannot be
//! spawned → `queue` returns an error and the caller records synchronously.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{LazyLock, Mutex};

use kv_epp_core::WorkerKey;

const CAPACITY: usize = 1024;

/// Records a decision on a tracker; false when the tracker is gone.
pub type Runner = fn(u32, WorkerKey, &[u64], f64) -> bool;

pub enum Job {
    Route { run: Runner, tracker: u32, worker: WorkerKey, local: Vec<u64>, now_ms: f64 },
    Flush(SyncSender<()>),
}

/// Jobs whose tracker was gone when they ran.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

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
                Job::Route { run, tracker, worker, local, now_ms } => {
                    if !run(tracker, worker, &local, now_ms) {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
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

/// Queues one job.
pub fn queue(job: Job) -> std::io::Result<()> {
    sender()?
        .send(job)
        .map_err(|_| std::io::Error::other("the approximate-mode thread has stopped"))
}

/// Waits until every job queued before this call has run.
pub fn flush() -> std::io::Result<()> {
    let (tx, rx) = sync_channel(1);
    queue(Job::Flush(tx))?;
    rx.recv().map_err(|_| std::io::Error::other("the approximate-mode thread has stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEEN: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

    /// Tracker 0 is "disposed"; the rest record what they were given.
    fn run(tracker: u32, worker: WorkerKey, local: &[u64], _now: f64) -> bool {
        if tracker == 0 {
            return false;
        }
        SEEN.lock().unwrap().push((tracker, worker.worker_id + local.iter().sum::<u64>()));
        true
    }

    #[test]
    fn runs_jobs_in_queue_order_and_flush_waits_for_them() {
        let w = WorkerKey::new(1, 0);
        let dropped = DROPPED.load(Ordering::Relaxed);
        for i in 0..3000u32 {
            // More than the queue holds: `queue` blocks until there is room, nothing is lost.
            let tracker = if i == 7 { 0 } else { 1 + i % 3 };
            let local = vec![u64::from(i); 2];
            queue(Job::Route { run, tracker, worker: w, local, now_ms: 0.0 }).unwrap();
        }
        flush().unwrap();
        let seen = SEEN.lock().unwrap().clone();
        let want: Vec<(u32, u64)> =
            (0..3000u32).filter(|&i| i != 7).map(|i| (1 + i % 3, 1 + 2 * u64::from(i))).collect();
        assert_eq!(seen, want);
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 1);
    }
}
