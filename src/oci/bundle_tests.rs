use super::*;

fn bundle_with(config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let p = dir.path().to_path_buf();
    (dir, p)
}

fn config(extra: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
        "process":{{"args":["/bin/echo","hi"],"cwd":"/tmp","env":["A=1"],
        "user":{{"uid":1000,"gid":100,"additionalGids":[5]}}}}{extra}}}"#
    )
}

#[test]
fn a_good_bundle_becomes_the_agents_process() {
    let (_d, p) = bundle_with(&config(
        r#","annotations":{"io.hvlite.vcpus":"2","io.hvlite.memory_mib":"256"}"#,
    ));
    let b = load(&p).unwrap();
    assert_eq!(b.process.args, ["/bin/echo", "hi"]);
    assert_eq!(b.process.cwd, "/tmp");
    assert_eq!(b.process.env, ["A=1"]);
    assert_eq!((b.process.user.uid, b.process.user.gid), (1000, 100));
    assert_eq!(b.process.user.additional_gids, [5]);
    assert_eq!((b.vcpus, b.memory_mib), (Some(2), Some(256)));
    assert_eq!(b.root, p.join("rootfs"));
    assert!(b.process.rlimits.is_empty() && !b.process.no_new_privileges);
    let (_d, p) = bundle_with(&config("").replace(
        "\"cwd\"",
        r#""noNewPrivileges":true,"rlimits":[{"type":"RLIMIT_NOFILE","hard":1048576,"soft":1024}],"cwd""#,
    ));
    let b = load(&p).unwrap();
    assert!(b.process.no_new_privileges);
    assert_eq!(b.process.rlimits.len(), 1);
    assert_eq!(b.process.rlimits[0].typ, "RLIMIT_NOFILE");
    assert_eq!(
        (b.process.rlimits[0].soft, b.process.rlimits[0].hard),
        (1024, 1048576)
    );
}

#[test]
fn bad_bundles_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json is missing"), "{err}");
    let (_d, p) = bundle_with("{not json");
    let err = load(&p).unwrap_err().to_string();
    assert!(err.contains("not a valid OCI runtime spec"), "{err}");
    let (_d, p) = bundle_with(&config("").replace("1.0.2", "0.9.0"));
    assert!(
        load(&p)
            .unwrap_err()
            .to_string()
            .contains("unsupported ociVersion")
    );
    let (_d, p) = bundle_with(&config("").replace("\"rootfs\"", "\"nothere\""));
    assert!(
        load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a directory")
    );
    for (ann, what) in [("io.hvlite.vcpus", "0"), ("io.hvlite.memory_mib", "lots")] {
        let (_d, p) = bundle_with(&config(&format!(r#","annotations":{{"{ann}":"{what}"}}"#)));
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains(ann), "{err}");
    }
    let (_d, p) = bundle_with(&config("").replace("\"/tmp\"", "\"tmp\""));
    assert!(load(&p).unwrap_err().to_string().contains("absolute"));
}

#[test]
fn file_binds_are_kept_directory_binds_shared_guest_mounts_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "x").unwrap();
    let mounts = format!(
        r#","mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
        {{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind","ro"]}}]"#,
        hosts.display()
    );
    let (_d, p) = bundle_with(&config(&mounts));
    let b = load(&p).unwrap();
    assert_eq!(b.files, vec![(hosts.clone(), "/etc/hosts".to_string())]);
    assert!(b.volumes.is_empty());
    // Directories become virtio-fs volumes, read-only with "ro".
    let mounts = format!(
        r#","mounts":[{{"destination":"/data","type":"bind","source":"{0}"}},
        {{"destination":"/conf","source":"{0}","options":["rbind","rprivate","ro"]}}]"#,
        dir.path().display()
    );
    let (_d, p) = bundle_with(&config(&mounts));
    let b = load(&p).unwrap();
    assert!(b.files.is_empty());
    let got: Vec<_> = (b.volumes.iter())
        .map(|v| (v.host.clone(), v.guest.as_str(), v.read_only))
        .collect();
    assert_eq!(
        got,
        vec![
            (dir.path().to_path_buf(), "/data", false),
            (dir.path().to_path_buf(), "/conf", true)
        ]
    );
    // A container path the kernel command line cannot carry is refused.
    let mounts = format!(
        r#","mounts":[{{"destination":"/my data","type":"bind","source":"{}"}}]"#,
        dir.path().display()
    );
    let (_d, p) = bundle_with(&config(&mounts));
    let err = load(&p).unwrap_err().to_string();
    assert!(
        err.contains("mount at /my data") && err.contains("whitespace"),
        "{err}"
    );
    let (_d, p) = bundle_with(&config(
        r#","mounts":[{"destination":"/x","type":"nfs","source":"h:/x"}]"#,
    ));
    assert!(
        load(&p)
            .unwrap_err()
            .to_string()
            .contains("\"nfs\" is not supported")
    );
}
