//! The API socket is the VMM's control surface: it is made private (mode 0600, the owner
//! only) between bind and listen, so no other user can connect even for a moment.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

/// The API socket's file mode.
pub const API_SOCKET_MODE: u32 = 0o600;
/// Pending connections the kernel queues before the acceptor takes them.
const BACKLOG: i32 = 128;

/// Binds a Unix stream socket at `path`, sets the file's mode to [`API_SOCKET_MODE`], then
/// listens. A failure after bind removes the file again.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let listen = std::fs::set_permissions(path, std::fs::Permissions::from_mode(API_SOCKET_MODE))
        .and_then(|()| socket.listen(BACKLOG));
    if let Err(e) = listen {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_socket_is_private_and_listening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, API_SOCKET_MODE);
        let _client = UnixStream::connect(&path).unwrap();
        let (_conn, _) = listener.accept().unwrap();
    }

    #[test]
    fn a_bind_failure_is_an_error() {
        let err = bind_private(Path::new("/nonexistent-dir/api.sock")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
