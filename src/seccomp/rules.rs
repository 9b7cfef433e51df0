//! The allow-list of each thread kind. Built from what each thread was seen to call
//! (strace of the test suite, docs/security.md) plus what its error paths need: logging,
//! allocation, thread exit.

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;
use super::ioctls;

/// What the arguments of an allowed call must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// Anything.
    Any,
    /// Argument `.0` is one of `.1` (compared as 32-bit).
    OneOf(u8, &'static [u64]),
    /// Argument `.0` is hvlite's own process id (as the process sees it).
    OwnProcess(u8),
}

/// One allowed system call, with or without an argument filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The system call number.
    pub sysno: i64,
    /// What its arguments must be.
    pub args: Args,
}

impl Rule {
    const fn any(sysno: i64) -> Rule {
        Rule {
            sysno,
            args: Args::Any,
        }
    }

    const fn arg(sysno: i64, index: u8, values: &'static [u64]) -> Rule {
        Rule {
            sysno,
            args: Args::OneOf(index, values),
        }
    }

    const fn own_process(sysno: i64, index: u8) -> Rule {
        Rule {
            sysno,
            args: Args::OwnProcess(index),
        }
    }

    /// seccompiler's rules for this entry: none (match any arguments) or one per value.
    pub(super) fn to_seccomp(self) -> Result<Vec<SeccompRule>, BackendError> {
        let eq = |index: u8, v: u64| {
            let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
            SeccompRule::new(vec![cond])
        };
        match self.args {
            Args::Any => Ok(Vec::new()),
            Args::OneOf(index, values) => values.iter().map(|&v| eq(index, v)).collect(),
            Args::OwnProcess(index) => Ok(vec![eq(index, u64::from(std::process::id()))?]),
        }
    }
}

const F_GETFD: u64 = libc::F_GETFD as u64;
const F_SETFD: u64 = libc::F_SETFD as u64;
const F_GETFL: u64 = libc::F_GETFL as u64;
const F_SETFL: u64 = libc::F_SETFL as u64;
const F_DUPFD_CLOEXEC: u64 = libc::F_DUPFD_CLOEXEC as u64;
const FCNTL: &[u64] = &[F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC];

/// prctl options a thread may use: naming threads it starts, reading its name.
const PRCTL: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64];

/// Every thread: memory, locks, signals, time, logging, ending itself. Signals go only to
/// hvlite's own threads (tgkill with its own process id): kicking vCPUs out of KVM_RUN
/// (pause, stop), and abort(3) after a panic in a release build.
const COMMON: &[Rule] = &[
    Rule::own_process(libc::SYS_tgkill, 0),
    Rule::any(libc::SYS_read),
    Rule::any(libc::SYS_write),
    Rule::any(libc::SYS_writev),
    Rule::any(libc::SYS_close),
    Rule::any(libc::SYS_futex),
    Rule::any(libc::SYS_exit),
    Rule::any(libc::SYS_exit_group),
    Rule::any(libc::SYS_rt_sigreturn),
    Rule::any(libc::SYS_rt_sigprocmask),
    Rule::any(libc::SYS_sigaltstack),
    Rule::any(libc::SYS_mmap),
    Rule::any(libc::SYS_munmap),
    Rule::any(libc::SYS_mremap),
    Rule::any(libc::SYS_mprotect),
    Rule::any(libc::SYS_madvise),
    Rule::any(libc::SYS_brk),
    Rule::any(libc::SYS_sched_yield),
    Rule::any(libc::SYS_clock_gettime),
    Rule::any(libc::SYS_clock_nanosleep),
    Rule::any(libc::SYS_nanosleep),
    Rule::any(libc::SYS_restart_syscall),
    Rule::any(libc::SYS_gettid),
    Rule::any(libc::SYS_getpid),
    Rule::any(libc::SYS_getrandom),
    Rule::any(libc::SYS_rseq),
    Rule::arg(libc::SYS_fcntl, 1, FCNTL),
    Rule::arg(libc::SYS_prctl, 0, PRCTL),
    // A panic's backtrace prints paths relative to the working directory.
    Rule::any(libc::SYS_getcwd),
];

/// prctl options a thread needs to install its own filter on top of an inherited one.
const PRCTL_FILTER: &[u64] = &[libc::PR_SET_NO_NEW_PRIVS as u64];

/// Starting threads (the API acceptor, the agent session's stdin pump). The new thread
/// inherits its parent's filter and installs its own (of the same kind) on top.
const SPAWN: &[Rule] = &[
    Rule::arg(libc::SYS_prctl, 0, PRCTL_FILTER),
    Rule::any(libc::SYS_seccomp),
    Rule::any(libc::SYS_clone),
    Rule::any(libc::SYS_clone3),
    Rule::any(libc::SYS_set_robust_list),
    Rule::any(libc::SYS_sched_getaffinity),
];

/// Event loops and sockets.
const POLLING: &[Rule] = &[
    Rule::any(libc::SYS_epoll_wait),
    Rule::any(libc::SYS_epoll_pwait),
    Rule::any(libc::SYS_epoll_ctl),
    Rule::any(libc::SYS_poll),
    Rule::any(libc::SYS_ppoll),
    Rule::any(libc::SYS_eventfd2),
];

/// Socket domains a vCPU thread may create: an AF_INET datagram socket asks for a TAP's MTU
/// when the driver activates virtio-net.
const VCPU_SOCKET_DOMAINS: &[u64] = &[libc::AF_INET as u64];

const VCPU: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::VCPU),
    Rule::arg(libc::SYS_socket, 0, VCPU_SOCKET_DOMAINS),
    Rule::any(libc::SYS_eventfd2),
    Rule::any(libc::SYS_epoll_ctl),
    Rule::any(libc::SYS_timerfd_create),
    Rule::any(libc::SYS_timerfd_settime),
    Rule::any(libc::SYS_lseek),
    Rule::any(libc::SYS_fsync),
    // virtio-fs: the driver's DRIVER_OK and reset send vhost-user messages (with the
    // queues' eventfds attached) to virtiofsd's socket.
    Rule::any(libc::SYS_sendmsg),
    Rule::any(libc::SYS_recvmsg),
];

const DEVICE_LOOP: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::DEVICE_LOOP),
    Rule::any(libc::SYS_readv),
    Rule::any(libc::SYS_pread64),
    Rule::any(libc::SYS_preadv),
    Rule::any(libc::SYS_pwrite64),
    Rule::any(libc::SYS_pwritev),
    Rule::any(libc::SYS_lseek),
    Rule::any(libc::SYS_fsync),
    Rule::any(libc::SYS_fdatasync),
    Rule::any(libc::SYS_fallocate),
    Rule::any(libc::SYS_fstat),
    Rule::any(libc::SYS_newfstatat),
    Rule::any(libc::SYS_statx),
    Rule::any(libc::SYS_timerfd_settime),
    Rule::any(libc::SYS_timerfd_gettime),
    // vsock host side: accepting host peers, connecting to `<uds>_<port>`, in-process ports.
    Rule::any(libc::SYS_accept4),
    Rule::any(libc::SYS_socket),
    Rule::any(libc::SYS_connect),
    Rule::any(libc::SYS_socketpair),
    Rule::any(libc::SYS_recvfrom),
    Rule::any(libc::SYS_sendto),
    Rule::any(libc::SYS_recvmsg),
    Rule::any(libc::SYS_sendmsg),
    Rule::any(libc::SYS_shutdown),
    Rule::any(libc::SYS_getsockopt),
    // Snapshots: the guest memory file (created, sized, written sparse, synced).
    Rule::any(libc::SYS_openat),
    Rule::any(libc::SYS_ftruncate),
];

const API: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::HOST),
    Rule::any(libc::SYS_accept4),
    Rule::any(libc::SYS_recvfrom),
    Rule::any(libc::SYS_sendto),
    Rule::any(libc::SYS_setsockopt),
    Rule::any(libc::SYS_getsockopt),
    Rule::any(libc::SYS_shutdown),
];

const API_CONTROL: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::API_CONTROL),
    // FlushMetrics: process CPU time and memory figures.
    Rule::any(libc::SYS_getrusage),
    Rule::any(libc::SYS_openat),
    Rule::any(libc::SYS_fstat),
    Rule::any(libc::SYS_newfstatat),
    Rule::any(libc::SYS_statx),
    Rule::any(libc::SYS_lseek),
    Rule::any(libc::SYS_fsync),
    // Snapshots: the state file, written to a temporary name and renamed.
    Rule::any(libc::SYS_fdatasync),
    Rule::any(libc::SYS_rename),
    Rule::any(libc::SYS_renameat),
    Rule::any(libc::SYS_renameat2),
    Rule::any(libc::SYS_unlink),
    Rule::any(libc::SYS_unlinkat),
    // PATCH of a rate limiter wakes the device's limiter timer; PUT /metrics starts the
    // flusher thread (SPAWN), which installs the Host filter on top.
    Rule::any(libc::SYS_timerfd_settime),
];

const VMM: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::HOST),
    // Stopping the API server and removing its socket.
    Rule::any(libc::SYS_shutdown),
    Rule::any(libc::SYS_unlink),
    Rule::any(libc::SYS_unlinkat),
    // The closing memory report and last metrics line.
    Rule::any(libc::SYS_getrusage),
    Rule::any(libc::SYS_openat),
    Rule::any(libc::SYS_fstat),
    Rule::any(libc::SYS_newfstatat),
    Rule::any(libc::SYS_statx),
    Rule::any(libc::SYS_lseek),
    Rule::any(libc::SYS_fsync),
    Rule::any(libc::SYS_munlock),
    // Stopping the virtiofsd processes hvlite started (SIGTERM, then SIGKILL) and reaping
    // them.
    Rule::arg(libc::SYS_kill, 1, KILL_SIGNALS),
    Rule::any(libc::SYS_wait4),
];

/// The hvlite-runtime monitor, on top of [`VMM`]: the control socket (`start`, `kill`),
/// the ready notice to `create`, and the state file (written to a temporary name, synced
/// and renamed).
const MONITOR: &[Rule] = &[
    Rule::any(libc::SYS_accept4),
    Rule::any(libc::SYS_recvfrom),
    Rule::any(libc::SYS_sendto),
    Rule::any(libc::SYS_setsockopt),
    Rule::any(libc::SYS_fdatasync),
    Rule::any(libc::SYS_rename),
    Rule::any(libc::SYS_renameat),
    Rule::any(libc::SYS_renameat2),
];
/// Signals the VMM thread may send (to the virtiofsd children it started).
const KILL_SIGNALS: &[u64] = &[libc::SIGTERM as u64, libc::SIGKILL as u64];

const HOST: &[Rule] = &[
    Rule::arg(libc::SYS_ioctl, 1, ioctls::HOST),
    // Signal forwarder.
    Rule::any(libc::SYS_rt_sigtimedwait),
    // Agent session sockets and stdio.
    Rule::any(libc::SYS_recvfrom),
    Rule::any(libc::SYS_sendto),
    Rule::any(libc::SYS_shutdown),
    Rule::any(libc::SYS_setsockopt),
    Rule::any(libc::SYS_getsockopt),
    // Metrics: process CPU time and memory figures.
    Rule::any(libc::SYS_getrusage),
    Rule::any(libc::SYS_openat),
    Rule::any(libc::SYS_fstat),
    Rule::any(libc::SYS_newfstatat),
    Rule::any(libc::SYS_statx),
    Rule::any(libc::SYS_lseek),
    Rule::any(libc::SYS_fsync),
];

/// The allow-list of `kind`.
pub fn allowed(kind: ThreadKind) -> Vec<Rule> {
    let parts: &[&[Rule]] = match kind {
        ThreadKind::Vcpu => &[COMMON, VCPU],
        ThreadKind::DeviceLoop => &[COMMON, POLLING, DEVICE_LOOP],
        ThreadKind::Api => &[COMMON, POLLING, SPAWN, API],
        ThreadKind::ApiControl => &[COMMON, POLLING, SPAWN, API_CONTROL],
        ThreadKind::Vmm => &[COMMON, POLLING, VMM],
        ThreadKind::Host => &[COMMON, POLLING, SPAWN, HOST],
        ThreadKind::Monitor => &[COMMON, POLLING, VMM, MONITOR],
    };
    let mut rules: Vec<Rule> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    rules.sort_by_key(|r| r.sysno);
    rules.dedup();
    rules
}

/// The number of distinct system calls `kind` may make.
pub fn syscall_count(kind: ThreadKind) -> usize {
    let mut nos: Vec<i64> = allowed(kind).iter().map(|r| r.sysno).collect();
    nos.dedup();
    nos.len()
}
