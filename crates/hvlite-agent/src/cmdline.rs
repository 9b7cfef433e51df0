//! The options hvlite-init reads from the kernel command line (`/proc/cmdline`). Options with
//! a dot are not passed to init by the kernel: they are only seen there.
//!
//! - `hvlite.agent=1`: run as the guest agent (see `agent.rs`) instead of running the command
//!   given after ` -- `.
//! - `hvlite.root=DEVICE`: the container's root file system (ext4), default `/dev/vdb`.
//! - `hvlite.template=1`: the VM becomes a template (`template.rs`).
//! - `hvlite.rootmode=overlay|rw`: `overlay` (default) mounts the device read-only under a
//!   tmpfs-backed overlay (changes are discarded); `rw` mounts it read-write (changes persist).
//!   `hvlite.root=virtiofs:TAG` makes the root the virtio-fs share TAG instead of a device.
//! - `hvlite.volumes=TAG:/path[:ro],...`: virtio-fs shares to mount inside the container.
//!
//! Pure logic, unit-tested on the host.

use hvlite_protocol::agent::{
    CMDLINE_AGENT, CMDLINE_ROOT as ROOT, CMDLINE_ROOT_MODE as ROOT_MODE, CMDLINE_TEMPLATE,
    CMDLINE_VOLUMES, DEFAULT_ROOT_DEVICE as DEFAULT_ROOT, ROOT_MODE_OVERLAY, ROOT_MODE_RW,
    VIRTIOFS_ROOT_PREFIX,
};

/// The name of the option that turns the agent mode on.
fn agent_option() -> &'static str {
    CMDLINE_AGENT
        .split_once('=')
        .map_or(CMDLINE_AGENT, |(k, _)| k)
}

/// The `name[=value]` parameters of a kernel command line, in order, with double quotes
/// removed the way the kernel does (`a="b c"` is one parameter). Stops at `--`: what follows
/// is for init, not kernel options.
pub fn params(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut token = String::new();
    let mut in_token = false;
    let mut quoted = false;
    for c in cmdline.chars().chain(std::iter::once(' ')) {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    if token == "--" {
                        break;
                    }
                    out.push(match token.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (token.clone(), None),
                    });
                    token.clear();
                    in_token = false;
                }
            }
            c => {
                token.push(c);
                in_token = true;
            }
        }
    }
    out
}

/// The value of the last `name=value` parameter named `name` (the kernel's rule: the last one
/// wins).
fn value<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// Whether `hvlite.agent` is on (`1`, `y`, `yes`, `on` or `true`).
pub fn agent_enabled(cmdline: &str) -> bool {
    matches!(
        value(&params(cmdline), agent_option()),
        Some("1" | "y" | "Y" | "yes" | "on" | "true")
    )
}

/// Whether `hvlite.template=1` is given: the VM is being made into a template
/// (`template.rs`).
pub fn template_enabled(cmdline: &str) -> bool {
    let name = CMDLINE_TEMPLATE
        .split_once('=')
        .map_or(CMDLINE_TEMPLATE, |(k, _)| k);
    matches!(value(&params(cmdline), name), Some("1"))
}

/// How the container's root device is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// Read-only device under an overlay whose upper layer is a tmpfs.
    Overlay,
    /// The device mounted read-write.
    ReadWrite,
}

/// The agent's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// The container's root device.
    pub root: String,
    /// How it is mounted.
    pub mode: RootMode,
}

/// Reads the agent's options; an invalid value is an error naming the option.
pub fn agent_options(cmdline: &str) -> Result<AgentOptions, String> {
    let params = params(cmdline);
    let root = value(&params, ROOT).unwrap_or(DEFAULT_ROOT);
    let share = root.strip_prefix(VIRTIOFS_ROOT_PREFIX);
    if !root.starts_with('/') && share.is_none_or(str::is_empty) {
        return Err(format!(
            "{ROOT}={root}: expected an absolute device path or {VIRTIOFS_ROOT_PREFIX}TAG"
        ));
    }
    let mode = match value(&params, ROOT_MODE) {
        None => RootMode::Overlay,
        Some(ROOT_MODE_OVERLAY) => RootMode::Overlay,
        Some(ROOT_MODE_RW) => RootMode::ReadWrite,
        Some(other) => {
            return Err(format!(
                "{ROOT_MODE}={other}: expected {ROOT_MODE_OVERLAY} or {ROOT_MODE_RW}"
            ));
        }
    };
    Ok(AgentOptions {
        root: root.to_string(),
        mode,
    })
}

/// A virtio-fs share mounted inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The share's mount tag.
    pub tag: String,
    /// Where it appears in the container (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Reads `hvlite.volumes=TAG:/path[:ro],...`; an entry that is not of that form is an error.
pub fn volumes(cmdline: &str) -> Result<Vec<Volume>, String> {
    let params = params(cmdline);
    let Some(list) = value(&params, CMDLINE_VOLUMES).filter(|l| !l.is_empty()) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|entry| {
            let bad = || format!("{CMDLINE_VOLUMES}: {entry:?} is not TAG:/path[:ro]");
            let mut parts = entry.split(':');
            let (Some(tag), Some(target)) = (parts.next(), parts.next()) else {
                return Err(bad());
            };
            let read_only = match parts.next() {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(_) => return Err(bad()),
            };
            if tag.is_empty() || !target.starts_with('/') || parts.next().is_some() {
                return Err(bad());
            }
            Ok(Volume {
                tag: tag.into(),
                target: target.into(),
                read_only,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn parameters() {
        assert_eq!(
            params("console=ttyS0 ro  quiet\tx=\"a b\" \"y=c d\" e= -- hvlite.agent=1 f"),
            [
                p("console", Some("ttyS0")),
                p("ro", None),
                p("quiet", None),
                p("x", Some("a b")),
                p("y", Some("c d")),
                p("e", Some("")),
            ]
        );
        assert!(params("").is_empty());
        assert_eq!(params("a=b=c\n"), [p("a", Some("b=c"))]);
    }

    #[test]
    fn agent_switch() {
        assert!(agent_enabled(CMDLINE_AGENT));
        assert!(agent_enabled(
            "console=ttyS0 hvlite.agent=1 root=/dev/vda\n"
        ));
        assert!(agent_enabled("hvlite.agent=y"));
        assert!(!agent_enabled("console=ttyS0 root=/dev/vda"));
        assert!(!agent_enabled("hvlite.agent=0"));
        assert!(!agent_enabled("hvlite.agent"));
        assert!(!agent_enabled("hvlite.agent=1 hvlite.agent=0"));
        assert!(agent_enabled("hvlite.agent=0 hvlite.agent=1"));
        // After `--` it is an argument of init, not a kernel option.
        assert!(!agent_enabled("quiet -- hvlite.agent=1"));
        assert!(!agent_enabled("xhvlite.agent=1"));
    }

    #[test]
    fn template_switch() {
        assert!(template_enabled("quiet hvlite.agent=1 hvlite.template=1"));
        assert!(!template_enabled("quiet hvlite.agent=1"));
        assert!(!template_enabled("hvlite.template=0"));
        assert!(!template_enabled("quiet -- hvlite.template=1"));
    }

    #[test]
    fn options() {
        assert_eq!(
            agent_options("hvlite.agent=1"),
            Ok(AgentOptions {
                root: DEFAULT_ROOT.into(),
                mode: RootMode::Overlay
            })
        );
        assert_eq!(
            agent_options("hvlite.root=/dev/vdc hvlite.rootmode=rw"),
            Ok(AgentOptions {
                root: "/dev/vdc".into(),
                mode: RootMode::ReadWrite
            })
        );
        assert_eq!(
            agent_options("hvlite.rootmode=overlay").map(|o| o.mode),
            Ok(RootMode::Overlay)
        );
        assert!(agent_options("hvlite.rootmode=ro").is_err());
        assert!(agent_options("hvlite.rootmode").is_ok()); // no value: the default
        assert!(agent_options("hvlite.root=vdb").is_err());
        assert!(agent_options("hvlite.root=").is_err());
        assert_eq!(
            agent_options("hvlite.root=virtiofs:rootfs").map(|o| o.root),
            Ok("virtiofs:rootfs".into())
        );
        assert!(agent_options("hvlite.root=virtiofs:").is_err());
    }

    #[test]
    fn volume_list() {
        assert_eq!(volumes("hvlite.agent=1"), Ok(vec![]));
        let v = volumes("quiet hvlite.volumes=v0:/data,v1:/etc/conf:ro").unwrap();
        assert_eq!(
            v,
            [
                Volume {
                    tag: "v0".into(),
                    target: "/data".into(),
                    read_only: false
                },
                Volume {
                    tag: "v1".into(),
                    target: "/etc/conf".into(),
                    read_only: true
                }
            ]
        );
        for bad in ["v0", "v0:data", ":/data", "v0:/d:rx", "v0:/d:ro:x"] {
            assert!(volumes(&format!("hvlite.volumes={bad}")).is_err(), "{bad}");
        }
    }
}
