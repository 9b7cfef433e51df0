//! Per-thread seccomp allow-lists (built with rust-vmm's `seccompiler`).
//!
//! Every hvlite thread that can be reached by guest-controlled data calls [`install`] with
//! its [`ThreadKind`] before it touches that data: the vCPU threads before their first
//! KVM_RUN, the device event loop before it serves a queue, the API threads before they read
//! a request, the host threads (agent session, stdin pumps, signal forwarder, metrics) as
//! they start, and the main (VMM) thread once the vCPUs run. Each kind has its own list
//! ([`rules`]); `ioctl`, `fcntl` and `prctl` are allowed only with the request numbers the
//! kind uses.
//!
//! Any other system call traps (SECCOMP_RET_TRAP): the SIGSYS handler ([`trap`]) writes
//! `hvlite: seccomp violation: syscall N in thread <kind>` to stderr and ends the process with
//! status [`VIOLATION_EXIT_STATUS`]. A thread started by a filtered thread inherits its
//! parent's filter as well as installing its own; only threads of the same kind are started
//! that way (API connections by the API acceptor, the stdin pump by the agent session),
//! and the main thread installs its filter after it has started every other thread.
//!
//! [`SeccompLevel`] 0 switches all of this off; the `hvlite` binary defaults to 2. The
//! library itself starts at 0 so in-process unit tests run unfiltered.
//!
//! Test-only trigger: with `HVLITE_SECCOMP_TEST_TRIGGER=<kind>` in its environment, a thread
//! of that kind makes a forbidden call (`reboot` with no valid magic, which would fail with
//! EPERM/EINVAL even unfiltered) right after installing its filter. `tests/seccomp.rs` uses it
//! to prove a violation in each kind is fatal and logged. It cannot widen a filter.

mod ioctls;
pub mod rules;
mod trap;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::TryInto;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use trap::VIOLATION_EXIT_STATUS;

/// The environment variable of the test-only trigger (see the module documentation).
pub const TEST_TRIGGER_ENV: &str = "HVLITE_SECCOMP_TEST_TRIGGER";

/// The system call the test-only trigger makes: never on any list.
pub const TRIGGER_SYSCALL: i64 = libc::SYS_reboot;

/// How much seccomp filtering hvlite applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum SeccompLevel {
    /// No filters.
    Off,
    /// A per-thread allow-list with argument filters; anything else ends hvlite.
    #[default]
    Strict,
}

impl SeccompLevel {
    /// The level as the CLI and the config file spell it.
    pub fn as_u8(self) -> u8 {
        match self {
            SeccompLevel::Off => 0,
            SeccompLevel::Strict => 2,
        }
    }
}

impl TryFrom<u8> for SeccompLevel {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(SeccompLevel::Off),
            2 => Ok(SeccompLevel::Strict),
            other => Err(format!(
                "seccomp level must be 0 (off) or 2 (on), got {other}"
            )),
        }
    }
}

impl From<SeccompLevel> for u8 {
    fn from(l: SeccompLevel) -> u8 {
        l.as_u8()
    }
}

impl std::str::FromStr for SeccompLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n: u8 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected 0 (off) or 2 (on)"))?;
        SeccompLevel::try_from(n)
    }
}

/// The kinds of hvlite threads, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the port/MMIO device models it runs.
    Vcpu,
    /// The device event loop: virtio queues, disk, TAP and vsock host sockets.
    DeviceLoop,
    /// The API server's accept and connection threads.
    Api,
    /// The API controller that applies requests to the VM (pause, Ctrl-Alt-Del, metrics).
    ApiControl,
    /// The main thread once the VM runs: waits, stops the vCPUs, reports.
    Vmm,
    /// Other host threads: agent session, stdin pumps, signal forwarder, metrics flusher.
    Host,
    /// The hvlite-runtime monitor's own threads (its main thread once the VM runs, the
    /// ready notifier and the control socket server): the VMM's calls plus saving the
    /// container's state file and answering `start` and `kill` requests.
    Monitor,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vcpu,
        ThreadKind::DeviceLoop,
        ThreadKind::Api,
        ThreadKind::ApiControl,
        ThreadKind::Vmm,
        ThreadKind::Host,
        ThreadKind::Monitor,
    ];

    /// The kind's name in messages and in the test trigger.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::DeviceLoop => "device-loop",
            ThreadKind::Api => "api",
            ThreadKind::ApiControl => "api-control",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Host => "host",
            ThreadKind::Monitor => "monitor",
        }
    }

    fn from_name(s: &str) -> Option<ThreadKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    fn code(self) -> u8 {
        match self {
            ThreadKind::Vcpu => 1,
            ThreadKind::DeviceLoop => 2,
            ThreadKind::Api => 3,
            ThreadKind::ApiControl => 4,
            ThreadKind::Vmm => 5,
            ThreadKind::Host => 6,
            ThreadKind::Monitor => 7,
        }
    }

    fn from_code(c: u8) -> Option<ThreadKind> {
        Self::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    #[error("cannot compile the {0} seccomp filter: {1}")]
    Compile(&'static str, seccompiler::BackendError),
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

static LEVEL: AtomicU8 = AtomicU8::new(0);
/// The kind of the main thread once the VM runs (a [`ThreadKind`] code; 0: the VMM's).
static MAIN_KIND: AtomicU8 = AtomicU8::new(0);
static TRIGGER: OnceLock<Option<ThreadKind>> = OnceLock::new();

thread_local! {
    /// This thread's kind (0: none), read by the SIGSYS handler.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

/// Sets the level for every later [`install`] and, when filters are on, installs the SIGSYS
/// handler. Call it once, early, on the main thread.
pub fn configure(level: SeccompLevel) -> Result<(), SeccompError> {
    LEVEL.store(level.as_u8(), Ordering::SeqCst);
    let _ = TRIGGER.set(
        std::env::var(TEST_TRIGGER_ENV)
            .ok()
            .and_then(|v| ThreadKind::from_name(v.trim())),
    );
    if level == SeccompLevel::Strict {
        trap::install_handler().map_err(SeccompError::Handler)?;
        let wants_backtraces = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        if wants_backtraces {
            warm_backtraces();
        }
    }
    Ok(())
}

/// Resolves one backtrace now, while every system call is allowed: the symbolizer opens
/// and maps the binary's and libraries' debug information once and keeps it, so a panic's
/// backtrace in a filtered thread (which may not open files) is printed in full instead of
/// ending in a seccomp violation.
pub fn warm_backtraces() {
    let resolved = std::backtrace::Backtrace::force_capture().to_string();
    log::debug!(
        "seccomp: backtrace symbols loaded ({} bytes)",
        resolved.len()
    );
}

/// The level set by [`configure`].
pub fn level() -> SeccompLevel {
    if LEVEL.load(Ordering::SeqCst) == 0 {
        SeccompLevel::Off
    } else {
        SeccompLevel::Strict
    }
}

/// Makes `kind` the filter the main thread installs once the VM runs (normally
/// [`ThreadKind::Vmm`]; the hvlite-runtime monitor, whose main thread saves the
/// container's state afterwards, sets [`ThreadKind::Monitor`]).
pub fn set_main_kind(kind: ThreadKind) {
    MAIN_KIND.store(kind.code(), Ordering::SeqCst);
}

/// The filter the main thread installs once the VM runs.
pub fn main_kind() -> ThreadKind {
    ThreadKind::from_code(MAIN_KIND.load(Ordering::SeqCst)).unwrap_or(ThreadKind::Vmm)
}

/// The kind recorded for the calling thread, if it installed a filter.
pub(crate) fn current_kind() -> Option<ThreadKind> {
    KIND.with(|k| ThreadKind::from_code(k.get()))
}

/// Compiles the allow-list of `kind` to a BPF program.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for rule in rules::allowed(kind) {
        let entry = map.entry(rule.sysno).or_default();
        let built = rule
            .to_seccomp()
            .map_err(|e| SeccompError::Build(kind.name(), e))?;
        entry.extend(built);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Trap,
        SeccompAction::Allow,
        target_arch(),
    )
    .map_err(|e| SeccompError::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        TargetArch::x86_64
    }
}

/// Installs the filter of `kind` on the calling thread when filters are on; a no-op at
/// level 0. A failure is an error: the caller must not go on to touch guest data.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    if level() == SeccompLevel::Off {
        return Ok(());
    }
    let program = compile(kind)?;
    KIND.with(|k| k.set(kind.code()));
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind.name(), e))?;
    log::debug!("seccomp: {} filter installed", kind.name());
    if TRIGGER.get().copied().flatten() == Some(kind) {
        log::warn!(
            "seccomp test trigger: a forbidden call in a {} thread",
            kind.name()
        );
        // SAFETY: reboot(0, 0, 0, null) has no valid magic and no effect: the kernel (or,
        // here, the filter) refuses it before reading anything.
        unsafe { libc::syscall(TRIGGER_SYSCALL, 0, 0, 0, std::ptr::null::<u8>()) };
    }
    Ok(())
}

/// [`install`] for threads that have no error path: a failure ends hvlite at once with a
/// clear line, because running on unfiltered would defeat the point.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("hvlite: error: {e}");
        std::process::exit(i32::from(VIOLATION_EXIT_STATUS));
    }
}

#[cfg(test)]
mod tests;
