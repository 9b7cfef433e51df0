use serde_json::json;

use super::*;
use crate::api::model::{InstanceInfo, InstanceState, MacAddr, VmInfo};

fn http(method: &str, path: &str, body: &str) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path: path.into(),
        content_type: (!body.is_empty()).then(|| "application/json".into()),
        keep_alive: true,
        body: body.as_bytes().to_vec(),
    }
}

fn parse(method: &str, path: &str, body: &str) -> Result<ApiRequest, ApiError> {
    parse_request(&http(method, path, body))
}

/// The 400 message for a bad body, checked to name `field`.
fn rejected(method: &str, path: &str, body: &str, field: &str) -> String {
    let err = parse(method, path, body).expect_err(body);
    assert_eq!(err.status(), 400, "{body}: {err}");
    let msg = err.to_string();
    assert!(msg.contains(field), "{body}: {msg:?} does not name {field}");
    msg
}

/// A resource from its JSON form.
fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[test]
fn every_route() {
    let cases = [
        ("GET", "/", "", ApiRequest::GetInstanceInfo),
        ("GET", "/vm", "", ApiRequest::GetVm),
        ("GET", "/machine-config", "", ApiRequest::GetMachineConfig),
        ("GET", "/version", "", ApiRequest::GetVersion),
        ("GET", "/vm/config", "", ApiRequest::GetVmConfig),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 512}"#,
            ApiRequest::PutMachineConfig(MachineConfig::new(2, 512).unwrap()),
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet"}"#,
            ApiRequest::PutBootSource(from_json(
                json!({"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet"}),
            )),
        ),
        (
            "PUT",
            "/drives/root-1",
            r#"{"drive_id": "root-1", "path_on_host": "/d.img", "is_read_only": true}"#,
            ApiRequest::PutDrive(from_json(
                json!({"drive_id": "root-1", "path_on_host": "/d.img", "is_read_only": true}),
            )),
        ),
        (
            "PUT",
            "/network-interfaces/eth_0",
            r#"{"iface_id": "eth_0", "host_dev_name": "tap0", "guest_mac": "02:AA:00:00:00:01"}"#,
            ApiRequest::PutNetworkInterface(from_json(
                json!({"iface_id": "eth_0", "host_dev_name": "tap0", "guest_mac": "02:aa:00:00:00:01"}),
            )),
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#,
            ApiRequest::PutVsock(from_json(json!({"guest_cid": 3, "uds_path": "/v.sock"}))),
        ),
    ];
    for (method, path, body, want) in cases {
        assert_eq!(parse(method, path, body), Ok(want), "{method} {path}");
    }
    use ActionType::*;
    for action in [InstanceStart, SendCtrlAltDel, FlushMetrics] {
        let body = format!(r#"{{"action_type": "{action:?}"}}"#);
        assert_eq!(
            parse("PUT", "/actions", &body),
            Ok(ApiRequest::Action(action))
        );
    }
    for state in [VmStateRequest::Paused, VmStateRequest::Resumed] {
        let body = format!(r#"{{"state": "{state:?}"}}"#);
        assert_eq!(parse("PATCH", "/vm", &body), Ok(ApiRequest::PatchVm(state)));
    }
}

#[test]
fn optional_fields_default() {
    let got = parse(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/k", "initrd_path": null}"#,
    );
    let Ok(ApiRequest::PutBootSource(b)) = got else {
        panic!("{got:?}")
    };
    assert_eq!((b.initrd_path, b.boot_args), (None, None));
    let got = parse(
        "PUT",
        "/drives/d",
        r#"{"drive_id": "d", "path_on_host": "/d"}"#,
    );
    let Ok(ApiRequest::PutDrive(d)) = got else {
        panic!("{got:?}")
    };
    assert!(!d.is_read_only && !d.is_root_device);
}

#[test]
fn unknown_paths_are_404() {
    for path in [
        "/nope",
        "/drives",
        "/drives/",
        "/drives/a/b",
        "/vm/",
        "//",
        "/machine-config/x",
        "/network-interfaces",
        "/VM",
    ] {
        let err = parse("GET", path, "").unwrap_err();
        assert_eq!(err, ApiError::NotFound(path.into()));
        assert_eq!(err.status(), 404);
    }
}

#[test]
fn wrong_method_is_405_with_allow() {
    let cases = [
        ("DELETE", "/vm", "GET, PATCH"),
        ("PUT", "/vm", "GET, PATCH"),
        ("GET", "/drives/x", "PUT, PATCH"),
        ("GET", "/network-interfaces/x", "PUT, PATCH"),
        ("POST", "/", "GET"),
        ("PATCH", "/machine-config", "GET, PUT"),
        ("GET", "/actions", "PUT"),
        ("get", "/vm", "GET, PATCH"),
    ];
    for (method, path, allow) in cases {
        let err = parse(method, path, "").unwrap_err();
        assert_eq!(err.status(), 405, "{method} {path}");
        let resp = err.to_response();
        assert_eq!(resp.status, 405);
        assert_eq!(resp.allow.as_deref(), Some(allow), "{method} {path}");
        assert!(
            resp.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains(allow)
        );
    }
}

#[test]
fn path_ids_are_checked() {
    let long = format!("/drives/{}", "a".repeat(65));
    for path in [
        "/drives/a.b",
        "/drives/%41",
        "/network-interfaces/x~",
        long.as_str(),
    ] {
        let err = parse("PUT", path, "{}").unwrap_err();
        assert!(matches!(err, ApiError::PathId { .. }), "{path}: {err:?}");
        assert_eq!(err.status(), 400);
    }
    let ok = format!(
        r#"{{"drive_id": "{0}", "path_on_host": "/d"}}"#,
        "a".repeat(64)
    );
    assert!(parse("PUT", &format!("/drives/{}", "a".repeat(64)), &ok).is_ok());
}

#[test]
fn id_mismatch() {
    let msg = rejected(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "b", "path_on_host": "/d"}"#,
        "drive_id",
    );
    assert!(msg.contains("(a)") && msg.contains("(b)"), "{msg}");
    rejected(
        "PUT",
        "/network-interfaces/a",
        r#"{"iface_id": "b", "host_dev_name": "tap0"}"#,
        "iface_id",
    );
}

#[test]
fn malformed_json() {
    for body in [
        "{",
        "{\"vcpu_count\": }",
        "nope",
        "{} {}",
        "{\"vcpu_count\": 1, }",
    ] {
        let err = parse("PUT", "/machine-config", body).unwrap_err();
        assert!(matches!(err, ApiError::Body { .. }), "{body}: {err:?}");
    }
    for body in ["[]", "\"x\"", "null", "1"] {
        let err = parse("PUT", "/vsock", body).unwrap_err();
        assert!(matches!(err, ApiError::Body { .. }), "{body}: {err:?}");
    }
}

#[test]
fn wrong_types_name_the_field() {
    let mc = "/machine-config";
    rejected(
        "PUT",
        mc,
        r#"{"vcpu_count": "2", "mem_size_mib": 1}"#,
        "vcpu_count",
    );
    rejected(
        "PUT",
        mc,
        r#"{"vcpu_count": 1.5, "mem_size_mib": 1}"#,
        "vcpu_count",
    );
    rejected(
        "PUT",
        mc,
        r#"{"vcpu_count": 1, "mem_size_mib": true}"#,
        "mem_size_mib",
    );
    let d = r#"{"drive_id": "d", "path_on_host": "/d", "is_read_only": "yes"}"#;
    rejected("PUT", "/drives/d", d, "is_read_only");
    let n = r#"{"iface_id": "n", "host_dev_name": 7}"#;
    rejected("PUT", "/network-interfaces/n", n, "host_dev_name");
    rejected(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": ["/k"]}"#,
        "kernel_image_path",
    );
    rejected(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/k", "boot_args": 1}"#,
        "boot_args",
    );
    rejected("PUT", "/actions", r#"{"action_type": 1}"#, "action_type");
}

#[test]
fn firecracker_machine_options_are_accepted_or_refused_by_name() {
    let ok = r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
        "track_dirty_pages": true, "huge_pages": "None", "cpu_template": "None"}"#;
    let Ok(ApiRequest::PutMachineConfig(m)) = parse("PUT", "/machine-config", ok) else {
        panic!("{ok} refused");
    };
    assert_eq!(m.track_dirty_pages, Some(true));
    for (body, field, says) in [
        (r#""smt": true"#, "smt", "true is not supported"),
        (
            r#""huge_pages": "2M""#,
            "huge_pages",
            "\"2M\" is not supported",
        ),
        (
            r#""cpu_template": "T2""#,
            "cpu_template",
            "\"T2\" is not supported",
        ),
    ] {
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, {body}}}"#);
        let msg = rejected("PUT", "/machine-config", &body, field);
        assert!(msg.contains(says), "{msg}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let msg = rejected(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 1, "hyperthreads": false}"#,
        "hyperthreads",
    );
    assert!(msg.contains("unknown field"), "{msg}");
    rejected(
        "PATCH",
        "/vm",
        r#"{"state": "Paused", "force": true}"#,
        "force",
    );
    rejected(
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics", "x": 1}"#,
        "`x`",
    );
}

#[test]
fn missing_fields_are_named() {
    rejected(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1}"#,
        "mem_size_mib",
    );
    rejected("PUT", "/boot-source", "{}", "kernel_image_path");
    rejected("PUT", "/drives/d", r#"{"drive_id": "d"}"#, "path_on_host");
    rejected(
        "PUT",
        "/network-interfaces/n",
        r#"{"host_dev_name": "t"}"#,
        "iface_id",
    );
    rejected("PUT", "/vsock", r#"{"uds_path": "/u"}"#, "guest_cid");
    rejected("PUT", "/actions", "{}", "action_type");
    rejected("PATCH", "/vm", "{}", "state");
}

#[test]
fn ranges_are_checked() {
    let mc = |v: &str, m: &str| format!(r#"{{"vcpu_count": {v}, "mem_size_mib": {m}}}"#);
    for v in ["0", "33", "300", "-1"] {
        rejected("PUT", "/machine-config", &mc(v, "1"), "vcpu_count");
    }
    let msg = rejected("PUT", "/machine-config", &mc("0", "1"), "vcpu_count");
    assert!(msg.contains("between 1 and 32"), "{msg}");
    rejected("PUT", "/machine-config", &mc("1", "0"), "mem_size_mib");
    rejected(
        "PUT",
        "/machine-config",
        &mc("1", "18446744073709551616"),
        "mem_size_mib",
    );
    assert!(parse("PUT", "/machine-config", &mc("32", "18446744073709551615")).is_ok());
    let vs = |cid: &str| format!(r#"{{"guest_cid": {cid}, "uds_path": "/u"}}"#);
    for cid in ["0", "2", "4294967295", "1099511627776", "-3"] {
        rejected("PUT", "/vsock", &vs(cid), "guest_cid");
    }
    assert!(parse("PUT", "/vsock", &vs("4294967294")).is_ok());
}

#[test]
fn strings_are_checked() {
    let mac =
        |m: &str| format!(r#"{{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "{m}"}}"#);
    let path = "/network-interfaces/n";
    let msg = rejected("PUT", path, &mac("03:00:00:00:00:01"), "guest_mac");
    assert!(msg.contains("multicast"), "{msg}");
    rejected("PUT", path, &mac("00:00:00:00:00:00"), "guest_mac");
    rejected("PUT", path, &mac("02:00:00:00:00"), "guest_mac");
    rejected("PUT", path, &mac("02:00:00:00:00:0g"), "guest_mac");
    let tap = |t: &str| format!(r#"{{"iface_id": "n", "host_dev_name": "{t}"}}"#);
    // The TAP code's own name check: also ':', '%' and the names "." and "..".
    for t in ["", "sixteen-chars-xx", "a/b", "a b", "a:b", "a%b", ".."] {
        rejected("PUT", path, &tap(t), "host_dev_name");
    }
    rejected(
        "PUT",
        "/drives/d",
        r#"{"drive_id": "d", "path_on_host": ""}"#,
        "path_on_host",
    );
    rejected(
        "PUT",
        "/drives/x",
        r#"{"drive_id": "a b", "path_on_host": "/d"}"#,
        "drive_id",
    );
    rejected(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": ""}"#,
        "kernel_image_path",
    );
    let b = r#"{"kernel_image_path": "/k", "initrd_path": ""}"#;
    rejected("PUT", "/boot-source", b, "initrd_path");
    rejected(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": ""}"#,
        "uds_path",
    );
    let msg = rejected(
        "PUT",
        "/actions",
        r#"{"action_type": "Reboot"}"#,
        "action_type",
    );
    assert!(msg.contains("InstanceStart"), "{msg}");
    rejected("PATCH", "/vm", r#"{"state": "Running"}"#, "state");
}

#[test]
fn bodies_where_required_and_nowhere_else() {
    let err = parse("PUT", "/machine-config", "").unwrap_err();
    assert_eq!(err, ApiError::MissingBody("PUT /machine-config".into()));
    let err = parse("PATCH", "/vm", " \r\n").unwrap_err();
    assert!(matches!(err, ApiError::MissingBody(_)));
    let err = parse("GET", "/vm", "{}").unwrap_err();
    assert_eq!(err, ApiError::UnexpectedBody("GET /vm".into()));
    assert_eq!(err.status(), 400);
}

#[test]
fn content_type_must_be_json() {
    let body = r#"{"state": "Paused"}"#;
    for (ct, ok) in [
        ("application/json", true),
        ("application/json; charset=utf-8", true),
        ("Application/JSON", true),
        // What `curl --data` sends, as in Firecracker's getting-started guide.
        ("application/x-www-form-urlencoded", true),
        ("text/plain", false),
    ] {
        let mut req = http("PATCH", "/vm", body);
        req.content_type = Some(ct.into());
        let got = parse_request(&req);
        assert_eq!(got.is_ok(), ok, "{ct}: {got:?}");
        if !ok {
            assert_eq!(got.unwrap_err(), ApiError::ContentType(ct.into()));
        }
    }
    let mut req = http("PATCH", "/vm", body);
    req.content_type = None;
    assert!(parse_request(&req).is_ok());
}

#[test]
fn responses_serialize_as_documented() {
    assert_eq!(ApiResponse::no_content().status, 204);
    assert_eq!(ApiResponse::no_content().body, None);
    let info = InstanceInfo::new("vm0", InstanceState::NotStarted);
    let resp = ApiResponse::ok_json(&info);
    assert_eq!(resp.status, 200);
    let body = resp.body.unwrap();
    assert_eq!(body["state"], "Not started");
    assert_eq!(body["app_name"], "hvlite");
    assert_eq!(body["vmm_version"], env!("CARGO_PKG_VERSION"));
    let vm = ApiResponse::ok_json(&VmInfo {
        state: InstanceState::Paused,
    });
    assert_eq!(vm.body, Some(json!({"state": "Paused"})));
    let mc = MachineConfig::new(4, 128).unwrap();
    assert_eq!(
        ApiResponse::ok_json(&mc).body,
        Some(json!({"vcpu_count": 4, "mem_size_mib": 128}))
    );
    let fault = ApiResponse::fault(409, "not in this state");
    assert_eq!(fault.status, 409);
    assert_eq!(
        fault.body,
        Some(json!({"fault_message": "not in this state"}))
    );
    let mac = serde_json::to_value(MacAddr([2, 0xab, 0, 0, 0, 1])).unwrap();
    assert_eq!(mac, json!("02:ab:00:00:00:01"));
}

#[test]
fn fuzz_seeds_are_valid_requests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/api_request");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok(crate::api::http::Parsed::Complete(req, used)) = crate::api::http::parse(rest)
            else {
                panic!("{}: not whole requests", path.display());
            };
            assert!(parse_request(&req).is_ok(), "{}", path.display());
            rest = &rest[used..];
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen}");
}
