//! The protocol between hvlite (the host) and its guest agent (`hvlite-init` in agent mode).
//!
//! This module is linked by both sides; it is the reference for the protocol.
//!
//! # Transport
//!
//! One AF_VSOCK stream connection per VM for the container's process. The host listens on
//! port [`AGENT_VSOCK_PORT`] (1024) of its own CID (2, `VMADDR_CID_HOST`); the agent connects
//! to it once it has booted, and retries for a few seconds while the vsock device is still
//! being probed.
//!
//! Further processes (`exec`) each get a connection of their own in the other direction:
//! once the container's root is ready the agent listens on guest port [`EXEC_VSOCK_PORT`]
//! (1025), and every connection accepted there is one more session with exactly the same
//! frames and sequence (Hello, Start, ..., Exited), served by a process of its own in the
//! guest. An exec session's end does not end the VM; the main session's does. Exec sessions
//! may not carry the container-wide parts of a spec (see [`ProcessSpec`]).
//!
//! # Frames
//!
//! Every message is one frame:
//!
//! ```text
//! +----------------------+---------+-----------------------+
//! | length: u32 LE       | type:u8 | payload               |
//! +----------------------+---------+-----------------------+
//!   length = 1 + payload bytes, 1 ..= MAX_FRAME_LEN (1 MiB)
//! ```
//!
//! A zero length ([`ProtocolError::Empty`]) or one above [`MAX_FRAME_LEN`]
//! ([`ProtocolError::TooLarge`]) breaks the stream: the reader cannot find the next frame and
//! must drop the connection. A well-delimited frame with an unknown type
//! ([`ProtocolError::UnknownType`]) or a payload that does not parse
//! ([`ProtocolError::BadPayload`]) is consumed by [`FrameDecoder`], so a lenient reader could
//! skip it; the agent treats every decoding error as fatal.
//!
//! Integers are little-endian. Data frames (Stdin, Stdout, Stderr) carry at most
//! [`MAX_CHUNK`] (32 KiB) of data; a larger one is refused on decoding
//! ([`ProtocolError::TooLarge`] with `max: MAX_CHUNK`). [`HostMessage::stdin_chunks`],
//! [`AgentMessage::stdout_chunks`] and [`AgentMessage::stderr_chunks`] split a buffer, and
//! [`write_message`] refuses to send a frame the peer would refuse.
//!
//! # Messages
//!
//! Host → agent (types `0x01..`):
//!
//! | type   | message        | payload                                                |
//! |--------|----------------|--------------------------------------------------------|
//! | `0x01` | `Start`        | [`ProcessSpec`] as JSON (camelCase, OCI-like)          |
//! | `0x02` | `Stdin`        | raw bytes, 0 ..= `MAX_CHUNK` (empty is a no-op)        |
//! | `0x03` | `StdinClose`   | empty                                                  |
//! | `0x04` | `Signal`       | signal number, `i32`                                   |
//! | `0x05` | `Resize`       | terminal rows `u16`, then columns `u16`                |
//! | `0x06` | `SignalAll`    | signal number, `i32`: every process of the container   |
//!
//! Agent → host (types `0x81..`):
//!
//! | type   | message        | payload                                                |
//! |--------|----------------|--------------------------------------------------------|
//! | `0x81` | `Hello`        | protocol version, `u32` ([`PROTOCOL_VERSION`])         |
//! | `0x82` | `Started`      | pid of the process in the guest, `u32`                 |
//! | `0x83` | `Stdout`       | raw bytes, 0 ..= `MAX_CHUNK`                           |
//! | `0x84` | `Stderr`       | raw bytes, 0 ..= `MAX_CHUNK`                           |
//! | `0x85` | `Exited`       | 2 bytes: kind (0 exited, 1 killed by a signal), number |
//! | `0x86` | `Error`        | status `u8`, then a UTF-8 message                      |
//!
//! # A session
//!
//! ```text
//! agent                                   host
//!   | ---------- connect (CID 2, port 1024) --> |
//!   | ---------- Hello { version } -----------> |   first frame, always
//!   | <--------- Start(spec) ------------------ |   first frame of the host
//!   | ---------- Started { pid } -------------> |   or Error { status, message }: end
//!   | ---------- Stdout / Stderr -------------> |   any number, any order
//!   | <--------- Stdin / StdinClose / Signal -- |   any number (Stdin only with spec.stdin)
//!   | ---------- Exited(end) -----------------> |   last frame
//!   | <--------- host closes, stops the VM ---- |
//! ```
//!
//! - The agent sends `Hello` as soon as it is connected; the host checks the version. Then it
//!   sets up the container's root filesystem (a failure there is reported as `Error` with
//!   status 125) and waits for `Start`. Any other first message is refused with `Error`.
//! - `Start` carries a [`ProcessSpec`]; with `guestSync` ([`GuestSync`]) the agent first sets
//!   the guest's wall clock to the host's and adds the host's entropy to the guest's pool
//!   (a VM restored from a template has the template's clock and random state). The agent
//!   checks the spec with [`ProcessSpec::validate`]
//!   (refused: `Error` 125). If the process cannot be started, the agent sends
//!   `Error { status, message }`: 127 the program was not found, 126 it was found but could
//!   not be executed, 125 anything else (bad spec, working directory, user switch, mounts,
//!   fork). `Error` ends the session like `Exited`.
//! - The process runs chrooted in the container's root, in a session (and process group) of
//!   its own, with stdin a pipe (`spec.stdin`) or `/dev/null` and stdout and stderr two
//!   separate pipes (no terminal), with exactly `spec.env` as its environment (`args[0]` is
//!   searched in the `PATH` of `spec.env`, or in `/sbin:/bin:/usr/sbin:/usr/bin` without
//!   one), as `user.uid`, `user.gid` and `user.additionalGids`, in `spec.cwd` (created, as
//!   root, if missing), with the default signal dispositions and no blocked signal.
//! - Once the process runs the agent sends `Started { pid }` (a guest pid, for logs), then its
//!   output as `Stdout`/`Stderr` frames. The host may send `Stdin` data (when `spec.stdin`;
//!   otherwise the process's stdin is `/dev/null` and `Stdin` frames are dropped), then
//!   `StdinClose` to close the process's stdin, and `Signal(n)` to send signal `n` to the
//!   process. Signals are not forwarded after the process has exited.
//! - When the process has exited, the agent reads its stdout and stderr until they reach EOF,
//!   or until they have been quiet for a short grace period (other processes may hold them),
//!   kills what is left of the process group, calls `sync()` so that what the container wrote
//!   to a read-write root reaches the disk, and sends `Exited(end)`: the last frame. The
//!   status to report is [`ProcessEnd::status`] (128+N for signal N).
//! - **Terminal.** With `spec.terminal` the process gets a new pseudo-terminal as its
//!   controlling terminal and as stdin, stdout and stderr (`spec.stdin` is then implied); its
//!   output comes back as `Stdout` frames only, `Stdin` data is written to the terminal,
//!   `StdinClose` writes the terminal's end-of-file character (^D), and `Resize` sets its
//!   window size (the process gets SIGWINCH). The first size is `spec.consoleSize` (default
//!   24x80). Without a terminal `Resize` is ignored.
//! - `SignalAll(n)` sends signal `n` to every process of the container (every process
//!   chrooted in its root: the main process, exec'd ones and their children), not to the
//!   agent's own.
//! - **Flow control.** The agent stops reading the connection while 1 MiB of stdin data waits
//!   for the process, so frames sent after it (a `Signal` too) wait as well; it stops reading
//!   the process's output while 1 MiB of frames waits for the host.
//! - **Who closes.** The host closes the connection once it has read `Exited` or `Error`, and
//!   normally stops the VM at once. If the connection is still open ~10 s after the last
//!   frame was sent, the agent ends the VM itself through the exit port (see
//!   [`crate::initcmd`]) with the same status. The agent never closes its side first.
//! - **Failures.** If the host closes the connection (even only its write side) before the
//!   process has ended, the agent kills the process group and ends the VM with status 125.
//!   If the host sends a frame that does not decode, or a second `Start`, the agent kills the
//!   process group and sends `Error` 125 (after any output already queued) instead of
//!   `Exited`. Before the connection exists (no vsock device, host not listening for ~10 s),
//!   the agent prints the reason on the console and ends the VM with status 125.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The vsock port the host listens on; the agent connects to CID 2 (the host), this port.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The version the agent announces in `Hello`.
pub const PROTOCOL_VERSION: u32 = 2;
/// The guest port the agent accepts exec sessions on (host-initiated connections).
pub const EXEC_VSOCK_PORT: u32 = 1025;
/// Largest value of a frame's length field: the type byte plus the payload.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Most data bytes in one Stdin, Stdout or Stderr frame.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Bytes of the length field that starts every frame.
pub const LEN_BYTES: usize = 4;

/// The type byte of each message.
pub mod frame_type {
    /// Host → agent: start the process.
    pub const START: u8 = 0x01;
    /// Host → agent: data for the process's stdin.
    pub const STDIN: u8 = 0x02;
    /// Host → agent: close the process's stdin.
    pub const STDIN_CLOSE: u8 = 0x03;
    /// Host → agent: send a signal to the process.
    pub const SIGNAL: u8 = 0x04;
    /// Host → agent: the terminal's new window size.
    pub const RESIZE: u8 = 0x05;
    /// Host → agent: send a signal to every process of the container.
    pub const SIGNAL_ALL: u8 = 0x06;
    /// Agent → host: first frame, with the protocol version.
    pub const HELLO: u8 = 0x81;
    /// Agent → host: the process runs.
    pub const STARTED: u8 = 0x82;
    /// Agent → host: process output on stdout.
    pub const STDOUT: u8 = 0x83;
    /// Agent → host: process output on stderr.
    pub const STDERR: u8 = 0x84;
    /// Agent → host: the process has ended (last frame).
    pub const EXITED: u8 = 0x85;
    /// Agent → host: the process could not be started (last frame).
    pub const ERROR: u8 = 0x86;
}

/// The process to run, modelled on the `process` object of an OCI `config.json` (JSON field
/// names are camelCase: `args`, `env`, `cwd`, `user.uid`, `user.gid`,
/// `user.additionalGids`, `terminal`, `stdin`). Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the `PATH` of `env` unless it contains a `/`.
    pub args: Vec<String>,
    /// The whole environment, `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory inside the container; created if missing.
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Who the process runs as.
    #[serde(default)]
    pub user: User,
    /// A pseudo-terminal for the process (stdin, stdout and stderr, controlling terminal).
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's first window size (OCI `consoleSize`); 24x80 without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<WindowSize>,
    /// hvlite extension: the host forwards stdin (Stdin frames); otherwise the process's
    /// stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Resource limits, set before the ids are switched (OCI `rlimits`: `RLIMIT_NOFILE`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// `noNewPrivileges`: PR_SET_NO_NEW_PRIVS before exec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// OCI `capabilities`: the five sets, by name (`CAP_CHOWN`...). Without it the
    /// process keeps what it gets by default (everything, as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Box<Capabilities>>,
    /// What the agent sets up for the whole container before the process: only in the
    /// main session's `Start` (an exec session refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSetup>>,
    /// hvlite extension: the host's clock and fresh entropy, applied by the agent before
    /// the process starts (a VM restored from a template has the template's clock and
    /// random state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_sync: Option<GuestSync>,
}

/// Most entropy bytes a [`GuestSync`] may carry.
pub const MAX_SYNC_ENTROPY: usize = 512;

/// What the guest re-reads from the host at `Start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestSync {
    /// The host's wall clock (CLOCK_REALTIME), nanoseconds since the Unix epoch, taken
    /// just before `Start` was sent: the agent sets the guest's wall clock to it.
    pub realtime_ns: u64,
    /// Random bytes from the host's getrandom, at most [`MAX_SYNC_ENTROPY`]: the agent
    /// adds them to the guest's entropy pool (RNDADDENTROPY) and reseeds its CRNG.
    #[serde(default)]
    pub entropy: Vec<u8>,
}

/// OCI's `process.capabilities`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// Linux's capability names, by number (0 ..= 40, CAP_LAST_CAP of Linux 6.1).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit mask of capability `names`; an unknown name is an error.
pub fn capability_mask(names: &[String]) -> Result<u64, ProtocolError> {
    names.iter().try_fold(0u64, |mask, n| {
        CAPABILITY_NAMES
            .iter()
            .position(|c| c == n)
            .map(|bit| mask | (1u64 << bit))
            .ok_or_else(|| ProtocolError::BadSpec(format!("unknown capability {n:?}")))
    })
}

impl Capabilities {
    /// The five sets as masks: (bounding, effective, permitted, inheritable, ambient).
    pub fn masks(&self) -> Result<[u64; 5], ProtocolError> {
        Ok([
            capability_mask(&self.bounding)?,
            capability_mask(&self.effective)?,
            capability_mask(&self.permitted)?,
            capability_mask(&self.inheritable)?,
            capability_mask(&self.ambient)?,
        ])
    }
}

/// The container-wide part of a spec (OCI's `hostname`, `root.readonly` and the mounts
/// the guest makes itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSetup {
    /// sethostname(2) in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The container's root mount made read-only once the mounts are made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly_root: bool,
    /// Mounts of kernel file systems (proc, sysfs, tmpfs, devpts, mqueue, cgroup, cgroup2)
    /// made inside the container's root, in order, with their OCI options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
}

/// One mount of a kernel file system, as OCI writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// File system type.
    #[serde(rename = "type")]
    pub typ: String,
    /// Source (the file system's name for the kernel).
    #[serde(default)]
    pub source: String,
    /// OCI options: flags (`ro`, `nosuid`, `nodev`, `noexec`, ...) and data (`mode=755`).
    #[serde(default)]
    pub options: Vec<String>,
}

/// The file system types a [`MountSpec`] may have.
pub const GUEST_MOUNT_TYPES: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// One resource limit, as OCI writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ... (see [`Rlimit::resource`]).
    #[serde(rename = "type")]
    pub typ: String,
    pub hard: u64,
    pub soft: u64,
}

impl Rlimit {
    /// The resource number of `typ`, if it is one Linux has.
    pub fn resource(&self) -> Option<u32> {
        const NAMES: [&str; 16] = [
            "RLIMIT_CPU",
            "RLIMIT_FSIZE",
            "RLIMIT_DATA",
            "RLIMIT_STACK",
            "RLIMIT_CORE",
            "RLIMIT_RSS",
            "RLIMIT_NPROC",
            "RLIMIT_NOFILE",
            "RLIMIT_MEMLOCK",
            "RLIMIT_AS",
            "RLIMIT_LOCKS",
            "RLIMIT_SIGPENDING",
            "RLIMIT_MSGQUEUE",
            "RLIMIT_NICE",
            "RLIMIT_RTPRIO",
            "RLIMIT_RTTIME",
        ];
        NAMES.iter().position(|n| *n == self.typ).map(|i| i as u32)
    }
}

/// A terminal's window size (OCI's `consoleSize`: `height` rows, `width` columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

impl Default for WindowSize {
    fn default() -> Self {
        Self {
            height: 24,
            width: 80,
        }
    }
}

fn root_dir() -> String {
    "/".to_string()
}

/// The user of the process (numeric ids only, as in OCI's `user`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups (setgroups); empty clears them.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

impl ProcessSpec {
    /// A spec that runs `args` as root in `/` with an empty environment.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: root_dir(),
            user: User::default(),
            terminal: false,
            console_size: None,
            stdin: false,
            rlimits: Vec::new(),
            no_new_privileges: false,
            capabilities: None,
            container: None,
            guest_sync: None,
        }
    }

    /// Checks what the agent needs: `args` non-empty with a non-empty `args[0]`, an absolute
    /// `cwd`, `env` entries of the form `KEY=VALUE` with a non-empty key, no NUL byte in any
    /// string.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |msg: String| Err(ProtocolError::BadSpec(msg));
        match self.args.first() {
            None => return bad("args is empty".into()),
            Some(a) if a.is_empty() => return bad("args[0] is empty".into()),
            Some(_) => {}
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return bad(format!("args[{i}] contains a NUL byte"));
        }
        for (i, e) in self.env.iter().enumerate() {
            if e.contains('\0') {
                return bad(format!("env[{i}] contains a NUL byte"));
            }
            match e.find('=') {
                None => return bad(format!("env[{i}] {e:?} is not KEY=VALUE")),
                Some(0) => return bad(format!("env[{i}] {e:?} has an empty name")),
                Some(_) => {}
            }
        }
        if self.cwd.contains('\0') {
            return bad("cwd contains a NUL byte".into());
        }
        if !self.cwd.starts_with('/') {
            return bad(format!("cwd {:?} is not an absolute path", self.cwd));
        }
        if let Some(caps) = &self.capabilities {
            caps.masks()?;
        }
        if let Some(c) = &self.container {
            if let Some(h) = &c.hostname
                && (h.len() > 64 || h.contains('\0'))
            {
                return bad(format!("hostname {h:?}: at most 64 bytes, no NUL"));
            }
            for m in &c.mounts {
                if !GUEST_MOUNT_TYPES.contains(&m.typ.as_str()) {
                    return bad(format!("mount at {}: type {:?}", m.destination, m.typ));
                }
                let clean =
                    m.destination.starts_with('/') && !m.destination.split('/').any(|p| p == "..");
                let strings = [&m.destination, &m.source].into_iter().chain(&m.options);
                if !clean || strings.into_iter().any(|x| x.contains('\0')) {
                    return bad(format!(
                        "mount at {:?}: not a clean absolute path",
                        m.destination
                    ));
                }
            }
        }
        if let Some(sync) = &self.guest_sync
            && sync.entropy.len() > MAX_SYNC_ENTROPY
        {
            return bad(format!(
                "guestSync carries {} entropy bytes, at most {MAX_SYNC_ENTROPY}",
                sync.entropy.len()
            ));
        }
        for r in &self.rlimits {
            if r.resource().is_none() {
                return bad(format!("rlimit {:?} is not a Linux resource limit", r.typ));
            }
            if r.soft > r.hard {
                return bad(format!(
                    "rlimit {}: soft {} above hard {}",
                    r.typ, r.soft, r.hard
                ));
            }
        }
        Ok(())
    }
}

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    /// It exited with this code.
    Exited(u8),
    /// A signal with this number killed it.
    Signaled(u8),
}

impl ProcessEnd {
    /// The status a shell reports: the exit code, or 128+N for signal N (saturating at 255).
    pub fn status(self) -> u8 {
        match self {
            Self::Exited(n) => n,
            Self::Signaled(n) => 128u8.saturating_add(n),
        }
    }

    /// From a raw `waitpid` status; `None` when it does not mean the end (stopped,
    /// continued).
    pub fn from_wait_status(raw: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(raw) {
            u8::try_from(libc::WEXITSTATUS(raw)).ok().map(Self::Exited)
        } else if libc::WIFSIGNALED(raw) {
            Some(Self::Signaled(
                u8::try_from(libc::WTERMSIG(raw)).unwrap_or(u8::MAX),
            ))
        } else {
            None
        }
    }
}

/// Messages from the host to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMessage {
    /// Start the process (the host's first message; exactly once).
    Start(ProcessSpec),
    /// Data for the process's stdin (at most [`MAX_CHUNK`] bytes).
    Stdin(Vec<u8>),
    /// Close the process's stdin once the data sent before has been written.
    StdinClose,
    /// Send this signal to the process.
    Signal(i32),
    /// The terminal's new window size (ignored without a terminal).
    Resize(WindowSize),
    /// Send this signal to every process of the container.
    SignalAll(i32),
}

/// Messages from the agent to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMessage {
    /// The first frame the agent sends after connecting.
    Hello {
        /// [`PROTOCOL_VERSION`] of the agent.
        version: u32,
    },
    /// The process runs.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// Output of the process on stdout (at most [`MAX_CHUNK`] bytes).
    Stdout(Vec<u8>),
    /// Output of the process on stderr (at most [`MAX_CHUNK`] bytes).
    Stderr(Vec<u8>),
    /// The last frame: sent after the process's stdout and stderr reached EOF (or a short
    /// grace period after it exited) and after `sync()`.
    Exited(ProcessEnd),
    /// The process could not be started: 127 not found, 126 not executable, 125 agent or
    /// setup failure. Ends the session like `Exited`.
    Error {
        /// The status to report (125, 126 or 127).
        status: u8,
        /// What went wrong, for a person.
        message: String,
    },
}

/// Why a frame could not be read or decoded.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The connection failed.
    #[error("agent connection I/O error")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame")]
    Truncated,
    /// A length above the limit: the frame length above [`MAX_FRAME_LEN`], or the data of a
    /// Stdin/Stdout/Stderr frame above [`MAX_CHUNK`].
    #[error("frame too large: {len} bytes, at most {max} allowed")]
    TooLarge {
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame whose length field is zero (not even a type byte).
    #[error("zero-length frame")]
    Empty,
    /// A type byte this side does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A payload that does not parse for its type.
    #[error("bad payload: {0}")]
    BadPayload(String),
    /// A [`ProcessSpec`] that [`ProcessSpec::validate`] refuses.
    #[error("bad process spec: {0}")]
    BadSpec(String),
}

/// A message that travels in frames.
pub trait Message: Sized {
    /// Appends the whole frame (length field included) to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);

    /// Decodes the payload of a frame of type `kind`.
    fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError>;

    /// The largest payload a frame of type `kind` may have (data frames: [`MAX_CHUNK`]).
    fn max_payload(_kind: u8) -> usize {
        MAX_FRAME_LEN - 1
    }

    /// The whole frame, length field included. It is not checked against the limits (see
    /// [`write_message`]).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Appends a frame of type `kind` with `payload` to `out`.
pub fn encode_frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    // A frame that does not fit in u32 is not sendable anyway; write_message refuses it.
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    out.reserve(LEN_BYTES + 1 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

fn exact<const N: usize>(kind: u8, payload: &[u8]) -> Result<[u8; N], ProtocolError> {
    payload.try_into().map_err(|_| {
        ProtocolError::BadPayload(format!(
            "frame type {kind:#04x}: {} payload bytes, expected {N}",
            payload.len()
        ))
    })
}

fn data(payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    check_payload_len(payload.len(), MAX_CHUNK)?;
    Ok(payload.to_vec())
}

fn check_payload_len(len: usize, max: usize) -> Result<(), ProtocolError> {
    if len > max {
        Err(ProtocolError::TooLarge { len, max })
    } else {
        Ok(())
    }
}

impl HostMessage {
    /// `data` as Stdin messages of at most [`MAX_CHUNK`] bytes each (none for empty data).
    pub fn stdin_chunks(data: &[u8]) -> impl Iterator<Item = HostMessage> + '_ {
        data.chunks(MAX_CHUNK).map(|c| Self::Stdin(c.to_vec()))
    }
}

impl Message for HostMessage {
    fn encode_into(&self, out: &mut Vec<u8>) {
        use frame_type::*;
        match self {
            Self::Start(spec) => {
                // Serializing plain strings, integers and bools into memory cannot fail.
                let json = serde_json::to_vec(spec).unwrap_or_default();
                encode_frame(START, &json, out)
            }
            Self::Stdin(bytes) => encode_frame(STDIN, bytes, out),
            Self::StdinClose => encode_frame(STDIN_CLOSE, &[], out),
            Self::Signal(n) => encode_frame(SIGNAL, &n.to_le_bytes(), out),
            Self::Resize(size) => {
                let [r0, r1] = size.height.to_le_bytes();
                let [c0, c1] = size.width.to_le_bytes();
                encode_frame(RESIZE, &[r0, r1, c0, c1], out)
            }
            Self::SignalAll(n) => encode_frame(SIGNAL_ALL, &n.to_le_bytes(), out),
        }
    }

    fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        use frame_type::*;
        match kind {
            START => serde_json::from_slice(payload)
                .map(Self::Start)
                .map_err(|e| ProtocolError::BadPayload(format!("Start: {e}"))),
            STDIN => data(payload).map(Self::Stdin),
            STDIN_CLOSE => exact::<0>(kind, payload).map(|_| Self::StdinClose),
            SIGNAL => exact::<4>(kind, payload).map(|b| Self::Signal(i32::from_le_bytes(b))),
            RESIZE => exact::<4>(kind, payload).map(|[r0, r1, c0, c1]| {
                Self::Resize(WindowSize {
                    height: u16::from_le_bytes([r0, r1]),
                    width: u16::from_le_bytes([c0, c1]),
                })
            }),
            SIGNAL_ALL => exact::<4>(kind, payload).map(|b| Self::SignalAll(i32::from_le_bytes(b))),
            other => Err(ProtocolError::UnknownType(other)),
        }
    }

    fn max_payload(kind: u8) -> usize {
        if kind == frame_type::STDIN {
            MAX_CHUNK
        } else {
            MAX_FRAME_LEN - 1
        }
    }
}

impl AgentMessage {
    /// `data` as Stdout messages of at most [`MAX_CHUNK`] bytes each (none for empty data).
    pub fn stdout_chunks(data: &[u8]) -> impl Iterator<Item = AgentMessage> + '_ {
        data.chunks(MAX_CHUNK).map(|c| Self::Stdout(c.to_vec()))
    }

    /// `data` as Stderr messages of at most [`MAX_CHUNK`] bytes each (none for empty data).
    pub fn stderr_chunks(data: &[u8]) -> impl Iterator<Item = AgentMessage> + '_ {
        data.chunks(MAX_CHUNK).map(|c| Self::Stderr(c.to_vec()))
    }
}

impl Message for AgentMessage {
    fn encode_into(&self, out: &mut Vec<u8>) {
        use frame_type::*;
        match self {
            Self::Hello { version } => encode_frame(HELLO, &version.to_le_bytes(), out),
            Self::Started { pid } => encode_frame(STARTED, &pid.to_le_bytes(), out),
            Self::Stdout(bytes) => encode_frame(STDOUT, bytes, out),
            Self::Stderr(bytes) => encode_frame(STDERR, bytes, out),
            Self::Exited(end) => {
                let payload = match *end {
                    ProcessEnd::Exited(n) => [0, n],
                    ProcessEnd::Signaled(n) => [1, n],
                };
                encode_frame(EXITED, &payload, out)
            }
            Self::Error { status, message } => {
                let mut payload = Vec::with_capacity(1 + message.len());
                payload.push(*status);
                payload.extend_from_slice(message.as_bytes());
                encode_frame(ERROR, &payload, out)
            }
        }
    }

    fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        use frame_type::*;
        match kind {
            HELLO => exact::<4>(kind, payload).map(|b| Self::Hello {
                version: u32::from_le_bytes(b),
            }),
            STARTED => exact::<4>(kind, payload).map(|b| Self::Started {
                pid: u32::from_le_bytes(b),
            }),
            STDOUT => data(payload).map(Self::Stdout),
            STDERR => data(payload).map(Self::Stderr),
            EXITED => match exact::<2>(kind, payload)? {
                [0, n] => Ok(Self::Exited(ProcessEnd::Exited(n))),
                [1, n] => Ok(Self::Exited(ProcessEnd::Signaled(n))),
                [k, _] => Err(ProtocolError::BadPayload(format!(
                    "Exited: unknown kind {k}"
                ))),
            },
            ERROR => {
                let (&status, text) = payload
                    .split_first()
                    .ok_or_else(|| ProtocolError::BadPayload("Error: empty payload".to_string()))?;
                let message = String::from_utf8(text.to_vec()).map_err(|_| {
                    ProtocolError::BadPayload("Error: message is not UTF-8".to_string())
                })?;
                Ok(Self::Error { status, message })
            }
            other => Err(ProtocolError::UnknownType(other)),
        }
    }

    fn max_payload(kind: u8) -> usize {
        if kind == frame_type::STDOUT || kind == frame_type::STDERR {
            MAX_CHUNK
        } else {
            MAX_FRAME_LEN - 1
        }
    }
}

/// Checks the length field of a frame.
fn check_frame_len(len: usize) -> Result<(), ProtocolError> {
    match len {
        0 => Err(ProtocolError::Empty),
        n if n > MAX_FRAME_LEN => Err(ProtocolError::TooLarge {
            len: n,
            max: MAX_FRAME_LEN,
        }),
        _ => Ok(()),
    }
}

/// Checks the payload length of a frame of type `kind` against that type's limit.
fn check_kind_len<M: Message>(kind: u8, payload_len: usize) -> Result<(), ProtocolError> {
    check_payload_len(payload_len, M::max_payload(kind))
}

/// Writes `m` as one frame. A frame the peer would refuse (too large for its type) is not
/// written: `InvalidInput`.
pub fn write_message<W: Write, M: Message>(w: &mut W, m: &M) -> io::Result<()> {
    let frame = m.encode();
    let len = frame.len() - LEN_BYTES;
    check_frame_len(len)
        .and_then(|()| check_kind_len::<M>(frame[LEN_BYTES], len - 1))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&frame)
}

/// Fills `buf` from `r`; returns how many bytes were read before EOF (`buf.len()` if none).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads one frame and decodes it (blocking).
///
/// `Ok(None)`: clean EOF before the first byte of a frame. EOF inside a frame:
/// `Err(Truncated)`. The payload buffer is allocated only after the length was checked.
pub fn read_message<R: Read, M: Message>(r: &mut R) -> Result<Option<M>, ProtocolError> {
    let mut header = [0u8; LEN_BYTES + 1];
    match read_full(r, &mut header[..LEN_BYTES])? {
        0 => return Ok(None),
        LEN_BYTES => {}
        _ => return Err(ProtocolError::Truncated),
    }
    let len = frame_len(&header);
    check_frame_len(len)?;
    if read_full(r, &mut header[LEN_BYTES..])? != 1 {
        return Err(ProtocolError::Truncated);
    }
    let kind = header[LEN_BYTES];
    check_kind_len::<M>(kind, len - 1)?;
    let mut payload = vec![0u8; len - 1];
    if read_full(r, &mut payload)? != payload.len() {
        return Err(ProtocolError::Truncated);
    }
    M::decode(kind, &payload).map(Some)
}

fn frame_len(buf: &[u8]) -> usize {
    let mut len = [0u8; LEN_BYTES];
    len.copy_from_slice(&buf[..LEN_BYTES]);
    // u32 always fits in usize on the 32- and 64-bit targets hvlite builds for.
    usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX)
}

/// Incremental decoder for non-blocking readers: [`push`](Self::push) the bytes as they
/// arrive, then take the messages with [`next_message`](Self::next_message) until it returns
/// `Ok(None)`.
///
/// Errors found in a frame's header (`Empty`, `TooLarge`) leave the bytes in place, so every
/// later call returns the same error: the stream cannot be resynchronized. Oversized frames
/// are refused as soon as their header has arrived, before their payload is buffered. A
/// complete frame whose type or payload is bad is consumed before its error is returned.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buf: Vec<u8>,
    /// Start of the first frame not yet taken.
    start: usize,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            _message: PhantomData,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<M>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = frame_len(avail);
        check_frame_len(len)?;
        let Some(&kind) = avail.get(LEN_BYTES) else {
            return Ok(None);
        };
        check_kind_len::<M>(kind, len - 1)?;
        let end = LEN_BYTES + len;
        if avail.len() < end {
            return Ok(None);
        }
        let result = M::decode(kind, &avail[LEN_BYTES + 1..end]);
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        result.map(Some)
    }

    /// True when no byte is buffered (no partial frame, no frame not yet taken).
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// How many bytes are buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests;
