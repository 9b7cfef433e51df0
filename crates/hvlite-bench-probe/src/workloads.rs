//! The workloads: parsing `WORKLOAD ARG...` and running each one, timed in-process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

pub const USAGE: &str = "hvlite-bench-probe [cpu ITERS] [getpid N] [pipe N] [seq PATH MIB] \
[rand PATH MIB COUNT] [tcp-send HOST:PORT KIB] [tcp-rr HOST:PORT N] [idle]";

const BLOCK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unknown workload {0:?}")]
    Unknown(String),
    #[error("{workload}: needs {count} argument(s)")]
    MissingArgs { workload: String, count: usize },
    #[error("{0:?} is not a positive number")]
    BadNumber(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the server closed the connection early")]
    ShortReply,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Cpu(u64),
    Getpid(u64),
    Pipe(u64),
    Seq { path: String, mib: u64 },
    Rand { path: String, mib: u64, count: u64 },
    TcpSend { addr: String, kib: u64 },
    TcpRr { addr: String, count: u64 },
    Idle,
}

/// One measured number, printed as `BENCH name value unit`.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
}

fn number(s: &str) -> Result<u64, ProbeError> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ProbeError::BadNumber(s.to_string())),
    }
}

pub fn parse(args: &[String]) -> Result<Vec<Step>, ProbeError> {
    let mut steps = Vec::new();
    let mut rest = args;
    while let Some((name, tail)) = rest.split_first() {
        let arity = match name.as_str() {
            "cpu" | "getpid" | "pipe" => 1,
            "seq" | "tcp-send" | "tcp-rr" => 2,
            "rand" => 3,
            "idle" => 0,
            _ => return Err(ProbeError::Unknown(name.clone())),
        };
        let Some(a) = tail.get(..arity) else {
            return Err(ProbeError::MissingArgs {
                workload: name.clone(),
                count: arity,
            });
        };
        steps.push(match name.as_str() {
            "cpu" => Step::Cpu(number(&a[0])?),
            "getpid" => Step::Getpid(number(&a[0])?),
            "pipe" => Step::Pipe(number(&a[0])?),
            "seq" => Step::Seq {
                path: a[0].clone(),
                mib: number(&a[1])?,
            },
            "rand" => Step::Rand {
                path: a[0].clone(),
                mib: number(&a[1])?,
                count: number(&a[2])?,
            },
            "tcp-send" => Step::TcpSend {
                addr: a[0].clone(),
                kib: number(&a[1])?,
            },
            "tcp-rr" => Step::TcpRr {
                addr: a[0].clone(),
                count: number(&a[1])?,
            },
            _ => Step::Idle,
        });
        rest = &tail[arity..];
    }
    if steps.is_empty() {
        return Err(ProbeError::MissingArgs {
            workload: "hvlite-bench-probe".into(),
            count: 1,
        });
    }
    Ok(steps)
}

pub fn run(step: &Step) -> Result<Vec<Line>, ProbeError> {
    match step {
        Step::Cpu(iters) => Ok(vec![cpu(*iters)]),
        Step::Getpid(n) => Ok(vec![getpid(*n)]),
        Step::Pipe(n) => pipe(*n).map(|l| vec![l]),
        Step::Seq { path, mib } => seq(path, *mib),
        Step::Rand { path, mib, count } => rand(path, *mib, *count),
        Step::TcpSend { addr, kib } => tcp_send(addr, *kib).map(|l| vec![l]),
        Step::TcpRr { addr, count } => tcp_rr(addr, *count),
        Step::Idle => idle(),
    }
}

/// A xorshift64 step: cheap, user-mode only, and not foldable by the compiler.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn cpu(iters: u64) -> Line {
    let start = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..iters {
        x = xorshift(x);
    }
    std::hint::black_box(x);
    Line {
        name: "cpu_s",
        value: start.elapsed().as_secs_f64(),
        unit: "s",
    }
}

fn per_op_ns(start: Instant, n: u64) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn getpid(n: u64) -> Line {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no arguments and no memory effects; the raw call avoids any
        // caching in the C library so every iteration is a real system call.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    Line {
        name: "getpid_ns",
        value: per_op_ns(start, n),
        unit: "ns",
    }
}

fn pipe(n: u64) -> Result<Line, ProbeError> {
    let (mut rx, mut tx) = std::io::pipe().map_err(io("pipe"))?;
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for _ in 0..n {
        tx.write_all(b"x").map_err(io("pipe write"))?;
        rx.read_exact(&mut byte).map_err(io("pipe read"))?;
    }
    Ok(Line {
        name: "pipe_ns",
        value: per_op_ns(start, n),
        unit: "ns",
    })
}

/// One block, aligned as O_DIRECT wants its buffers.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; BLOCK]);

/// A buffer of `blocks` aligned blocks for O_DIRECT reads.
struct DirectBuf(Vec<Block>);

impl DirectBuf {
    fn new(blocks: usize) -> Self {
        DirectBuf(vec![Block([0; BLOCK]); blocks])
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * BLOCK;
        // SAFETY: Block is repr(C) around a [u8; BLOCK] with no padding (its size equals its
        // alignment), so the vector's storage is `len` initialised, exclusively borrowed bytes.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// Opens the file again with O_DIRECT, so reads go to the disk and not to the page cache
/// (fadvise(DONTNEED) is not there in every guest kernel: tinyconfig leaves it out).
fn open_direct(path: &str) -> Result<File, ProbeError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(io("open with O_DIRECT"))
}

fn mib_per_s(mib: u64, took: Duration) -> f64 {
    mib as f64 / took.as_secs_f64().max(1e-9)
}

fn write_file(path: &str, mib: u64) -> Result<(File, Duration), ProbeError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("create the test file"))?;
    let chunk = vec![0x5a_u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        file.write_all(&chunk).map_err(io("write"))?;
    }
    file.sync_all().map_err(io("fsync"))?;
    Ok((file, start.elapsed()))
}

fn seq(path: &str, mib: u64) -> Result<Vec<Line>, ProbeError> {
    let (_, wrote) = write_file(path, mib)?;
    let file = open_direct(path)?;
    let mut chunk = DirectBuf::new((1 << 20) / BLOCK);
    let start = Instant::now();
    for i in 0..mib {
        file.read_exact_at(chunk.bytes(), i << 20)
            .map_err(io("read"))?;
    }
    let read = start.elapsed();
    let _ = std::fs::remove_file(path);
    Ok(vec![
        Line {
            name: "seq_write_mib_s",
            value: mib_per_s(mib, wrote),
            unit: "MiB/s",
        },
        Line {
            name: "seq_read_mib_s",
            value: mib_per_s(mib, read),
            unit: "MiB/s",
        },
    ])
}

/// Random 4 KiB reads (O_DIRECT) and random 4 KiB writes each followed by
/// fdatasync (a quarter as many), in a file of `mib` MiB.
fn rand(path: &str, mib: u64, count: u64) -> Result<Vec<Line>, ProbeError> {
    let (file, _) = write_file(path, mib)?;
    let direct = open_direct(path)?;
    let blocks = (mib << 20) / BLOCK as u64;
    let mut buf = DirectBuf::new(1);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let start = Instant::now();
    for _ in 0..count {
        x = xorshift(x);
        direct
            .read_exact_at(buf.bytes(), (x % blocks) * BLOCK as u64)
            .map_err(io("random read"))?;
    }
    let reads = count as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let writes_n = (count / 4).max(1);
    let start = Instant::now();
    for _ in 0..writes_n {
        x = xorshift(x);
        file.write_all_at(buf.bytes(), (x % blocks) * BLOCK as u64)
            .map_err(io("random write"))?;
        file.sync_data().map_err(io("fdatasync"))?;
    }
    let writes = writes_n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let _ = std::fs::remove_file(path);
    Ok(vec![
        Line {
            name: "rand_read_iops",
            value: reads,
            unit: "IOPS",
        },
        Line {
            name: "rand_write_sync_iops",
            value: writes,
            unit: "IOPS",
        },
    ])
}

/// Streams `kib` KiB to a sink that answers one byte once it has read everything (KiB, not
/// MiB: guest network I/O on a PVM host runs at tens of KiB/s).
fn tcp_send(addr: &str, kib: u64) -> Result<Line, ProbeError> {
    let mut s = TcpStream::connect(addr).map_err(io("connect"))?;
    let chunk = vec![0xa5_u8; 1024];
    let start = Instant::now();
    for _ in 0..kib {
        s.write_all(&chunk).map_err(io("send"))?;
    }
    s.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
    let mut ack = [0u8; 1];
    if s.read(&mut ack).map_err(io("read the ack"))? != 1 {
        return Err(ProbeError::ShortReply);
    }
    Ok(Line {
        name: "tcp_send_mib_s",
        value: kib as f64 / 1024.0 / start.elapsed().as_secs_f64().max(1e-9),
        unit: "MiB/s",
    })
}

/// One-byte request/response round trips against an echo server: the median and the 99th
/// percentile in microseconds.
fn tcp_rr(addr: &str, count: u64) -> Result<Vec<Line>, ProbeError> {
    let mut s = TcpStream::connect(addr).map_err(io("connect"))?;
    s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let mut rtts = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut byte = [0u8; 1];
    for _ in 0..count {
        let start = Instant::now();
        s.write_all(b"p").map_err(io("send"))?;
        if s.read(&mut byte).map_err(io("receive"))? != 1 {
            return Err(ProbeError::ShortReply);
        }
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    Ok(vec![
        Line {
            name: "tcp_rr_p50_us",
            value: at(0.5),
            unit: "us",
        },
        Line {
            name: "tcp_rr_p99_us",
            value: at(0.99),
            unit: "us",
        },
    ])
}

extern "C" fn exit_on_signal(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) }
}

/// Says `ready` and then sleeps until SIGTERM or SIGINT: the idle instance of the memory and
/// density workloads. The handler matters where the probe is PID 1 (runc, crun), which
/// ignores signals it has no handler for.
fn idle() -> Result<Vec<Line>, ProbeError> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only calls the async-signal-safe _exit.
        let old = unsafe { libc::signal(sig, exit_on_signal as *const () as libc::sighandler_t) };
        if old == libc::SIG_ERR {
            return Err(ProbeError::Io {
                what: "signal",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready").map_err(io("stdout"))?;
    out.flush().map_err(io("stdout"))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_several_workloads_in_order() {
        let plan = parse(&args("cpu 10 pipe 5 seq /tmp/f 2 idle")).unwrap();
        assert_eq!(
            plan,
            vec![
                Step::Cpu(10),
                Step::Pipe(5),
                Step::Seq {
                    path: "/tmp/f".into(),
                    mib: 2
                },
                Step::Idle
            ]
        );
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(parse(&[]), Err(ProbeError::MissingArgs { .. })));
        assert!(matches!(parse(&args("fly 1")), Err(ProbeError::Unknown(_))));
        assert!(matches!(
            parse(&args("cpu 0")),
            Err(ProbeError::BadNumber(_))
        ));
        assert!(matches!(
            parse(&args("cpu x")),
            Err(ProbeError::BadNumber(_))
        ));
        assert!(matches!(
            parse(&args("rand /f 1")),
            Err(ProbeError::MissingArgs { count: 3, .. })
        ));
    }

    #[test]
    fn workloads_measure_positive_numbers() {
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        let path = dir.to_string_lossy().into_owned();
        let plan = parse(&args(&format!(
            "cpu 1000 getpid 100 pipe 100 seq {path} 1 rand {path} 1 16"
        )))
        .unwrap();
        let lines: Vec<Line> = plan.iter().flat_map(|s| run(s).unwrap()).collect();
        let names: Vec<&str> = lines.iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "cpu_s",
                "getpid_ns",
                "pipe_ns",
                "seq_write_mib_s",
                "seq_read_mib_s",
                "rand_read_iops",
                "rand_write_sync_iops"
            ]
        );
        assert!(lines.iter().all(|l| l.value > 0.0 && l.value.is_finite()));
        assert!(!dir.exists(), "the test file is removed");
    }

    #[test]
    fn tcp_workloads_talk_to_a_real_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut sink, _) = listener.accept().unwrap();
            std::io::copy(&mut sink, &mut std::io::sink()).unwrap();
            sink.write_all(b"k").unwrap();
            let (mut echo, _) = listener.accept().unwrap();
            let mut b = [0u8; 1];
            while echo.read(&mut b).unwrap() == 1 {
                echo.write_all(&b).unwrap();
            }
        });
        let send = tcp_send(&addr, 64).unwrap();
        assert!(send.value > 0.0);
        let rr = tcp_rr(&addr, 20).unwrap();
        assert!(rr[0].value > 0.0 && rr[1].value >= rr[0].value);
        server.join().unwrap();
    }
}
