//! The vsock utility mode, for tests and benchmarks inside guests: `hvlite-init vsock ...`
//! when not PID 1 (copied into test images as e.g. `/usr/bin/hvlite-vsock`; it is static).
//!
//! ```text
//! hvlite-init vsock listen PORT echo      accept one connection, echo it back until EOF
//! hvlite-init vsock listen PORT           accept one connection, bridge it with stdin/stdout
//! hvlite-init vsock connect CID PORT      connect, bridge with stdin/stdout
//! hvlite-init vsock send CID PORT BYTES   connect, send BYTES bytes, report the throughput
//! ```
//!
//! `listen` prints `listening` on stdout once the socket listens, accepts connections from
//! any CID, and (with `echo`) shuts down its write side after echoing everything. A bridge
//! half-closes the socket's write side at stdin EOF; `connect` exits when the peer closes,
//! `listen` when both directions have ended. `send` writes byte `k` of the stream as
//! `k mod 256` from a user-space buffer, then closes, and prints the elapsed seconds and MiB/s
//! on stderr. BYTES takes a `K`, `M` or `G` suffix (powers of 1024). Errors: a message on
//! stderr and exit status 1.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use crate::sys::vsock;

/// The usage text.
pub const USAGE: &str = "usage: hvlite-init vsock listen PORT [echo]
       hvlite-init vsock connect CID PORT
       hvlite-init vsock send CID PORT BYTES[K|M|G]";

/// Size of the buffers (and of each write of `send`).
const BUF_LEN: usize = 256 * 1024;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Listen { port: u32, echo: bool },
    Connect { cid: u32, port: u32 },
    Send { cid: u32, port: u32, bytes: u64 },
}

/// Name under which the binary is the tool without the `vsock` word (a copy or link in a
/// container root filesystem).
pub const TOOL_NAME: &str = "hvlite-vsock";

/// The tool's arguments if the binary was run as the tool, never as PID 1: as
/// `hvlite-init vsock ARGS...`, or under the name [`TOOL_NAME`] as `hvlite-vsock ARGS...`.
pub fn tool_args(args: &[OsString], pid: libc::pid_t) -> Option<&[OsString]> {
    if pid == 1 {
        return None;
    }
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == TOOL_NAME);
    if called {
        return args.get(1..);
    }
    if args.get(1).is_some_and(|a| a == "vsock") {
        return args.get(2..);
    }
    None
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// Parses a byte count with an optional `K`, `M` or `G` suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = number("byte count", digits)?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("byte count {s:?} is too large"))
}

/// Parses the arguments after `vsock`.
pub fn parse(args: &[&str]) -> Result<Command, String> {
    match args {
        ["listen", port] => Ok(Command::Listen {
            port: number("port", port)?,
            echo: false,
        }),
        ["listen", port, "echo"] => Ok(Command::Listen {
            port: number("port", port)?,
            echo: true,
        }),
        ["connect", cid, port] => Ok(Command::Connect {
            cid: number("CID", cid)?,
            port: number("port", port)?,
        }),
        ["send", cid, port, bytes] => Ok(Command::Send {
            cid: number("CID", cid)?,
            port: number("port", port)?,
            bytes: parse_bytes(bytes)?,
        }),
        _ => Err(USAGE.to_string()),
    }
}

/// Runs the tool with the arguments after `vsock`; returns the exit status.
pub fn main(args: &[OsString]) -> i32 {
    let args: Option<Vec<&str>> = args.iter().map(|a| a.to_str()).collect();
    let result = args
        .ok_or_else(|| USAGE.to_string())
        .and_then(|a| parse(&a))
        .and_then(|cmd| run(cmd).map_err(|e| e.to_string()));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hvlite-vsock: {e}");
            1
        }
    }
}

fn run(cmd: Command) -> io::Result<()> {
    match cmd {
        Command::Listen { port, echo } => {
            let listener = vsock::listen(port).map_err(|e| context(e, "listen"))?;
            let mut out = io::stdout().lock();
            out.write_all(b"listening\n")?;
            out.flush()?;
            drop(out);
            let (conn, _cid) = vsock::accept(listener.as_fd()).map_err(|e| context(e, "accept"))?;
            drop(listener);
            if echo {
                echo_all(&mut File::from(conn)).map(drop)
            } else {
                bridge(conn, io::stdin(), &mut io::stdout(), true)
            }
        }
        Command::Connect { cid, port } => {
            let conn = vsock::connect(cid, port).map_err(|e| context(e, "connect"))?;
            bridge(conn, io::stdin(), &mut io::stdout(), false)
        }
        Command::Send { cid, port, bytes } => {
            let conn = vsock::connect(cid, port).map_err(|e| context(e, "connect"))?;
            let start = Instant::now();
            send_pattern(&mut File::from(conn), bytes)?;
            let secs = start.elapsed().as_secs_f64();
            eprintln!("{}", throughput_line(bytes, secs));
            Ok(())
        }
    }
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Echoes everything read from `s` back to it until EOF, then shuts down its write side.
/// Returns the number of bytes echoed.
pub fn echo_all<S: Read + Write + AsFd>(s: &mut S) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF_LEN];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                s.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    vsock::shutdown_write(s.as_fd())?;
    Ok(total)
}

/// Copies `input` to the socket (a thread; shuts the socket's write side down at EOF) and
/// the socket to `output` (flushed after each read). Returns when the peer has closed, and
/// with `both`, once `input` has ended too.
pub fn bridge<R: Read + Send + 'static, W: Write>(
    sock: OwnedFd,
    mut input: R,
    output: &mut W,
    both: bool,
) -> io::Result<()> {
    let mut to_peer = File::from(sock.try_clone()?);
    let sender = std::thread::spawn(move || -> io::Result<()> {
        io::copy(&mut input, &mut to_peer)?;
        vsock::shutdown_write(to_peer.as_fd())
    });
    let mut from_peer = File::from(sock);
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        match from_peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                output.write_all(&buf[..n])?;
                output.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if both {
        sender
            .join()
            .map_err(|_| io::Error::other("the stdin thread panicked"))??;
    }
    Ok(())
}

/// Byte `k` of what `send` writes.
pub fn pattern_byte(k: u64) -> u8 {
    (k % 256) as u8
}

/// Writes `bytes` bytes of the pattern to `w`, then shuts its write side down.
pub fn send_pattern<S: Write + AsFd>(w: &mut S, bytes: u64) -> io::Result<()> {
    // BUF_LEN is a multiple of 256, so every write starts the pattern at 0 again and the
    // stream as a whole follows `pattern_byte`.
    let buf: Vec<u8> = (0..BUF_LEN as u64).map(pattern_byte).collect();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(BUF_LEN, |l| l.min(BUF_LEN));
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    vsock::shutdown_write(w.as_fd())
}

/// The line `send` prints on stderr.
pub fn throughput_line(bytes: u64, secs: f64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    format!("sent {bytes} bytes in {secs:.3} s: {rate:.1} MiB/s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn invocation() {
        let a = os(&["hvlite-init", "vsock", "listen"]);
        assert_eq!(tool_args(&a, 42), Some(&a[2..]));
        assert_eq!(tool_args(&os(&["hvlite-init", "vsock"]), 1), None);
        assert_eq!(tool_args(&os(&["hvlite-init", "6869"]), 42), None);
        assert_eq!(tool_args(&os(&["hvlite-init"]), 42), None);
        let b = os(&["/usr/bin/hvlite-vsock", "send", "2", "6000", "1M"]);
        assert_eq!(tool_args(&b, 42), Some(&b[1..]));
        assert_eq!(tool_args(&b, 1), None);
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse(&["listen", "5000", "echo"]),
            Ok(Command::Listen {
                port: 5000,
                echo: true
            })
        );
        assert_eq!(
            parse(&["listen", "5000"]),
            Ok(Command::Listen {
                port: 5000,
                echo: false
            })
        );
        assert_eq!(
            parse(&["connect", "2", "1024"]),
            Ok(Command::Connect { cid: 2, port: 1024 })
        );
        assert_eq!(
            parse(&["send", "3", "9", "64M"]),
            Ok(Command::Send {
                cid: 3,
                port: 9,
                bytes: 64 << 20
            })
        );
        for bad in [
            &[][..],
            &["listen"],
            &["listen", "x"],
            &["listen", "1", "echoo"],
            &["listen", "-1"],
            &["connect", "2"],
            &["connect", "2", "99999999999"],
            &["send", "2", "1"],
            &["send", "2", "1", "ten"],
            &["bind", "1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[]), Err(USAGE.to_string()));
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("3M"), Ok(3 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999G").is_err());
    }

    #[test]
    fn echo_over_a_socket() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || echo_all(&mut b).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let writer = {
            let mut a = a.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || {
                a.write_all(&data).unwrap();
                a.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut back = Vec::new();
        a.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(server.join().unwrap(), data.len() as u64);
        assert_eq!(back, data);
    }

    #[test]
    fn bridge_both_directions() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let peer_thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap(); // until the bridge's stdin EOF
            peer.write_all(b"reply").unwrap();
            got
        });
        let input = io::Cursor::new(b"request".to_vec());
        let mut output = Vec::new();
        bridge(OwnedFd::from(a), input, &mut output, true).unwrap();
        assert_eq!(peer_thread.join().unwrap(), b"request");
        assert_eq!(output, b"reply");
    }

    #[test]
    fn bridge_exits_when_the_peer_closes() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        peer.write_all(b"bye").unwrap();
        drop(peer);
        // stdin that never ends: the bridge must not wait for it.
        let (never, _keep) = UnixStream::pair().unwrap();
        let mut output = Vec::new();
        bridge(OwnedFd::from(a), never, &mut output, false).unwrap();
        assert_eq!(output, b"bye");
    }

    #[test]
    fn pattern_stream() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let total = 3 * BUF_LEN as u64 + 1000;
        let sender = std::thread::spawn(move || send_pattern(&mut a, total).unwrap());
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got.len() as u64, total);
        assert!(
            got.iter()
                .enumerate()
                .all(|(k, &v)| v == pattern_byte(k as u64))
        );
        assert_eq!(
            throughput_line(4 << 20, 2.0),
            "sent 4194304 bytes in 2.000 s: 2.0 MiB/s"
        );
    }
}
