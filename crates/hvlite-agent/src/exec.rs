//! Pure logic of starting the command: which argument is the command, where to look for the
//! program, and which status a failed `execve` means. No system calls here, so all of it is
//! unit-tested on the host.

use hvlite_protocol::initcmd::{STATUS_NOT_EXECUTABLE, STATUS_NOT_FOUND};

/// The search path given to the command and used to find its program.
pub const PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

/// The clean environment of the command.
pub const ENVIRONMENT: [&str; 3] = ["PATH=/sbin:/bin:/usr/sbin:/usr/bin", "HOME=/", "TERM=linux"];

/// The shell run when no command was given.
pub const SHELL: &str = "/bin/sh";

/// Picks the encoded command among the init's arguments (without argv[0]).
///
/// The kernel passes the tokens after ` -- ` last, after any unknown bare word from before
/// ` -- `, so the command is the last argument. `None` means: no command, run a shell.
pub fn encoded_command<T>(args_after_argv0: &[T]) -> Option<&T> {
    args_after_argv0.last()
}

/// The paths to try, in order, for program `name`, like `execvp`: a name with a slash is
/// used as is; otherwise each directory of `path` is tried (an empty entry means the current
/// directory). An empty name has no candidates (it is never found).
pub fn candidates(name: &str, path: &str) -> Vec<String> {
    if name.is_empty() {
        return Vec::new();
    }
    if name.contains('/') {
        return vec![name.to_string()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{}", dir.trim_end_matches('/'), name)
        })
        .collect()
}

/// Tracks the failures of the `execve` attempts over the candidates, like `execvp` does.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExecFailures {
    /// Some candidate existed but was not accessible (EACCES).
    saw_eacces: bool,
    /// An error that ends the search (anything but ENOENT, ENOTDIR, EACCES).
    fatal: Option<i32>,
}

impl ExecFailures {
    /// Records the errno of one failed `execve`; returns whether to try the next candidate.
    pub fn record(&mut self, errno: i32) -> bool {
        match errno {
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENAMETOOLONG | libc::ELOOP => true,
            libc::EACCES => {
                self.saw_eacces = true;
                true
            }
            other => {
                self.fatal = Some(other);
                false
            }
        }
    }

    /// The status to exit with once no candidate could be executed, and the errno to report
    /// (`None` means "command not found").
    pub fn outcome(&self) -> (u8, Option<i32>) {
        match (self.fatal, self.saw_eacces) {
            (Some(errno), _) => (STATUS_NOT_EXECUTABLE, Some(errno)),
            (None, true) => (STATUS_NOT_EXECUTABLE, Some(libc::EACCES)),
            (None, false) => (STATUS_NOT_FOUND, None),
        }
    }
}

/// The console device behind `/dev/console`, from the text of
/// `/sys/class/tty/console/active` (e.g. `"tty0 ttyS0\n"`: the last one is `/dev/console`).
pub fn console_tty_path(active: &str) -> Option<String> {
    let name = active.split_whitespace().last()?;
    if name.contains('/') || name == "." || name == ".." {
        return None;
    }
    Some(format!("/dev/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_last_argument() {
        let none: [&str; 0] = [];
        assert_eq!(encoded_command(&none), None);
        assert_eq!(encoded_command(&["6869"]), Some(&"6869"));
        assert_eq!(encoded_command(&["stray", "6869"]), Some(&"6869"));
    }

    #[test]
    fn path_lookup() {
        assert_eq!(
            candidates("sh", PATH),
            ["/sbin/sh", "/bin/sh", "/usr/sbin/sh", "/usr/bin/sh"]
        );
        assert_eq!(candidates("/bin/true", PATH), ["/bin/true"]);
        assert_eq!(candidates("./run", PATH), ["./run"]);
        assert_eq!(candidates("x", "/a/::/b/"), ["/a/x", "./x", "/b/x"]);
        assert!(candidates("", PATH).is_empty());
    }

    #[test]
    fn environment_matches_path() {
        assert_eq!(ENVIRONMENT[0], format!("PATH={PATH}"));
    }

    #[test]
    fn exec_failure_status() {
        let mut f = ExecFailures::default();
        assert!(f.record(libc::ENOENT));
        assert!(f.record(libc::ENOTDIR));
        assert_eq!(f.outcome(), (STATUS_NOT_FOUND, None));

        let mut f = ExecFailures::default();
        assert!(f.record(libc::EACCES));
        assert!(f.record(libc::ENOENT));
        assert_eq!(f.outcome(), (STATUS_NOT_EXECUTABLE, Some(libc::EACCES)));

        let mut f = ExecFailures::default();
        assert!(f.record(libc::ENOENT));
        assert!(!f.record(libc::ENOEXEC));
        assert_eq!(f.outcome(), (STATUS_NOT_EXECUTABLE, Some(libc::ENOEXEC)));

        // No candidates at all (empty name): not found.
        assert_eq!(ExecFailures::default().outcome(), (STATUS_NOT_FOUND, None));
    }

    #[test]
    fn console_tty() {
        assert_eq!(console_tty_path("ttyS0\n"), Some("/dev/ttyS0".into()));
        assert_eq!(console_tty_path("tty0 ttyS0\n"), Some("/dev/ttyS0".into()));
        assert_eq!(console_tty_path("\n"), None);
        assert_eq!(console_tty_path("../x"), None);
    }
}
