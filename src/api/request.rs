//! Routing: an [`HttpRequest`] becomes an [`ApiRequest`] for the VMM, or an [`ApiError`]
//! answered without bothering it.

use serde::de::DeserializeOwned;

use super::ApiResponse;
use super::http::HttpRequest;
use super::model::{
    ActionBody, ActionType, Balloon, BalloonStatsUpdate, BalloonUpdate, BootSource, DeviceId,
    Drive, DrivePatch, Entropy, Logger, MachineConfig, MetricsConfig, NetworkInterface,
    NetworkInterfacePatch, SnapshotCreateParams, SnapshotLoadParams, VmPatchBody, VmStateRequest,
    Vsock,
};

/// What a client asks of the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{drive_id}`.
    PutDrive(Drive),
    /// `PUT /network-interfaces/{iface_id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmStateRequest),
    /// `GET /vm`: answer with a [`super::model::VmInfo`].
    GetVm,
    /// `GET /machine-config`: answer with a [`MachineConfig`].
    GetMachineConfig,
    /// `GET /`: answer with a [`super::model::InstanceInfo`].
    GetInstanceInfo,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `GET /version`: answer with a [`super::model::VersionInfo`].
    GetVersion,
    /// `GET /vm/config`: answer with the whole configuration, as a config file.
    GetVmConfig,
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(DrivePatch),
    /// `PUT /entropy`.
    PutEntropy(Entropy),
    /// `PUT /fs/{fs_id}`.
    PutFs(crate::config::FsDevice),
    /// `PATCH /network-interfaces/{iface_id}`.
    PatchNetworkInterface(NetworkInterfacePatch),
    /// `PUT /balloon`.
    PutBalloon(Balloon),
    /// `PATCH /balloon`.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`: answer with the [`Balloon`] as it is now.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(BalloonStatsUpdate),
}

/// Requests refused by the API layer itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("no such resource: {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("invalid {param} in the path: {reason}")]
    PathId { param: &'static str, reason: String },
    #[error("{param} in the path ({path}) differs from the one in the body ({body})")]
    IdMismatch {
        param: &'static str,
        path: String,
        body: String,
    },
    #[error("Content-Type must be application/json (or curl's default form type), not {0:?}")]
    ContentType(String),
    #[error("{0} needs a JSON body")]
    MissingBody(String),
    #[error("{0} takes no body")]
    UnexpectedBody(String),
    #[error("invalid body for {target}: {message}")]
    Body { target: String, message: String },
}

impl ApiError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            _ => 400,
        }
    }

    /// The response to send for this error (with `Allow` for a 405).
    pub fn to_response(&self) -> ApiResponse {
        let mut resp = ApiResponse::fault(self.status(), self.to_string());
        if let Self::MethodNotAllowed { allow, .. } = self {
            resp.allow = Some(allow.clone());
        }
        resp
    }
}

/// A path parameter: its name in the template and its value.
type Param<'a> = Option<(&'static str, &'a str)>;

/// Builds the request for a route from the HTTP request and the path parameter, if any.
type Handler = fn(&HttpRequest, Param) -> Result<ApiRequest, ApiError>;

/// One method on one path template; `{name}` matches one non-empty path segment.
pub struct Route {
    /// The method, e.g. `PUT`.
    pub method: &'static str,
    /// The path template, e.g. `/drives/{drive_id}`.
    pub path: &'static str,
    handler: Handler,
}

/// Every method on every path the API serves.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/",
        handler: |req, _| no_body(req, ApiRequest::GetInstanceInfo),
    },
    Route {
        method: "GET",
        path: "/machine-config",
        handler: |req, _| no_body(req, ApiRequest::GetMachineConfig),
    },
    Route {
        method: "PUT",
        path: "/machine-config",
        handler: |req, _| {
            let body: MachineConfig = json(req)?;
            whole(req, body.missing_field())?;
            Ok(ApiRequest::PutMachineConfig(body))
        },
    },
    Route {
        method: "PUT",
        path: "/boot-source",
        handler: |req, _| {
            let body: BootSource = json(req)?;
            whole(req, body.missing_field())?;
            Ok(ApiRequest::PutBootSource(body))
        },
    },
    Route {
        method: "PUT",
        path: "/drives/{drive_id}",
        handler: |req, id| json_with_id(req, id, |d: &Drive| &d.drive_id).map(ApiRequest::PutDrive),
    },
    Route {
        method: "PATCH",
        path: "/drives/{drive_id}",
        handler: |req, id| {
            json_with_id(req, id, |d: &DrivePatch| &d.drive_id).map(ApiRequest::PatchDrive)
        },
    },
    Route {
        method: "PUT",
        path: "/network-interfaces/{iface_id}",
        handler: |req, id| {
            json_with_id(req, id, |n: &NetworkInterface| &n.iface_id)
                .map(ApiRequest::PutNetworkInterface)
        },
    },
    Route {
        method: "PATCH",
        path: "/network-interfaces/{iface_id}",
        handler: |req, id| {
            json_with_id(req, id, |n: &NetworkInterfacePatch| &n.iface_id)
                .map(ApiRequest::PatchNetworkInterface)
        },
    },
    Route {
        method: "PUT",
        path: "/fs/{fs_id}",
        handler: |req, id| {
            json_with_id(req, id, |f: &crate::config::FsDevice| &f.fs_id).map(ApiRequest::PutFs)
        },
    },
    Route {
        method: "PUT",
        path: "/entropy",
        handler: |req, _| json(req).map(ApiRequest::PutEntropy),
    },
    Route {
        method: "PUT",
        path: "/balloon",
        handler: |req, _| json(req).map(ApiRequest::PutBalloon),
    },
    Route {
        method: "PATCH",
        path: "/balloon",
        handler: |req, _| json(req).map(ApiRequest::PatchBalloon),
    },
    Route {
        method: "GET",
        path: "/balloon",
        handler: |req, _| no_body(req, ApiRequest::GetBalloon),
    },
    Route {
        method: "GET",
        path: "/balloon/statistics",
        handler: |req, _| no_body(req, ApiRequest::GetBalloonStats),
    },
    Route {
        method: "PATCH",
        path: "/balloon/statistics",
        handler: |req, _| json(req).map(ApiRequest::PatchBalloonStats),
    },
    Route {
        method: "PUT",
        path: "/vsock",
        handler: |req, _| json(req).map(ApiRequest::PutVsock),
    },
    Route {
        method: "PUT",
        path: "/actions",
        handler: |req, _| json::<ActionBody>(req).map(|b| ApiRequest::Action(b.action_type)),
    },
    Route {
        method: "GET",
        path: "/vm",
        handler: |req, _| no_body(req, ApiRequest::GetVm),
    },
    Route {
        method: "PATCH",
        path: "/vm",
        handler: |req, _| json::<VmPatchBody>(req).map(|b| ApiRequest::PatchVm(b.state)),
    },
    Route {
        method: "PUT",
        path: "/snapshot/create",
        handler: |req, _| json(req).map(ApiRequest::CreateSnapshot),
    },
    Route {
        method: "PUT",
        path: "/snapshot/load",
        handler: |req, _| json(req).map(ApiRequest::LoadSnapshot),
    },
    Route {
        method: "GET",
        path: "/version",
        handler: |req, _| no_body(req, ApiRequest::GetVersion),
    },
    Route {
        method: "GET",
        path: "/vm/config",
        handler: |req, _| no_body(req, ApiRequest::GetVmConfig),
    },
    Route {
        method: "PUT",
        path: "/logger",
        handler: |req, _| json(req).map(ApiRequest::PutLogger),
    },
    Route {
        method: "PUT",
        path: "/metrics",
        handler: |req, _| json(req).map(ApiRequest::PutMetrics),
    },
];

/// Routes a request and decodes its body.
pub fn parse_request(req: &HttpRequest) -> Result<ApiRequest, ApiError> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(param) = match_path(route.path, &req.path) else {
            continue;
        };
        if route.method != req.method {
            allowed.push(route.method);
            continue;
        }
        if let Some((name, value)) = param {
            DeviceId::try_from(value.to_string()).map_err(|reason| ApiError::PathId {
                param: name,
                reason,
            })?;
        }
        return (route.handler)(req, param);
    }
    if allowed.is_empty() {
        return Err(ApiError::NotFound(req.path.clone()));
    }
    Err(ApiError::MethodNotAllowed {
        method: req.method.clone(),
        path: req.path.clone(),
        allow: allowed.join(", "),
    })
}

/// Matches `path` against `template`: `None` if it does not match, else the template's
/// parameter (its name without braces, and its value), if it has one.
fn match_path<'a>(template: &'static str, path: &'a str) -> Option<Param<'a>> {
    let mut param = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(param),
            (Some(ts), Some(ps)) => {
                if let Some(name) = ts.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    if ps.is_empty() {
                        return None;
                    }
                    param = Some((name, ps));
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

fn target(req: &HttpRequest) -> String {
    format!("{} {}", req.method, req.path)
}

fn no_body(req: &HttpRequest, api: ApiRequest) -> Result<ApiRequest, ApiError> {
    if req.body.is_empty() {
        Ok(api)
    } else {
        Err(ApiError::UnexpectedBody(target(req)))
    }
}

/// Decodes the JSON body, naming the field path at fault in the error.
fn json<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    if let Some(ct) = &req.content_type {
        let media = ct.split(';').next().unwrap_or_default().trim();
        // curl's `--data` sends the form type: Firecracker's own examples do that and
        // Firecracker reads the body as JSON whatever the type, so it is taken too.
        let accepted = ["application/json", "application/x-www-form-urlencoded"];
        if !accepted.iter().any(|a| media.eq_ignore_ascii_case(a)) {
            return Err(ApiError::ContentType(ct.clone()));
        }
    }
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MissingBody(target(req)));
    }
    let body_error = |message: String| ApiError::Body {
        target: target(req),
        message,
    };
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        body_error(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })?;
    de.end().map_err(|e| body_error(e.to_string()))?;
    Ok(value)
}

/// A PUT replaces the whole resource, so the fields a config file may leave to the
/// command line or the defaults are required here (as in Firecracker): an error naming
/// the `missing` one.
fn whole(req: &HttpRequest, missing: Option<&'static str>) -> Result<(), ApiError> {
    match missing {
        Some(field) => Err(ApiError::Body {
            target: target(req),
            message: format!("missing field `{field}`"),
        }),
        None => Ok(()),
    }
}

/// Decodes a body whose id (`id_of`) must be the path parameter.
fn json_with_id<T: DeserializeOwned>(
    req: &HttpRequest,
    param: Param,
    id_of: fn(&T) -> &DeviceId,
) -> Result<T, ApiError> {
    let body: T = json(req)?;
    let id = id_of(&body);
    match param {
        Some((name, path)) if path != id.as_str() => Err(ApiError::IdMismatch {
            param: name,
            path: path.to_string(),
            body: id.to_string(),
        }),
        _ => Ok(body),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
