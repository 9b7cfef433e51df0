//! The schema of `bench/report/results.json`, written by `scripts/bench_report.py`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a benchmark results file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: schema {found}, this renderer reads schema {SCHEMA}")]
    Schema { path: String, found: u32 },
}

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// `quick` (CI: one sample, small sizes) or `full`.
    pub mode: String,
    pub started: String,
    pub finished: String,
    pub host: Host,
    /// The id of the system the ratios are computed against (the plain container).
    pub baseline: String,
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// `pvm`, `hardware` or `none` (no /dev/kvm).
    pub kind: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub cpu_model: String,
    /// The guest kernel's `Linux version ...` banner.
    #[serde(default)]
    pub guest_kernel: Option<String>,
    /// The hvlite commit the run was built from.
    #[serde(default)]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct System {
    pub id: String,
    pub label: String,
    #[serde(default)]
    pub version: Option<String>,
    /// Why the system did not run at all on this host.
    #[serde(default)]
    pub skipped: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One value per system: bars with whiskers.
    Bars,
    /// A value per system and x (e.g. concurrent instances): lines.
    Lines,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub lower_is_better: bool,
    pub command: String,
    pub kind: Kind,
    #[serde(default)]
    pub x_label: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// When the run that measured this workload started (a report may join runs of
    /// disjoint workloads; one workload's numbers always come from one run).
    #[serde(default)]
    pub run: Option<String>,
    /// By system id.
    pub results: BTreeMap<String, Outcome>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(default)]
    pub samples: Vec<f64>,
    #[serde(default)]
    pub points: Vec<Point>,
    /// The workload ran and failed for this system.
    #[serde(default)]
    pub error: Option<String>,
    /// The workload was not run for this system, and why.
    #[serde(default)]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub samples: Vec<f64>,
}

impl Report {
    pub fn load(path: &str) -> Result<Report, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Read {
            path: path.to_string(),
            source,
        })?;
        let report: Report = serde_json::from_str(&text).map_err(|source| ResultsError::Parse {
            path: path.to_string(),
            source,
        })?;
        if report.schema != SCHEMA {
            return Err(ResultsError::Schema {
                path: path.to_string(),
                found: report.schema,
            });
        }
        Ok(report)
    }

    /// The systems that ran, in the report's order.
    pub fn ran(&self) -> impl Iterator<Item = &System> {
        self.systems.iter().filter(|s| s.skipped.is_none())
    }
}
