//! The device event loop: one thread running an event-manager epoll loop, where virtio
//! devices serve their queues when the guest kicks them (ioeventfd) and where any later
//! host-side I/O source (TAP, sockets) is polled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use event_manager::EventManager;

use crate::devices::virtio::{EventLoopHandle, Subscriber};
use crate::exit::{ExitLatch, ExitReason};

/// How long one epoll wait may last before the loop looks at its stop flag.
const POLL_TIMEOUT_MS: i32 = 100;

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the device event loop")]
    Create(#[source] event_manager::Error),
    #[error("cannot start the device event loop thread")]
    Spawn(#[source] std::io::Error),
}

/// A running device event loop.
pub struct EventLoop {
    handle: EventLoopHandle,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EventLoop {
    /// Starts the loop on its own thread. A failure of the loop ends the VM through `latch`.
    pub fn start(latch: Arc<ExitLatch>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Create)?;
        let handle = manager.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::DeviceLoop) {
                    latch.request(ExitReason::Fatal(e.to_string()));
                    return;
                }
                while !stop_flag.load(Ordering::Acquire) {
                    if let Err(e) = manager.run_with_timeout(POLL_TIMEOUT_MS) {
                        latch.request(ExitReason::Fatal(format!("device event loop failed: {e}")));
                        return;
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            handle,
            stop,
            thread,
        })
    }

    /// A handle for adding and removing subscribers from other threads.
    pub fn handle(&self) -> EventLoopHandle {
        self.handle.clone()
    }

    /// Stops the loop and waits for its thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // Wake the loop at once rather than after its poll timeout.
        let _ = self.handle.kick();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventOps, Events, MutEventSubscriber};
    use std::sync::Mutex;
    use std::sync::mpsc;
    use vmm_sys_util::epoll::EventSet;
    use vmm_sys_util::eventfd::EventFd;

    struct Echo {
        evt: EventFd,
        seen: mpsc::Sender<u64>,
    }

    impl MutEventSubscriber for Echo {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            if let Ok(v) = self.evt.read() {
                let _ = self.seen.send(v);
            }
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn subscribers_added_remotely_get_their_events() {
        let latch = Arc::new(ExitLatch::new());
        let el = EventLoop::start(latch.clone()).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let sub: Subscriber = Arc::new(Mutex::new(Echo {
            evt: evt.try_clone().unwrap(),
            seen: tx,
        }));
        let id = el
            .handle()
            .call_blocking(move |ops| -> Result<_, event_manager::Error> {
                Ok(ops.add_subscriber(sub))
            })
            .unwrap();
        evt.write(3).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            3
        );
        el.handle()
            .call_blocking(move |ops| ops.remove_subscriber(id).map(drop))
            .unwrap();
        el.stop();
        assert!(!latch.is_set());
    }
}
