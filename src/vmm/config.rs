//! The plain description of a VM that front ends (the CLI now, a config file or an API
//! later) build, and its validation.

use std::path::PathBuf;

use crate::boot::mptable::MAX_CPUS;

/// Default number of vCPUs.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// What to boot and with which resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line options, appended to hvlite's defaults.
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Command for the guest init to run; hvlite then exits with its status.
    pub command: Option<Vec<String>>,
}

/// Errors in a [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus must be between 1 and {max}, got {got}")]
    Cpus { got: u64, max: u8 },
    #[error("--memory must be at least 1 MiB")]
    NoMemory,
    #[error("--memory {got} MiB is more than this host's {host} MiB of RAM")]
    MemoryOverHost { got: u64, host: u64 },
    #[error("the command after `--` is empty")]
    EmptyCommand,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: None,
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            command: None,
        }
    }

    /// Guest memory in bytes.
    pub fn mem_size(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks the resource limits against the host's RAM (`host_ram_mib`).
    pub fn validate(&self, host_ram_mib: u64) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus {
                got: u64::from(self.cpus),
                max: MAX_CPUS,
            });
        }
        if self.memory_mib == 0 {
            return Err(ConfigError::NoMemory);
        }
        if self.memory_mib > host_ram_mib {
            return Err(ConfigError::MemoryOverHost {
                got: self.memory_mib,
                host: host_ram_mib,
            });
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(ConfigError::EmptyCommand);
        }
        Ok(())
    }
}

/// The host's physical RAM in MiB.
pub fn host_ram_mib() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let bytes = u64::try_from(pages).unwrap_or(0) * u64::try_from(page_size).unwrap_or(0);
    bytes >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let mut c = VmConfig::new("k".into());
        assert_eq!(c.validate(1024), Ok(()));
        c.cpus = 0;
        assert!(matches!(
            c.validate(1024),
            Err(ConfigError::Cpus { got: 0, .. })
        ));
        c.cpus = MAX_CPUS + 1;
        assert!(c.validate(1024).is_err());
        c.cpus = MAX_CPUS;
        assert_eq!(c.validate(1024), Ok(()));
        c.memory_mib = 0;
        assert_eq!(c.validate(1024), Err(ConfigError::NoMemory));
        c.memory_mib = 2048;
        assert_eq!(
            c.validate(1024),
            Err(ConfigError::MemoryOverHost {
                got: 2048,
                host: 1024
            })
        );
        c.memory_mib = 64;
        c.command = Some(vec![]);
        assert_eq!(c.validate(1024), Err(ConfigError::EmptyCommand));
    }

    #[test]
    fn host_ram_is_known() {
        assert!(host_ram_mib() > 0);
    }
}
