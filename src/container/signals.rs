//! Termination signals sent to hvlite (SIGINT, SIGTERM, SIGHUP), received on one thread
//! with `sigwait` so that they can be forwarded to the container's process instead of
//! killing hvlite on the spot.
//!
//! [`block_forwarded`] must run before any other thread starts: threads inherit the signal
//! mask, so afterwards every thread has these signals blocked and only the waiting thread
//! takes them. Child processes started with `std::process::Command` get an empty mask.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// The signals forwarded to the container's process.
pub const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn forwarded_set() -> SigSet {
    FORWARDED.into_iter().collect()
}

/// Blocks the forwarded signals in the calling thread (and so in every thread it starts).
pub fn block_forwarded() -> io::Result<()> {
    forwarded_set().thread_block().map_err(io::Error::from)
}

/// Starts a thread that calls `on_signal` with every forwarded signal hvlite receives.
/// Nobody needs to join the thread; it ends with the process.
pub fn spawn_forwarder(
    mut on_signal: impl FnMut(libc::c_int) + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            // The signals are blocked in this thread (inherited), as sigwait requires.
            let set = forwarded_set();
            loop {
                match set.wait() {
                    Ok(sig) => on_signal(sig as libc::c_int),
                    Err(e) => {
                        log::warn!("sigwait: {e}");
                        return;
                    }
                }
            }
        })
}

/// When hvlite is PID 1 of its PID namespace (jailed by `hvlite-jailer`), the kernel drops
/// every signal whose action is the default one, SIGTERM included: there this installs a
/// handler for the forwarded signals that ends hvlite at once with [`status_for`] the
/// signal (what the default action gives elsewhere). Returns whether it did. Signals
/// that a container run blocks and waits for are not affected.
pub fn exit_on_termination_as_init() -> io::Result<bool> {
    if std::process::id() != 1 {
        return Ok(false);
    }
    for sig in FORWARDED {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = exit_on_signal as *const () as usize;
        // SAFETY: `act.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: `act` is fully initialised; the handler has the plain signature.
        if unsafe { libc::sigaction(sig as libc::c_int, &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(true)
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit(2) is async-signal-safe (and on every seccomp allow-list).
    unsafe { libc::_exit(i32::from(status_for(sig))) }
}

/// The exit status of a process killed by `sig`, as shells report it.
pub fn status_for(sig: libc::c_int) -> u8 {
    u8::try_from(128 + sig.clamp(0, 127)).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn statuses() {
        assert_eq!(status_for(libc::SIGTERM), 143);
        assert_eq!(status_for(libc::SIGINT), 130);
        assert_eq!(status_for(1000), 255);
    }

    #[test]
    fn a_blocked_signal_reaches_the_forwarder() {
        // Blocking affects this test thread and the threads it starts only. The signal is
        // sent to the forwarder thread itself: a process-directed one would go to another
        // test thread that does not block it.
        block_forwarded().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = spawn_forwarder(move |sig| {
            let _ = tx.send(sig);
        })
        .unwrap();
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: the thread is alive (it loops in sigwait) and blocks `sig`, so the
            // signal stays pending until sigwait takes it.
            let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), sig) };
            assert_eq!(rc, 0);
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(sig));
        }
    }
}
