//! The SIGSYS handler: a seccomp violation becomes one line on stderr and exit status
//! [`VIOLATION_EXIT_STATUS`]. Only async-signal-safe work: formatting into a stack buffer,
//! write(2), _exit(2) (both on every allow-list).

use std::io;

/// hvlite's exit status after a seccomp violation (128 + SIGSYS, as a shell would report
/// a process killed by SIGSYS).
pub const VIOLATION_EXIT_STATUS: u8 = 159;

/// Offset of `si_syscall` in a SIGSYS siginfo: after si_signo, si_errno, si_code (padded
/// to 16 bytes on 64-bit) and the `_call_addr` pointer.
const SI_SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();

pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is fully initialised and the handler has the SA_SIGINFO signature.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let sysno = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a full siginfo for SIGSYS; si_syscall is an int at
        // SI_SYSCALL_OFFSET in its `_sigsys` member.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) }
    };
    let kind = super::current_kind().map_or("unknown", |k| k.name());
    let mut buf = [0u8; 128];
    let len = format_line(&mut buf, sysno, kind);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(i32::from(VIOLATION_EXIT_STATUS));
    }
}

/// Writes `hvlite: seccomp violation: syscall N in thread KIND\n` into `buf` without
/// allocating; returns its length (truncated to the buffer).
fn format_line(buf: &mut [u8], sysno: i32, kind: &str) -> usize {
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    push(b"hvlite: seccomp violation: syscall ");
    let mut digits = [0u8; 12];
    let mut n = i64::from(sysno).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if sysno < 0 {
        push(b"-");
    }
    push(&digits[i..]);
    push(b" in thread ");
    push(kind.as_bytes());
    push(b"\n");
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_call_and_the_kind() {
        let mut buf = [0u8; 128];
        let n = format_line(&mut buf, 169, "vcpu");
        assert_eq!(
            &buf[..n],
            b"hvlite: seccomp violation: syscall 169 in thread vcpu\n"
        );
        let n = format_line(&mut buf, 0, "api");
        assert_eq!(
            &buf[..n],
            b"hvlite: seccomp violation: syscall 0 in thread api\n"
        );
        let mut small = [0u8; 10];
        assert_eq!(format_line(&mut small, 1, "x"), 10);
    }
}
