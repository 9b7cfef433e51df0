//! The shim's errors and how containerd sees them (ttrpc status codes).

use containerd_shim::protos::ttrpc::{self, Code};
use hvlite::oci::OciError;

/// Why a task request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("task {0:?} not found in this shim")]
    NotFound(String),
    #[error("task {0:?} already exists")]
    Exists(String),
    #[error("process {exec_id:?} of task {id:?} not found: {why}")]
    NoProcess {
        id: String,
        exec_id: String,
        why: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("rootfs: {0}")]
    Mount(String),
    #[error("stdio {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Oci(#[from] OciError),
}

impl ShimError {
    /// The ttrpc code containerd maps to its own errors (errdefs).
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) | ShimError::NoProcess { .. } => Code::NOT_FOUND,
            ShimError::Exists(_) => Code::ALREADY_EXISTS,
            ShimError::Invalid(_) => Code::INVALID_ARGUMENT,
            ShimError::Precondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Oci(OciError::Bundle(_)) => Code::INVALID_ARGUMENT,
            ShimError::Oci(OciError::State(hvlite::oci::state::StateError::Exists(_))) => {
                Code::ALREADY_EXISTS
            }
            ShimError::Oci(OciError::State(hvlite::oci::state::StateError::BadId(_))) => {
                Code::INVALID_ARGUMENT
            }
            _ => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        log::warn!("{e}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), format!("hvlite: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_containerds_errdefs() {
        assert_eq!(ShimError::NotFound("x".into()).code(), Code::NOT_FOUND);
        assert_eq!(ShimError::Exists("x".into()).code(), Code::ALREADY_EXISTS);
        assert_eq!(
            ShimError::Unimplemented("exec".into()).code(),
            Code::UNIMPLEMENTED
        );
        let e: ttrpc::Error = ShimError::Invalid("bad".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INVALID_ARGUMENT);
                assert_eq!(s.message(), "hvlite: bad");
            }
            other => panic!("{other:?}"),
        }
    }
}
