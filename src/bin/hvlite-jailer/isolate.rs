//! Entering the jail. The jailer unshares a PID namespace and forks: the child is PID 1
//! there. The parent puts the child in the jail's cgroup, then lets it go on and waits for
//! it. The child joins the network namespace (if asked), unshares a mount namespace,
//! bind-mounts the VM's files, pivots into the jail root, sets rlimits, closes every file
//! descriptor above stderr, drops to the uid/gid with empty capability sets (bounding and
//! ambient too) and no_new_privs, and execs hvlite.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, chdir, fork, pivot_root, setgroups, setresgid, setresuid};

use super::JailArgs;
use super::cgroup::{Cgroup, CgroupError};
use super::chroot::Jail;

/// Why the jail could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    #[error("cannot {0}")]
    Sys(&'static str, #[source] nix::Error),
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> IsolateError {
    move |e| IsolateError::Sys(what, e)
}

/// Runs hvlite in the jail and returns its exit status (128 + N after signal N).
pub fn enter_and_run(args: &JailArgs, jail: &Jail, cgroup: &Cgroup) -> Result<u8, IsolateError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare a PID namespace"))?;
    let (mut ready_rx, ready_tx) =
        std::io::pipe().map_err(|e| IsolateError::Io("make a pipe", e))?;
    // SAFETY: the jailer is single-threaded, so the child may allocate and run Rust code
    // until it execs.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(ready_tx);
            let mut byte = [0u8; 1];
            // The parent closes its end without a byte when it could not set the cgroup.
            if ready_rx.read_exact(&mut byte).is_err() {
                std::process::exit(125);
            }
            drop(ready_rx);
            let err = jail_and_exec(args, jail);
            eprintln!("hvlite-jailer: error: {err}: {}", error_chain(&err));
            std::process::exit(125);
        }
        ForkResult::Parent { child } => {
            drop(ready_rx);
            let mut ready_tx = ready_tx;
            cgroup.add(child.as_raw())?;
            ready_tx
                .write_all(&[1])
                .map_err(|e| IsolateError::Io("release the jailed process", e))?;
            drop(ready_tx);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(u8::try_from(code).unwrap_or(255)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        return Ok(u8::try_from(128 + sig as i32).unwrap_or(255));
                    }
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(IsolateError::Sys("wait for hvlite", e)),
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut src = e.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join(": ")
}

/// The child's side: returns only on failure.
fn jail_and_exec(args: &JailArgs, jail: &Jail) -> IsolateError {
    match enter(args, jail) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn enter(args: &JailArgs, jail: &Jail) -> Result<Never, IsolateError> {
    if let Some(ns) = &args.netns {
        let f = File::open(ns).map_err(|e| IsolateError::Io("open the network namespace", e))?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(sys("join the network namespace"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare a mount namespace"))?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("make the mounts private"))?;
    for (host, target) in &jail.binds {
        mount(
            Some(host.as_path()),
            target.as_path(),
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(sys("bind-mount a VM file into the jail"))?;
    }
    let root = jail.root.as_path();
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(sys("bind-mount the jail root"))?;
    chdir(root).map_err(sys("enter the jail root"))?;
    std::fs::create_dir("old_root").map_err(|e| IsolateError::Io("create old_root", e))?;
    pivot_root(".", "old_root").map_err(sys("pivot_root into the jail"))?;
    chdir("/").map_err(sys("chdir to the new root"))?;
    umount2("/old_root", MntFlags::MNT_DETACH).map_err(sys("unmount the old root"))?;
    std::fs::remove_dir("/old_root").map_err(|e| IsolateError::Io("remove old_root", e))?;

    setrlimit(Resource::RLIMIT_NOFILE, args.nofile, args.nofile)
        .map_err(sys("set RLIMIT_NOFILE"))?;
    if let Some(f) = args.fsize {
        setrlimit(Resource::RLIMIT_FSIZE, f, f).map_err(sys("set RLIMIT_FSIZE"))?;
    }

    let exec = CString::new(jail.exec.as_os_str().as_encoded_bytes())
        .map_err(|_| IsolateError::Sys("name the binary", nix::Error::EINVAL))?;
    let mut argv = vec![exec.clone()];
    for a in &args.args {
        argv.push(
            CString::new(a.as_str())
                .map_err(|_| IsolateError::Sys("pass an argument", nix::Error::EINVAL))?,
        );
    }
    let env: Vec<CString> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HVLITE_"))
        .chain([("PATH".to_string(), "/".to_string())])
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();

    close_inherited_fds()?;
    drop_privileges(args.uid, args.gid)?;
    let Err(e) = nix::unistd::execve(&exec, &argv, &env);
    Err(IsolateError::Sys("exec hvlite", e))
}

/// Closes every descriptor above stderr.
fn close_inherited_fds() -> Result<(), IsolateError> {
    // SAFETY: close_range only closes descriptors; nothing in this process uses those above
    // stderr any more (the pipe and files were dropped).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(IsolateError::Io(
            "close inherited fds",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Drops every capability (bounding and ambient sets too), every supplementary group and
/// root, then sets no_new_privs.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), IsolateError> {
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; unknown ones fail with EINVAL,
        // which is fine.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: clears the ambient set; no pointers involved.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    setgroups(&[]).map_err(sys("drop supplementary groups"))?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    setresgid(g, g, g).map_err(sys("set the gid"))?;
    setresuid(u, u, u).map_err(sys("set the uid"))?;
    // Leaving uid 0 cleared the permitted and effective sets; clear the inheritable one.
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the v3 capset structures (two data words).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(IsolateError::Io(
            "clear the capability sets",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(IsolateError::Io(
            "set no_new_privs",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
