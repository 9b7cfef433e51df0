//! JSON-lines logging: a [`log::Log`] that writes one JSON object per record, with
//! ECS-compatible field names, to a file or stderr (see docs/logging-and-metrics.md).
//!
//! The level filter is env_logger's (the env_filter crate: `info`,
//! `hvlite::vmm=debug,warn`, a bare module name meaning `trace`), so `HVLITE_LOG` means
//! the same whichever format is in use.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
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

/// A level filter in env_logger's directive syntax, matched by env_filter (the crate
/// env_logger itself uses), so `HVLITE_LOG` means the same in both formats: a global
/// level and per-module levels, the longest matching module prefix winning. Two
/// additions: `warning` (Firecracker's name) means warn, and a directive that is wrong
/// (an unknown level, an empty module, a `/` message filter) is an error rather than a
/// warning. In JSON it is the directive string.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct LevelSpec {
    /// The directives, normalized (lower-case levels, no spaces); what [`fmt::Display`]
    /// writes and what equality compares.
    text: String,
    #[serde(skip)]
    filter: env_filter::Filter,
}

impl PartialEq for LevelSpec {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for LevelSpec {}

impl Default for LevelSpec {
    fn default() -> Self {
        Self::global(LevelFilter::Info)
    }
}

/// One level name, case-insensitively, normalized; `warning` means warn.
fn level_name(s: &str) -> Option<String> {
    let level = if s.eq_ignore_ascii_case("warning") {
        LevelFilter::Warn
    } else {
        s.parse().ok()?
    };
    Some(level.as_str().to_ascii_lowercase())
}

/// One directive, normalized, or `None` if it is wrong.
fn normalize(d: &str) -> Option<String> {
    if d.contains('/') {
        return None;
    }
    let text = match d.split_once('=') {
        Some((module, level)) => {
            let module = module.trim();
            if module.is_empty() {
                return None;
            }
            format!("{module}={}", level_name(level.trim())?)
        }
        None => level_name(d).unwrap_or_else(|| d.to_string()),
    };
    // What env_filter accepts (it refuses unknown levels and extra `=`).
    env_filter::Builder::new().try_parse(&text).ok()?;
    Some(text)
}

impl LevelSpec {
    /// One level for every module.
    pub fn global(level: LevelFilter) -> Self {
        let text = level.as_str().to_ascii_lowercase();
        Self {
            filter: env_filter::Builder::new().filter_level(level).build(),
            text,
        }
    }

    /// The directives in `HVLITE_LOG`, or [`DEFAULT_LEVEL`] when it is unset or empty.
    pub fn from_env() -> Result<Self, LoggingError> {
        match std::env::var(LOG_ENV) {
            Ok(s) if !s.trim().is_empty() => s.parse(),
            _ => DEFAULT_LEVEL.parse(),
        }
    }

    /// Whether a record with `metadata` is logged.
    pub fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    /// The most verbose level logged for records whose target is `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        use log::Level::*;
        [Trace, Debug, Info, Warn, Error]
            .into_iter()
            .find(|&level| {
                let m = Metadata::builder().level(level).target(target).build();
                self.filter.enabled(&m)
            })
            .map_or(LevelFilter::Off, |level| level.to_level_filter())
    }

    /// The most verbose level any module gets (for [`log::set_max_level`]).
    pub fn max_level(&self) -> LevelFilter {
        self.filter.filter()
    }
}

impl std::str::FromStr for LevelSpec {
    type Err = LoggingError;

    /// Parses `DIRECTIVE[,DIRECTIVE...]`, each `LEVEL`, `MODULE=LEVEL` or `MODULE`. As in
    /// env_logger, no directives at all means error, and with only module directives
    /// other modules are off.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let directives = (s.split(',').map(str::trim).filter(|d| !d.is_empty()))
            .map(|d| normalize(d).ok_or_else(|| LoggingError::Level(d.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if directives.is_empty() {
            return Ok(Self::global(LevelFilter::Error));
        }
        let text = directives.join(",");
        let filter = (env_filter::Builder::new().try_parse(&text))
            .map_err(|_| LoggingError::Level(s.to_string()))?
            .build();
        Ok(Self { text, filter })
    }
}

impl fmt::Display for LevelSpec {
    /// Writes directives that parse back to an equal spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
        spec.text
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
    #[serde(rename = "log.level", skip_serializing_if = "Option::is_none")]
    level: Option<&'a str>,
    #[serde(rename = "log.logger")]
    logger: &'a str,
    #[serde(
        rename = "log.origin.file.name",
        skip_serializing_if = "Option::is_none"
    )]
    file: Option<&'a str>,
    #[serde(
        rename = "log.origin.file.line",
        skip_serializing_if = "Option::is_none"
    )]
    line: Option<u32>,
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
    show: LineOptions,
}

/// What a log line shows besides the message (Firecracker's `show_level` and
/// `show_log_origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineOptions {
    /// The record's level.
    pub level: bool,
    /// The source file and line that logged it.
    pub origin: bool,
}

impl Default for LineOptions {
    fn default() -> Self {
        Self {
            level: true,
            origin: false,
        }
    }
}

impl JsonLogger {
    /// A logger for VM `vm_id` writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, vm_id: &str, spec: LevelSpec) -> Self {
        Self {
            out: Mutex::new(out),
            vm_id: vm_id.to_string(),
            spec,
            show: LineOptions::default(),
        }
    }

    /// The same logger showing what `show` says.
    pub fn showing(self, show: LineOptions) -> Self {
        Self { show, ..self }
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
            level: self.show.level.then(|| record.level().as_str()),
            logger: record.target(),
            file: record.file().filter(|_| self.show.origin),
            line: record.line().filter(|_| self.show.origin),
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
        self.spec.enabled(metadata)
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

/// Everything that decides what the log looks like and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSetup {
    pub dest: LogDest,
    pub format: LogFormat,
    pub spec: LevelSpec,
    pub show: LineOptions,
}

/// Builds the logger `setup` describes: a [`JsonLogger`] or env_logger's text logger.
pub fn build(setup: &LogSetup, vm_id: &str) -> Result<Box<dyn Log>, LoggingError> {
    let spec = setup.spec.clone();
    if setup.format == LogFormat::Json {
        let logger = JsonLogger::open(&setup.dest, vm_id, spec)?.showing(setup.show);
        return Ok(Box::new(logger));
    }
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(&spec.to_string())
        .format_target(false)
        .format_level(setup.show.level)
        .format_file(setup.show.origin)
        .format_line_number(setup.show.origin);
    if let LogDest::File(path) = &setup.dest {
        let file = open_append(path).map_err(|e| LoggingError::Open(path.clone(), e))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    Ok(Box::new(builder.build()))
}

/// The process's logger when it may be replaced later (`PUT /logger`): every record goes
/// to the current inner logger.
struct Switch {
    inner: Arc<RwLock<Box<dyn Log>>>,
}

impl Log for Switch {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        read(&self.inner).enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        read(&self.inner).log(record);
    }

    fn flush(&self) {
        read(&self.inner).flush();
    }
}

fn read(l: &RwLock<Box<dyn Log>>) -> std::sync::RwLockReadGuard<'_, Box<dyn Log>> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Replaces the process's logger installed by [`install_switchable`].
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<RwLock<Box<dyn Log>>>,
    vm_id: String,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle")
            .field("vm_id", &self.vm_id)
            .finish_non_exhaustive()
    }
}

impl LogHandle {
    /// From now on, logs as `setup` says. On error the old logger stays.
    pub fn replace(&self, setup: &LogSetup) -> Result<(), LoggingError> {
        let new = build(setup, &self.vm_id)?;
        let old = {
            let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *guard, new)
        };
        old.flush();
        log::set_max_level(setup.spec.max_level());
        Ok(())
    }
}

/// Installs the logger `setup` describes as the process's, in a way that lets the
/// returned handle replace it.
pub fn install_switchable(setup: &LogSetup, vm_id: &str) -> Result<LogHandle, LoggingError> {
    let inner = Arc::new(RwLock::new(build(setup, vm_id)?));
    let switch = Switch {
        inner: Arc::clone(&inner),
    };
    log::set_boxed_logger(Box::new(switch)).map_err(LoggingError::AlreadySet)?;
    log::set_max_level(setup.spec.max_level());
    Ok(LogHandle {
        inner,
        vm_id: vm_id.to_string(),
    })
}

#[cfg(test)]
#[path = "logging_tests.rs"]
pub(crate) mod tests;
