//! `hvlite-bench-probe`: the workloads of `scripts/bench-report.sh`, run inside every system
//! under test (hvlite, runc, QEMU, ...) from the same root directory.
//!
//! Usage: `hvlite-bench-probe WORKLOAD ARG... [WORKLOAD ARG...]`; each workload prints one
//! line `BENCH <name> <value> <unit>` on stdout, timed inside the instance, so boot and
//! teardown do not count. See docs/benchmarks.md.

mod workloads;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = match workloads::parse(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("hvlite-bench-probe: {e}");
            eprintln!("usage: {}", workloads::USAGE);
            return ExitCode::from(2);
        }
    };
    for step in plan {
        match workloads::run(&step) {
            Ok(lines) => {
                for line in lines {
                    println!("BENCH {} {} {}", line.name, line.value, line.unit);
                }
            }
            Err(e) => {
                eprintln!("hvlite-bench-probe: {step:?}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
