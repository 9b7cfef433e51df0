//! `hvlite template build|list|rm`: the cached templates, ahead of time and by hand.

use std::path::{Path, PathBuf};

use super::template::{self, Origin, Template, TemplateError};
use super::{
    ContainerError, ContainerRoot, agent_disk, container_vm, paths, rootfs::RootMode, template_spec,
};
use crate::config::VmConfig;

/// What `hvlite template build` builds: the template a `hvlite run --rootfs` with the same
/// options restores.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The kernel (default: as `hvlite run`).
    pub kernel: Option<PathBuf>,
    /// vCPUs (default: as `hvlite run`, 2 on PVM hosts).
    pub cpus: Option<u8>,
    /// Memory in MiB (default: as `hvlite run`).
    pub memory_mib: Option<u64>,
    /// Extra kernel options (`--cmdline`).
    pub cmdline: Option<String>,
    /// The template for image roots (`--rootfs IMAGE`, read-write) instead of directories.
    pub image_root: bool,
    /// The template for `--console` runs.
    pub console: bool,
    /// Rebuild even a good template.
    pub force: bool,
}

/// Builds (or finds) the template `opts` describes.
pub fn build(opts: &BuildOptions) -> Result<(Template, Origin), ContainerError> {
    let kernel = match &opts.kernel {
        Some(k) => k.clone(),
        None => paths::default_kernel()?,
    };
    let mut base = VmConfig::new(kernel);
    let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(c) = (opts.cpus).or(crate::host::HostKind::detect().container_cpus(host_cpus)) {
        base.cpus = c;
    }
    if let Some(m) = opts.memory_mib {
        base.memory_mib = m;
    }
    base.cmdline = opts.cmdline.clone();
    base.validate(crate::config::host_ram_mib())
        .map_err(crate::vmm::VmmError::from)?;
    let agent_image = agent_disk::agent_disk(&paths::agent_binary()?)?;
    let mode = if opts.image_root {
        RootMode::ReadWrite
    } else {
        RootMode::Overlay
    };
    let root = ContainerRoot::Image(PathBuf::new(), mode);
    let vm = container_vm(base, &agent_image, &root, &[], opts.console);
    let spec = template_spec(&vm, mode).map_err(TemplateError::NotEligible)?;
    Ok(template::ensure_in(
        &template::templates_dir(),
        &spec,
        true,
        opts.force,
    )?)
}

/// The lines `hvlite template list` prints.
pub fn list_lines(root: &Path) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<32}  {:>4}  {:>7}  {:<7}  {:>9}  {:>8}  KERNEL",
        "KEY", "CPUS", "MEMORY", "ROOT", "RESIDENT", "BUILD"
    )];
    for (key, info) in template::list(root) {
        lines.push(match info {
            Ok(i) => format!(
                "{key:<32}  {:>4}  {:>4}MiB  {:<7}  {:>6}MiB  {:>7.1}s  {}",
                i.cpus,
                i.memory_mib,
                if i.root_read_only { "overlay" } else { "rw" },
                i.memory_written >> 20,
                i.build_ms / 1e3,
                i.kernel
            ),
            Err(e) => format!("{key:<32}  (unreadable: {e})"),
        });
    }
    lines
}
