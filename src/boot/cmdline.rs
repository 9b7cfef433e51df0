//! The guest kernel command line: hvlite's defaults, the PVM measures where they apply,
//! the root device, the user's `--cmdline`, and the command for the guest init.

use linux_loader::cmdline::{Cmdline, Error as LinuxCmdlineError};
use vm_memory::GuestAddress;

use super::layout::CMDLINE_MAX_SIZE;
use crate::host::HostKind;
use crate::initcmd;

/// Options every guest gets. Later options (the user's) override earlier ones.
/// - `console=ttyS0`: the serial console on COM1 is the guest's console.
/// - `reboot=k`: reboot through the i8042 reset line, which ends the VM.
/// - `panic=-1`: reboot (so end the VM) at once on a kernel panic.
/// - `8250.nr_uarts=1`: probe one UART only (each probe is emulated port I/O on PVM).
/// - `no_timer_check` / `tsc=reliable`: skip the IRQ0 timer check and the clocksource
///   watchdog; the virtual TSC and kvmclock are trusted.
/// - `i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd`: the i8042 (there for the reset
///   line and Ctrl-Alt-Del) has no mouse port and no multiplexer, and the keyboard is not
///   probed or configured: a few port accesses instead of command round trips with
///   timeouts. Kernels without the i8042 driver ignore these.
pub const DEFAULT_OPTIONS: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 \
     no_timer_check tsc=reliable i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// What the guest init runs when no command is given.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Added when the guest boots from an initramfs: unpack it into ramfs rather than tmpfs.
/// ramfs does less work per page, which saves about 4 s of an emulated boot on PVM hosts
/// (and is harmless elsewhere). A user `rootfstype=` later on the line overrides it.
pub const INITRAMFS_OPTIONS: &str = "rootfstype=ramfs";

/// Options for PVM hosts only, keeping the guest kernel off what KVM's emulator and
/// shadow MMU there get wrong (CPUID masks on leaves 1 and 7 do not reach the guest, so
/// the kernel is told on its command line):
/// - `noxsave`: xsave/xrstor;
/// - `clearcpuid=`: rep_good (112), cx16 (141), movbe (150), popcnt (151), fsgsbase (288),
///   erms (297), smap (308), fsrm (580). rep_good/erms/fsrm make the kernel use byte-wise
///   `rep movsb`/`rep stosb` copies, which the emulator runs one iteration at a time;
/// - `nopcid`: with PCIDs, user processes that run concurrently (a shell pipeline) were
///   seen reading another address space's data (busybox segfaulting on a NULL TLS pointer
///   in about half of `cat | grep` runs); without PCIDs every address-space switch flushes
///   and the failures are gone.
pub const PVM_OPTIONS: &str = "noxsave nopcid clearcpuid=112,141,150,151,288,297,308,580";

/// Where the root filesystem is when a disk holds it: always the first virtio-blk disk.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// How the root filesystem on [`ROOT_DEVICE`] is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootAccess {
    ReadOnly,
    ReadWrite,
}

/// Errors assembling the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line too long: at most {} bytes in all; shorten --cmdline or the command", CMDLINE_MAX_SIZE - 1)]
    TooLong,
    #[error("invalid kernel command line: {0}")]
    Invalid(LinuxCmdlineError),
    #[error("cannot pass the command to the guest")]
    Command(#[from] initcmd::EncodeError),
    #[error(
        "--cmdline already passes arguments to init after `--`; give the command either there or after hvlite's `--`"
    )]
    InitArgsTwice,
}

impl From<LinuxCmdlineError> for CmdlineError {
    fn from(e: LinuxCmdlineError) -> Self {
        match e {
            LinuxCmdlineError::TooLarge => CmdlineError::TooLong,
            other => CmdlineError::Invalid(other),
        }
    }
}

/// Splits a user command line into kernel options and init arguments at a lone `--`.
fn split_init_args(user: &str) -> (&str, Option<&str>) {
    let padded_start = user.starts_with("-- ") || user == "--";
    if padded_start {
        return ("", Some(user[2..].trim()));
    }
    match user
        .find(" -- ")
        .or_else(|| user.ends_with(" --").then(|| user.len() - 3))
    {
        Some(i) => (&user[..i], Some(user[i + 3..].trim())),
        None => (user, None),
    }
}

/// A virtio-mmio device announced to the guest (`virtio_mmio.device=SIZE@BASE:IRQ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioEntry {
    /// Guest physical address of the device's register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// The device's IRQ line.
    pub irq: u32,
}

/// What the command line is built from.
#[derive(Clone, Copy, Debug)]
pub struct CmdlineSpec<'a> {
    /// The kind of KVM host.
    pub host: HostKind,
    /// Whether an initramfs is loaded.
    pub initrd: bool,
    /// The root filesystem is on [`ROOT_DEVICE`]: `root=/dev/vda ro` (or `rw`) goes before
    /// the user's options, which may still override it.
    pub root: Option<RootAccess>,
    /// The user's `--cmdline`.
    pub user: Option<&'a str>,
    /// The command for the guest init.
    pub command: Option<&'a [String]>,
    /// The virtio-mmio devices, in the order the guest should number them.
    pub virtio_devices: &'a [VirtioMmioEntry],
}

impl<'a> CmdlineSpec<'a> {
    /// hvlite's defaults for `host`: no initramfs, no user options, no command.
    pub fn new(host: HostKind) -> Self {
        Self {
            host,
            initrd: false,
            root: None,
            user: None,
            command: None,
            virtio_devices: &[],
        }
    }
}

/// Builds the command line described by `spec`.
pub fn build(spec: &CmdlineSpec<'_>) -> Result<Cmdline, CmdlineError> {
    let (host, user, command) = (spec.host, spec.user, spec.command);
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE)?;
    cl.insert_str(DEFAULT_OPTIONS)?;
    if spec.initrd {
        cl.insert_str(INITRAMFS_OPTIONS)?;
    }
    if host.is_pvm() {
        cl.insert_str(PVM_OPTIONS)?;
    }
    for dev in spec.virtio_devices {
        cl.add_virtio_mmio_device(dev.size, GuestAddress(dev.base), dev.irq, None)?;
    }
    if let Some(mode) = spec.root {
        let mode = match mode {
            RootAccess::ReadOnly => "ro",
            RootAccess::ReadWrite => "rw",
        };
        cl.insert_str(format!("root={ROOT_DEVICE} {mode}"))?;
    }
    let (user_opts, user_init) = user.map_or(("", None), split_init_args);
    if !user_opts.trim().is_empty() {
        cl.insert_str(user_opts)?;
    }
    match (command, user_init) {
        (Some(_), Some(init)) if !init.is_empty() => return Err(CmdlineError::InitArgsTwice),
        (Some(cmd), _) => cl.insert_init_args(initcmd::encode_checked(cmd)?)?,
        (None, Some(init)) if !init.is_empty() => cl.insert_init_args(init)?,
        // No command: the init runs its shell. On PVM hosts say so explicitly: the kernel
        // hands unknown bare words of the command line (`noxsave` of PVM_OPTIONS on 6.1)
        // to init as arguments, and the init takes its last argument for the command.
        (None, _) if host.is_pvm() => {
            cl.insert_init_args(initcmd::encode_checked(&[DEFAULT_SHELL.to_string()])?)?;
        }
        (None, _) => {}
    }
    Ok(cl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build3(
        host: HostKind,
        user: Option<&str>,
        command: Option<&[String]>,
    ) -> Result<Cmdline, CmdlineError> {
        build(&CmdlineSpec {
            user,
            command,
            ..CmdlineSpec::new(host)
        })
    }

    #[test]
    fn virtio_devices_are_announced_in_order() {
        let devs = [
            VirtioMmioEntry {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            VirtioMmioEntry {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let spec = CmdlineSpec {
            virtio_devices: &devs,
            ..CmdlineSpec::new(HostKind::Hardware)
        };
        let t = text(&build(&spec).unwrap());
        assert!(
            t.ends_with("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
            "{t}"
        );
    }

    #[test]
    fn initramfs_boots_unpack_into_ramfs() {
        let spec = CmdlineSpec {
            initrd: true,
            ..CmdlineSpec::new(HostKind::Hardware)
        };
        let t = text(&build(&spec).unwrap());
        assert_eq!(t, format!("{DEFAULT_OPTIONS} {INITRAMFS_OPTIONS}"));
        assert!(!text(&build3(HostKind::Hardware, None, None).unwrap()).contains("rootfstype"));
    }

    fn text(cl: &Cmdline) -> String {
        cl.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn defaults_then_user_options() {
        let cl = build3(HostKind::Hardware, Some("loglevel=8 foo"), None).unwrap();
        assert_eq!(text(&cl), format!("{DEFAULT_OPTIONS} loglevel=8 foo"));
    }

    #[test]
    fn the_root_device_goes_before_user_options() {
        let spec = CmdlineSpec {
            root: Some(RootAccess::ReadWrite),
            user: Some("quiet"),
            ..CmdlineSpec::new(HostKind::Hardware)
        };
        let t = text(&build(&spec).unwrap());
        assert_eq!(t, format!("{DEFAULT_OPTIONS} root=/dev/vda rw quiet"));
        let spec = CmdlineSpec {
            root: Some(RootAccess::ReadOnly),
            ..CmdlineSpec::new(HostKind::Hardware)
        };
        assert!(text(&build(&spec).unwrap()).ends_with(" root=/dev/vda ro"));
    }

    #[test]
    fn pvm_measures_only_on_pvm() {
        let hw = text(&build3(HostKind::Hardware, None, None).unwrap());
        assert!(!hw.contains("clearcpuid") && !hw.contains("noxsave"));
        let pvm = text(&build3(HostKind::Pvm, None, None).unwrap());
        // Without a command the init is told to run its shell explicitly there.
        let shell = initcmd::encode(&[DEFAULT_SHELL.to_string()]);
        assert_eq!(pvm, format!("{DEFAULT_OPTIONS} {PVM_OPTIONS} -- {shell}"));
    }

    #[test]
    fn command_goes_after_separator_encoded() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 7".to_string()];
        let t = text(&build3(HostKind::Hardware, Some("quiet"), Some(&cmd)).unwrap());
        let (opts, init) = t.split_once(" -- ").unwrap();
        assert!(opts.ends_with(" quiet"));
        assert!(!init.contains(' '));
        assert_eq!(initcmd::decode(init).unwrap(), cmd);
    }

    #[test]
    fn user_init_args_pass_through_or_conflict() {
        let t = text(&build3(HostKind::Hardware, Some("quiet -- single"), None).unwrap());
        assert!(t.ends_with(" quiet -- single"), "{t}");
        let cmd = vec!["true".to_string()];
        assert!(matches!(
            build3(HostKind::Hardware, Some("quiet -- single"), Some(&cmd)),
            Err(CmdlineError::InitArgsTwice)
        ));
        assert_eq!(split_init_args("-- x"), ("", Some("x")));
        assert_eq!(split_init_args("a --"), ("a", Some("")));
        assert_eq!(split_init_args("a --b"), ("a --b", None));
    }

    #[test]
    fn too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build3(HostKind::Hardware, Some(&long), None),
            Err(CmdlineError::TooLong)
        ));
        let cmd = vec!["y".repeat(1000)];
        assert!(matches!(
            build3(HostKind::Hardware, None, Some(&cmd)),
            Err(CmdlineError::Command(initcmd::EncodeError::TooLong { .. }))
        ));
        let empty = vec![String::new()];
        assert!(build3(HostKind::Hardware, None, Some(&empty)).is_err());
    }

    #[test]
    fn bad_characters_are_rejected() {
        assert!(build3(HostKind::Hardware, Some("a\nb"), None).is_err());
    }
}
