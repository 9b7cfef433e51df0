use super::*;
use std::time::Duration;

use crate::config::MacAddr;
use crate::logging::{LogDest, LogFormat};

use tempfile::TempDir;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vm.json")
}

/// The error message for `text` parsed as `vm.json`.
fn err(text: &str) -> String {
    FileConfig::parse(text, "vm.json").unwrap_err().to_string()
}

/// Asserts the message for `text` starts with `want` (the line and column follow).
fn assert_err(text: &str, want: &str) {
    let e = err(text);
    assert!(e.starts_with(want), "got:  {e}\nwant: {want}...");
}

#[test]
fn the_example_loads() {
    let cfg = load(&example_path()).unwrap();
    let machine = cfg.machine_config.as_ref().unwrap();
    assert_eq!(machine.vcpu_count.map(VcpuCount::get), Some(2));
    assert_eq!(cfg.drives.len(), 2);
    assert!(cfg.drives[0].is_read_only && !cfg.drives[1].is_read_only);
    let nic = &cfg.network_interfaces[0];
    assert_eq!(nic.guest_mac, Some(MacAddr([0x02, 0xfc, 0, 0, 0, 5])));
    assert_eq!(cfg.vsock.as_ref().unwrap().guest_cid.get(), 3);
    let p = cfg.process.as_ref().unwrap();
    assert_eq!(p.env[1].as_str(), "HOSTNAME=vm1");
    assert_eq!(
        p.user,
        Some(User {
            uid: 1000,
            gid: 1000
        })
    );
    let logger = cfg.logger.as_ref().unwrap();
    assert_eq!(logger.format, Some(LogFormat::Json));
    assert!(matches!(logger.dest(), LogDest::File(_)));
    let spec = logger.level.as_ref().unwrap();
    assert_eq!(spec.level_for("hvlite::vcpu"), log::LevelFilter::Warn);
    assert_eq!(
        cfg.metrics.as_ref().unwrap().flush_interval(),
        Duration::from_secs(60)
    );
}

#[test]
fn round_trips() {
    let cfg = load(&example_path()).unwrap();
    let text = cfg.to_json_pretty();
    assert_eq!(FileConfig::parse(&text, "again").unwrap(), cfg);
    let empty = FileConfig::parse("{}", "empty").unwrap();
    assert_eq!(empty, FileConfig::default());
    assert_eq!(empty.to_json_pretty(), "{}");
}

#[test]
fn missing_or_unreadable_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nope.json");
    let e = load(&path).unwrap_err();
    assert!(matches!(e, ConfigFileError::Read(..)));
    assert!(e.to_string().contains("nope.json"), "{e}");
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, ConfigFileError::Read(..)), "a directory: {e}");
}

#[test]
fn unknown_fields_name_their_path() {
    assert_err(
        r#"{"kernel": "x"}"#,
        "vm.json: kernel: unknown field `kernel`",
    );
    assert_err(
        r#"{"machine-config": {"vcpu_count": 1, "threads": 2}}"#,
        "vm.json: machine-config.threads: unknown field `threads`",
    );
    assert_err(
        r#"{"machine-config": {"vcpu_count": 1, "smt": true}}"#,
        "vm.json: machine-config.smt: true is not supported",
    );
    assert_err(
        r#"{"drives": [{"drive_id": "a", "path_on_host": "a", "cache_type": "Unsafe"}]}"#,
        "vm.json: drives[0].cache_type: unknown field `cache_type`",
    );
    assert_err(
        r#"{"process": {"user": {"uid": 1, "gid": 2, "groups": []}}}"#,
        "vm.json: process.user.groups: unknown field `groups`",
    );
}

#[test]
fn wrong_types_name_their_path() {
    assert_err(
        r#"{"machine-config": {"mem_size_mib": "256"}}"#,
        "vm.json: machine-config.mem_size_mib: invalid type: string \"256\", expected u64",
    );
    assert_err(
        r#"{"drives": [{"drive_id": "a", "path_on_host": "a", "is_read_only": "yes"}]}"#,
        "vm.json: drives[0].is_read_only: invalid type: string \"yes\", expected a boolean",
    );
    assert_err(r#"{"drives": {}}"#, "vm.json: drives: invalid type: map");
    assert_err(
        r#"{"drives": [{"drive_id": "a"}]}"#,
        "vm.json: drives[0]: missing field `path_on_host`",
    );
    assert_err(
        r#"{"process": {"args": "ls -l"}}"#,
        "vm.json: process.args: invalid type: string",
    );
}

#[test]
fn out_of_range_values_name_their_path() {
    assert_err(
        r#"{"machine-config": {"vcpu_count": 0}}"#,
        "vm.json: machine-config.vcpu_count: must be between 1 and 32, got 0 (line 1, column",
    );
    assert_err(
        r#"{"machine-config": {"vcpu_count": 33}}"#,
        "vm.json: machine-config.vcpu_count: must be between 1 and 32, got 33",
    );
    assert_err(
        r#"{"machine-config": {"mem_size_mib": 0}}"#,
        "vm.json: machine-config.mem_size_mib: must be at least 1, got 0",
    );
    assert_err(
        r#"{"vsock": {"guest_cid": 2, "uds_path": "v.sock"}}"#,
        "vm.json: vsock.guest_cid: must be between 3 and 4294967294, got 2",
    );
    assert_err(
        r#"{"metrics": {"metrics_path": "m", "flush_interval_secs": 0}}"#,
        "vm.json: metrics.flush_interval_secs: must be at least 1, got 0",
    );
}

#[test]
fn bad_strings_name_their_path() {
    let nic = |mac: &str| {
        format!(
            r#"{{"network-interfaces": [
                {{"iface_id": "eth0", "host_dev_name": "tap0"}},
                {{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "{mac}"}}]}}"#
        )
    };
    assert_err(
        &nic("02:00:00:00:00"),
        "vm.json: network-interfaces[1].guest_mac: MAC address \"02:00:00:00:00\" is not six",
    );
    assert_err(
        &nic("03:00:00:00:00:01"),
        "vm.json: network-interfaces[1].guest_mac: MAC address 03:00:00:00:00:01 is a multicast",
    );
    assert_err(
        r#"{"network-interfaces": [{"iface_id": "e", "host_dev_name": "a/b"}]}"#,
        "vm.json: network-interfaces[0].host_dev_name: invalid TAP name \"a/b\"",
    );
    assert_err(
        r#"{"drives": [{"drive_id": "a.b", "path_on_host": "x"}]}"#,
        "vm.json: drives[0].drive_id: \"a.b\" is not 1-64 ASCII letters",
    );
    for (field, text) in [
        (
            "drives[0].path_on_host",
            r#"{"drives": [{"drive_id": "a", "path_on_host": ""}]}"#,
        ),
        (
            "boot-source.kernel_image_path",
            r#"{"boot-source": {"kernel_image_path": ""}}"#,
        ),
        (
            "vsock.uds_path",
            r#"{"vsock": {"guest_cid": 3, "uds_path": ""}}"#,
        ),
        ("rootfs", r#"{"rootfs": ""}"#),
        (
            "metrics.metrics_path",
            r#"{"metrics": {"metrics_path": ""}}"#,
        ),
    ] {
        assert_err(
            text,
            &format!("vm.json: {field}: must not be an empty path"),
        );
    }
    assert_err(
        r#"{"process": {"env": ["A=1", "B"]}}"#,
        "vm.json: process.env[1]: \"B\" is not KEY=VALUE",
    );
    assert_err(
        r#"{"logger": {"level": "info,hvlite=loud"}}"#,
        "vm.json: logger.level: bad log level directive \"hvlite=loud\"",
    );
    assert_err(
        r#"{"logger": {"format": "xml"}}"#,
        "vm.json: logger.format: unknown variant `xml`",
    );
}

#[test]
fn cross_field_checks_name_their_path() {
    assert_eq!(
        err(r#"{"drives": [{"drive_id": "a", "path_on_host": "x"},
                          {"drive_id": "b", "path_on_host": "y"},
                          {"drive_id": "a", "path_on_host": "z"}]}"#),
        "vm.json: drives[2].drive_id: duplicate id \"a\""
    );
    assert_eq!(
        err(
            r#"{"network-interfaces": [{"iface_id": "n", "host_dev_name": "t0"},
                                      {"iface_id": "n", "host_dev_name": "t1"}]}"#
        ),
        "vm.json: network-interfaces[1].iface_id: duplicate id \"n\""
    );
    assert_eq!(
        err(
            r#"{"drives": [{"drive_id": "a", "path_on_host": "x", "is_root_device": true},
                          {"drive_id": "b", "path_on_host": "y", "is_root_device": true}]}"#
        ),
        "vm.json: drives[1].is_root_device: drive \"b\" cannot be the root device: drive \"a\" already is"
    );
    assert_eq!(
        err(r#"{"process": {"args": []}}"#),
        "vm.json: process.args: must not be empty"
    );
    assert_eq!(
        err(r#"{"process": {"cwd": "tmp"}}"#),
        "vm.json: process.cwd: must be an absolute path"
    );
}

#[test]
fn syntax_errors_give_the_position() {
    assert_eq!(
        err("{\n  \"rootfs\": \"r\",\n}"),
        "vm.json: trailing comma (line 3, column 1)"
    );
    assert_eq!(
        err(r#"{"rootfs": "r"} {}"#),
        "vm.json: trailing characters (line 1, column 17)"
    );
    assert_err("", "vm.json: EOF while parsing a value");
}

#[test]
fn a_root_drive_goes_first_and_boots_as_root() {
    let cfg = FileConfig::parse(
        r#"{"boot-source": {"kernel_image_path": "k", "boot_args": "quiet"},
            "drives": [{"drive_id": "data", "path_on_host": "d"},
                       {"drive_id": "root", "path_on_host": "r", "is_root_device": true}]}"#,
        "vm.json",
    )
    .unwrap();
    let vm = cfg.to_vm_config(CliOverrides::default()).unwrap();
    assert_eq!(vm.disk_ids, ["root", "data"]);
    assert!(vm.root_disk().is_some_and(|d| d.path == Path::new("r")));
    // The VMM adds root=/dev/vda when it builds the command line, not the file.
    assert_eq!(vm.cmdline.as_deref(), Some("quiet"));
}

#[test]
fn the_file_fills_a_vm_config() {
    let cfg = load(&example_path()).unwrap();
    let vm = cfg.to_vm_config(CliOverrides::default()).unwrap();
    assert_eq!(vm.kernel, PathBuf::from("kernels/vmlinux"));
    assert_eq!(vm.initrd, Some(PathBuf::from("build/initramfs.cpio")));
    assert_eq!(vm.cmdline.as_deref(), Some("quiet"));
    assert_eq!((vm.cpus, vm.memory_mib), (2, 256));
    assert_eq!(
        vm.disks,
        [
            DiskConfig {
                path: "images/alpine.ext4".into(),
                read_only: true,
                root: true,
                rate_limiter: None,
            },
            DiskConfig {
                path: "images/scratch.img".into(),
                read_only: false,
                root: false,
                rate_limiter: None,
            },
        ]
    );
    assert_eq!(
        vm.nets,
        [NetConfig {
            tap: "hvtap0".into(),
            mac: Some([0x02, 0xfc, 0, 0, 0, 5]),
            tx_rate_limiter: None,
            rx_rate_limiter: None,
        }]
    );
    assert_eq!(vm.disk_ids, ["rootfs", "scratch"]);
    assert_eq!(vm.net_ids, ["eth0"]);
    let vsock = vm.vsock.as_ref().unwrap();
    assert_eq!(vsock.cid, 3);
    assert_eq!(vsock.uds, Some(PathBuf::from("/run/hvlite/vm1.vsock")));
    assert_eq!(vm.command.unwrap()[0], "/bin/sh");
}

#[test]
fn the_command_line_wins() {
    let cfg = load(&example_path()).unwrap();
    let cli = CliOverrides {
        kernel: Some("other/bzImage".into()),
        initrd: None,
        cmdline: Some("debug".into()),
        cpus: Some(4),
        memory_mib: None,
        disks: vec!["d.img,ro".parse().unwrap()],
        nets: vec![],
        vsock: None,
        entropy: true,
        shares: vec![],
        command: vec!["true".into()],
    };
    let vm = cfg.to_vm_config(cli).unwrap();
    assert_eq!(vm.entropy, Some(Default::default()));
    assert_eq!(vm.kernel, PathBuf::from("other/bzImage"));
    assert_eq!(vm.initrd, Some(PathBuf::from("build/initramfs.cpio")));
    assert_eq!(vm.cmdline.as_deref(), Some("debug"));
    assert_eq!((vm.cpus, vm.memory_mib), (4, 256));
    assert_eq!(
        vm.disks.len(),
        1,
        "the command line's disks replace the file's"
    );
    assert_eq!(vm.nets.len(), 1);
    assert_eq!(vm.command, Some(vec!["true".to_string()]));
}

#[test]
fn defaults_and_the_kernel_requirement() {
    let empty = FileConfig::default();
    assert!(matches!(
        empty.to_vm_config(CliOverrides::default()),
        Err(ConfigFileError::NoKernel)
    ));
    let vm = empty
        .to_vm_config(CliOverrides {
            kernel: Some("k".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(vm, VmConfig::new("k".into()));
}

#[test]
fn container_switches_round_trip() {
    let text = r#"{"rootfs": "/srv/root", "console": true,
        "process": {"args": ["cat"], "stdin": true}}"#;
    let cfg = FileConfig::parse(text, "c.json").unwrap();
    assert!(cfg.console);
    assert!(cfg.process.as_ref().is_some_and(|p| p.stdin));
    let again = FileConfig::parse(&cfg.to_json_pretty(), "again.json").unwrap();
    assert_eq!(again, cfg);
    // Off by default, and then not written out.
    let plain = FileConfig::parse(r#"{"process": {"args": ["true"]}}"#, "p.json").unwrap();
    assert!(!plain.console && !plain.process.as_ref().is_some_and(|p| p.stdin));
    assert!(!plain.to_json_pretty().contains("stdin"));
    assert_err(r#"{"console": "yes"}"#, "vm.json: console: invalid type");
}

#[test]
fn shares_come_from_the_file_unless_the_command_line_gives_some() {
    let text = r#"{"fs": [{"fs_id": "data", "tag": "data", "path_on_host": "/srv/data",
        "is_read_only": true}, {"fs_id": "w", "tag": "w", "path_on_host": "/w",
        "socket_path": "/run/w.sock"}]}"#;
    let cfg = FileConfig::parse(text, "f.json").unwrap();
    let vm = cfg
        .to_vm_config(CliOverrides {
            kernel: Some("k".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(vm.share_ids, ["data", "w"]);
    assert!(vm.shares[0].read_only && vm.shares[1].socket.is_some());
    let cli = CliOverrides {
        kernel: Some("k".into()),
        shares: vec!["tag=cli,path=/c".parse().unwrap()],
        ..Default::default()
    };
    let vm = cfg.to_vm_config(cli).unwrap();
    assert_eq!((vm.shares.len(), vm.share_id(0).as_str()), (1, "cli"));
    assert_eq!(
        FileConfig::parse(&cfg.to_json_pretty(), "again").unwrap(),
        cfg
    );
    let dup = r#"{"fs": [{"fs_id": "a", "tag": "t", "path_on_host": "/a"},
        {"fs_id": "b", "tag": "t", "path_on_host": "/b"}]}"#;
    let e = FileConfig::parse(dup, "d.json").unwrap_err().to_string();
    assert_eq!(e, "d.json: fs[1].tag: another share has this tag");
    let bad = r#"{"fs": [{"fs_id": "a", "tag": "t", "path_on_host": ""}]}"#;
    let e = FileConfig::parse(bad, "e.json").unwrap_err().to_string();
    assert!(
        e.starts_with("e.json: fs[0].path_on_host: must not be an empty path"),
        "{e}"
    );
}
