use super::*;

use tempfile::TempDir;

use crate::logging::tests::read_json_lines;
use crate::vcpu::counters::ExitKind;

#[test]
fn snapshot_holds_the_counters() {
    let m = Metrics::new("vm-7");
    let exits = m.vcpu_exits();
    for _ in 0..3 {
        exits.record(ExitKind::MmioWrite);
    }
    exits.record(ExitKind::EmulationFixup);
    m.register_block("rootfs", Arc::new(BlockCounters::default()));
    m.register_net("eth0", Arc::new(NetCounters::default()));
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    m.register(
        "vsock",
        "vsock0",
        move || json!({ "conns": h.load(Ordering::Relaxed) }),
    );
    hits.store(5, Ordering::Relaxed);

    let v = m.snapshot();
    assert_eq!(v["vm.id"], "vm-7");
    assert_eq!(v["event.dataset"], METRICS_DATASET);
    assert!(humantime::parse_rfc3339(v["@timestamp"].as_str().unwrap()).is_ok());
    let hv = &v["hvlite"];
    assert_eq!(hv["vcpu_exits"]["mmio_write"], 3);
    assert_eq!(hv["vcpu_exits"]["emulation_fixups"], 1);
    assert_eq!(hv["vcpu_exits"]["io_in"], 0);
    assert_eq!(
        hv["vcpu_exits"].as_object().unwrap().len(),
        ExitKind::ALL.len()
    );
    assert_eq!(hv["block"]["rootfs"]["bytes_read"], 0);
    assert_eq!(hv["block"]["rootfs"]["requests"], 0);
    assert_eq!(hv["net"]["eth0"]["tx_frames"], 0);
    assert_eq!(hv["net"]["eth0"]["rx_dropped"], 0);
    assert_eq!(hv["vsock"]["vsock0"]["conns"], 5);
    assert!(hv["boot_time_ms"].is_null());
    assert!(hv["uptime_ms"].is_u64());
    assert!(hv["memory"]["rss_kib"].as_u64().unwrap() > 0);
    assert!(hv["memory"]["vmm_kib"].is_null());

    m.set_boot_time_ms(42);
    m.set_guest_memory(vec![]);
    let hv = &m.snapshot()["hvlite"];
    assert_eq!(hv["boot_time_ms"], 42);
    assert_eq!(hv["memory"]["guest_kib"], 0);
    assert_eq!(hv["memory"]["vmm_kib"], hv["memory"]["rss_kib"]);
}

#[test]
fn registering_again_replaces() {
    let m = Metrics::new("vm");
    m.register("x", "a", || json!(1));
    m.register("x", "a", || json!(2));
    m.register("x", "b", || json!(3));
    assert_eq!(m.snapshot()["hvlite"]["x"], json!({ "a": 2, "b": 3 }));
}

#[test]
fn one_json_line_per_flush() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    let m = Arc::new(Metrics::new("vm-8"));
    let w = MetricsWriter::open(&path, m.clone()).unwrap();
    w.flush_now().unwrap();
    m.vcpu_exits().record(ExitKind::Hlt);
    w.flush_now().unwrap();
    let lines = read_json_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["hvlite"]["vcpu_exits"]["hlt"], 0);
    assert_eq!(lines[1]["hvlite"]["vcpu_exits"]["hlt"], 1, "cumulative");
    assert!(lines.iter().all(|l| l["vm.id"] == "vm-8"));
}

#[test]
fn unopenable_file_names_the_path() {
    let e = MetricsWriter::open(
        Path::new("/nonexistent-dir/m.json"),
        Arc::new(Metrics::new("v")),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("/nonexistent-dir/m.json"), "{e}");
}

#[test]
fn periodic_flusher_flushes_and_stops() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    let w = Arc::new(MetricsWriter::open(&path, Arc::new(Metrics::new("vm"))).unwrap());
    let f = PeriodicFlusher::start(w.clone(), Duration::from_millis(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_json_lines(&path).len() < 2 {
        assert!(Instant::now() < deadline, "no periodic flush");
        std::thread::sleep(Duration::from_millis(5));
    }
    f.stop();
    // Stopping wrote a final line and joined the thread, which let go of the writer: no
    // one is left to write more.
    assert_eq!(Arc::strong_count(&w), 1, "the thread let go of the writer");
}

#[test]
fn dropping_the_flusher_writes_a_final_line_at_once() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("metrics.json");
    let w = Arc::new(MetricsWriter::open(&path, Arc::new(Metrics::new("vm"))).unwrap());
    let start = Instant::now();
    drop(PeriodicFlusher::start(w, DEFAULT_FLUSH_INTERVAL).unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stop waited for the interval"
    );
    assert_eq!(read_json_lines(&path).len(), 1);
}
