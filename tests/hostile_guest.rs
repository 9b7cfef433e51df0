//! A hostile guest (no Linux: a table-driven test guest, tests/hostile_guest/program.rs)
//! misprograms every virtio device hvlite offers: descriptor loops, chains longer than the
//! queue, buffers that wrap the address space or lie in MMIO or outside RAM, huge lengths,
//! rings moved while in use, bad queue sizes, feature negotiation out of order, resets in
//! the middle of a request, notification storms, then thousands of random MMIO and port
//! accesses. hvlite must not panic, must keep serving (a block read afterwards returns the
//! disk's data and the console still prints), must not spin a host CPU once the guest
//! idles, and must count what it refused in its metrics.

mod common;

#[path = "hostile_guest/driver.rs"]
mod driver;
#[path = "hostile_guest/program.rs"]
mod program;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use driver::{Dev, Rng};
use program::Op;

const DISK_MAGIC: &[u8] = b"HVLITE-HOSTILE-DISK-SECTOR-0";
const DONE: &str = "hostile guest: console still works";
const MMIO_BASE: u64 = 0xd000_0000;

fn say(ops: &mut Vec<Op>, text: &str) {
    ops.extend(text.bytes().map(|b| Op::Out8(0x3f8, b)));
}

/// Utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn can_make_taps() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    root && std::path::Path::new("/dev/net/tun").exists()
}

#[test]
fn a_hostile_guest_cannot_crash_stall_or_spin_hvlite() {
    if !kvm_available("a_hostile_guest_cannot_crash_stall_or_spin_hvlite") {
        return;
    }
    let with_net = can_make_taps();
    if !with_net {
        assert!(
            std::env::var_os("HVLITE_REQUIRE_KVM").is_none(),
            "the hostile guest test needs root and /dev/net/tun for its TAP"
        );
        eprintln!("NOTE: not root or no /dev/net/tun: the hostile guest runs without virtio-net");
    }
    let dir = scratch("hostile-guest");
    let disk = dir.join("disk.img");
    let mut content = DISK_MAGIC.to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&disk, &content).unwrap();

    // MMIO windows in attach order: disks, nets, vsock.
    let area = |i: u64| 0x200_0000 + i * 0x10_0000;
    let blk = Dev {
        mmio: MMIO_BASE,
        queues: 1,
        area: area(0),
    };
    let mut devs = vec![(blk, vec![0])];
    if with_net {
        let net = Dev {
            mmio: MMIO_BASE + 0x1000,
            queues: 2,
            area: area(1),
        };
        devs.push((net, vec![1, 0]));
    }
    let vsock = Dev {
        mmio: MMIO_BASE + 0x1000 * devs.len() as u64,
        queues: 3,
        area: area(2),
    };
    devs.push((vsock, vec![1, 0]));
    let windows = devs.len() as u64;

    let mut ops = Vec::new();
    say(&mut ops, "hostile guest: start\n");
    for (dev, queues) in &devs {
        for &q in queues {
            dev.abuse(&mut ops, q, MMIO_BASE + 0x50);
        }
    }
    say(&mut ops, "hostile guest: random accesses\n");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    driver::random_accesses(&mut ops, &mut rng, 4000, windows, EXIT_PORT);
    for (dev, _) in &devs {
        dev.reset(&mut ops);
    }
    say(&mut ops, "hostile guest: disk says ");
    driver::block_read_and_print(&mut ops, &blk, DISK_MAGIC.len() as u64);
    say(&mut ops, &format!("\n{DONE}\n"));
    let image = program::image(GUEST_BASE, &ops);
    let guest = write_guest(&dir, "hostile.elf", &image);

    let metrics = dir.join("metrics.json");
    let mut config = serde_json::json!({
        "boot-source": {"kernel_image_path": guest},
        "machine-config": {"mem_size_mib": 64},
        "drives": [{"drive_id": "vda", "path_on_host": disk, "is_read_only": false}],
        "vsock": {"guest_cid": 3, "uds_path": dir.join("vsock.sock")},
        "metrics": {"metrics_path": metrics, "flush_interval_secs": 1},
    });
    if with_net {
        config["network-interfaces"] =
            serde_json::json!([{"iface_id": "eth0", "host_dev_name": "hvhostile0"}]);
    }
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let mut child = Command::new(hvlite())
        .args(["run", "--config", config_path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite");
    let pid = child.id();
    let stdout = Arc::new(Mutex::new(String::new()));
    let mut out_pipe = child.stdout.take().unwrap();
    let out_buf = Arc::clone(&stdout);
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out_pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out_buf
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut exited = None;
    while !stdout.lock().unwrap().contains(DONE) {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle guest: hvlite must not burn a host CPU.
    let (ticks, still_running) = if exited.is_none() {
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(2));
        let after = cpu_ticks(pid);
        // A metrics line from after the idle window.
        std::thread::sleep(Duration::from_millis(1200));
        (after - before, child.try_wait().unwrap().is_none())
    } else {
        (0, false)
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let stdout = stdout.lock().unwrap().clone();
    let context = format!("status {status:?}\nstdout: {stdout}\nstderr: {stderr}");

    assert!(!stderr.contains("panicked"), "hvlite panicked: {context}");
    assert!(
        exited.is_none() && still_running,
        "hvlite exited: {context}"
    );
    assert!(stdout.contains(DONE), "the guest never finished: {context}");
    let magic = String::from_utf8_lossy(DISK_MAGIC);
    assert!(
        stdout.contains(&format!("disk says {magic}")),
        "the block device stopped serving: {context}"
    );
    // 2 s of an idle guest: a spinning thread would cost ~200 ticks.
    assert!(
        ticks < 60,
        "hvlite used {ticks} ticks in 2 s of an idle guest"
    );

    let lines = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(lines.lines().last().expect("a metrics line")).unwrap();
    let refused = |group: &str, id: &str| -> u64 {
        let dev = &last["hvlite"][group][id];
        assert!(dev.is_object(), "no {group}.{id} in {last}");
        dev["queue_errors"].as_u64().unwrap_or(0)
    };
    assert!(refused("block", "vda") > 0, "{last}");
    assert!(refused("vsock", "vsock") > 0, "{last}");
    if with_net {
        assert!(refused("net", "eth0") > 0, "{last}");
    }
    // The transports counted what they refused (registers, widths, orders, activations).
    for id in ["vda", "vsock"]
        .into_iter()
        .chain(with_net.then_some("eth0"))
    {
        let n = last["hvlite"]["virtio_mmio"][id]["refused"].as_u64();
        assert!(
            n.is_some_and(|n| n > 0),
            "virtio_mmio.{id}.refused in {last}"
        );
    }
    eprintln!(
        "hostile guest: {} operations, idle CPU {ticks} ticks in 2 s, metrics {last}",
        ops.len()
    );
}
