//! Building a template: boot the agent VM, wait for the agent's Hello, pause, snapshot.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::console::ConsoleTail;
use super::template::{TemplateError, TemplateSpec};
use crate::agent::protocol::{AGENT_VSOCK_PORT, AgentMessage, PROTOCOL_VERSION, read_message};
use crate::config::{DiskConfig, VmConfig, VsockConfig};
use crate::exit::{ExitLatch, ExitReason};
use crate::vmm::control::VmControl;
use crate::vmm::persist::{MEMORY_FILE, STATE_FILE};
use crate::vmm::{self, Console, RunEnv, RunHooks};

/// How long the template's boot may take to reach the agent's Hello.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// The template's root drive: an empty file (capacity 0), replaced at every restore.
pub const PLACEHOLDER: &str = "placeholder-root.img";
const POLL: Duration = Duration::from_millis(100);

/// What a build wrote and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildStats {
    pub build_ms: f64,
    pub state_bytes: u64,
    pub memory_written: u64,
}

/// The VM a template is made of.
pub fn template_vm(spec: &TemplateSpec, placeholder: &Path) -> VmConfig {
    let mut vm = VmConfig::new(spec.kernel.clone());
    vm.cpus = spec.cpus;
    vm.memory_mib = spec.memory_mib;
    vm.cmdline = Some(spec.cmdline.clone());
    vm.disks = vec![
        DiskConfig {
            path: spec.agent_disk.clone(),
            read_only: true,
            root: false,
            rate_limiter: None,
        },
        DiskConfig {
            path: placeholder.to_path_buf(),
            read_only: spec.root_read_only,
            root: false,
            rate_limiter: None,
        },
    ];
    vm.vsock = Some(VsockConfig {
        cid: spec.cid,
        uds: None,
    });
    vm
}

/// Boots the template VM of `spec` and writes its snapshot into the new directory `dir`.
pub fn build_into(spec: &TemplateSpec, dir: &Path) -> Result<BuildStats, TemplateError> {
    let start = Instant::now();
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| TemplateError::Io(p, e)
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let placeholder = dir.join(PLACEHOLDER);
    std::fs::File::create(&placeholder).map_err(io(&placeholder))?;
    let vm = template_vm(spec, &placeholder);
    let control = Arc::new(VmControl::new());
    let latch = Arc::new(ExitLatch::new());
    let (agent_tx, agent_rx) = mpsc::channel();
    let tail = ConsoleTail::new();
    let env = RunEnv {
        console: Console {
            out: Box::new(tail.clone()),
            forward_stdin: false,
        },
        latch: Arc::clone(&latch),
        vsock_ports: vec![(AGENT_VSOCK_PORT, agent_tx)],
    };
    let hooks = RunHooks {
        metrics: None,
        control: Some(Arc::clone(&control)),
    };
    let vm_thread = std::thread::Builder::new()
        .name("template-vm".into())
        .spawn(move || vmm::run_with(&vm, env, hooks))
        .map_err(io(dir))?;
    let snapshot = (|| {
        let stream = wait_for_hello(&agent_rx, &latch, &tail)?;
        control
            .pause()
            .map_err(|e| TemplateError::Build(format!("pausing: {e}")))?;
        let stats = control
            .create_snapshot(&dir.join(STATE_FILE), &dir.join(MEMORY_FILE))
            .map_err(|e| TemplateError::Build(e.to_string()));
        // The agent's connection stays open until the snapshot is written.
        drop(stream);
        stats
    })();
    latch.request(ExitReason::Shutdown);
    let ended = vm_thread.join();
    let stats = match (snapshot, ended) {
        (Ok(stats), _) => stats,
        // A VM that failed to start says why better than the missing Hello does.
        (Err(_), Ok(Err(e))) => {
            return Err(TemplateError::Build(crate::control::error_chain(&e)));
        }
        // The VMM's account of the end beats the latch's first reason: the reset that
        // follows a kernel panic can reach the latch before the panic report's last line,
        // and the VMM explains such a reset as the panic.
        (Err(TemplateError::GuestEnded { .. }), Ok(Ok(reason))) => {
            return Err(TemplateError::GuestEnded {
                reason,
                console: tail.text(),
            });
        }
        (Err(e @ TemplateError::GuestEnded { .. }), _) => return Err(e),
        (Err(e), _) => return Err(with_console(e, &tail)),
    };
    Ok(BuildStats {
        build_ms: start.elapsed().as_secs_f64() * 1e3,
        state_bytes: stats.state_bytes,
        memory_written: stats.memory_written,
    })
}

/// Waits for the agent's connection and its Hello.
fn wait_for_hello(
    agent: &mpsc::Receiver<UnixStream>,
    latch: &ExitLatch,
    tail: &ConsoleTail,
) -> Result<UnixStream, TemplateError> {
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let mut stream = loop {
        match agent.recv_timeout(POLL) {
            Ok(s) => break s,
            Err(RecvTimeoutError::Timeout) if latch.is_set() => {
                return Err(TemplateError::GuestEnded {
                    reason: latch.wait(),
                    console: tail.text(),
                });
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                return Err(TemplateError::Build(format!(
                    "the agent did not connect within {BUILD_TIMEOUT:?}"
                )));
            }
        }
    };
    let hello_io = |e: std::io::Error| TemplateError::Build(format!("the agent's Hello: {e}"));
    stream.set_nonblocking(false).map_err(hello_io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(hello_io)?;
    match read_message::<_, AgentMessage>(&mut stream) {
        Ok(Some(AgentMessage::Hello { version })) if version == PROTOCOL_VERSION => Ok(stream),
        Ok(other) => Err(TemplateError::Build(format!(
            "expected the agent's Hello (version {PROTOCOL_VERSION}), got {other:?}"
        ))),
        Err(e) => Err(TemplateError::Build(format!("the agent's Hello: {e}"))),
    }
}

/// Adds the last console lines to a build failure.
fn with_console(e: TemplateError, tail: &ConsoleTail) -> TemplateError {
    let text = tail.text();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.is_empty() {
        return e;
    }
    let last = lines[lines.len().saturating_sub(10)..].join("\n  ");
    TemplateError::Build(format!("{e}; last guest console lines:\n  {last}"))
}
