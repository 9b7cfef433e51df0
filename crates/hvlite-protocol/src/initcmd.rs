//! Command hand-off between hvlite (the host) and its guest init (`hvlite-init`).
//!
//! This module is linked by both sides, so it only depends on `std`, `libc` and `thiserror`.
//!
//! # The contract
//!
//! **Command.** The command to run in the guest (its argv) travels on the kernel command line
//! as the *last* token after ` -- `:
//!
//! ```text
//! console=ttyS0 reboot=k panic=-1 ... -- 7368002d63006563686f206869
//! ```
//!
//! The kernel hands every token after `--` to init as an argument. It also hands init any
//! unknown bare word (no `=`) found before `--`, and those come first, so the init takes the
//! **last** argument as the command and ignores the others. The encoding ([`encode`]) joins
//! the arguments with NUL bytes and hex-encodes the result in lowercase, so the token has no
//! spaces, quotes or non-printable characters. With no argument at all, the init runs an
//! interactive `/bin/sh` on the console.
//!
//! The whole kernel command line is limited to `COMMAND_LINE_SIZE` (2048 bytes on x86,
//! counting its terminating NUL). [`MAX_ENCODED_LEN`] keeps [`RESERVED_CMDLINE_LEN`] (600
//! bytes) of that for the other options and the ` -- ` separator; [`encode_checked`] enforces
//! it.
//!
//! **Console.** When it starts, the init prints [`INIT_MARKER`] on a line of its own. When the
//! command has ended it prints `hvlite-init: exit status N` (see [`status_line`]), then waits
//! (up to a few seconds) for the console to drain.
//!
//! **Exit.** The guest then writes ONE byte, the exit status (0-255), to I/O port
//! [`EXIT_PORT`] (`0x510`). The VMM must treat that write as "the guest is done": stop the VM
//! and exit with that byte as its own exit status. The init does the write through
//! `/dev/port` (a `pwrite` of one byte at offset `0x510`, so the guest *kernel* executes the
//! `out`), which needs `CONFIG_DEVPORT` in the guest kernel (on x86_64 that option depends on
//! `CONFIG_PCI`). Without `/dev/port` it falls back to `ioperm` and an `out` from user mode
//! (needs `CONFIG_X86_IOPL_IOPERM`). Finally it calls `reboot(RB_AUTOBOOT)`, in case nobody
//! handled the port (e.g. under QEMU); with `reboot=k` the kernel resets through the i8042
//! (port 0x64, value 0xfe) and then, if that did not work, by a triple fault.
//!
//! **Status.** Normal exit → its code; killed by signal N → 128+N ([`exit_status_from_wait`]).
//! The init itself reports [`STATUS_INIT_ERROR`] (125) when it could not start the command
//! (bad encoding, fork failure, internal error), [`STATUS_NOT_EXECUTABLE`] (126) when the
//! command was found but could not be executed and [`STATUS_NOT_FOUND`] (127) when it was not
//! found, following the shell conventions.

use thiserror::Error;

/// Paravirtual exit port: the guest writes one byte, its exit status, to this I/O port.
pub const EXIT_PORT: u16 = 0x510;

/// Printed on the console, on a line of its own, when the guest init starts.
pub const INIT_MARKER: &str = "hvlite-init: started";

/// Prefix of the line the init prints when the command has ended: `hvlite-init: exit status N`.
pub const STATUS_LINE_PREFIX: &str = "hvlite-init: exit status ";

/// Status reported when the init could not start the command at all (the encoded command
/// could not be decoded, fork failed, or the init met an internal error).
pub const STATUS_INIT_ERROR: u8 = 125;
/// Status reported when the command was found but could not be executed.
pub const STATUS_NOT_EXECUTABLE: u8 = 126;
/// Status reported when the command was not found.
pub const STATUS_NOT_FOUND: u8 = 127;

/// x86 `COMMAND_LINE_SIZE`: the whole kernel command line, including its terminating NUL.
pub const COMMAND_LINE_SIZE: usize = 2048;
/// Bytes of the kernel command line kept for everything but the encoded command: the other
/// options (console, reboot, virtio_mmio devices, ...), the ` -- ` separator and the NUL.
pub const RESERVED_CMDLINE_LEN: usize = 600;
/// Longest encoded command (as returned by [`encode`]) the host may put on the command line.
pub const MAX_ENCODED_LEN: usize = COMMAND_LINE_SIZE - RESERVED_CMDLINE_LEN;

/// Why a command cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The command has no arguments, or its first argument is empty.
    #[error("empty command")]
    Empty,
    /// An argument contains a NUL byte, which is the separator of the encoding.
    #[error("argument {index} contains a NUL byte")]
    NulInArgument {
        /// Index of the argument in argv.
        index: usize,
    },
    /// The encoded command does not fit on the kernel command line.
    #[error(
        "command too long for the kernel command line: {len} bytes encoded, at most {max} allowed"
    )]
    TooLong {
        /// Length of the encoded command.
        len: usize,
        /// [`MAX_ENCODED_LEN`].
        max: usize,
    },
}

/// Why an encoded command cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The encoded string is empty: an empty command is not valid.
    #[error("empty encoded command")]
    Empty,
    /// Hex text must have an even number of digits.
    #[error("encoded command has an odd length ({0})")]
    OddLength(usize),
    /// A character that is not a hex digit.
    #[error("invalid hex digit {found:?} at offset {offset}")]
    InvalidHexDigit {
        /// Byte offset in the encoded string.
        offset: usize,
        /// The offending character.
        found: char,
    },
    /// A decoded argument is not valid UTF-8.
    #[error("argument {index} is not valid UTF-8")]
    InvalidUtf8 {
        /// Index of the argument in argv.
        index: usize,
    },
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes argv for the kernel command line: the arguments joined with NUL bytes, hex-encoded
/// in lowercase.
///
/// This does no validation: an argument containing NUL does not survive the round trip, and
/// an empty argv (or `[""]`) encodes to the empty string, which [`decode`] rejects. Use
/// [`encode_checked`] for commands that come from the user.
pub fn encode(args: &[String]) -> String {
    let raw_len = args.iter().map(String::len).sum::<usize>() + args.len().saturating_sub(1);
    let mut out = String::with_capacity(raw_len * 2);
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str("00");
        }
        for &b in arg.as_bytes() {
            out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Like [`encode`], but rejects commands that cannot be encoded faithfully or that do not
/// fit on the kernel command line (longer than [`MAX_ENCODED_LEN`] once encoded).
pub fn encode_checked(args: &[String]) -> Result<String, EncodeError> {
    match args.first() {
        None => return Err(EncodeError::Empty),
        Some(first) if first.is_empty() => return Err(EncodeError::Empty),
        Some(_) => {}
    }
    if let Some(index) = args.iter().position(|a| a.as_bytes().contains(&0)) {
        return Err(EncodeError::NulInArgument { index });
    }
    let encoded = encode(args);
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(EncodeError::TooLong {
            len: encoded.len(),
            max: MAX_ENCODED_LEN,
        });
    }
    Ok(encoded)
}

fn hex_value(offset: usize, digit: u8) -> Result<u8, DecodeError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(DecodeError::InvalidHexDigit {
            offset,
            found: char::from(digit),
        }),
    }
}

/// Decodes what [`encode`] produced back into argv. Upper-case hex digits are accepted too.
///
/// The empty string is an error ([`DecodeError::Empty`]): there is no empty command. Empty
/// arguments after the first one are preserved (`"6100"` is `["a", ""]`).
pub fn decode(s: &str) -> Result<Vec<String>, DecodeError> {
    if s.is_empty() {
        return Err(DecodeError::Empty);
    }
    let digits = s.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(DecodeError::OddLength(digits.len()));
    }
    let mut raw = Vec::with_capacity(digits.len() / 2);
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = hex_value(2 * i, pair[0])?;
        let lo = hex_value(2 * i + 1, pair[1])?;
        raw.push((hi << 4) | lo);
    }
    raw.split(|&b| b == 0)
        .enumerate()
        .map(|(index, bytes)| {
            String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { index })
        })
        .collect()
}

/// Maps a raw wait status (as filled in by `waitpid`) to the exit code a shell would report:
/// a normal exit gives its code, death by signal N gives 128+N.
///
/// Returns `None` for statuses that do not mean the process has ended (stopped, continued).
pub fn exit_status_from_wait(status: libc::c_int) -> Option<u8> {
    if libc::WIFEXITED(status) {
        // WEXITSTATUS is `(status >> 8) & 0xff`: always in 0..=255.
        u8::try_from(libc::WEXITSTATUS(status)).ok()
    } else if libc::WIFSIGNALED(status) {
        // Signal numbers are 1..=64 on Linux; saturate anything stranger.
        let code = 128 + libc::WTERMSIG(status);
        Some(u8::try_from(code).unwrap_or(u8::MAX))
    } else {
        None
    }
}

/// Maps a [`std::process::ExitStatus`] to an exit code like [`exit_status_from_wait`].
pub fn exit_code(status: &std::process::ExitStatus) -> Option<u8> {
    use std::os::unix::process::ExitStatusExt;
    exit_status_from_wait(status.into_raw())
}

/// The line the init prints when the command has ended, without the newline.
pub fn status_line(status: u8) -> String {
    format!("{STATUS_LINE_PREFIX}{status}")
}

/// Parses a console line printed by the init at the end (see [`status_line`]); surrounding
/// whitespace (such as a `\r`) is ignored.
pub fn parse_status_line(line: &str) -> Option<u8> {
    line.trim()
        .strip_prefix(STATUS_LINE_PREFIX)
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn encode_known_value() {
        assert_eq!(
            encode(&argv(&["sh", "-c", "echo hi"])),
            "7368002d63006563686f206869"
        );
        assert_eq!(encode(&argv(&["\u{ff}"])), "c3bf");
    }

    #[test]
    fn encoded_is_cmdline_safe() {
        let e = encode(&argv(&["a b", "'\"", "\n\t", "é"]));
        assert!(
            e.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn round_trip() {
        for case in [
            vec!["sh"],
            vec!["sh", "-c", "echo hi; exit 7"],
            vec!["/bin/echo", "", "x", ""],
            vec!["ünïcødé", "spaces  and\ttabs", "quotes '\" \\"],
        ] {
            let args = argv(&case);
            assert_eq!(decode(&encode(&args)), Ok(args.clone()));
            assert_eq!(decode(&encode_checked(&args).unwrap()), Ok(args));
        }
    }

    #[test]
    fn decode_accepts_upper_case() {
        assert_eq!(decode("4142"), Ok(argv(&["AB"])));
        assert_eq!(decode("4A4b"), Ok(argv(&["JK"])));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("616"), Err(DecodeError::OddLength(3)));
        assert_eq!(
            decode("61zz"),
            Err(DecodeError::InvalidHexDigit {
                offset: 2,
                found: 'z'
            })
        );
        assert_eq!(
            decode("61 6"),
            Err(DecodeError::InvalidHexDigit {
                offset: 2,
                found: ' '
            })
        );
        assert_eq!(decode("6100ff"), Err(DecodeError::InvalidUtf8 { index: 1 }));
        // Non-ASCII input is rejected as a bad digit, not a panic on a char boundary.
        assert!(matches!(
            decode("éé"),
            Err(DecodeError::InvalidHexDigit { offset: 0, .. })
        ));
    }

    #[test]
    fn encode_checked_errors() {
        assert_eq!(encode_checked(&[]), Err(EncodeError::Empty));
        assert_eq!(encode_checked(&argv(&[""])), Err(EncodeError::Empty));
        assert_eq!(
            encode_checked(&argv(&["a", "b\0c"])),
            Err(EncodeError::NulInArgument { index: 1 })
        );
        let fits = "x".repeat(MAX_ENCODED_LEN / 2);
        assert_eq!(
            encode_checked(std::slice::from_ref(&fits)).map(|e| e.len()),
            Ok(MAX_ENCODED_LEN)
        );
        let too_long = "x".repeat(MAX_ENCODED_LEN / 2 + 1);
        assert_eq!(
            encode_checked(&[too_long]),
            Err(EncodeError::TooLong {
                len: MAX_ENCODED_LEN + 2,
                max: MAX_ENCODED_LEN
            })
        );
    }

    #[test]
    fn limits_are_consistent() {
        assert_eq!(MAX_ENCODED_LEN, 1448);
        // Room for " -- " and the terminating NUL is inside the reserve.
        assert!(RESERVED_CMDLINE_LEN > " -- ".len() + 1);
    }

    #[test]
    fn wait_status_mapping() {
        // Raw Linux encodings: exit code in bits 8..16, signal in bits 0..7.
        assert_eq!(exit_status_from_wait(0), Some(0));
        assert_eq!(exit_status_from_wait(7 << 8), Some(7));
        assert_eq!(exit_status_from_wait(255 << 8), Some(255));
        assert_eq!(exit_status_from_wait(libc::SIGKILL), Some(137));
        assert_eq!(exit_status_from_wait(libc::SIGSEGV | 0x80), Some(139)); // core dumped
        assert_eq!(exit_status_from_wait(libc::SIGTERM), Some(143));
        // Stopped by SIGSTOP: 0x7f in the low byte.
        assert_eq!(exit_status_from_wait((libc::SIGSTOP << 8) | 0x7f), None);
        // Continued.
        assert_eq!(exit_status_from_wait(0xffff), None);
    }

    #[test]
    fn exit_code_of_real_processes() {
        let st = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .status()
            .unwrap();
        assert_eq!(exit_code(&st), Some(7));
        let st = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(exit_code(&st), Some(137));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(7), "hvlite-init: exit status 7");
        assert_eq!(parse_status_line("hvlite-init: exit status 7\r"), Some(7));
        assert_eq!(parse_status_line("hvlite-init: exit status 256"), None);
        assert_eq!(parse_status_line("hi"), None);
    }
}
