//! Thread scheduling policy for kv-epp's own threads (Linux).
//!
//! Contract: `set_idle(tid)` moves one thread of this process to `SCHED_IDLE`,
//! the policy whose threads run only when no normal thread wants the CPU and
//! are preempted as soon as one wakes. Lowering a policy needs no privilege.
//! Fails with the OS's error (ESRCH: no such thread; EPERM: a seccomp profile
//! or another user's thread) and changes nothing then; elsewhere than Linux it
//! fails with `Unsupported`.

#[cfg(target_os = "linux")]
pub fn set_idle(tid: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; the kernel reads it only during it.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
pub fn set_idle(_tid: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SCHED_IDLE is Linux-only"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy_of(tid: i32) -> i32 {
        // SAFETY: plain syscall on a thread id; no memory is passed.
        unsafe { libc::sched_getscheduler(tid) }
    }

    #[test]
    fn moves_only_the_named_thread_to_sched_idle() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // SAFETY: as above.
        let me = unsafe { libc::gettid() };
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        set_idle(tid).unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        assert_eq!(policy_of(me), libc::SCHED_OTHER);
        done_tx.send(()).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn a_thread_that_does_not_exist_is_an_error() {
        let e = set_idle(i32::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
