//! The vhost-user state machine of [`Fs`], against a backend that records what it is sent.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::fs::link::LinkError;
use crate::devices::virtio::test_utils::EventLoop;

/// What the recording backend was sent, as short strings.
type Log = Arc<Mutex<Vec<String>>>;

struct Recorder {
    log: Log,
    features: u64,
    /// Refuse every message after this many (the backend went away).
    fail_after: Option<usize>,
}

fn gone(op: &'static str) -> LinkError {
    let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
    LinkError {
        op,
        source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketBroken(io)),
    }
}

impl Recorder {
    fn note(&mut self, op: &'static str, what: String) -> Result<(), LinkError> {
        let mut log = self.log.lock().unwrap();
        if self.fail_after.is_some_and(|n| log.len() >= n) {
            return Err(gone(op));
        }
        log.push(what);
        Ok(())
    }
}

impl Link for Recorder {
    fn get_features(&mut self) -> Result<u64, LinkError> {
        self.note("GET_FEATURES", "get_features".into())?;
        Ok(self.features)
    }
    fn set_features(&mut self, f: u64) -> Result<(), LinkError> {
        self.note("SET_FEATURES", format!("set_features {f:#x}"))
    }
    fn set_owner(&mut self) -> Result<(), LinkError> {
        self.note("SET_OWNER", "set_owner".into())
    }
    fn get_protocol_features(&mut self) -> Result<u64, LinkError> {
        self.note("GET_PROTOCOL_FEATURES", "get_protocol_features".into())?;
        Ok(u64::MAX)
    }
    fn set_protocol_features(&mut self, f: u64) -> Result<(), LinkError> {
        self.note(
            "SET_PROTOCOL_FEATURES",
            format!("set_protocol_features {f:#x}"),
        )
    }
    fn set_mem_table(&mut self, r: &[vhost::VhostUserMemoryRegionInfo]) -> Result<(), LinkError> {
        let fds = r.iter().all(|r| r.mmap_handle >= 0);
        self.note(
            "SET_MEM_TABLE",
            format!("set_mem_table {} fds {fds}", r.len()),
        )
    }
    fn set_vring_num(&mut self, q: usize, n: u16) -> Result<(), LinkError> {
        self.note("SET_VRING_NUM", format!("num {q} {n}"))
    }
    fn set_vring_addr(&mut self, q: usize, a: &vhost::VringConfigData) -> Result<(), LinkError> {
        let ok = a.desc_table_addr != 0 && a.used_ring_addr != 0 && a.avail_ring_addr != 0;
        self.note("SET_VRING_ADDR", format!("addr {q} {ok}"))
    }
    fn set_vring_base(&mut self, q: usize, b: u16) -> Result<(), LinkError> {
        self.note("SET_VRING_BASE", format!("base {q} {b}"))
    }
    fn set_vring_call(&mut self, q: usize, _: &EventFd) -> Result<(), LinkError> {
        self.note("SET_VRING_CALL", format!("call {q}"))
    }
    fn set_vring_kick(&mut self, q: usize, _: &EventFd) -> Result<(), LinkError> {
        self.note("SET_VRING_KICK", format!("kick {q}"))
    }
    fn set_vring_enable(&mut self, q: usize, e: bool) -> Result<(), LinkError> {
        self.note("SET_VRING_ENABLE", format!("enable {q} {e}"))
    }
    fn get_vring_base(&mut self, q: usize) -> Result<u32, LinkError> {
        self.note("GET_VRING_BASE", format!("stop {q}"))?;
        Ok(0)
    }
    fn socket_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

const PROTOCOL: u64 = 1 << 30;
/// What virtiofsd offers: VERSION_1, INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES, and a
/// feature hvlite does not pass on (NOTIFY_ON_EMPTY, bit 24).
const OFFERED: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | PROTOCOL
    | (1 << 24);

fn recorder(features: u64, fail_after: Option<usize>) -> (Box<dyn Link>, Log) {
    let log = Log::default();
    let r = Recorder {
        log: log.clone(),
        features,
        fail_after,
    };
    (Box::new(r), log)
}

/// Guest memory backed by a memfd, as the VMM makes it for shares.
fn shared_memory() -> GuestMemoryMmap {
    crate::vmm::memory::shared_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
}

fn ready_queue(base: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

fn context(mem: &GuestMemoryMmap) -> ActivateContext {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    ActivateContext {
        mem: mem.clone(),
        queues: vec![ready_queue(0x4000), ready_queue(0x8000)],
        kicks: vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ],
        interrupt: Arc::new(crate::devices::virtio::VirtioInterrupt::new(irq)),
    }
}

#[test]
fn handshake_activation_and_reset_send_the_vhost_user_sequence() {
    let lp = EventLoop::start();
    let (link, log) = recorder(OFFERED, None);
    let mut fs = Fs::new("share", link, lp.handle.clone()).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "set_owner",
            "get_features",
            "get_protocol_features",
            "set_protocol_features 0x8"
        ]
    );
    // The guest sees the backend's virtio features, not vhost-user's own bit.
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(fs.avail_features(), OFFERED & !PROTOCOL & !(1 << 24));
    let mut tag = [0u8; 6];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag, b"share\0");

    log.lock().unwrap().clear();
    fs.set_acked_features(1 << VIRTIO_F_VERSION_1);
    let mem = shared_memory();
    fs.activate(context(&mem)).unwrap();
    let expected_features = format!(
        "set_features {:#x}",
        (1u64 << VIRTIO_F_VERSION_1) | PROTOCOL
    );
    let mut expected = vec![expected_features, "set_mem_table 1 fds true".to_string()];
    for q in 0..2 {
        for m in [
            "num {q} 16",
            "addr {q} true",
            "base {q} 0",
            "call {q}",
            "kick {q}",
            "enable {q} true",
        ] {
            expected.push(m.replace("{q}", &q.to_string()));
        }
    }
    assert_eq!(*log.lock().unwrap(), expected);
    assert!(!fs.health().is_gone());
    // A second activation without a reset is refused.
    assert!(fs.activate(context(&mem)).is_err());

    log.lock().unwrap().clear();
    fs.reset();
    assert_eq!(*log.lock().unwrap(), ["stop 0", "stop 1"]);
    // After a reset the device activates again, with a fresh handshake of the rings.
    fs.activate(context(&mem)).unwrap();
    assert_eq!(log.lock().unwrap().len(), 2 + 2 + 12);
}

#[test]
fn a_backend_without_protocol_features_gets_no_enable() {
    let lp = EventLoop::start();
    let (link, log) = recorder(1 << VIRTIO_F_VERSION_1, None);
    let mut fs = Fs::new("t", link, lp.handle.clone()).unwrap();
    assert_eq!(*log.lock().unwrap(), ["set_owner", "get_features"]);
    fs.set_acked_features(1 << VIRTIO_F_VERSION_1);
    fs.activate(context(&shared_memory())).unwrap();
    assert!(!log.lock().unwrap().iter().any(|m| m.starts_with("enable")));
}

#[test]
fn bad_backends_and_tags_are_refused() {
    let lp = EventLoop::start();
    let (link, _) = recorder(1 << VIRTIO_RING_F_EVENT_IDX, None);
    let old = Fs::new("t", link, lp.handle.clone());
    assert!(matches!(old, Err(FsError::NotModern)));
    let (link, _) = recorder(OFFERED, None);
    assert!(matches!(
        Fs::new("a b", link, lp.handle.clone()),
        Err(FsError::Tag(_))
    ));
    let (link, _) = recorder(OFFERED, Some(1));
    let err = Fs::new("t", link, lp.handle.clone()).err().unwrap();
    assert_eq!(err.to_string(), "vhost-user GET_FEATURES failed");
}

#[test]
fn anonymous_memory_or_a_dead_backend_fails_the_share_not_the_vm() {
    let lp = EventLoop::start();
    // Anonymous (unshareable) memory: the backend cannot map it.
    let (link, _) = recorder(OFFERED, None);
    let mut fs = Fs::new("t", link, lp.handle.clone()).unwrap();
    let anon = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
    fs.set_acked_features(1 << VIRTIO_F_VERSION_1);
    fs.activate(context(&anon)).unwrap();
    assert!(fs.health().is_gone());
    // A backend that stops answering mid-activation: the share fails, the VM goes on,
    // and a reset sends it nothing more.
    let (link, log) = recorder(OFFERED, Some(6));
    let mut fs = Fs::new("t", link, lp.handle.clone()).unwrap();
    fs.activate(context(&shared_memory())).unwrap();
    assert!(fs.health().is_gone());
    fs.reset();
    assert_eq!(log.lock().unwrap().len(), 6);
}
