//! The benchmark report of `scripts/bench-report.sh`: the results file's schema, the
//! statistics over its samples and the self-contained HTML page with SVG plots.

pub mod html;
pub mod plot;
pub mod results;
pub mod stats;
