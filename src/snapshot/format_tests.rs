use super::state::*;
use super::*;

/// A small but complete state.
pub(crate) fn sample_state() -> VmState {
    VmState {
        memory: vec![MemoryRegion {
            guest_addr: 0,
            len: 1 << 20,
        }],
        config: SavedConfig {
            cpus: 1,
            memory_mib: 1,
            has_command: false,
            disks: vec![SavedDisk {
                id: "vda".into(),
                path: "/tmp/disk".into(),
                read_only: false,
                size: 4096,
            }],
            nets: vec![],
            vsock: Some(SavedVsock {
                cid: 3,
                uds: Some("/tmp/v.sock".into()),
            }),
        },
        vm: KvmVmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: vec![VcpuState {
            cpuid: vec![Default::default()],
            regs: kvm_bindings::kvm_regs {
                rip: 0x1234,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            msrs: SavedMsrs {
                entries: vec![kvm_bindings::kvm_msr_entry {
                    index: 0x10,
                    data: 99,
                    ..Default::default()
                }],
                unreadable: vec![0x4b56_4df0],
            },
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
            debugregs: Default::default(),
            tsc_khz: 2_000_000,
        }],
        serial: SerialState::default(),
        i8042: I8042State::default(),
        virtio: vec![VirtioState {
            device_type: 2,
            queues: vec![QueueState {
                max_size: 256,
                size: 256,
                next_avail: 7,
                next_used: 7,
                ..Default::default()
            }],
            ..Default::default()
        }],
        counters: SavedCounters {
            devices: vec![vec![1, 2, 3]],
            vcpu_exits: vec![("io_out".into(), 12)],
        },
    }
}

fn header() -> Header {
    Header::current(HostKind::Pvm)
}

#[test]
fn a_state_file_round_trips() {
    let bytes = encode(&header(), &sample_state()).unwrap();
    assert_eq!(&bytes[..8], &MAGIC);
    let (h, s) = decode(&bytes).unwrap();
    assert_eq!(h, header());
    assert_eq!(h.host, HostTag::Pvm);
    assert_eq!(s.vcpus[0].regs.rip, 0x1234);
    assert_eq!(s.vcpus[0].msrs.entries[0].data, 99);
    assert_eq!(s.vcpus[0].msrs.unreadable, vec![0x4b56_4df0]);
    assert_eq!(s.config, sample_state().config);
    assert_eq!(s.virtio, sample_state().virtio);
    assert_eq!(s.counters, sample_state().counters);
}

#[test]
fn wrong_magic_version_and_crc_are_refused() {
    let good = encode(&header(), &sample_state()).unwrap();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(decode(&bad).unwrap_err(), FormatError::Magic);
    assert_eq!(
        decode(b"").unwrap_err(),
        FormatError::Truncated(Section::Magic)
    );
    assert_eq!(decode(b"{\"a\":1}").unwrap_err(), FormatError::Magic);
    let mut bad = good.clone();
    bad[8] = 2;
    assert_eq!(decode(&bad).unwrap_err(), FormatError::Version { found: 2 });
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(matches!(decode(&bad), Err(FormatError::Crc { .. })));
    let mut bad = good.clone();
    bad.push(0);
    assert_eq!(decode(&bad).unwrap_err(), FormatError::TrailingBytes(1));
}

#[test]
fn a_file_cut_in_any_section_names_it() {
    let good = encode(&header(), &sample_state()).unwrap();
    let sections = section_offsets(&good);
    assert_eq!(sections.len(), 7);
    for (i, &(section, start)) in sections.iter().enumerate() {
        // Cut one byte into the section (a section of one byte... none here).
        let cut = start + 1;
        let got = decode(&good[..cut]).unwrap_err();
        assert_eq!(got, FormatError::Truncated(section), "cut at {cut} ({i})");
    }
    // Every other cut is refused as well, never a panic.
    for cut in 0..good.len() {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn a_valid_crc_over_garbage_is_a_decode_error() {
    // A hostile file with a correct CRC: the state does not decode.
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let h = postcard::to_allocvec(&header()).unwrap();
    f.extend_from_slice(&(h.len() as u32).to_le_bytes());
    f.extend_from_slice(&h);
    let junk = [0xffu8; 40];
    f.extend_from_slice(&(junk.len() as u32).to_le_bytes());
    f.extend_from_slice(&junk);
    let crc = CRC.checksum(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::Decode {
                section: Section::State,
                ..
            }
        ),
        "{e}"
    );
}
