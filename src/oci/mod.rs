//! An OCI runtime (`hvlite-runtime`): the command line runc implements, so container
//! engines (podman through conmon) run containers in hvlite microVMs.
//!
//! - [`bundle`] reads and checks `config.json` (oci-spec) before anything is created.
//! - [`state`] is the state directory under `--root` (`state.json`, written atomically).
//! - [`monitor`] is the detached VMM process `create` starts; [`control`] its socket.
//! - [`network`] joins the engine's network namespace to the VM (a TAP, tc redirects).
//! - [`files`] copies bind-mounted host files into a private root image.
//! - [`commands`] implements create, start, state, kill, delete, list and run.
//! - [`exec`] runs further processes in a running container (library calls a containerd
//!   shim can use too); [`console`] hands a pty to the engine for `terminal: true`.

pub mod bundle;
pub mod cgroup;
pub mod commands;
pub mod console;
pub mod control;
pub mod exec;
pub mod files;
pub mod monitor;
pub mod network;
pub mod state;

use std::io;
use std::path::PathBuf;

/// Errors of the runtime's commands.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error(transparent)]
    Exec(#[from] crate::container::exec::ExecError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}")]
    Refused(String),
}
