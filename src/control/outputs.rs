//! Where an API-driven VMM writes its log and metrics, and their changes through
//! `PUT /logger` and `PUT /metrics` (allowed before and after InstanceStart).

use std::sync::Arc;

use crate::config::{Logger, MetricsConfig};
use crate::logging::{LevelSpec, LogDest, LogFormat, LogHandle, LogSetup, LoggingError};
use crate::metrics::{Metrics, MetricsError, MetricsWriter, PeriodicFlusher};

/// Why a logger or metrics change was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("metrics are already written to {0}: they can be configured once")]
    MetricsSet(String),
    #[error("no metrics file is configured (--metrics or PUT /metrics)")]
    NoMetrics,
}

/// The log and metrics of one instance.
pub struct Outputs {
    log: Option<LogHandle>,
    logger: Logger,
    metrics: Arc<Metrics>,
    writer: Option<Arc<MetricsWriter>>,
    flusher: Option<PeriodicFlusher>,
    metrics_config: Option<MetricsConfig>,
}

impl Outputs {
    /// The outputs the command line set up: the logger (and its handle, when it may be
    /// replaced), the metrics registry the VM reports to, and the metrics file, if any.
    pub fn new(
        log: Option<LogHandle>,
        logger: Logger,
        metrics: Arc<Metrics>,
        file: Option<(MetricsConfig, Arc<MetricsWriter>, PeriodicFlusher)>,
    ) -> Self {
        let (metrics_config, writer, flusher) = match file {
            Some((c, w, f)) => (Some(c), Some(w), Some(f)),
            None => (None, None, None),
        };
        Self {
            log,
            logger,
            metrics,
            writer,
            flusher,
            metrics_config,
        }
    }

    /// The registry the VM's devices and vCPUs report to.
    pub fn registry(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The logger as configured now.
    pub fn logger(&self) -> &Logger {
        &self.logger
    }

    /// The metrics file as configured, if any.
    pub fn metrics_config(&self) -> Option<&MetricsConfig> {
        self.metrics_config.as_ref()
    }

    /// `PUT /logger`: replaces the whole logger. Absent fields take hvlite's defaults:
    /// stderr, `HVLITE_LOG` or info, JSON lines with a path and text on stderr, the level
    /// shown and the origin not.
    pub fn put_logger(&mut self, l: &Logger) -> Result<(), OutputsError> {
        let dest = l.dest();
        let format = l.format.unwrap_or(if dest == LogDest::Stderr {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
        let spec = match &l.level {
            Some(s) => s.clone(),
            None => LevelSpec::from_env()?,
        };
        let setup = LogSetup {
            dest,
            format,
            spec,
            show: l.line_options(),
        };
        if let Some(handle) = &self.log {
            handle.replace(&setup)?;
        }
        self.logger = l.clone();
        log::info!("API: logger set to {:?} ({format:?})", setup.dest);
        Ok(())
    }

    /// `PUT /metrics`: starts writing metrics to a file (once).
    pub fn put_metrics(&mut self, m: &MetricsConfig) -> Result<(), OutputsError> {
        if let Some(old) = &self.metrics_config {
            return Err(OutputsError::MetricsSet(
                old.metrics_path.as_ref().display().to_string(),
            ));
        }
        let writer = Arc::new(MetricsWriter::open(
            m.metrics_path.as_ref(),
            Arc::clone(&self.metrics),
        )?);
        self.flusher = Some(PeriodicFlusher::start(
            Arc::clone(&writer),
            m.flush_interval(),
        )?);
        self.writer = Some(writer);
        self.metrics_config = Some(m.clone());
        Ok(())
    }

    /// The FlushMetrics action: one line now.
    pub fn flush_metrics(&self) -> Result<(), OutputsError> {
        let w = self.writer.as_ref().ok_or(OutputsError::NoMetrics)?;
        Ok(w.flush_now()?)
    }

    /// Stops the periodic flusher, which writes a last line.
    pub fn finish(&mut self) {
        drop(self.flusher.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> Outputs {
        Outputs::new(None, Logger::default(), Arc::new(Metrics::new("vm")), None)
    }

    #[test]
    fn metrics_are_configured_once_and_flushed_on_demand() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut o = outputs();
        assert!(matches!(o.flush_metrics(), Err(OutputsError::NoMetrics)));
        let path = dir.path().join("m.json");
        let m: MetricsConfig =
            serde_json::from_value(serde_json::json!({"metrics_path": path})).unwrap();
        o.put_metrics(&m).unwrap();
        o.flush_metrics().unwrap();
        let e = o.put_metrics(&m).unwrap_err();
        assert!(e.to_string().contains("configured once"), "{e}");
        o.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        // FlushMetrics, then the flusher's last line.
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(o.metrics_config(), Some(&m));
    }

    #[test]
    fn a_bad_metrics_path_is_an_error() {
        let mut o = outputs();
        let m: MetricsConfig =
            serde_json::from_value(serde_json::json!({"metrics_path": "/nonexistent/dir/m"}))
                .unwrap();
        let e = o.put_metrics(&m).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/m"), "{e}");
        assert_eq!(o.metrics_config(), None);
    }
}
