use super::*;

#[test]
fn parse_valid_macs() {
    assert_eq!(parse_mac("02:00:00:00:00:01"), Ok([2, 0, 0, 0, 0, 1]));
    assert_eq!(
        parse_mac("AA:bb:Cc:dD:0e:F0"),
        Ok([0xaa, 0xbb, 0xcc, 0xdd, 0x0e, 0xf0])
    );
}

#[test]
fn parse_rejects_bad_syntax() {
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "02-00-00-00-00-01",
        "2:00:00:00:00:01",
        "002:00:00:00:00:01",
        "02:00:00:00:00:0g",
        "02:00:00:00:00:+1",
        "02:00:00:00:00:01:",
        " 02:00:00:00:00:01",
        "02::00:00:00:00",
    ] {
        assert!(
            matches!(parse_mac(bad), Err(MacError::Syntax(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn parse_rejects_multicast_and_zero() {
    assert!(matches!(
        parse_mac("01:00:5e:00:00:01"),
        Err(MacError::Multicast(_))
    ));
    assert!(matches!(
        parse_mac("ff:ff:ff:ff:ff:ff"),
        Err(MacError::Multicast(_))
    ));
    assert!(matches!(
        parse_mac("00:00:00:00:00:00"),
        Err(MacError::Zero(_))
    ));
    let msg = parse_mac("03:00:00:00:00:01").unwrap_err().to_string();
    assert!(
        msg.contains("03:00:00:00:00:01") && msg.contains("multicast"),
        "{msg}"
    );
}

#[test]
fn default_mac_is_stable_local_unicast() {
    let a = default_mac("tap0");
    assert_eq!(a, default_mac("tap0"));
    assert_ne!(a, default_mac("tap1"));
    assert_eq!(a[0], 0x02);
    assert_eq!(parse_mac(&format_mac(&a)), Ok(a));
}

#[test]
fn config_space_layout() {
    let cfg = ConfigSpace::new([2, 1, 2, 3, 4, 5]);
    assert_eq!(cfg.as_bytes(), &[2, 1, 2, 3, 4, 5, 1, 0, 1, 0]);
    let mut status = [0xffu8; 2];
    cfg.read(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);
    let mut past = [0xffu8; 8];
    cfg.read(8, &mut past);
    assert_eq!(past, [1, 0, 0, 0, 0, 0, 0, 0]);
    cfg.read(u64::MAX, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn features_and_offloads() {
    let f = avail_features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert!(has(f, b), "feature {b}");
    }
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(
        tap_offloads(f),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    // TSO without checksum offload is not a valid combination: nothing is enabled.
    assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(rx_frame_capacity(f, 1500), HDR_LEN + MAX_FRAME_LEN);
    assert_eq!(rx_frame_capacity(0, 1500), HDR_LEN + 1518);
    assert_eq!(rx_frame_capacity(0, 1 << 20), HDR_LEN + MAX_FRAME_LEN);
}
