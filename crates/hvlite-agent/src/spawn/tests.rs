use super::*;
use hvlite_protocol::initcmd::{STATUS_NOT_EXECUTABLE, STATUS_NOT_FOUND};

#[test]
fn path_from_the_environment() {
    let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(search_path(&env(&["A=1", "PATH=/x:/y"])), "/x:/y");
    assert_eq!(
        search_path(&env(&["PATH=/first", "PATH=/second"])),
        "/first"
    );
    assert_eq!(search_path(&env(&["PATHX=/no", "MYPATH=/no"])), exec::PATH);
    assert_eq!(search_path(&[]), exec::PATH);
    assert_eq!(search_path(&env(&["PATH="])), "");
}

#[test]
fn working_directory_prefixes() {
    assert_eq!(dir_prefixes("/a/b/c"), ["/a", "/a/b", "/a/b/c"]);
    assert_eq!(dir_prefixes("//a/./b/"), ["/a", "/a/b"]);
    assert!(dir_prefixes("/").is_empty());
}

#[test]
fn failure_reports_round_trip() {
    for stage in [
        Stage::Stdio,
        Stage::Root,
        Stage::Cwd,
        Stage::Groups,
        Stage::Gid,
        Stage::Uid,
        Stage::Exec,
        Stage::Rlimit,
        Stage::NoNewPrivs,
        Stage::Terminal,
        Stage::Capabilities,
    ] {
        let f = ChildFailure {
            stage,
            status: 126,
            errno: libc::EACCES,
        };
        assert_eq!(ChildFailure::from_bytes(&f.to_bytes()), Some(f));
    }
    assert_eq!(ChildFailure::from_bytes(&[]), None);
    assert_eq!(ChildFailure::from_bytes(&[7, 127, 0, 0, 0, 0, 0]), None);
    assert_eq!(ChildFailure::from_bytes(&[0, 127, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(ChildFailure::from_bytes(&[12; 8]), None);
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec::new(args.iter().copied())
}

#[test]
fn messages() {
    let mut s = spec(&["prog"]);
    s.cwd = "/w".into();
    s.user.uid = 7;
    let setup = ChildSetup::new(&s, Some("/newroot")).unwrap();
    let msg = |stage, errno| {
        setup.describe(ChildFailure {
            stage,
            status: 0,
            errno,
        })
    };
    assert_eq!(msg(Stage::Exec, 0), "prog: command not found");
    assert!(msg(Stage::Exec, libc::ENOEXEC).starts_with("prog: Exec format error"));
    assert!(msg(Stage::Cwd, libc::ENOTDIR).starts_with("working directory /w: Not a directory"));
    assert!(msg(Stage::Uid, libc::EPERM).starts_with("setuid(7): "));
    assert!(msg(Stage::Root, libc::ENOENT).contains("/newroot"));
}

/// Spawns `s` without chroot, as the current user; fails if the process starts.
fn refused(s: &ProcessSpec) -> SpawnError {
    let setup = ChildSetup::new(s, None).unwrap();
    match spawn(&setup) {
        Ok(child) => {
            let _ = process::wait_for(child.pid);
            panic!("{s:?} started");
        }
        Err(e) => e,
    }
}

fn as_current_user(mut s: ProcessSpec) -> ProcessSpec {
    let (_, uid, gid) = process::ids();
    s.user.uid = uid;
    s.user.gid = gid;
    s
}

fn can_switch_ids(test: &str) -> bool {
    let root = process::ids().0 == 0;
    hvlite_protocol::test_env::check(test, root, "needs root (setgroups)")
}

#[test]
fn start_failures() {
    if !can_switch_ids("start_failures") {
        return;
    }
    let e = refused(&as_current_user(spec(&["hvlite-no-such-command"])));
    assert_eq!(e.status, STATUS_NOT_FOUND);
    assert_eq!(e.message, "hvlite-no-such-command: command not found");

    let e = refused(&as_current_user(spec(&["/etc/passwd"])));
    assert_eq!(e.status, STATUS_NOT_EXECUTABLE, "{e:?}");

    // A search path without the program: not found, although /bin has it.
    let mut s = as_current_user(spec(&["sh"]));
    s.env = vec!["PATH=/hvlite-nowhere".into()];
    assert_eq!(refused(&s).status, STATUS_NOT_FOUND);

    let mut s = as_current_user(spec(&["true"]));
    s.cwd = "/etc/passwd/sub".into();
    let e = refused(&s);
    assert_eq!(e.status, STATUS_INIT_ERROR);
    assert!(
        e.message.starts_with("working directory /etc/passwd/sub"),
        "{e:?}"
    );

    let mut s = as_current_user(spec(&["true"]));
    let setup = ChildSetup::new(&s, Some("/hvlite-no-such-root")).unwrap();
    let e = spawn(&setup).map(|c| c.pid).unwrap_err();
    assert!(e.message.contains("/hvlite-no-such-root"), "{e:?}");

    // An exec that works: EOF on the report pipe, nothing reported.
    s.args = vec!["true".into()];
    let child = spawn(&ChildSetup::new(&s, None).unwrap()).unwrap();
    assert!(child.stdin.is_none());
    assert_eq!(process::wait_for(child.pid).unwrap(), 0);
}
