//! Network namespaces with a TAP device for the integration tests (the host's own network
//! is never touched).

use std::path::Path;
use std::process::{Command, Output};

/// The host's address on the test TAP.
pub const HOST_IP: &str = "172.16.0.1";
/// The guest's address.
pub const GUEST_IP: &str = "172.16.0.2";
/// The TAP device in the namespace.
pub const TAP: &str = "hvtap0";

pub fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

pub fn must(cmd: &[&str]) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a TAP device configured as the guest's gateway; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new() -> Netns {
        let name = format!("hvl-test-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        must(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns.add_tap(TAP);
        ns
    }

    /// Adds TAP device `tap` with the host's address [`HOST_IP`], up.
    pub fn add_tap(&self, tap: &str) {
        must(&[
            "ip", "-n", &self.0, "tuntap", "add", "dev", tap, "mode", "tap",
        ]);
        must(&[
            "ip",
            "-n",
            &self.0,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            tap,
        ]);
        must(&["ip", "-n", &self.0, "link", "set", tap, "up"]);
    }

    /// Deletes TAP device `tap`.
    pub fn del_tap(&self, tap: &str) {
        must(&["ip", "-n", &self.0, "link", "del", tap]);
    }

    pub fn exec<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.0.as_str()];
        v.extend_from_slice(cmd);
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

pub fn can_use_tap(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    let missing =
        format!("needs root, /dev/net/tun and iproute2 (root={root}, tun={tun}, ip={ip})");
    super::host_has(test, root && tun && ip, &missing)
}
