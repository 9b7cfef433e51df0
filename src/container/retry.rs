//! One automatic retry of a container VM whose guest agent (PID 1) crashed before it started
//! the container's process.
//!
//! On PVM hosts guest processes sometimes read stale memory at start-up and crash
//! (docs/pvm-defect.md); when that process is the agent itself, the guest kernel panics with
//! `Attempted to kill init! exitcode=0x0000000b` before anything of the user's ran. Such a
//! run is booted once more, with a warning. A run whose process had started is never
//! repeated (it may have had effects), and neither is an agent that exited with a status
//! (a broken agent, not a crash).
//!
//! A run restored from a template follows the same rule, and its retry is a cold boot, not
//! a second restore: the retry then shares nothing with the attempt that crashed (a restore
//! would resume the very same memory image), at the price of one boot in a rare case. The
//! template stays cached. The test switch is on the first attempt's command line; with a
//! template it is part of the template's own command line (a template of its own), which
//! the restored agent reads.

use crate::agent::{CMDLINE_TEST_CRASH, TEST_CRASH_ENV};
use crate::exit::ExitReason;

/// Boots a container VM may get in all: the first and one retry.
pub const ATTEMPTS: u32 = 2;

/// The signal that killed the guest's init, if `reason` is the kernel's panic about it
/// (`Attempted to kill init! exitcode=0x0000000b`: a death by a fault signal, not an exit).
pub fn init_killed_by(reason: &ExitReason) -> Option<u32> {
    let ExitReason::GuestPanic(line) = reason else {
        return None;
    };
    let (_, code) = line.split_once("Attempted to kill init! exitcode=0x")?;
    let hex: String = code.chars().take_while(char::is_ascii_hexdigit).collect();
    let code = u32::from_str_radix(&hex, 16).ok()?;
    // The low 7 bits are the signal (0 for a plain exit), bit 7 the core dump flag.
    let signal = code & 0x7f;
    let fault = matches!(
        signal as i32,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    );
    (fault && code >> 8 == 0).then_some(signal)
}

/// Whether a run that ended with `reason` is booted again: the agent crashed with a fault
/// signal, the process had not been started, and this was the first attempt.
pub fn should_retry(reason: &ExitReason, process_started: bool, attempt: u32) -> bool {
    attempt + 1 < ATTEMPTS && !process_started && init_killed_by(reason).is_some()
}

/// The test-only agent option for boot number `attempt` (0 = first): only on the first,
/// and only when hvlite's environment has `HVLITE_AGENT_TEST_CRASH=before-start`.
pub fn test_crash_option(
    attempt: u32,
    env: impl Fn(&str) -> Option<String>,
) -> Option<&'static str> {
    (attempt == 0 && env(TEST_CRASH_ENV).as_deref() == Some("before-start"))
        .then_some(CMDLINE_TEST_CRASH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic(line: &str) -> ExitReason {
        ExitReason::GuestPanic(line.to_string())
    }

    #[test]
    fn init_killed_by_a_fault_is_recognised() {
        let segv = panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b");
        assert_eq!(init_killed_by(&segv), Some(11));
        let core = panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000087");
        assert_eq!(init_killed_by(&core), Some(7), "SIGBUS with the core flag");
        for other in [
            // an agent that exited with status 127 (busybox as the agent)
            panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00007f00"),
            // killed by SIGKILL: not a fault
            panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"),
            panic("Kernel panic - not syncing: VFS: Unable to mount root fs"),
            panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x"),
            ExitReason::GuestStatus(139),
            ExitReason::Shutdown,
        ] {
            assert_eq!(init_killed_by(&other), None, "{other:?}");
        }
    }

    #[test]
    fn retried_once_and_only_before_the_process_started() {
        let segv = panic("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b");
        assert!(should_retry(&segv, false, 0));
        assert!(!should_retry(&segv, false, 1), "only one retry");
        assert!(!should_retry(&segv, true, 0), "the process had started");
        assert!(!should_retry(&ExitReason::GuestStatus(139), false, 0));
    }

    #[test]
    fn test_switch_only_on_the_first_boot_and_only_when_set() {
        let set = |k: &str| (k == TEST_CRASH_ENV).then(|| "before-start".to_string());
        assert_eq!(test_crash_option(0, set), Some(CMDLINE_TEST_CRASH));
        assert_eq!(test_crash_option(1, set), None);
        assert_eq!(test_crash_option(0, |_| None), None);
        assert_eq!(test_crash_option(0, |_| Some("yes".into())), None);
    }
}
