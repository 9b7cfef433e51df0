//! A container's network, as Kata Containers' "tcfilter" model has it: the engine (podman
//! with netavark or CNI) makes a network namespace with a veth end (`eth0`) holding the
//! container's address before `create`; `create` adds a TAP to that namespace and joins TAP
//! and veth with tc ingress filters that redirect every frame to the other one (`mirred`),
//! both ways. The VMM, started inside the namespace, opens the TAP; the guest's NIC gets the
//! veth's MAC and the kernel configures its IPv4 address, prefix and default gateway from
//! the `ip=` option (the one `hvlite run --net` guests use). The engine's port forwarding
//! (iptables DNAT to the container's address) then reaches the guest unchanged.
//!
//! The namespace is read and changed with iproute2's `ip` and `tc`, run in the namespace
//! (setns between fork and exec), and `ip -j` JSON is parsed here.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::config::NetConfig;
use crate::devices::virtio::net::parse_mac;

/// The TAP `create` adds to the container's network namespace (one per namespace).
pub const TAP_NAME: &str = "tap0_hvlite";
/// ioctl(2) on a namespace file: its type (a CLONE_NEW* flag); linux/nsfs.h.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// The name of the guest's NIC (its only one).
const GUEST_DEVICE: &str = "eth0";

/// A container's connected network: what `create` found and made, kept in the state for
/// the monitor (the VM's NIC) and `delete` (the clean-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The engine's network namespace (`linux.namespaces`, type network).
    pub netns: PathBuf,
    /// The engine's interface there (the veth end).
    pub interface: String,
    /// The TAP joined to it.
    pub tap: String,
    /// The interface's MAC, which the guest's NIC takes.
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// Errors of the network set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {0}: no such file (the engine's namespace is gone?)")]
    NoNetns(PathBuf),
    #[error("network namespace {0}: {1}")]
    Netns(PathBuf, #[source] io::Error),
    #[error("cannot run `{0}` (is iproute2 installed?)")]
    Spawn(String, #[source] io::Error),
    #[error("`{0}` in network namespace {1} failed: {2}")]
    Command(String, PathBuf, String),
    #[error("cannot read the output of `{0}`: {1}")]
    Parse(String, String),
    #[error("{0} is not a network namespace")]
    NotNetns(PathBuf),
    #[error("interface {0} has MTU {1}: the guest's NIC uses 1500 (no smaller MTU yet)")]
    Mtu(String, u32),
}

/// The network namespace a spec names (`linux.namespaces`, type network, with a path).
/// None when there is none (the VM gets no NIC) or it is a new one (nothing in it).
pub fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

impl Network {
    /// The kernel's `ip=` option for the guest's NIC (static, no autoconfiguration).
    pub fn kernel_option(&self) -> String {
        let mask = Ipv4Addr::from(prefix_mask(self.prefix));
        let gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        format!("ip={}::{gateway}:{mask}::{GUEST_DEVICE}:off", self.address)
    }

    /// The VM's NIC: the TAP, with the engine interface's MAC.
    pub fn nic(&self) -> Result<NetConfig, NetworkError> {
        let mac = parse_mac(&self.mac).map_err(|e| {
            NetworkError::Parse(format!("MAC of {}", self.interface), e.to_string())
        })?;
        Ok(NetConfig {
            tap: self.tap.clone(),
            mac: Some(mac),
            tx_rate_limiter: None,
            rx_rate_limiter: None,
        })
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// An interface as `ip -j addr show` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The first global IPv4 address and its prefix.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub loopback: bool,
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    addr_info: Vec<JsonAddr>,
}

#[derive(Deserialize)]
struct JsonAddr {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
    gateway: Option<String>,
}

/// Parses `ip -j addr show`.
pub fn parse_interfaces(json: &str) -> Result<Vec<Interface>, String> {
    let links: Vec<JsonLink> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(links
        .into_iter()
        .map(|l| Interface {
            ipv4: l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet" && a.scope == "global")
                .find_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen?))),
            loopback: l.link_type == "loopback",
            name: l.ifname,
            mac: l.address,
            mtu: l.mtu,
        })
        .collect())
}

/// The interface to give the guest: `eth0` if it has an IPv4 address, else the first
/// other non-loopback one that has; None when there is none (`--network none`).
pub fn choose(interfaces: &[Interface]) -> Option<&Interface> {
    let usable = || {
        interfaces
            .iter()
            .filter(|i| !i.loopback && i.ipv4.is_some())
    };
    usable()
        .find(|i| i.name == "eth0")
        .or_else(|| usable().next())
}

/// The default gateway in `ip -j -4 route show default dev IF`.
pub fn parse_gateway(json: &str) -> Result<Option<Ipv4Addr>, String> {
    let routes: Vec<JsonRoute> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(routes
        .iter()
        .filter(|r| r.dst == "default")
        .find_map(|r| r.gateway.as_deref()?.parse().ok()))
}

/// An open network namespace, where commands run.
struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    fn open(path: &Path) -> Result<Self, NetworkError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetworkError::NoNetns(path.into()),
            _ => NetworkError::Netns(path.into(), e),
        })?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only returns a number; the fd is open.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetworkError::NotNetns(path.into()));
        }
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    /// Runs `program args` in the namespace; returns its stdout.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, NetworkError> {
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        enter_before_exec(&mut cmd, &self.file);
        let out = cmd
            .output()
            .map_err(|e| NetworkError::Spawn(line.clone(), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(NetworkError::Command(line, self.path.clone(), err));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Makes `cmd`'s child join the network namespace `netns` before it executes.
pub fn enter_before_exec(cmd: &mut Command, netns: &File) {
    let fd = netns.as_raw_fd();
    // SAFETY: between fork and exec the child makes one system call (setns) on an fd the
    // parent keeps open until the child has started; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Opens the namespace at `path` (to start the monitor in it).
pub fn open_netns(path: &Path) -> Result<File, NetworkError> {
    Netns::open(path).map(|ns| ns.file)
}

/// Reads the engine's interface in `netns`: None when it has none with an IPv4 address.
pub fn discover(netns: &Path) -> Result<Option<Network>, NetworkError> {
    let ns = Netns::open(netns)?;
    let parse = |cmd: &str, e: String| NetworkError::Parse(cmd.into(), e);
    let addrs = ns.run("ip", &["-j", "addr", "show"])?;
    let interfaces = parse_interfaces(&addrs).map_err(|e| parse("ip -j addr show", e))?;
    let Some(iface) = choose(&interfaces) else {
        return Ok(None);
    };
    let others: Vec<_> = interfaces
        .iter()
        .filter(|i| !i.loopback && i.ipv4.is_some() && i.name != iface.name)
        .map(|i| i.name.as_str())
        .collect();
    if !others.is_empty() {
        log::warn!(
            "only {} is connected to the VM; not {}",
            iface.name,
            others.join(", ")
        );
    }
    if iface.mtu < 1500 {
        return Err(NetworkError::Mtu(iface.name.clone(), iface.mtu));
    }
    let routes = ns.run(
        "ip",
        &["-j", "-4", "route", "show", "default", "dev", &iface.name],
    )?;
    let gateway = parse_gateway(&routes).map_err(|e| parse("ip -j -4 route show", e))?;
    let (address, prefix) = iface.ipv4.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    Ok(Some(Network {
        netns: netns.into(),
        interface: iface.name.clone(),
        tap: TAP_NAME.into(),
        mac: iface.mac.clone(),
        address,
        prefix,
        gateway,
        mtu: iface.mtu,
    }))
}

/// Adds the TAP and the tc redirects both ways; undoes what it did on failure.
pub fn connect(net: &Network) -> Result<(), NetworkError> {
    let ns = Netns::open(&net.netns)?;
    let result = (|| {
        let (tap, iface, mtu) = (
            net.tap.as_str(),
            net.interface.as_str(),
            net.mtu.to_string(),
        );
        ns.run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ns.run("ip", &["link", "set", "dev", tap, "mtu", &mtu, "up"])?;
        for (from, to) in [(iface, tap), (tap, iface)] {
            ns.run(
                "tc",
                &["qdisc", "add", "dev", from, "handle", "ffff:", "ingress"],
            )?;
            ns.run(
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = disconnect(net);
    }
    result
}

/// Removes the TAP (with its filter) and the interface's ingress qdisc. A namespace the
/// engine already removed took them with it.
pub fn disconnect(net: &Network) -> Result<(), NetworkError> {
    let ns = match Netns::open(&net.netns) {
        Ok(ns) => ns,
        Err(NetworkError::NoNetns(_) | NetworkError::NotNetns(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    // What iproute2 says when the device or the qdisc is not there (any more).
    let gone = |e: &NetworkError| {
        matches!(e, NetworkError::Command(_, _, msg)
            if ["Cannot find device", "Invalid handle", "No such file"]
                .iter()
                .any(|m| msg.contains(m)))
    };
    let mut first_err = None;
    for (program, args) in [
        ("ip", vec!["link", "del", "dev", net.tap.as_str()]),
        (
            "tc",
            vec!["qdisc", "del", "dev", net.interface.as_str(), "ingress"],
        ),
    ] {
        match ns.run(program, &args) {
            Ok(_) => {}
            Err(e) if gone(&e) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
