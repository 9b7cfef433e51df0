//! The REST API of the control plane: JSON over HTTP/1.1 on a Unix socket, Firecracker
//! style (see `docs/api/openapi.json`).
//!
//! Layers: [`http`] frames and parses requests and writes responses; [`request`] routes
//! them and decodes their [`model`] bodies into an [`ApiRequest`]; [`server`] owns the
//! socket and its connections and hands each request to the VMM over a channel, sending
//! back the VMM's [`ApiResponse`].

pub mod http;
pub mod model;
pub mod request;
pub mod server;
pub mod socket;

#[cfg(test)]
mod openapi_tests;

use serde::Serialize;
use serde_json::{Value, json};

pub use model::{
    ActionType, BootSource, Drive, InstanceInfo, InstanceState, MachineConfig, NetworkInterface,
    VersionInfo, VmInfo, VmStateRequest, Vsock,
};
pub use request::{ApiError, ApiRequest, parse_request};
pub use server::{ApiServer, ApiServerError, Limits, VmmSender};

/// The VMM's answer to an [`ApiRequest`] (the API layer builds some itself: 4xx errors).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<Value>,
    /// `Allow` header value (405 responses).
    pub allow: Option<String>,
}

impl ApiResponse {
    /// 204 No Content: the request was carried out.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// 200 OK with `value` as the JSON body (500 if it cannot be serialized).
    pub fn ok_json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(body) => Self {
                status: 200,
                body: Some(body),
                allow: None,
            },
            Err(e) => Self::fault(500, format!("cannot serialize the response: {e}")),
        }
    }

    /// An error: `status` with body `{"fault_message": message}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Some(json!({ "fault_message": message.into() })),
            allow: None,
        }
    }
}
