//! Helpers shared by the device unit tests: a device event loop on its own thread (what
//! the VMM runs), and waiting for a condition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::EventManager;

use super::{EventLoopHandle, Subscriber};

/// An event manager run on a thread until dropped.
pub struct EventLoop {
    pub handle: EventLoopHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    pub fn start() -> Self {
        let mut em = EventManager::<Subscriber>::new().expect("event manager");
        let handle = em.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                em.run_with_timeout(20).expect("event loop");
            }
        });
        Self {
            handle,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("event loop thread");
        }
    }
}

/// Polls `cond` every 2 ms for up to 3 s; panics naming `what` if it never holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
