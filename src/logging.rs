//! JSON-lines logging: a [`log::Log`] that writes one JSON object per record, with
//! ECS-compatible field names, to a file or stderr (see docs/logging-and-metrics.md).
//!
//! The level filter uses env_logger's directive syntax (`info`, `hvlite::vmm=debug,warn`,
//! a bare module name meaning `trace`), so `HVLITE_LOG` means the same whichever
//! format is in use.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};
use serde::{Serialize, Serializer};

/// Environment variable holding the level directives.
pub const LOG_ENV: &str = "HVLITE_LOG";
/// Directives used when neither the caller nor [`LOG_ENV`] gives any.
pub const DEFAULT_LEVEL: &str = "info";
/// Permissions of a log or metrics file hvlite creates: lines may hold guest command
/// lines and paths, so only the owner reads them.
pub const FILE_MODE: u32 = 0o600;

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log file {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error(
        "bad log level directive {0:?} (expected off, error, warn, info, debug, trace or MODULE=LEVEL)"
    )]
    Level(String),
    #[error("a logger is already installed")]
    AlreadySet(#[source] log::SetLoggerError),
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDest {
    /// The process's stderr.
    Stderr,
    /// A file, appended to and created if missing (mode [`FILE_MODE`]).
    File(PathBuf),
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's human format.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A level filter: a global level and per-module levels, parsed from env_logger's
/// directive syntax. The most specific module prefix wins. In JSON it is the directive
/// string.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct LevelSpec {
    default: LevelFilter,
    /// (module path, level), as written.
    modules: Vec<(String, LevelFilter)>,
}

impl Default for LevelSpec {
    fn default() -> Self {
        Self::global(LevelFilter::Info)
    }
}

/// Parses one level name, case-insensitively; `warning` (Firecracker's name) means warn.
fn parse_level_name(s: &str) -> Option<LevelFilter> {
    if s.eq_ignore_ascii_case("warning") {
        return Some(LevelFilter::Warn);
    }
    s.parse().ok()
}

impl LevelSpec {
    /// One level for every module.
    pub fn global(level: LevelFilter) -> Self {
        Self {
            default: level,
            modules: Vec::new(),
        }
    }

    /// The directives in `HVLITE_LOG`, or [`DEFAULT_LEVEL`] when it is unset or empty.
    pub fn from_env() -> Result<Self, LoggingError> {
        match std::env::var(LOG_ENV) {
            Ok(s) if !s.trim().is_empty() => s.parse(),
            _ => DEFAULT_LEVEL.parse(),
        }
    }

    /// The level for records whose target is `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .filter(|(m, _)| {
                target
                    .strip_prefix(m.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .max_by_key(|(m, _)| m.len())
            .map_or(self.default, |&(_, level)| level)
    }

    /// The most verbose level any module gets (for [`log::set_max_level`]).
    pub fn max_level(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|&(_, l)| l)
            .fold(self.default, Ord::max)
    }
}

impl std::str::FromStr for LevelSpec {
    type Err = LoggingError;

    /// Parses `DIRECTIVE[,DIRECTIVE...]`, each `LEVEL`, `MODULE=LEVEL` or `MODULE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = Self::global(LevelFilter::Off);
        let mut any = false;
        for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let bad = || LoggingError::Level(d.to_string());
            any = true;
            match d.split_once('=') {
                Some((module, level)) => {
                    let level = parse_level_name(level.trim()).ok_or_else(bad)?;
                    let module = module.trim();
                    if module.is_empty() {
                        return Err(bad());
                    }
                    spec.modules.push((module.to_string(), level));
                }
                None => match parse_level_name(d) {
                    Some(level) => spec.default = level,
                    None if d.chars().all(|c| c.is_alphanumeric() || "_:".contains(c)) => {
                        spec.modules.push((d.to_string(), LevelFilter::Trace));
                    }
                    None => return Err(bad()),
                },
            }
        }
        // As env_logger: no directives at all means error; with only module directives,
        // other modules are off.
        if !any {
            spec.default = LevelFilter::Error;
        }
        Ok(spec)
    }
}

impl fmt::Display for LevelSpec {
    /// Writes directives that parse back to an equal spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.default.as_str().to_ascii_lowercase())?;
        for (m, l) in &self.modules {
            write!(f, ",{m}={}", l.as_str().to_ascii_lowercase())?;
        }
        Ok(())
    }
}

impl TryFrom<String> for LevelSpec {
    type Error = LoggingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LevelSpec> for String {
    fn from(spec: LevelSpec) -> Self {
        spec.to_string()
    }
}

/// Now, as RFC 3339 UTC with microseconds (`2024-05-01T12:00:00.123456Z`).
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Opens `path` for appending, creating it with mode [`FILE_MODE`] if missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Serializes a `Display` value as a JSON string without an intermediate `String`.
struct AsJsonStr<'a, T: fmt::Display + ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> Serialize for AsJsonStr<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// One log line; field order is the order in the output.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "log.level")]
    level: &'a str,
    #[serde(rename = "log.logger")]
    logger: &'a str,
    message: AsJsonStr<'a, fmt::Arguments<'a>>,
    #[serde(rename = "vm.id")]
    vm_id: &'a str,
    #[serde(rename = "process.pid")]
    pid: u32,
    #[serde(
        rename = "process.thread.name",
        skip_serializing_if = "Option::is_none"
    )]
    thread: Option<&'a str>,
    #[serde(rename = "event.dataset")]
    dataset: &'static str,
}

/// `event.dataset` of log lines.
pub const LOG_DATASET: &str = "hvlite.log";

/// A logger writing one JSON object per line to `out`, each line in a single write and
/// flushed at once, so nothing is lost if the process exits right after.
pub struct JsonLogger {
    out: Mutex<Box<dyn Write + Send>>,
    vm_id: String,
    spec: LevelSpec,
}

impl JsonLogger {
    /// A logger for VM `vm_id` writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, vm_id: &str, spec: LevelSpec) -> Self {
        Self {
            out: Mutex::new(out),
            vm_id: vm_id.to_string(),
            spec,
        }
    }

    /// A logger writing to `dest`.
    pub fn open(dest: &LogDest, vm_id: &str, spec: LevelSpec) -> Result<Self, LoggingError> {
        let out: Box<dyn Write + Send> = match dest {
            LogDest::Stderr => Box::new(io::stderr()),
            LogDest::File(path) => {
                Box::new(open_append(path).map_err(|e| LoggingError::Open(path.clone(), e))?)
            }
        };
        Ok(Self::new(out, vm_id, spec))
    }

    /// The line for `record`, newline included.
    pub fn format(&self, record: &Record<'_>) -> Vec<u8> {
        let thread = std::thread::current();
        let line = Line {
            timestamp: timestamp_now(),
            level: record.level().as_str(),
            logger: record.target(),
            message: AsJsonStr(record.args()),
            vm_id: &self.vm_id,
            pid: std::process::id(),
            thread: thread.name(),
            dataset: LOG_DATASET,
        };
        let mut buf = Vec::with_capacity(256);
        // Writing into a Vec cannot fail and every field serializes.
        let _ = serde_json::to_writer(&mut buf, &line);
        buf.push(b'\n');
        buf
    }
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.spec.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.format(record);
        // A poisoned lock only means another thread panicked mid-write; keep logging.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // Logging has nowhere to report its own failures.
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }

    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.flush();
    }
}

/// Installs a [`JsonLogger`] writing to `dest` as the process's logger.
pub fn init_json(dest: &LogDest, vm_id: &str, spec: LevelSpec) -> Result<(), LoggingError> {
    let max = spec.max_level();
    let logger = JsonLogger::open(dest, vm_id, spec)?;
    log::set_boxed_logger(Box::new(logger)).map_err(LoggingError::AlreadySet)?;
    log::set_max_level(max);
    Ok(())
}

#[cfg(test)]
#[path = "logging_tests.rs"]
pub(crate) mod tests;
