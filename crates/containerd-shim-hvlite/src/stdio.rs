//! The FIFOs containerd gives for a task's stdin, stdout and stderr, opened for the
//! container's monitor (which reads and writes them as its own stdio).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use hvlite::oci::commands::MonitorIo;

use crate::error::ShimError;

/// Opens the three paths (empty: /dev/null).
///
/// stdin is opened non-blocking (no writer needs to be there yet) and then made blocking;
/// stdout and stderr read-write, so the open never waits for containerd's reader and the
/// monitor's writes reach it as soon as it reads. The shim keeps no copy: when the
/// monitor ends, containerd's reader sees the end of the stream.
pub fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<MonitorIo, ShimError> {
    let or_null = |f: Option<File>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
    Ok(MonitorIo {
        stdin: or_null(open_stdin(stdin)?),
        stdout: or_null(open_output(stdout)?),
        stderr: or_null(open_output(stderr)?),
    })
}

/// The FIFOs of an exec'd process (or a terminal), for the shim's own relay threads.
pub struct RelayIo {
    /// Opened by the relay thread itself ([`open_stdin_blocking`]).
    pub stdin: Option<String>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

/// Opens the outputs as [`open`] does (an empty path discards); stdin is left to the
/// relay thread.
pub fn open_files(stdin: &str, stdout: &str, stderr: &str) -> Result<RelayIo, ShimError> {
    let or_sink = |f: Option<File>| -> Box<dyn Write + Send> {
        match f {
            Some(f) => Box::new(f),
            None => Box::new(std::io::sink()),
        }
    };
    Ok(RelayIo {
        stdin: (!stdin.is_empty()).then(|| stdin.to_string()),
        stdout: or_sink(open_output(stdout)?),
        stderr: or_sink(open_output(stderr)?),
    })
}

/// Opens a stdin FIFO for reading, waiting until containerd has opened its writer (a
/// read before that would see end-of-file at once). For relay threads.
pub fn open_stdin_blocking(path: &str) -> std::io::Result<File> {
    File::open(path)
}

fn open_stdin(path: &str) -> Result<Option<File>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ShimError::Io(path.into(), e))?;
    set_blocking(&f).map_err(|e| ShimError::Io(path.into(), e))?;
    Ok(Some(f))
}

fn open_output(path: &str) -> Result<Option<File>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ShimError::Io(path.into(), e))?;
    Ok(Some(f))
}

fn set_blocking(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an fd owned by `f`, alive for both calls.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn mkfifo(path: &std::path::Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifos_open_without_a_peer_and_carry_data() {
        let dir = tempfile::tempdir().unwrap();
        let (i, o) = (dir.path().join("in"), dir.path().join("out"));
        mkfifo(&i);
        mkfifo(&o);
        // Neither end has a peer yet: opening must not block.
        let io = open(i.to_str().unwrap(), o.to_str().unwrap(), "").unwrap();
        // The writer is there before the child reads (else it would see end-of-file).
        let mut writer = File::options().write(true).open(&i).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; echo got $x"])
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .spawn()
            .unwrap();
        let mut reader = File::open(&o).unwrap();
        writer.write_all(b"hi\n").unwrap();
        drop(writer);
        assert!(child.wait().unwrap().success());
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "got hi\n");
        assert!(open("/nonexistent/x", "", "").is_err());
    }
}
