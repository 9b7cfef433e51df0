//! `hvlite-bench-report RESULTS.json OUT.html`: renders the benchmark report page.

use std::process::ExitCode;

use hvlite_bench::{html, results::Report};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: hvlite-bench-report RESULTS.json OUT.html");
        return ExitCode::from(2);
    };
    let report = match Report::load(input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hvlite-bench-report: {e}");
            return ExitCode::from(1);
        }
    };
    let raw = std::fs::read_to_string(input).unwrap_or_default();
    let page = match html::render(&report, &raw) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hvlite-bench-report: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::write(output, page) {
        eprintln!("hvlite-bench-report: writing {output}: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
