use super::*;

#[test]
fn every_kind_compiles_to_a_filter() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap();
        assert!(!prog.is_empty(), "{kind:?}");
        assert!(rules::syscall_count(kind) > 20, "{kind:?}");
    }
}

#[test]
fn no_call_is_both_unconditional_and_argument_filtered() {
    for kind in ThreadKind::ALL {
        let list = rules::allowed(kind);
        for r in &list {
            let same: Vec<_> = list.iter().filter(|o| o.sysno == r.sysno).collect();
            assert!(
                same.iter().all(|o| o.args == rules::Args::Any)
                    || same.iter().all(|o| o.args != rules::Args::Any),
                "{kind:?}: syscall {} mixes rules",
                r.sysno
            );
        }
    }
}

#[test]
fn no_list_allows_what_no_vmm_thread_needs() {
    for kind in ThreadKind::ALL {
        let nos: Vec<i64> = rules::allowed(kind).iter().map(|r| r.sysno).collect();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_reboot,
            libc::SYS_mount,
            libc::SYS_init_module,
            libc::SYS_setuid,
            libc::SYS_fork,
            libc::SYS_vfork,
        ] {
            assert!(!nos.contains(&forbidden), "{kind:?} allows {forbidden}");
        }
    }
}

#[test]
fn levels_parse_as_the_cli_and_config_spell_them() {
    assert_eq!("0".parse::<SeccompLevel>(), Ok(SeccompLevel::Off));
    assert_eq!("2".parse::<SeccompLevel>(), Ok(SeccompLevel::Strict));
    assert!("1".parse::<SeccompLevel>().is_err());
    assert!("x".parse::<SeccompLevel>().is_err());
    assert_eq!(SeccompLevel::default(), SeccompLevel::Strict);
    let l: SeccompLevel = serde_json::from_str("0").unwrap();
    assert_eq!(l, SeccompLevel::Off);
    assert!(serde_json::from_str::<SeccompLevel>("3").is_err());
}

/// Runs `body` in a forked child under the filter of `kind` and returns how it ended
/// (Ok(exit status) or Err(signal)).
fn in_filtered_child(kind: ThreadKind, body: fn() -> i32) -> Result<i32, i32> {
    let prog = compile(kind).unwrap();
    // SAFETY: the child only calls apply_filter (prctl and seccomp, no allocation), the
    // body's raw system calls and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match seccompiler::apply_filter(&prog) {
            Ok(()) => body(),
            Err(_) => 99,
        };
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

#[test]
fn allowed_calls_pass_and_forbidden_ones_trap() {
    // getpid is on every list.
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, || {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::getpid() };
            7
        }),
        Ok(7)
    );
    // reboot is on none: SIGSYS (no handler in the child).
    for kind in ThreadKind::ALL {
        let got = in_filtered_child(kind, || {
            // SAFETY: reboot without a valid magic has no effect.
            unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) };
            7
        });
        assert_eq!(got, Err(libc::SIGSYS), "{kind:?}");
    }
}

#[test]
fn ioctl_is_limited_by_request_number() {
    // KVM_RUN on a bad fd: allowed for a vCPU (fails with EBADF), not for the API.
    let kvm_run = || {
        // SAFETY: an ioctl on fd -1 only fails.
        unsafe { libc::ioctl(-1, ioctls::KVM_RUN as _, 0) };
        7
    };
    assert_eq!(in_filtered_child(ThreadKind::Vcpu, kvm_run), Ok(7));
    assert_eq!(
        in_filtered_child(ThreadKind::Api, kvm_run),
        Err(libc::SIGSYS)
    );
    // A TAP interface change (TUNSETIFF) is allowed nowhere after set-up.
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, || {
            // SAFETY: an ioctl on fd -1 only fails.
            unsafe { libc::ioctl(-1, libc::TUNSETIFF as _, 0) };
            7
        }),
        Err(libc::SIGSYS)
    );
}

#[test]
fn docs_security_md_gives_each_kind_its_syscall_count() {
    let doc = include_str!("../../docs/security.md");
    for kind in ThreadKind::ALL {
        let row = format!("| {} | {} |", kind.name(), rules::syscall_count(kind));
        assert!(doc.contains(&row), "docs/security.md lacks the row {row:?}");
    }
}

static PARENT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

#[test]
fn signals_go_only_to_hvlite_itself() {
    // The filter is compiled here, in the parent, so its "own process" is the parent: the
    // forked child signalling itself is another process and traps.
    let got = in_filtered_child(ThreadKind::Api, || {
        // SAFETY: signal 0 only checks that the thread exists.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0) };
        7
    });
    assert_eq!(got, Err(libc::SIGSYS));
    // With the parent's id the call passes the filter (and fails: no such thread).
    PARENT.store(std::process::id() as i32, Ordering::SeqCst);
    let got = in_filtered_child(ThreadKind::Api, || {
        let parent = PARENT.load(Ordering::SeqCst);
        // SAFETY: signal 0 to thread id -1 only fails with EINVAL.
        unsafe { libc::syscall(libc::SYS_tgkill, parent, -1, 0) };
        7
    });
    assert_eq!(got, Ok(7));
}

#[test]
fn a_warmed_symbolizer_resolves_backtraces_under_a_filter() {
    warm_backtraces();
    // Opening the binary's debug information again would trap: the vCPU list has no open.
    let got = in_filtered_child(ThreadKind::Vcpu, || {
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        if bt.contains("a_warmed_symbolizer_resolves_backtraces") {
            7
        } else {
            8
        }
    });
    assert_eq!(got, Ok(7));
}
