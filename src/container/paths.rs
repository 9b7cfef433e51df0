//! Where hvlite keeps what it builds or installs outside a project checkout: the cache of
//! generated images, and the default guest kernel and agent that `scripts/setup.sh`
//! installs, so that `hvlite run --rootfs DIR -- CMD` needs no other paths.

use std::path::{Path, PathBuf};

/// Environment variable naming the cache directory (default `~/.cache/hvlite`).
pub const CACHE_ENV: &str = "HVLITE_CACHE";
/// Environment variable naming the data directory (default `~/.local/share/hvlite`).
pub const HOME_ENV: &str = "HVLITE_HOME";
/// Environment variable naming the default kernel.
pub const KERNEL_ENV: &str = "HVLITE_KERNEL";
/// Environment variable naming the guest agent binary.
pub const AGENT_ENV: &str = "HVLITE_AGENT";
/// File name of the installed kernel in the data directory.
pub const KERNEL_FILE: &str = "vmlinux";
/// File name of the installed (static) guest agent in the data directory.
pub const AGENT_FILE: &str = "hvlite-agent";

/// Errors finding a default artefact.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error(
        "no {what} given and none installed: looked for {tried}; run scripts/setup.sh or pass {flag}"
    )]
    NotInstalled {
        what: &'static str,
        tried: String,
        flag: &'static str,
    },
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/root"))
}

/// The cache directory: `$HVLITE_CACHE`, else `$XDG_CACHE_HOME/hvlite`, else `~/.cache/hvlite`.
pub fn cache_dir() -> PathBuf {
    env_path(CACHE_ENV)
        .or_else(|| env_path("XDG_CACHE_HOME").map(|d| d.join("hvlite")))
        .unwrap_or_else(|| home().join(".cache/hvlite"))
}

/// The data directory: `$HVLITE_HOME`, else `$XDG_DATA_HOME/hvlite`, else `~/.local/share/hvlite`.
pub fn data_dir() -> PathBuf {
    env_path(HOME_ENV)
        .or_else(|| env_path("XDG_DATA_HOME").map(|d| d.join("hvlite")))
        .unwrap_or_else(|| home().join(".local/share/hvlite"))
}

/// The first existing file among `candidates`, or an error listing them.
fn first_existing(
    candidates: Vec<PathBuf>,
    what: &'static str,
    flag: &'static str,
) -> Result<PathBuf, PathsError> {
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(PathsError::NotInstalled { what, tried, flag })
}

/// The kernel to boot when `--kernel` is not given: `$HVLITE_KERNEL`, else the installed
/// `vmlinux` in the data directory.
pub fn default_kernel() -> Result<PathBuf, PathsError> {
    if let Some(k) = env_path(KERNEL_ENV) {
        return Ok(k);
    }
    first_existing(vec![data_dir().join(KERNEL_FILE)], "kernel", "--kernel")
}

/// The guest agent: `$HVLITE_AGENT`, else `hvlite-agent` beside the hvlite executable,
/// else the installed one in the data directory.
pub fn agent_binary() -> Result<PathBuf, PathsError> {
    if let Some(a) = env_path(AGENT_ENV) {
        return Ok(a);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        candidates.push(dir.join(AGENT_FILE));
    }
    candidates.push(data_dir().join(AGENT_FILE));
    first_existing(candidates, "guest agent", "HVLITE_AGENT=PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artefacts_name_every_place_tried() {
        let dir = std::env::temp_dir().join("hvlite-paths-test-none");
        let err = first_existing(vec![dir.join("a"), dir.join("b")], "kernel", "--kernel")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hvlite-paths-test-none/a"), "{err}");
        assert!(err.contains("hvlite-paths-test-none/b"), "{err}");
        assert!(
            err.contains("--kernel") && err.contains("scripts/setup.sh"),
            "{err}"
        );
    }

    #[test]
    fn first_existing_file_wins() {
        let exe = std::env::current_exe().unwrap();
        let missing = exe.with_extension("missing");
        assert_eq!(
            first_existing(vec![missing, exe.clone()], "x", "--x").unwrap(),
            exe
        );
    }
}
