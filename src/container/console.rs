//! The guest console of a container run: quiet by default, but its last lines are kept so
//! that a guest that fails before its agent reports (a kernel panic, an agent that dies)
//! still leaves an explanation. The kernel's reports of crashed processes are logged
//! whether or not the console is shown ([`crash_watch`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::vmm::line_watch::LineWatch;

/// Bytes of console output kept.
pub const TAIL_BYTES: usize = 8 * 1024;

/// A writer that keeps the last [`TAIL_BYTES`] bytes written to it (shared by clones).
#[derive(Clone, Debug, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// An empty tail.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kept output, as text.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = buf.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }
}

impl Write for ConsoleTail {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let keep = &data[data.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (buf.len() + keep.len()).saturating_sub(TAIL_BYTES);
        let drop = overflow.min(buf.len());
        buf.drain(..drop);
        buf.extend(keep);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How hvlite's warning about a crashed guest process starts (tests look for it).
pub const CRASH_WARNING: &str = "guest process crashed";

/// Crash reports logged per run; more are counted, not logged.
const REPORTS_MAX: usize = 10;

/// The kernel's report of a user process killed by a fault, if `line` is one: `segfault at`,
/// `trap ...` and `general protection fault` (x86 `show_signal_msg` and `do_trap`), without
/// the timestamp.
pub fn crash_report(line: &str) -> Option<&str> {
    let text = match line.trim_end().split_once("] ") {
        Some((stamp, rest)) if stamp.trim_start().starts_with('[') => rest,
        _ => line.trim_end(),
    };
    let crashed = (text.contains("]: segfault at ") && text.contains(" ip "))
        || (text.starts_with("traps: ")
            && (text.contains("] trap ") || text.contains("] general protection fault ")));
    crashed.then_some(text)
}

/// Logs each crash report among the guest console's lines as a warning. On PVM hosts the
/// first one says that it may be the host's stale-memory defect.
#[derive(Debug)]
pub struct CrashLog {
    reports: usize,
    pvm: bool,
}

impl CrashLog {
    /// No report seen yet; `pvm`: the host is a PVM host.
    pub fn new(pvm: bool) -> Self {
        Self { reports: 0, pvm }
    }

    /// Looks at one console line.
    pub fn observe(&mut self, line: &str) {
        let Some(report) = crash_report(line) else {
            return;
        };
        self.reports += 1;
        match self.reports {
            1 if self.pvm => log::warn!(
                "{CRASH_WARNING}: {report} (on PVM hosts processes that run at the same \
                 time sometimes read stale memory, a host defect described in docs/pvm-host.md)"
            ),
            n if n <= REPORTS_MAX => log::warn!("{CRASH_WARNING}: {report}"),
            n if n == REPORTS_MAX + 1 => log::warn!("more guest processes crashed; not logged"),
            _ => {}
        }
    }
}

/// Passes the guest console through to `inner` and logs each crash report in it
/// ([`CrashLog`]).
pub fn crash_watch<W: Write>(inner: W, pvm: bool) -> LineWatch<W, impl FnMut(&str) + Send> {
    let mut log = CrashLog::new(pvm);
    LineWatch::new(inner, move |line: &str| log.observe(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_reports_are_recognised() {
        let seg = "[   20.871880] hvlite-vsock[27]: segfault at 7f3b537fd980 ip 00007fa8a9c0b1f2 \
                   sp 00007ffc33b40148 error 4 in hvlite-vsock[7fa8a9ba7000+101000]\r";
        assert!(crash_report(seg).is_some_and(|r| r.starts_with("hvlite-vsock[27]: segfault")));
        let trap = "traps: a.out[41] trap invalid opcode ip:401000 sp:7ffc0 error:0 in a.out";
        assert_eq!(crash_report(trap), Some(trap));
        let gp = "[ 1.0] traps: sh[9] general protection fault ip:4a sp:7f error:0 in sh";
        assert!(crash_report(gp).is_some());
        for line in [
            "EXT4-fs (vdb): mounted filesystem without journal.",
            "sh: segfault at the end of my script",
            "[ 1.0] hvlite-agent: connected to the host",
            "",
        ] {
            assert_eq!(crash_report(line), None, "{line}");
        }
    }

    #[test]
    fn watching_passes_everything_through_in_pieces() {
        let tail = ConsoleTail::new();
        let mut w = crash_watch(tail.clone(), true);
        let text = "boot\n[ 2.0] sh[3]: segfault at 0 ip 1 sp 2 error 4\nafter";
        for piece in text.as_bytes().chunks(5) {
            w.write_all(piece).unwrap();
        }
        assert_eq!(tail.text(), text);
    }

    #[test]
    fn each_crash_report_is_counted_once() {
        let mut log = CrashLog::new(true);
        log.observe("boot");
        log.observe("[ 2.0] sh[3]: segfault at 0 ip 1 sp 2 error 4\r");
        assert_eq!(log.reports, 1);
        log.observe(&"y".repeat(1536));
        log.observe("traps: a.out[41] trap invalid opcode ip:401000 sp:7ffc0 error:0 in a.out");
        assert_eq!(log.reports, 2);
    }

    #[test]
    fn keeps_only_the_tail() {
        let tail = ConsoleTail::new();
        let mut w = tail.clone();
        w.write_all(b"first\r\n").unwrap();
        assert_eq!(tail.text(), "first\n");
        let big = vec![b'x'; TAIL_BYTES + 10];
        w.write_all(&big).unwrap();
        w.write_all(b"end").unwrap();
        let t = tail.text();
        assert_eq!(t.len(), TAIL_BYTES);
        assert!(t.ends_with("xend") && !t.contains("first"));
    }
}
