//! Checks the server against `docs/api/openapi.json`: the same paths and methods, request
//! schemas that the parser enforces (an example built from each schema is accepted; each
//! missing required field, wrong type, out-of-range value and unknown field is refused
//! with a message naming the field) and response bodies that fit their schemas. A small
//! hand-rolled walker reads the subset of JSON Schema the document uses.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::http::{self, Parsed};
use super::model::{InstanceInfo, InstanceState, MachineConfig, VersionInfo, VmInfo};
use super::request::{ApiError, ROUTES, parse_request};
use super::{ApiRequest, ApiResponse};

const DOC: &str = include_str!("../../docs/api/openapi.json");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("openapi.json is JSON")
}

/// Follows `$ref`s ("#/components/...") to the schema they name.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("local $ref");
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// One operation of the document.
struct Op<'a> {
    method: String,
    path: String,
    op: &'a Value,
}

impl<'a> Op<'a> {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The request body's schema, resolved, if the operation takes a body.
    fn body_schema(&self, doc: &'a Value) -> Option<&'a Value> {
        let body = resolve(doc, self.op.get("requestBody")?);
        assert_eq!(
            body["required"],
            true,
            "{}: requestBody.required",
            self.name()
        );
        Some(resolve(doc, &body["content"]["application/json"]["schema"]))
    }
}

fn operations(doc: &Value) -> Vec<Op<'_>> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if method != "parameters" {
                ops.push(Op {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    op,
                });
            }
        }
    }
    ops
}

fn properties(schema: &Value) -> &Map<String, Value> {
    schema["properties"]
        .as_object()
        .expect("object schema with properties")
}

fn required(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A valid value for a property: its example, else the first enum value, else the least
/// value of its type.
fn example(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(e) = schema.get("example") {
        return e.clone();
    }
    if let Some(e) = schema["enum"].get(0) {
        return e.clone();
    }
    match schema["type"].as_str() {
        Some("string") => json!("x"),
        Some("integer") => schema.get("minimum").cloned().unwrap_or(json!(1)),
        Some("boolean") => json!(false),
        Some("object") => {
            let props = properties(schema).iter();
            Value::Object(props.map(|(k, p)| (k.clone(), example(doc, p))).collect())
        }
        other => panic!("no example for type {other:?}"),
    }
}

/// A value of another JSON type than the property's.
fn wrong_type(doc: &Value, schema: &Value) -> Value {
    match resolve(doc, schema)["type"].as_str() {
        Some("string") => json!(12345),
        Some("integer") => json!("1"),
        Some("boolean") => json!("true"),
        Some("array") => json!({}),
        _ => json!([]),
    }
}

/// Values that break one of the property's constraints.
fn out_of_range(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = resolve(doc, schema);
    let mut bad = Vec::new();
    if let Some(min) = schema["minimum"].as_i64() {
        bad.push(json!(min - 1));
    }
    if let Some(max) = schema["maximum"].as_i64() {
        bad.push(json!(max + 1));
    }
    if schema["minLength"].as_u64() == Some(1) {
        bad.push(json!(""));
    }
    if let Some(max) = schema["maxLength"].as_u64() {
        bad.push(json!("a".repeat(max as usize + 1)));
    }
    if schema.get("enum").is_some() {
        bad.push(json!("NotAValue"));
    }
    bad
}

/// Checks `value` against the subset of JSON Schema the document uses.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {values:?}"));
    }
    let ty = schema["type"].as_str().unwrap_or("any");
    let bad_type = || format!("{at}: {value} is not of type {ty}");
    match ty {
        "object" => {
            let obj = value.as_object().ok_or_else(bad_type)?;
            for field in required(schema) {
                if !obj.contains_key(field) {
                    return Err(format!("{at}: missing {field}"));
                }
            }
            for (k, v) in obj {
                match schema["properties"].get(k) {
                    Some(prop) => validate(doc, prop, v, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: unknown field {k}"));
                    }
                    None => {}
                }
            }
        }
        "string" => {
            let len = value.as_str().ok_or_else(bad_type)?.chars().count() as u64;
            let min = schema["minLength"].as_u64().unwrap_or(0);
            let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX);
            if !(min..=max).contains(&len) {
                return Err(format!("{at}: length {len} out of {min}..={max}"));
            }
        }
        "integer" => {
            let n = value
                .as_i64()
                .map(i128::from)
                .or(value.as_u64().map(i128::from));
            let n = n.ok_or_else(bad_type)?;
            let min = schema["minimum"].as_i64().map_or(i128::MIN, i128::from);
            let max = schema["maximum"].as_i64().map_or(i128::MAX, i128::from);
            if !(min..=max).contains(&n) {
                return Err(format!("{at}: {n} out of {min}..={max}"));
            }
        }
        "boolean" => {
            value.as_bool().ok_or_else(bad_type)?;
        }
        "array" => {
            let items = value.as_array().ok_or_else(bad_type)?;
            for (i, item) in items.iter().enumerate() {
                validate(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The concrete path for a template, its parameters taken from the body (else "x").
fn concrete_path(template: &str, body: &Value) -> String {
    let segments = template.split('/').map(|seg| {
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => body[param].as_str().unwrap_or("x").to_string(),
            None => seg.to_string(),
        }
    });
    segments.collect::<Vec<_>>().join("/")
}

/// Sends a request through the whole parsing stack: HTTP bytes, then routing.
fn send(method: &str, path: &str, body: Option<&Value>) -> Result<ApiRequest, ApiError> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match http::parse(raw.as_bytes()) {
        Ok(Parsed::Complete(req, used)) if used == raw.len() => parse_request(&req),
        other => panic!("{method} {path}: {other:?}"),
    }
}

#[test]
fn doc_and_router_agree_on_paths_and_methods() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .iter()
        .map(|op| (op.method.clone(), op.path.clone()))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn every_documented_operation_is_served() {
    let doc = doc();
    for op in operations(&doc) {
        let body = op.body_schema(&doc).map(|s| example(&doc, s));
        let path = concrete_path(&op.path, body.as_ref().unwrap_or(&Value::Null));
        let got = send(&op.method, &path, body.as_ref());
        assert!(got.is_ok(), "{}: {got:?}", op.name());
    }
}

#[test]
fn path_parameters_are_documented() {
    let doc = doc();
    for op in operations(&doc) {
        let params: Vec<&str> = op.op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| resolve(&doc, p)["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let in_path: Vec<&str> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(params, in_path, "{}", op.name());
    }
}

/// Sends `body` (a mutated example) and checks that the parser refuses it with a 400
/// naming `field`, and that the document refuses it too.
fn assert_refused(doc: &Value, op: &Op, schema: &Value, body: &Value, field: &str, what: &str) {
    let path = concrete_path(&op.path, &example(doc, schema));
    let err = send(&op.method, &path, Some(body)).expect_err(&format!("{}: {what}", op.name()));
    let msg = err.to_string();
    assert_eq!(err.status(), 400, "{}: {what}: {msg}", op.name());
    assert!(
        msg.contains(field),
        "{}: {what}: {msg:?} does not name {field}",
        op.name()
    );
    assert!(
        validate(doc, schema, body, "body").is_err(),
        "{}: {what}: the document accepts {body}",
        op.name()
    );
}

#[test]
fn request_schemas_are_enforced() {
    let doc = doc();
    let mut checked = 0;
    for op in operations(&doc) {
        let Some(schema) = op.body_schema(&doc) else {
            continue;
        };
        let name = op.name();
        assert_eq!(schema["type"], "object", "{name}");
        assert_eq!(schema["additionalProperties"], false, "{name}");
        let full = example(&doc, schema);
        validate(&doc, schema, &full, "body").unwrap_or_else(|e| panic!("{name}: {e}"));
        let path = concrete_path(&op.path, &full);
        // Only the required fields.
        let mut minimal = full.clone();
        let obj = minimal.as_object_mut().unwrap();
        obj.retain(|k, _| required(schema).contains(&k.as_str()));
        let got = send(&op.method, &path, Some(&minimal));
        assert!(got.is_ok(), "{name} with {minimal}: {got:?}");

        for field in required(schema) {
            let mut body = full.clone();
            body.as_object_mut().unwrap().remove(field);
            assert_refused(&doc, &op, schema, &body, field, &format!("without {field}"));
            checked += 1;
        }
        for (field, prop) in properties(schema) {
            let mut body = full.clone();
            body[field] = wrong_type(&doc, prop);
            assert_refused(
                &doc,
                &op,
                schema,
                &body,
                field,
                &format!("{field}: {}", body[field]),
            );
            for bad in out_of_range(&doc, prop) {
                body[field] = bad;
                let what = format!("{field}: {}", body[field]);
                assert_refused(&doc, &op, schema, &body, field, &what);
            }
            if resolve(&doc, prop).get("pattern").is_some() {
                let ex = example(&doc, prop);
                body[field] = json!(format!("{}!", ex.as_str().unwrap()));
                let err = send(&op.method, &path, Some(&body)).expect_err(&name);
                assert!(
                    err.to_string().contains(field),
                    "{name}: {field} pattern: {err}"
                );
            }
            checked += 1;
        }
        let mut body = full.clone();
        body["bogus_field"] = json!(1);
        assert_refused(&doc, &op, schema, &body, "bogus_field", "unknown field");
    }
    assert!(checked >= 20, "only {checked} fields checked");
}

#[test]
fn operations_document_their_responses() {
    let doc = doc();
    for op in operations(&doc) {
        let responses = &op.op["responses"];
        let success = if op.method == "GET" { "200" } else { "204" };
        assert!(
            responses.get(success).is_some(),
            "{}: no {success}",
            op.name()
        );
        let fault = resolve(&doc, &responses["default"]);
        let schema = &fault["content"]["application/json"]["schema"];
        assert_eq!(
            resolve(&doc, schema),
            &doc["components"]["schemas"]["Error"],
            "{}",
            op.name()
        );
    }
}

/// The 200 body schema of `GET path`.
fn get_schema<'a>(doc: &'a Value, path: &str) -> &'a Value {
    let resp = &doc["paths"][path]["get"]["responses"]["200"];
    resolve(doc, &resp["content"]["application/json"]["schema"])
}

#[test]
fn responses_fit_their_schemas() {
    let doc = doc();
    let body = |r: ApiResponse| r.body.expect("a body");
    for state in [
        InstanceState::NotStarted,
        InstanceState::Running,
        InstanceState::Paused,
        InstanceState::Stopped,
    ] {
        let info = body(ApiResponse::ok_json(&InstanceInfo::new("vm", state)));
        validate(&doc, get_schema(&doc, "/"), &info, "GET /").unwrap();
        let vm = body(ApiResponse::ok_json(&VmInfo { state }));
        validate(&doc, get_schema(&doc, "/vm"), &vm, "GET /vm").unwrap();
    }
    let mc = MachineConfig::new(32, 1 << 20).unwrap();
    let mc = body(ApiResponse::ok_json(&mc));
    validate(
        &doc,
        get_schema(&doc, "/machine-config"),
        &mc,
        "GET /machine-config",
    )
    .unwrap();
    let version = body(ApiResponse::ok_json(&VersionInfo::default()));
    validate(&doc, get_schema(&doc, "/version"), &version, "GET /version").unwrap();
    let mut full = MachineConfig::new(1, 128).unwrap();
    full.smt = Some(crate::config::Smt);
    full.track_dirty_pages = Some(true);
    full.huge_pages = Some(crate::config::HugePages);
    full.cpu_template = Some(crate::config::CpuTemplate);
    let full = body(ApiResponse::ok_json(&full));
    validate(
        &doc,
        get_schema(&doc, "/machine-config"),
        &full,
        "GET /machine-config",
    )
    .unwrap();
    let error = &doc["components"]["schemas"]["Error"];
    for resp in [
        ApiResponse::fault(409, "no"),
        ApiError::NotFound("/x".into()).to_response(),
    ] {
        validate(&doc, error, &body(resp), "fault").unwrap();
    }
}
