use super::*;

fn spec(dir: &Path) -> TemplateSpec {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"kernel bytes").unwrap();
    TemplateSpec {
        kernel,
        agent_disk: dir.join("agent/0123abcd.ext4"),
        cpus: 2,
        memory_mib: 128,
        cmdline: "root=/dev/vda hvlite.template=1".into(),
        cid: 3,
        root_read_only: true,
    }
}

#[test]
fn the_key_follows_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let k = s.key("aa", HostKind::Pvm);
    assert_eq!(k.len(), 32);
    assert_eq!(k, s.key("aa", HostKind::Pvm));
    let mut others = vec![s.key("ab", HostKind::Pvm), s.key("aa", HostKind::Hardware)];
    let variants: [fn(&mut TemplateSpec); 6] = [
        |s| s.agent_disk = "agent/other.ext4".into(),
        |s| s.cpus = 1,
        |s| s.memory_mib = 256,
        |s| s.cmdline.push_str(" quiet"),
        |s| s.cid = 4,
        |s| s.root_read_only = false,
    ];
    for change in variants {
        let mut t = s.clone();
        change(&mut t);
        others.push(t.key("aa", HostKind::Pvm));
    }
    for o in &others {
        assert_ne!(&k, o);
    }
}

#[test]
fn the_kernel_sum_is_of_its_bytes_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let memo = dir.path().join("memo");
    let sum = kernel_sha256(&s.kernel, &memo).unwrap();
    assert_eq!(sum, hex(&Sha256::digest(b"kernel bytes")));
    assert_eq!(std::fs::read_dir(&memo).unwrap().count(), 1);
    assert_eq!(kernel_sha256(&s.kernel, &memo).unwrap(), sum);
    // A changed kernel (new mtime/ctime/size) gets a new sum.
    std::fs::write(&s.kernel, b"another kernel").unwrap();
    let other = kernel_sha256(&s.kernel, &memo).unwrap();
    assert_eq!(other, hex(&Sha256::digest(b"another kernel")));
    // A damaged memo is not trusted.
    for e in std::fs::read_dir(&memo).unwrap() {
        std::fs::write(e.unwrap().path(), "garbage").unwrap();
    }
    assert_eq!(kernel_sha256(&s.kernel, &memo).unwrap(), other);
    let err = kernel_sha256(&dir.path().join("missing"), &memo).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_damaged_template_does_not_check_out() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("k");
    assert!(check(&t, "k").unwrap_err().contains(INFO_FILE));
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join(INFO_FILE), "{not json").unwrap();
    assert!(check(&t, "k").is_err());
    let info = TemplateInfo {
        key: "other".into(),
        kernel: String::new(),
        kernel_sha256: String::new(),
        agent_disk: String::new(),
        cpus: 1,
        memory_mib: 128,
        cmdline: String::new(),
        cid: 3,
        root_read_only: true,
        hvlite_version: String::new(),
        format_version: 1,
        host: "pvm".into(),
        built_at: 0,
        build_ms: 0.0,
        state_bytes: 0,
        memory_written: 0,
    };
    std::fs::write(t.join(INFO_FILE), serde_json::to_string(&info).unwrap()).unwrap();
    assert!(check(&t, "k").unwrap_err().contains("key is other"));
    let info = TemplateInfo {
        key: "k".into(),
        ..info
    };
    std::fs::write(t.join(INFO_FILE), serde_json::to_string(&info).unwrap()).unwrap();
    // No state file, then a garbage one.
    assert!(check(&t, "k").unwrap_err().contains("state"));
    std::fs::write(t.join(STATE_FILE), b"HVLSNAP\0garbage").unwrap();
    let err = check(&t, "k").unwrap_err();
    assert!(err.contains("state"), "{err}");
}

#[test]
fn list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert!(list(root).is_empty());
    for k in ["aaaa1111", "bbbb2222"] {
        std::fs::create_dir_all(root.join(k)).unwrap();
    }
    std::fs::create_dir_all(root.join(".build-x-1")).unwrap();
    let l = list(root);
    assert_eq!(l.len(), 2);
    assert!(l[0].1.is_err(), "no description");
    assert!(matches!(
        remove(root, Some("abc")),
        Err(TemplateError::NotFound(..))
    ));
    assert!(matches!(
        remove(root, Some("cccc")),
        Err(TemplateError::NotFound(..))
    ));
    assert_eq!(remove(root, Some("aaaa")).unwrap(), ["aaaa1111"]);
    assert_eq!(remove(root, None).unwrap(), ["bbbb2222"]);
    assert!(list(root).is_empty());
}

#[test]
fn stale_builds_are_removed_and_dirs_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join(".build-k-99")).unwrap();
    std::fs::create_dir_all(root.join(".build-j-99")).unwrap();
    remove_stale_builds(root, "k");
    assert!(!root.join(".build-k-99").exists());
    assert!(root.join(".build-j-99").exists());
    let (tmp, dest) = (root.join("tmp"), root.join("dest"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("new"), "").unwrap();
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("old"), "").unwrap();
    replace_dir(&tmp, &dest).unwrap();
    assert!(dest.join("new").exists() && !dest.join("old").exists());
}

#[test]
fn a_held_lock_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let a = File::create(&path).unwrap();
    lock_within(&a, Duration::ZERO).unwrap();
    let b = File::create(&path).unwrap();
    let err = lock_within(&b, Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    drop(a);
    lock_within(&b, Duration::ZERO).unwrap();
}

#[test]
fn an_unwritable_cache_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let err = ensure_in(&not_a_dir.join("templates"), &s, false, false).unwrap_err();
    assert!(matches!(err, TemplateError::Io(..)), "{err}");
}
