//! An OCI runtime (`hvlite-runtime`): the command line runc implements, so container
//! engines (podman through conmon) run containers in hvlite microVMs.
//!
//! - [`bundle`] reads and checks `config.json` (oci-spec) before anything is created.
//! - [`state`] is the state directory under `--root` (`state.json`, written atomically).
//! - [`monitor`] is the detached VMM process `create` starts; [`control`] its socket.
//! - [`files`] copies bind-mounted host files into a private root image.
//! - [`commands`] implements create, start, state, kill, delete, list and run.

pub mod bundle;
pub mod commands;
pub mod control;
pub mod files;
pub mod monitor;
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
    Container(#[from] crate::container::ContainerError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}")]
    Refused(String),
}
