use super::*;

use std::os::unix::fs::PermissionsExt;

use log::Level;
use serde_json::Value;
use tempfile::TempDir;

/// The JSON objects of the lines of `path`, which ends with a newline.
pub(crate) fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `message` of every line of `path`.
fn messages(path: &Path) -> Vec<Value> {
    read_json_lines(path)
        .iter()
        .map(|v| v["message"].clone())
        .collect()
}

fn emit(logger: &JsonLogger, level: Level, target: &str, msg: &str) {
    logger.log(
        &Record::builder()
            .level(level)
            .target(target)
            .args(format_args!("{msg}"))
            .build(),
    );
}

/// A logger for `vm-1` writing to a file in `dir`, and the file's path.
fn logger(dir: &TempDir, spec: &str) -> (JsonLogger, PathBuf) {
    let path = dir.path().join("log.json");
    let dest = LogDest::File(path.clone());
    (
        JsonLogger::open(&dest, "vm-1", spec.parse().unwrap()).unwrap(),
        path,
    )
}

#[test]
fn each_line_is_json_with_the_fields() {
    let dir = TempDir::new().unwrap();
    let (l, out) = logger(&dir, "info");
    emit(&l, Level::Info, "hvlite::vmm", "booted");
    emit(&l, Level::Warn, "hvlite::vcpu", "slow");
    let lines = read_json_lines(&out);
    assert_eq!(lines.len(), 2);
    let v = &lines[0];
    assert_eq!(v["log.level"], "INFO");
    assert_eq!(v["log.logger"], "hvlite::vmm");
    assert_eq!(v["message"], "booted");
    assert_eq!(v["vm.id"], "vm-1");
    assert_eq!(v["event.dataset"], LOG_DATASET);
    assert_eq!(v["process.pid"], std::process::id());
    assert_eq!(lines[1]["log.level"], "WARN");
    // RFC 3339 UTC with microseconds: 2024-05-01T12:00:00.123456Z
    let ts = v["@timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 27, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
}

#[test]
fn escapes_quotes_newlines_and_control_chars() {
    let dir = TempDir::new().unwrap();
    let (l, out) = logger(&dir, "trace");
    let nasty = "say \"hi\"\nback\\slash\ttab\u{1}\u{7f} é";
    emit(&l, Level::Info, "t", nasty);
    let raw = std::fs::read_to_string(&out).unwrap();
    assert_eq!(raw.matches('\n').count(), 1, "one physical line: {raw}");
    assert!(
        raw.contains(r#"say \"hi\"\nback\\slash\ttab\u0001"#),
        "{raw}"
    );
    assert_eq!(read_json_lines(&out)[0]["message"], nasty);
}

#[test]
fn filters_by_level_and_module() {
    let dir = TempDir::new().unwrap();
    let (l, out) = logger(&dir, "warn,hvlite::vcpu=debug,hvlite::vcpu::exits=error");
    emit(&l, Level::Info, "hvlite::vmm", "dropped");
    emit(&l, Level::Warn, "hvlite::vmm", "kept 1");
    emit(&l, Level::Debug, "hvlite::vcpu", "kept 2");
    emit(&l, Level::Debug, "hvlite::vcpu::regs", "kept 3");
    emit(&l, Level::Trace, "hvlite::vcpu", "dropped");
    emit(&l, Level::Warn, "hvlite::vcpu::exits", "dropped");
    // As in env_logger, a directive matches by prefix, not by whole path segments.
    emit(&l, Level::Debug, "hvlite::vcpus", "kept 4: a prefix match");
    assert_eq!(
        messages(&out),
        ["kept 1", "kept 2", "kept 3", "kept 4: a prefix match"]
    );
}

#[test]
fn level_directives() {
    let spec: LevelSpec = "debug".parse().unwrap();
    assert_eq!(spec, LevelSpec::global(LevelFilter::Debug));
    assert_eq!(
        "Warning".parse::<LevelSpec>().unwrap().max_level(),
        LevelFilter::Warn
    );
    assert_eq!(
        "".parse::<LevelSpec>().unwrap(),
        LevelSpec::global(LevelFilter::Error)
    );
    // Module-only directives turn other modules off, as env_logger does.
    let spec: LevelSpec = "hvlite".parse().unwrap();
    assert_eq!(spec.level_for("hvlite::vmm"), LevelFilter::Trace);
    assert_eq!(spec.level_for("kvm_ioctls"), LevelFilter::Off);
    assert_eq!(spec.max_level(), LevelFilter::Trace);
    // A bare word that is no level is a module name, as in env_logger.
    assert_eq!(
        "loud".parse::<LevelSpec>().unwrap().level_for("loud::x"),
        LevelFilter::Trace
    );
    for bad in ["x=loud", "=info", "a/b", "info,x=1"] {
        let e = bad.parse::<LevelSpec>().unwrap_err();
        assert!(matches!(e, LoggingError::Level(_)), "{bad}: {e}");
    }
    let spec: LevelSpec = "INFO, hvlite::vmm = trace".parse().unwrap();
    assert_eq!(spec.to_string(), "info,hvlite::vmm=trace");
    assert_eq!(spec.to_string().parse::<LevelSpec>().unwrap(), spec);
}

#[test]
fn file_is_created_private_and_appended() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("hvlite.log");
    let dest = LogDest::File(path.clone());
    for msg in ["first", "second"] {
        let l = JsonLogger::open(&dest, "vm-2", LevelSpec::default()).unwrap();
        emit(&l, Level::Error, "hvlite", msg);
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    assert_eq!(messages(&path), ["first", "second"]);
}

#[test]
fn unopenable_file_names_the_path() {
    let dest = LogDest::File("/nonexistent-dir/x.log".into());
    let e = JsonLogger::open(&dest, "vm", LevelSpec::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("/nonexistent-dir/x.log"), "{e}");
}

#[test]
fn lines_show_the_level_and_origin_as_asked() {
    let dir = TempDir::new().unwrap();
    let (l, out) = logger(&dir, "info");
    let l = l.showing(LineOptions {
        level: false,
        origin: true,
    });
    l.log(
        &Record::builder()
            .level(Level::Info)
            .target("t")
            .file(Some("src/x.rs"))
            .line(Some(7))
            .args(format_args!("m"))
            .build(),
    );
    let v = &read_json_lines(&out)[0];
    assert!(v.get("log.level").is_none(), "{v}");
    assert_eq!(v["log.origin.file.name"], "src/x.rs");
    assert_eq!(v["log.origin.file.line"], 7);
}

#[test]
fn text_lines_show_the_origin_when_asked() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("log.txt");
    let setup = LogSetup {
        dest: LogDest::File(path.clone()),
        format: LogFormat::Text,
        spec: "debug".parse().unwrap(),
        show: LineOptions {
            level: true,
            origin: true,
        },
    };
    let l = build(&setup, "vm").unwrap();
    l.log(
        &Record::builder()
            .level(Level::Debug)
            .target("t")
            .file(Some("src/y.rs"))
            .line(Some(9))
            .args(format_args!("hello"))
            .build(),
    );
    l.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("DEBUG") && text.contains("src/y.rs:9") && text.contains("hello"),
        "{text}"
    );
}
