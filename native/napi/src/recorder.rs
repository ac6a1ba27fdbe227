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
//! `DROPPED`). `flush` returns once every job queued before it has run.
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
                Job::Run(work) => {
                    if !work() {
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

fn send(job: Job) -> std::io::Result<()> {
    sender()?
        .send(job)
        .map_err(|_| std::io::Error::other("the approximate-mode thread has stopped"))
}

/// Queues one unit of work.
pub fn queue(work: Work) -> std::io::Result<()> {
    send(Job::Run(work))
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
        let dropped = DROPPED.load(Ordering::Relaxed);
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
        assert_eq!(DROPPED.load(Ordering::Relaxed), dropped + 1);
    }
}
