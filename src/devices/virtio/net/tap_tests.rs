//! The real TAP (needs root and /dev/net/tun; skipped loudly otherwise).

use std::path::Path;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::super::test_utils::*;
use super::*;

fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn invalid_names() {
    for (name, what) in [
        ("", "empty"),
        ("a-name-that-is-too-long", "longer"),
        ("a/b", "'/'"),
        ("tap%d", "'%'"),
        ("ta p", "whitespace"),
        ("..", "reserved"),
    ] {
        let err = Tap::open(name).unwrap_err();
        assert!(
            matches!(err, TapError::InvalidName { .. }),
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn created_tap_disappears_on_drop() {
    if !tap_available("created_tap_disappears_on_drop") {
        return;
    }
    let name = "hvt-created0";
    assert!(!exists(name));
    let tap = Tap::open(name).expect("create tap");
    assert!(tap.created());
    assert_eq!(tap.name(), name);
    assert!(exists(name));
    assert_eq!(tap.mtu().expect("mtu"), 1500);
    tap.set_offloads(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
        .expect("offloads");
    tap.set_offloads(0).expect("offloads off");
    drop(tap);
    assert!(!exists(name));
}

#[test]
fn existing_tap_is_kept_and_busy_is_reported() {
    if !tap_available("existing_tap_is_kept_and_busy_is_reported") {
        return;
    }
    let name = "hvt-exist0";
    ip(&["tuntap", "add", "name", name, "mode", "tap", "vnet_hdr"]);
    let result = std::panic::catch_unwind(|| {
        let tap = Tap::open(name).expect("open existing tap");
        assert!(!tap.created());
        let err = Tap::open(name).unwrap_err();
        assert!(matches!(err, TapError::Busy { .. }), "{err}");
        assert!(err.to_string().contains(name));
        drop(tap);
        assert!(exists(name), "an existing TAP must survive");
    });
    ip(&["link", "del", name]);
    result.expect("test body");
}

#[test]
fn non_tap_interface_is_refused() {
    if !tap_available("non_tap_interface_is_refused") {
        return;
    }
    let err = Tap::open("lo").unwrap_err();
    assert!(matches!(err, TapError::NotATap { .. }), "{err}");
}

#[test]
fn frames_round_trip_through_a_real_tap() {
    if !tap_available("frames_round_trip_through_a_real_tap") {
        return;
    }
    let name = "hvt-rtrip0";
    let tap = Tap::open(name).expect("create tap");
    ip(&["link", "set", name, "up"]);
    let host = PacketSocket::bind(name);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");

    // Guest → host: header and frame in two buffers, one writev.
    let out = eth_frame(200, 9);
    put_bytes(&mem, 0x1000, &[0; 12]);
    put_bytes(&mem, 0x2000, &out);
    let bufs = [
        mem.get_slice(GuestAddress(0x1000), 12).expect("slice"),
        mem.get_slice(GuestAddress(0x2000), out.len())
            .expect("slice"),
    ];
    assert_eq!(tap.write_frame(&bufs).expect("writev"), 12 + out.len());
    let seen = host.recv_matching(|f| f == out.as_slice());
    assert!(seen.is_some(), "the frame did not reach the interface");

    // Host → guest: one readv into two buffers, the header first.
    let inbound = eth_frame(300, 3);
    host.send(&inbound);
    let bufs = [
        mem.get_slice(GuestAddress(0x4000), 100).expect("slice"),
        mem.get_slice(GuestAddress(0x5000), 4000).expect("slice"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let n = loop {
        match tap.read_frame(&bufs) {
            Ok(n) => {
                let mut got = get_bytes(&mem, 0x4000, 100);
                got.extend(get_bytes(&mem, 0x5000, n.saturating_sub(100)));
                if got[12..n] == inbound[..] {
                    break n;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no frame from the TAP"
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => panic!("readv: {e}"),
        }
    };
    assert_eq!(n, 12 + inbound.len());
}
