use super::*;

fn spec() -> ProcessSpec {
    ProcessSpec {
        args: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin:/usr/bin".into(), "A=b=c".into(), "EMPTY=".into()],
        cwd: "/work dir".into(),
        user: User {
            uid: 1000,
            gid: 100,
            additional_gids: vec![10, 20],
        },
        terminal: false,
        console_size: None,
        stdin: true,
        rlimits: Vec::new(),
        no_new_privileges: false,
        capabilities: None,
        container: None,
        guest_sync: None,
    }
}

fn host_messages() -> Vec<HostMessage> {
    vec![
        HostMessage::Start(spec()),
        HostMessage::Start(ProcessSpec::new(["true"])),
        HostMessage::Start(ProcessSpec {
            guest_sync: Some(GuestSync {
                realtime_ns: 1_765_000_000_123_456_789,
                entropy: vec![0xa5; 32],
            }),
            ..ProcessSpec::new(["true"])
        }),
        HostMessage::Stdin(Vec::new()),
        HostMessage::Stdin(b"data\0\xff".to_vec()),
        HostMessage::Stdin(vec![7; MAX_CHUNK]),
        HostMessage::StdinClose,
        HostMessage::Signal(libc::SIGTERM),
        HostMessage::Signal(-1),
        HostMessage::Resize(WindowSize {
            height: 50,
            width: 200,
        }),
        HostMessage::Resize(WindowSize {
            height: u16::MAX,
            width: 0,
        }),
        HostMessage::SignalAll(libc::SIGKILL),
        HostMessage::Start(ProcessSpec {
            capabilities: Some(Box::new(Capabilities {
                bounding: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
                effective: vec!["CAP_KILL".into()],
                ..Capabilities::default()
            })),
            container: Some(Box::new(ContainerSetup {
                hostname: Some("box".into()),
                readonly_root: true,
                mounts: vec![MountSpec {
                    destination: "/run".into(),
                    typ: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["nosuid".into(), "mode=755".into()],
                }],
            })),
            ..ProcessSpec::new(["id"])
        }),
        HostMessage::Start(ProcessSpec {
            terminal: true,
            console_size: Some(WindowSize::default()),
            ..ProcessSpec::new(["sh"])
        }),
    ]
}

fn agent_messages() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        },
        AgentMessage::Started { pid: 0x1234_5678 },
        AgentMessage::Stdout(b"out\n".to_vec()),
        AgentMessage::Stdout(Vec::new()),
        AgentMessage::Stderr(vec![0xff; MAX_CHUNK]),
        AgentMessage::Exited(ProcessEnd::Exited(0)),
        AgentMessage::Exited(ProcessEnd::Exited(255)),
        AgentMessage::Exited(ProcessEnd::Signaled(9)),
        AgentMessage::Error {
            status: 127,
            message: "nope: command not found ü".into(),
        },
        AgentMessage::Error {
            status: 125,
            message: String::new(),
        },
    ]
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug + Clone>(messages: &[M]) {
    for m in messages {
        let frame = m.encode();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4, "{m:?}");
        let decoded = M::decode(frame[4], &frame[5..]).unwrap();
        assert_eq!(&decoded, m);
        let mut written = Vec::new();
        write_message(&mut written, m).unwrap();
        assert_eq!(written, frame);
        let mut r = &frame[..];
        assert_eq!(read_message::<_, M>(&mut r).unwrap(), Some(m.clone()));
        assert!(read_message::<_, M>(&mut r).unwrap().is_none());
    }
}

#[test]
fn every_message_round_trips() {
    round_trip(&host_messages());
    round_trip(&agent_messages());
}

#[test]
fn known_encodings() {
    assert_eq!(
        AgentMessage::Hello { version: 1 }.encode(),
        [5, 0, 0, 0, 0x81, 1, 0, 0, 0]
    );
    assert_eq!(
        AgentMessage::Exited(ProcessEnd::Signaled(15)).encode(),
        [3, 0, 0, 0, 0x85, 1, 15]
    );
    assert_eq!(HostMessage::StdinClose.encode(), [1, 0, 0, 0, 0x03]);
    assert_eq!(
        HostMessage::Signal(2).encode(),
        [5, 0, 0, 0, 0x04, 2, 0, 0, 0]
    );
    assert_eq!(
        HostMessage::Resize(WindowSize {
            height: 0x0102,
            width: 80
        })
        .encode(),
        [5, 0, 0, 0, 0x05, 2, 1, 80, 0]
    );
    assert_eq!(
        HostMessage::SignalAll(15).encode(),
        [5, 0, 0, 0, 0x06, 15, 0, 0, 0]
    );
    assert_eq!(
        AgentMessage::Error {
            status: 126,
            message: "x".into()
        }
        .encode(),
        [3, 0, 0, 0, 0x86, 126, b'x']
    );
}

#[test]
fn spec_json_is_camel_case_with_defaults() {
    let json = serde_json::to_value(spec()).unwrap();
    assert_eq!(json["user"]["additionalGids"], serde_json::json!([10, 20]));
    let minimal: ProcessSpec = serde_json::from_str(r#"{"args":["ls"]}"#).unwrap();
    assert_eq!(minimal, ProcessSpec::new(["ls"]));
    assert_eq!(minimal.cwd, "/");
    // OCI fields hvlite does not use are ignored.
    let oci: ProcessSpec = serde_json::from_str(
        r#"{"args":["ls"],"user":{"uid":1,"gid":2,"umask":18},"noNewPrivileges":true}"#,
    )
    .unwrap();
    assert_eq!((oci.user.uid, oci.user.gid), (1, 2));
    assert!(oci.user.additional_gids.is_empty());
    // A terminal with OCI's consoleSize.
    let tty: ProcessSpec = serde_json::from_str(
        r#"{"args":["sh"],"terminal":true,"consoleSize":{"height":30,"width":100}}"#,
    )
    .unwrap();
    assert!(tty.terminal);
    assert_eq!(
        tty.console_size,
        Some(WindowSize {
            height: 30,
            width: 100
        })
    );
    assert!(tty.validate().is_ok());
    let json = serde_json::to_value(&tty).unwrap();
    assert_eq!(json["consoleSize"]["width"], 100);
    assert!(serde_json::to_value(ProcessSpec::new(["x"])).unwrap()["consoleSize"].is_null());
}

#[test]
fn truncated_frames_at_every_position() {
    let mut all = Vec::new();
    for m in host_messages() {
        all.push(m.encode());
    }
    for frame in &all {
        for cut in 1..frame.len() {
            let mut r = &frame[..cut];
            assert!(
                matches!(
                    read_message::<_, HostMessage>(&mut r),
                    Err(ProtocolError::Truncated)
                ),
                "cut at {cut} of {}",
                frame.len()
            );
        }
        assert!(matches!(
            read_message::<_, HostMessage>(&mut &frame[..0]),
            Ok(None)
        ));
    }
    for m in agent_messages() {
        let frame = m.encode();
        for cut in 1..frame.len() {
            let mut r = &frame[..cut];
            assert!(matches!(
                read_message::<_, AgentMessage>(&mut r),
                Err(ProtocolError::Truncated)
            ));
            let mut d = FrameDecoder::<AgentMessage>::new();
            d.push(&frame[..cut]);
            assert!(d.next_message().unwrap().is_none());
            assert!(!d.is_empty());
        }
    }
}

#[test]
fn length_errors() {
    let too_long = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
    let mut r = &too_long[..];
    assert!(matches!(
        read_message::<_, HostMessage>(&mut r),
        Err(ProtocolError::TooLarge { len, max: MAX_FRAME_LEN }) if len == MAX_FRAME_LEN + 1
    ));
    let mut r = &[0xff, 0xff, 0xff, 0xff][..];
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut r),
        Err(ProtocolError::TooLarge { .. })
    ));
    let mut r = &[0, 0, 0, 0, 0x81][..];
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut r),
        Err(ProtocolError::Empty)
    ));

    // The decoder refuses them too, and keeps refusing: the stream cannot be resynchronized.
    let mut d = FrameDecoder::<HostMessage>::new();
    d.push(&too_long);
    for _ in 0..2 {
        assert!(matches!(
            d.next_message(),
            Err(ProtocolError::TooLarge { .. })
        ));
    }
    let mut d = FrameDecoder::<HostMessage>::new();
    d.push(&[0, 0, 0, 0]);
    assert!(matches!(d.next_message(), Err(ProtocolError::Empty)));
}

#[test]
fn largest_frame_is_accepted() {
    // A Start frame of exactly MAX_FRAME_LEN: padding in the JSON.
    let mut payload = br#"{"args":["x"]}"#.to_vec();
    payload.resize(MAX_FRAME_LEN - 1, b' ');
    let mut frame = Vec::new();
    encode_frame(frame_type::START, &payload, &mut frame);
    let mut r = &frame[..];
    assert_eq!(
        read_message::<_, HostMessage>(&mut r).unwrap(),
        Some(HostMessage::Start(ProcessSpec::new(["x"])))
    );
}

#[test]
fn oversized_data_chunks_are_refused() {
    let mut frame = Vec::new();
    encode_frame(frame_type::STDOUT, &vec![0; MAX_CHUNK + 1], &mut frame);
    let check = |r: Result<Option<AgentMessage>, ProtocolError>| {
        assert!(matches!(
            r,
            Err(ProtocolError::TooLarge { len, max: MAX_CHUNK }) if len == MAX_CHUNK + 1
        ))
    };
    check(read_message(&mut &frame[..]));
    check(AgentMessage::decode(frame[4], &frame[5..]).map(Some));
    // The decoder refuses it from the header alone.
    let mut d = FrameDecoder::<AgentMessage>::new();
    d.push(&frame[..5]);
    check(d.next_message());

    let big = HostMessage::Stdin(vec![0; MAX_CHUNK + 1]);
    let err = write_message(&mut Vec::new(), &big).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(matches!(
        HostMessage::decode(frame_type::STDIN, &vec![0; MAX_CHUNK + 1]),
        Err(ProtocolError::TooLarge { .. })
    ));
}

#[test]
fn chunk_helpers() {
    let data: Vec<u8> = (0..(2 * MAX_CHUNK + 5)).map(|i| i as u8).collect();
    let chunks: Vec<_> = AgentMessage::stdout_chunks(&data).collect();
    assert_eq!(chunks.len(), 3);
    let mut joined = Vec::new();
    for c in &chunks {
        let AgentMessage::Stdout(bytes) = c else {
            panic!("{c:?}")
        };
        assert!(bytes.len() <= MAX_CHUNK);
        joined.extend_from_slice(bytes);
        write_message(&mut Vec::new(), c).unwrap();
    }
    assert_eq!(joined, data);
    assert!(matches!(
        AgentMessage::stderr_chunks(b"e").next(),
        Some(AgentMessage::Stderr(b)) if b == b"e"
    ));
    assert_eq!(HostMessage::stdin_chunks(&data).count(), 3);
    assert_eq!(HostMessage::stdin_chunks(&[]).count(), 0);
}

#[test]
fn unknown_types() {
    // Each side refuses the other side's types.
    let frame = AgentMessage::Hello { version: 1 }.encode();
    assert!(matches!(
        read_message::<_, HostMessage>(&mut &frame[..]),
        Err(ProtocolError::UnknownType(0x81))
    ));
    let frame = HostMessage::StdinClose.encode();
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut &frame[..]),
        Err(ProtocolError::UnknownType(0x03))
    ));
    assert!(matches!(
        HostMessage::decode(0, &[]),
        Err(ProtocolError::UnknownType(0))
    ));
    // The decoder skips the bad frame: the next one still decodes.
    let mut d = FrameDecoder::<HostMessage>::new();
    d.push(&[1, 0, 0, 0, 0x7f]);
    d.push(&HostMessage::Signal(9).encode());
    assert!(matches!(
        d.next_message(),
        Err(ProtocolError::UnknownType(0x7f))
    ));
    assert_eq!(d.next_message().unwrap(), Some(HostMessage::Signal(9)));
    assert!(d.is_empty());
}

#[test]
fn bad_payloads() {
    let bad = |r: Result<HostMessage, ProtocolError>| {
        assert!(matches!(r, Err(ProtocolError::BadPayload(_))), "{r:?}")
    };
    bad(HostMessage::decode(frame_type::START, b"{not json"));
    bad(HostMessage::decode(frame_type::START, b""));
    bad(HostMessage::decode(frame_type::START, br#"{"env":[]}"#)); // args missing
    bad(HostMessage::decode(frame_type::START, br#"{"args":"ls"}"#));
    bad(HostMessage::decode(
        frame_type::START,
        br#"{"args":["ls"],"user":{"uid":-1,"gid":0}}"#,
    ));
    bad(HostMessage::decode(frame_type::SIGNAL, &[1, 2, 3]));
    bad(HostMessage::decode(frame_type::STDIN_CLOSE, &[0]));
    bad(HostMessage::decode(frame_type::RESIZE, &[24, 0, 80]));
    bad(HostMessage::decode(frame_type::RESIZE, &[24, 0, 80, 0, 0]));
    bad(HostMessage::decode(frame_type::SIGNAL_ALL, &[]));
    let bad = |r: Result<AgentMessage, ProtocolError>| {
        assert!(matches!(r, Err(ProtocolError::BadPayload(_))), "{r:?}")
    };
    bad(AgentMessage::decode(frame_type::HELLO, &[1, 0, 0]));
    bad(AgentMessage::decode(frame_type::STARTED, &[1, 0, 0, 0, 0]));
    bad(AgentMessage::decode(frame_type::EXITED, &[2, 0]));
    bad(AgentMessage::decode(frame_type::EXITED, &[0]));
    bad(AgentMessage::decode(frame_type::ERROR, &[]));
    bad(AgentMessage::decode(frame_type::ERROR, &[125, 0xff, 0xfe]));
}

#[test]
fn spec_validation() {
    assert!(spec().validate().is_ok());
    assert!(ProcessSpec::new(["/bin/true"]).validate().is_ok());
    let refused = |f: &dyn Fn(&mut ProcessSpec)| {
        let mut s = spec();
        f(&mut s);
        assert!(
            matches!(s.validate(), Err(ProtocolError::BadSpec(_))),
            "{s:?}"
        );
    };
    refused(&|s| s.args.clear());
    refused(&|s| s.args[0].clear());
    refused(&|s| s.args[1] = "a\0b".into());
    refused(&|s| s.env.push("NOEQUALS".into()));
    refused(&|s| s.env.push("=value".into()));
    refused(&|s| s.env.push("K=v\0".into()));
    refused(&|s| s.cwd = "relative".into());
    refused(&|s| s.cwd = String::new());
    refused(&|s| s.cwd = "/a\0".into());
    refused(&|s| {
        s.capabilities = Some(Box::new(Capabilities {
            ambient: vec!["CAP_NOPE".into()],
            ..Capabilities::default()
        }))
    });
    let mount = |dest: &str, typ: &str| MountSpec {
        destination: dest.into(),
        typ: typ.into(),
        source: String::new(),
        options: Vec::new(),
    };
    let setup = |m: MountSpec| {
        Box::new(ContainerSetup {
            mounts: vec![m],
            ..ContainerSetup::default()
        })
    };
    refused(&|s| s.container = Some(setup(mount("/x", "ext4"))));
    refused(&|s| s.container = Some(setup(mount("relative", "tmpfs"))));
    refused(&|s| s.container = Some(setup(mount("/a/../b", "tmpfs"))));
    refused(&|s| {
        s.container = Some(Box::new(ContainerSetup {
            hostname: Some("h".repeat(65)),
            ..ContainerSetup::default()
        }))
    });
    let mut ok = spec();
    ok.container = Some(setup(mount("/dev/mqueue", "mqueue")));
    assert!(ok.validate().is_ok());
}

#[test]
fn capability_masks() {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(capability_mask(&names(&[])).unwrap(), 0);
    assert_eq!(
        capability_mask(&names(&["CAP_CHOWN", "CAP_SYS_ADMIN"])).unwrap(),
        1 | (1 << 21)
    );
    assert_eq!(
        capability_mask(&names(&["CAP_CHECKPOINT_RESTORE"])).unwrap(),
        1 << 40
    );
    assert!(capability_mask(&names(&["chown"])).is_err());
    assert_eq!(CAPABILITY_NAMES[10], "CAP_NET_BIND_SERVICE");
    assert_eq!(CAPABILITY_NAMES[21], "CAP_SYS_ADMIN");
}

#[test]
fn process_end_status() {
    assert_eq!(ProcessEnd::Exited(0).status(), 0);
    assert_eq!(ProcessEnd::Exited(42).status(), 42);
    assert_eq!(ProcessEnd::Signaled(9).status(), 137);
    assert_eq!(ProcessEnd::Signaled(127).status(), 255);
    assert_eq!(ProcessEnd::Signaled(200).status(), 255);
    assert_eq!(
        ProcessEnd::from_wait_status(3 << 8),
        Some(ProcessEnd::Exited(3))
    );
    assert_eq!(
        ProcessEnd::from_wait_status(libc::SIGKILL),
        Some(ProcessEnd::Signaled(9))
    );
    assert_eq!(
        ProcessEnd::from_wait_status((libc::SIGSTOP << 8) | 0x7f),
        None
    );
}

fn all_host_frames() -> (Vec<u8>, Vec<HostMessage>) {
    let messages = host_messages();
    let bytes = messages.iter().flat_map(Message::encode).collect();
    (bytes, messages)
}

#[test]
fn decoder_one_byte_at_a_time() {
    let (bytes, messages) = all_host_frames();
    let mut d = FrameDecoder::<HostMessage>::new();
    let mut got = Vec::new();
    for b in bytes {
        d.push(&[b]);
        while let Some(m) = d.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, messages);
    assert!(d.is_empty());
    assert_eq!(d.buffered(), 0);
}

#[test]
fn decoder_many_frames_in_one_push() {
    let (bytes, messages) = all_host_frames();
    let mut d = FrameDecoder::<HostMessage>::new();
    // Everything plus the first half of one more frame.
    let extra = HostMessage::Signal(1).encode();
    d.push(&bytes);
    d.push(&extra[..3]);
    let mut got = Vec::new();
    while let Some(m) = d.next_message().unwrap() {
        got.push(m);
    }
    assert_eq!(got, messages);
    assert!(!d.is_empty());
    assert_eq!(d.buffered(), 3);
    d.push(&extra[3..]);
    assert_eq!(d.next_message().unwrap(), Some(HostMessage::Signal(1)));
    assert!(d.next_message().unwrap().is_none());
    assert!(d.is_empty());
}

#[test]
fn decoder_in_uneven_pieces() {
    let (bytes, messages) = all_host_frames();
    for piece in [2, 3, 5, 7, 4096, 40_000] {
        let mut d = FrameDecoder::<HostMessage>::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(piece) {
            d.push(chunk);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, messages, "pieces of {piece}");
    }
}

/// A reader that returns one byte per call, with an `Interrupted` error between bytes.
struct Trickle<'a> {
    data: &'a [u8],
    interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let Some((&b, rest)) = self.data.split_first() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        buf[0] = b;
        self.data = rest;
        Ok(1)
    }
}

#[test]
fn read_message_from_a_slow_reader() {
    let (bytes, messages) = all_host_frames();
    let mut r = Trickle {
        data: &bytes,
        interrupt: false,
    };
    for m in messages {
        assert_eq!(read_message::<_, HostMessage>(&mut r).unwrap(), Some(m));
    }
    assert!(read_message::<_, HostMessage>(&mut r).unwrap().is_none());
}

#[test]
fn rlimits_are_checked() {
    let mut s = spec();
    s.rlimits = vec![Rlimit {
        typ: "RLIMIT_NOFILE".into(),
        hard: 10,
        soft: 5,
    }];
    assert!(s.validate().is_ok());
    s.rlimits[0].soft = 11;
    assert!(s.validate().unwrap_err().to_string().contains("above hard"));
    s.rlimits[0].typ = "RLIMIT_BOGUS".into();
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("RLIMIT_BOGUS")
    );
}

#[test]
fn guest_sync_is_optional_and_bounded() {
    // A Start without it (an older host) still decodes.
    let spec: ProcessSpec = serde_json::from_str(r#"{"args":["true"]}"#).unwrap();
    assert_eq!(spec.guest_sync, None);
    let json = r#"{"args":["true"],"guestSync":{"realtimeNs":5,"entropy":[1,2]}}"#;
    let spec: ProcessSpec = serde_json::from_str(json).unwrap();
    let sync = spec.guest_sync.clone().unwrap();
    assert_eq!((sync.realtime_ns, sync.entropy), (5, vec![1, 2]));
    spec.validate().unwrap();
    let big = ProcessSpec {
        guest_sync: Some(GuestSync {
            realtime_ns: 0,
            entropy: vec![0; MAX_SYNC_ENTROPY + 1],
        }),
        ..ProcessSpec::new(["true"])
    };
    let err = big.validate().unwrap_err().to_string();
    assert!(err.contains("entropy"), "{err}");
}
