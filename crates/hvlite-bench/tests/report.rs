//! The renderer binary and the driver's merge and page check (scripts/bench_report.py),
//! on results files written here: no systems are run.

use std::path::{Path, PathBuf};
use std::process::Command;

const RENDERER: &str = env!("CARGO_BIN_EXE_hvlite-bench-report");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chunk(dir: &Path, name: &str, workload: &str, started: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let json = format!(
        r#"{{"schema":1,"mode":"full","started":"{started}","finished":"{started}",
        "host":{{"kind":"pvm","kernel":"6.1","cpus":2,"memory_mib":1024,"cpu_model":"x"}},
        "baseline":"runc","systems":[{{"id":"runc","label":"runc"}},{{"id":"hvlite","label":"hvlite"}}],
        "workloads":[{{"id":"{workload}","title":"{workload}","unit":"s","lower_is_better":true,
        "command":"/bin/true","kind":"bars","run":"{started}","results":{{
        "runc":{{"samples":[0.05,0.06,0.04]}},"hvlite":{{"error":"exit 1: no"}}}}}}]}}"#
    );
    std::fs::write(d.join("results.json"), json).unwrap();
    d
}

fn merge(out: &Path, chunks: &[&Path]) -> std::process::Output {
    Command::new("python3")
        .arg(repo().join("scripts/bench_report.py"))
        .arg("--merge")
        .arg(out)
        .arg(RENDERER)
        .args(chunks)
        .output()
        .unwrap()
}

#[test]
fn chunks_merge_into_one_checked_page() {
    let tmp = tempfile::tempdir().unwrap();
    let a = chunk(tmp.path(), "a", "true", "2026-01-01T00:00:00Z");
    let b = chunk(tmp.path(), "b", "cpu", "2026-01-01T01:00:00Z");
    let out = tmp.path().join("report");
    let run = merge(&out, &[&a, &b]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("every plot present"), "{stderr}");
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("id=\"plot-true\"") && page.contains("id=\"plot-cpu\""));
    assert!(page.contains("failed: exit 1: no"));
    let results = std::fs::read_to_string(out.join("results.json")).unwrap();
    assert!(
        results.contains("\"finished\": \"2026-01-01T01:00:00Z\""),
        "{results}"
    );
}

#[test]
fn a_workload_in_two_chunks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = chunk(tmp.path(), "a", "true", "2026-01-01T00:00:00Z");
    let b = chunk(tmp.path(), "b", "true", "2026-01-01T01:00:00Z");
    let run = merge(&tmp.path().join("report"), &[&a, &b]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("workload true is in two chunks"));
}

#[test]
fn renderer_refuses_bad_input_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"schema\": 1}").unwrap();
    let out = tmp.path().join("x.html");
    for args in [
        vec![bad.as_os_str()],
        vec![bad.as_os_str(), out.as_os_str()],
    ] {
        let run = Command::new(RENDERER).args(&args).output().unwrap();
        assert!(!run.status.success());
        assert!(!String::from_utf8_lossy(&run.stderr).is_empty());
    }
    let missing = Command::new(RENDERER)
        .arg(tmp.path().join("none.json"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("none.json"));
    assert!(!out.exists());
}
