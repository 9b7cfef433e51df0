//! Templates: container VMs restored instead of booted.
//!
//! A template is the project kernel booted with the agent disk up to the point where the
//! agent waits for the host, paused and snapshotted ([`build`]). `hvlite run --rootfs`
//! restores it (MAP_PRIVATE memory: many containers share its pages) with the container's
//! root image as a drive override of the template's empty placeholder root drive; the agent
//! reconnects after vsock's transport reset and mounts the root once the drive shows its
//! capacity (`crates/hvlite-agent/src/template.rs`).
//!
//! Templates live in `<cache>/templates/<key>/` (`state`, `memory`, `template.json`), where
//! the key hashes everything that changes one ([`TemplateSpec::key`]). They are built in a
//! temporary directory and renamed into place under a lock file, so concurrent first uses
//! build one template and never see a partial one. A template that does not check out
//! (unreadable, CRC or decoding error, another key, a memory file of the wrong size) is
//! rebuilt, and the rebuild is logged.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::paths;
use super::rootfs::hex;
use crate::host::HostKind;
use crate::vmm::persist::{self, MEMORY_FILE, RestoreSpec, STATE_FILE};

pub use super::template_build::build_into;

/// Version of the template layout (files, placeholder drive, agent handshake); part of
/// every key.
const LAYOUT: &str = "hvlite-template-v1";
/// The description of a template, in its directory.
pub const INFO_FILE: &str = "template.json";
/// The drive ids of the agent disk and the container's root in a template.
pub const AGENT_DRIVE: &str = "vda";
/// See [`AGENT_DRIVE`].
pub const ROOT_DRIVE: &str = "vdb";
/// How long the lock of a template being built by another process is waited for.
pub const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Errors finding, checking or building a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("the template's VM: {0}")]
    Build(String),
    #[error("cannot describe the template: {0}")]
    Info(#[source] serde_json::Error),
    #[error("the template's VM ended before its agent connected: {}",
        reason.failure().unwrap_or_else(|| format!("{reason:?}")))]
    GuestEnded {
        reason: crate::exit::ExitReason,
        /// The last lines of its console.
        console: String,
    },
    #[error("this container run cannot use a template: {0}")]
    NotEligible(&'static str),
    #[error("no template {0} in {1}")]
    NotFound(String, PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TemplateError + '_ {
    move |e| TemplateError::Io(path.to_path_buf(), e)
}

/// Everything a template depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The agent disk (its file name carries the hash of the agent binary).
    pub agent_disk: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory.
    pub memory_mib: u64,
    /// The kernel options hvlite adds to its defaults (the template flag included).
    pub cmdline: String,
    /// The vsock CID (the host socket is not part of a template: restores set it).
    pub cid: u64,
    /// Whether the root drive is read-only (overlay roots) or read-write (image roots).
    pub root_read_only: bool,
}

/// What a template's directory says about it ([`INFO_FILE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub key: String,
    pub kernel: String,
    pub kernel_sha256: String,
    pub agent_disk: String,
    pub cpus: u8,
    pub memory_mib: u64,
    pub cmdline: String,
    pub cid: u64,
    pub root_read_only: bool,
    pub hvlite_version: String,
    pub format_version: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// From the start of the boot to the snapshot written.
    pub build_ms: f64,
    pub state_bytes: u64,
    /// Bytes of the memory file that are not holes.
    pub memory_written: u64,
}

/// A checked template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub dir: PathBuf,
    pub info: TemplateInfo,
}

impl Template {
    /// The restore of this template with the container's agent disk and root image.
    /// `vsock_uds` is the container's vsock socket, if it has one (templates have none).
    pub fn restore_spec(
        &self,
        agent_disk: &Path,
        root_image: &Path,
        vsock_uds: Option<PathBuf>,
    ) -> RestoreSpec {
        RestoreSpec {
            state_path: self.dir.join(STATE_FILE),
            mem_path: self.dir.join(MEMORY_FILE),
            drive_overrides: vec![
                (AGENT_DRIVE.into(), agent_disk.into()),
                (ROOT_DRIVE.into(), root_image.into()),
            ],
            net_overrides: Vec::new(),
            vsock_uds,
            resume: true,
        }
    }
}

/// The directory holding every template.
pub fn templates_dir() -> PathBuf {
    paths::cache_dir().join("templates")
}

fn host_tag(host: HostKind) -> &'static str {
    if host.is_pvm() { "pvm" } else { "hardware" }
}

impl TemplateSpec {
    /// The key: SHA-256 of the layout version, hvlite's version, the snapshot format
    /// version, the host kind, the kernel's bytes and every field.
    pub fn key(&self, kernel_sha256: &str, host: HostKind) -> String {
        let mut h = Sha256::new();
        for part in [
            LAYOUT,
            env!("CARGO_PKG_VERSION"),
            &crate::snapshot::FORMAT_VERSION.to_string(),
            host_tag(host),
            kernel_sha256,
            &file_name(&self.agent_disk),
            &self.cpus.to_string(),
            &self.memory_mib.to_string(),
            &self.cmdline,
            &self.cid.to_string(),
            if self.root_read_only { "ro" } else { "rw" },
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex(&h.finalize())[..32].to_string()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The SHA-256 of the kernel's bytes. Hashing 17 MB on every run would cost more than a
/// restore, so the sum is remembered under a key of the file's identity and metadata
/// (path, device, inode, size, modification and change times): any change to the file
/// changes its change time and so the memo.
pub fn kernel_sha256(kernel: &Path, memo_dir: &Path) -> Result<String, TemplateError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(kernel).map_err(io_err(kernel))?;
    let mut h = Sha256::new();
    h.update(kernel.as_os_str().as_encoded_bytes());
    for v in [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
    let memo = memo_dir.join(format!("kernel-{}", &hex(&h.finalize())[..32]));
    if let Ok(sum) = std::fs::read_to_string(&memo)
        && sum.len() == 64
        && sum.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(sum);
    }
    let bytes = std::fs::read(kernel).map_err(io_err(kernel))?;
    let sum = hex(&Sha256::digest(&bytes));
    // A memo that cannot be written only costs the hash next time.
    if std::fs::create_dir_all(memo_dir).is_ok() {
        let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &sum).is_ok() {
            let _ = std::fs::rename(&tmp, &memo);
        }
    }
    Ok(sum)
}

/// Checks the template in `dir` against `key`: its description, its state file (magic,
/// version, CRC, decoding, host kind, consistency) and its memory file's size.
pub fn check(dir: &Path, key: &str) -> Result<TemplateInfo, String> {
    let info_path = dir.join(INFO_FILE);
    let text =
        std::fs::read_to_string(&info_path).map_err(|e| format!("{}: {e}", info_path.display()))?;
    let info: TemplateInfo =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", info_path.display()))?;
    if info.key != key {
        return Err(format!("its key is {}, expected {key}", info.key));
    }
    let spec = RestoreSpec {
        state_path: dir.join(STATE_FILE),
        mem_path: dir.join(MEMORY_FILE),
        ..RestoreSpec::default()
    };
    let (_, cfg) = persist::prepare_restore(&spec, HostKind::detect())
        .map_err(|e| crate::control::error_chain(&e))?;
    let want = cfg.memory_mib << 20;
    let have = std::fs::metadata(&spec.mem_path)
        .map_err(|e| format!("{}: {e}", spec.mem_path.display()))?
        .len();
    if have != want {
        return Err(format!(
            "{}: {have} bytes, expected {want}",
            spec.mem_path.display()
        ));
    }
    let ids: Vec<String> = (0..cfg.disks.len()).map(|i| cfg.disk_id(i)).collect();
    if ids != [AGENT_DRIVE, ROOT_DRIVE] || cfg.vsock.is_none() {
        return Err("its devices are not a template's".into());
    }
    Ok(info)
}

/// How [`ensure`] got its template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It was there and checked out.
    Cached,
    /// It was built now.
    Built,
}

/// Returns the template for `spec`, building it (once, under a lock) when it is missing
/// or does not check out. `progress` prints a line on stderr before a build.
pub fn ensure(spec: &TemplateSpec, progress: bool) -> Result<(Template, Origin), TemplateError> {
    ensure_in(&templates_dir(), spec, progress, false)
}

/// [`ensure`] in `root`; `force` rebuilds even a good template.
pub fn ensure_in(
    root: &Path,
    spec: &TemplateSpec,
    progress: bool,
    force: bool,
) -> Result<(Template, Origin), TemplateError> {
    let start = Instant::now();
    let host = HostKind::detect();
    let sum = kernel_sha256(&spec.kernel, root)?;
    let key = spec.key(&sum, host);
    let dir = root.join(&key);
    if !force && let Ok(info) = check(&dir, &key) {
        log::debug!(
            "template {key} checked in {:.2} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        return Ok((Template { dir, info }, Origin::Cached));
    }
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock_within(&lock, LOCK_WAIT).map_err(io_err(&lock_path))?;
    // Another process may have built it while this one waited.
    match check(&dir, &key) {
        Ok(info) if !force => return Ok((Template { dir, info }, Origin::Cached)),
        Ok(_) => log::info!("template {key}: rebuilding it (--force)"),
        Err(why) if dir.exists() => {
            log::warn!("template {key} is unusable ({why}): rebuilding it");
        }
        Err(_) => {}
    }
    remove_stale_builds(root, &key);
    if progress {
        eprintln!(
            "hvlite: building the container VM template {key} (once: it boots the guest; \
             later runs restore it)"
        );
    }
    let tmp = root.join(format!(".build-{key}-{}", std::process::id()));
    let built = build_into(spec, &tmp).and_then(|stats| {
        let info = TemplateInfo {
            key: key.clone(),
            kernel: spec.kernel.display().to_string(),
            kernel_sha256: sum.clone(),
            agent_disk: spec.agent_disk.display().to_string(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            cmdline: spec.cmdline.clone(),
            cid: spec.cid,
            root_read_only: spec.root_read_only,
            hvlite_version: env!("CARGO_PKG_VERSION").into(),
            format_version: crate::snapshot::FORMAT_VERSION,
            host: host_tag(host).into(),
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_ms: stats.build_ms,
            state_bytes: stats.state_bytes,
            memory_written: stats.memory_written,
        };
        let text = serde_json::to_string_pretty(&info).map_err(TemplateError::Info)?;
        let path = tmp.join(INFO_FILE);
        std::fs::write(&path, text).map_err(io_err(&path))?;
        replace_dir(&tmp, &dir)?;
        Ok(info)
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let info = built?;
    log::info!(
        "template {key} built in {:.1} s: state {} bytes, memory {} bytes not holes",
        info.build_ms / 1e3,
        info.state_bytes,
        info.memory_written
    );
    Ok((Template { dir, info }, Origin::Built))
}

/// Takes the exclusive lock on `file`, waiting at most `wait`.
fn lock_within(file: &File, wait: Duration) -> io::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("another hvlite held the template lock for {wait:?}"),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Removes build directories of `key` that a killed build left (the caller holds the lock,
/// so no live build owns them).
fn remove_stale_builds(root: &Path, key: &str) {
    let prefix = format!(".build-{key}-");
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            log::info!(
                "removing {}, left by a build that did not finish",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Puts the directory `tmp` at `dir`, replacing what is there.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<(), TemplateError> {
    if dir.exists() {
        let old = dir.with_extension(format!("old{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(tmp, dir).map_err(io_err(dir))
}

/// Every template in `root`, with what its description says (or why it is unreadable).
pub fn list(root: &Path) -> Vec<(String, Result<TemplateInfo, String>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        let info_path = e.path().join(INFO_FILE);
        let info = std::fs::read_to_string(&info_path)
            .map_err(|err| err.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|err| err.to_string()));
        out.push((name, info));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Removes the template `key` (a key prefix of at least 4 characters), or all with `None`;
/// returns the keys removed.
pub fn remove(root: &Path, key: Option<&str>) -> Result<Vec<String>, TemplateError> {
    let mut removed = Vec::new();
    for (name, _) in list(root) {
        let hit = match key {
            None => true,
            Some(k) => k.len() >= 4 && name.starts_with(k),
        };
        if hit {
            let dir = root.join(&name);
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            let _ = std::fs::remove_file(root.join(format!("{name}.lock")));
            removed.push(name);
        }
    }
    match key {
        Some(k) if removed.is_empty() => Err(TemplateError::NotFound(k.into(), root.into())),
        _ => Ok(removed),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
