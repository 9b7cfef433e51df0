//! The device through the `VirtioDevice` interface, with a real event-loop thread.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::packet::{HDR_LEN, Header, Op};
use super::super::test_utils::*;
use super::*;
use crate::devices::virtio::VirtioInterrupt;
use crate::devices::virtio::test_utils::{EventLoop, wait_until};
use crate::devices::virtio::test_utils::{get_bytes, guest_memory, put_bytes};
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice};

fn context(mem: &GuestMemoryMmap) -> (ActivateContext, GuestRing, GuestRing, EventFd) {
    let (rx, rxq) = GuestRing::new(mem, RXQ, QS);
    let (tx, txq) = GuestRing::new(mem, TXQ, QS);
    let (_, evq) = GuestRing::new(mem, EVQ, QS);
    let kicks: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("kick"))
        .collect();
    let tx_kick = kicks[1].try_clone().expect("clone");
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![rxq, txq, evq],
        kicks,
        interrupt: Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).expect("irq"),
        )),
    };
    (ctx, rx, tx, tx_kick)
}

#[test]
fn identity_features_and_config() {
    let event_loop = EventLoop::start();
    let dev =
        Vsock::new(42, VsockBackendConfig::default(), event_loop.handle.clone()).expect("device");
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    let version = 1u64 << VIRTIO_F_VERSION_1;
    let event_idx = 1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    assert_eq!(dev.avail_features(), version | event_idx);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut dev = dev;
    dev.write_config(0, &[7; 8]);
    let mut cid = [0u8; 1];
    dev.read_config(0, &mut cid);
    assert_eq!(cid, [42]);
}

#[test]
fn cids_are_checked() {
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32, u64::MAX] {
        assert!(matches!(validate_cid(cid), Err(VsockError::InvalidCid(c)) if c == cid));
    }
    for cid in [3, 1000, u64::from(u32::MAX) - 1] {
        assert_eq!(validate_cid(cid).ok(), Some(cid));
    }
    let event_loop = EventLoop::start();
    assert!(matches!(
        Vsock::new(2, VsockBackendConfig::default(), event_loop.handle.clone()),
        Err(VsockError::InvalidCid(2))
    ));
}

#[test]
fn the_socket_file_is_bound_at_creation_and_removed_on_drop() {
    let dir = tempfile::Builder::new()
        .prefix("hvlite-vsock")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let path = dir.path().join("v.sock");
    let event_loop = EventLoop::start();
    let cfg = VsockBackendConfig {
        uds_path: Some(path.clone()),
    };
    let dev = Vsock::new(3, cfg.clone(), event_loop.handle.clone()).expect("device");
    assert!(path.exists());
    assert_eq!(dev.uds_path(), Some(path.as_path()));
    assert!(matches!(
        Vsock::new(3, cfg.clone(), event_loop.handle.clone()),
        Err(VsockError::PathInUse(p)) if p == path
    ));
    drop(dev);
    assert!(!path.exists());
    let missing_dir = VsockBackendConfig {
        uds_path: Some(dir.path().join("no/such/dir/v.sock")),
    };
    assert!(matches!(
        Vsock::new(3, missing_dir, event_loop.handle.clone()),
        Err(VsockError::Bind { .. })
    ));
}

#[test]
fn activate_serve_reset_and_reactivate() {
    let event_loop = EventLoop::start();
    let mut dev =
        Vsock::new(3, VsockBackendConfig::default(), event_loop.handle.clone()).expect("device");
    let (tx, streams) = std::sync::mpsc::channel::<UnixStream>();
    dev.register_host_port(52, tx);
    dev.set_acked_features(dev.avail_features());
    let mem = guest_memory();

    let (mut bad, ..) = context(&mem);
    bad.queues.pop();
    assert!(matches!(
        dev.activate(bad),
        Err(ActivateError::QueueCount { got: 2, want: 3 })
    ));

    let (ctx, mut rx, mut txr, tx_kick) = context(&mem);
    let irq = Arc::clone(&ctx.interrupt);
    dev.activate(ctx).expect("activate");
    assert!(dev.is_active());
    rx.add(&[(RX_BUF, 4096, true)]);
    let hdr = Header {
        src_cid: 3,
        ..guest_hdr(Op::Request, 1000, 52)
    };
    put_bytes(&mem, TX_BUF, &hdr.to_bytes());
    txr.add(&[(TX_BUF, HDR_LEN as u32, false)]);
    tx_kick.write(1).expect("kick");
    wait_until("the RESPONSE", || {
        rx.outstanding() == 0 || !rx.take_used().is_empty()
    });
    let resp: [u8; HDR_LEN] = get_bytes(&mem, RX_BUF, HDR_LEN).try_into().expect("hdr");
    assert_eq!(Header::from_bytes(&resp).op(), Some(Op::Response));
    wait_until("the interrupt", || irq.eventfd().read().is_ok());
    let mut host = streams.recv().expect("the host end");
    assert_eq!(dev.stats().connections_opened, 1);

    // Reset closes every host stream.
    dev.reset();
    assert!(!dev.is_active());
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("read"), 0);

    // A second activation works.
    let (ctx, ..) = context(&mem);
    dev.activate(ctx).expect("re-activate");
    assert!(dev.is_active());
    drop(dev);
    drop(event_loop);
}
