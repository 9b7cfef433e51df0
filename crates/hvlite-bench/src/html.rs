//! The self-contained report page: host, systems, one section per workload with its inline
//! SVG plot and a table of the numbers, and the raw results.

use std::fmt::Write;

use crate::plot::{self, Bar, Line, PlotError};
use crate::results::{Kind, Outcome, Report, Workload};
use crate::stats::{Summary, fmt_sig, ratio, summarize};

const STYLE: &str = "body{font-family:sans-serif;max-width:64em;margin:1em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}\
th{background:#f4f4f4}figure{margin:0}.failed{color:#b00}.skipped{color:#777}code,pre{font-size:85%}\
pre{max-height:30em;overflow:auto;background:#f8f8f8;padding:.5em}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The paragraph on the host kind and what it means for the numbers.
pub fn host_kind_paragraph(kind: &str) -> &'static str {
    match kind {
        "pvm" => {
            "This host's /dev/kvm is PVM (the kvm_pvm module: KVM on shadow paging, for cloud \
             VMs without nested virtualization), not hardware KVM. Guest user-mode code runs \
             natively, but the code of an ordinary guest kernel runs through KVM's instruction \
             emulator, roughly 500-1000 times slower than native. Every number that includes \
             guest-kernel work is inflated by that: booting (a cold hvlite start takes tens of \
             seconds here), system calls, page faults, and block and network I/O inside a VM. \
             User-mode CPU loops are not. QEMU cannot run this kernel on this KVM (it stops at \
             the first instruction the emulator cannot do) and uses TCG, binary translation, \
             which runs guest kernel code faster than PVM's emulator but user code several \
             times slower. Containers (runc, crun) run on the host kernel and are unaffected. \
             On hardware KVM (VT-x/AMD-V) the VM numbers would be far lower; they were not \
             measured here."
        }
        "hardware" => {
            "This host has hardware KVM (VT-x/AMD-V): guest kernel and user code run natively, \
             so the differences to containers are the costs of virtualization itself (VM \
             exits, virtio devices, a second kernel), not of instruction emulation."
        }
        _ => {
            "This host has no usable /dev/kvm: VM-based systems could only run under software \
             emulation or were skipped."
        }
    }
}

fn sample_list(samples: &[f64]) -> String {
    samples
        .iter()
        .map(|v| fmt_sig(*v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cell that replaces the numbers when a system has none: not run, skipped or failed.
/// A failure in some iterations only is shown next to the samples instead.
fn status_cell(o: Option<&Outcome>) -> Option<String> {
    match o {
        Some(o) if !o.samples.is_empty() || !o.points.is_empty() => None,
        None => Some("<td class=\"skipped\">not run</td>".into()),
        Some(Outcome {
            skipped: Some(why), ..
        }) => Some(format!(
            "<td class=\"skipped\">skipped: {}</td>",
            escape(why)
        )),
        Some(Outcome { error: Some(e), .. }) => {
            Some(format!("<td class=\"failed\">failed: {}</td>", escape(e)))
        }
        _ => None,
    }
}

fn partial_failure(o: Option<&Outcome>) -> String {
    match o.and_then(|o| o.error.as_deref()) {
        Some(e) => format!(
            " <span class=\"failed\">(other runs failed: {})</span>",
            escape(e)
        ),
        None => String::new(),
    }
}

fn baseline_median(report: &Report, w: &Workload) -> Option<f64> {
    w.results
        .get(&report.baseline)
        .and_then(|o| summarize(&o.samples))
        .map(|s| s.median)
}

fn summary_cells(s: &Summary, r: Option<f64>) -> String {
    format!(
        "<td>{}</td><td>{}</td><td>{} - {}</td><td>{} - {}</td><td>{}</td>",
        s.n,
        fmt_sig(s.median),
        fmt_sig(s.q1),
        fmt_sig(s.q3),
        fmt_sig(s.min),
        fmt_sig(s.max),
        r.map_or("-".into(), |r| format!("{}x", fmt_sig(r)))
    )
}

fn bars_section(report: &Report, w: &Workload, out: &mut String) -> Result<(), PlotError> {
    let base = baseline_median(report, w);
    let mut bars = Vec::new();
    let mut rows = String::new();
    for sys in report.ran() {
        let o = w.results.get(&sys.id);
        let label = escape(&sys.label);
        if let Some(cell) = status_cell(o) {
            let word = if o.is_some_and(|o| o.error.is_some()) {
                "failed"
            } else {
                "skipped"
            };
            bars.push(Bar {
                label: &sys.label,
                value: Err(word),
                ratio: None,
            });
            let _ = write!(rows, "<tr><td>{label}</td>{cell}</tr>");
            continue;
        }
        let samples = o.map_or(&[][..], |o| &o.samples[..]);
        match summarize(samples) {
            Some(s) => {
                let r = ratio(s.median, base);
                bars.push(Bar {
                    label: &sys.label,
                    value: Ok(s),
                    ratio: r,
                });
                let _ = write!(
                    rows,
                    "<tr><td>{label}</td>{}<td>{}{}</td></tr>",
                    summary_cells(&s, r),
                    sample_list(samples),
                    partial_failure(o)
                );
            }
            None => {
                bars.push(Bar {
                    label: &sys.label,
                    value: Err("no data"),
                    ratio: None,
                });
                let _ = write!(
                    rows,
                    "<tr><td>{label}</td><td class=\"failed\">no samples</td></tr>"
                );
            }
        }
    }
    let svg = plot::bars(&w.title, &w.unit, &bars)?;
    let _ = write!(
        out,
        "<figure id=\"plot-{}\" class=\"plot\">{svg}</figure>\n<table><tr><th>system</th><th>n</th>\
         <th>median ({unit})</th><th>quartiles</th><th>min - max</th><th>ratio to {base}</th>\
         <th>samples</th></tr>{rows}</table>\n",
        escape(&w.id),
        unit = escape(&w.unit),
        base = escape(&report.baseline),
    );
    Ok(())
}

fn lines_section(report: &Report, w: &Workload, out: &mut String) -> Result<(), PlotError> {
    let mut lines = Vec::new();
    let mut rows = String::new();
    for (color, sys) in report.ran().enumerate() {
        let o = w.results.get(&sys.id);
        let label = escape(&sys.label);
        if let Some(cell) = status_cell(o) {
            let _ = write!(rows, "<tr><td>{label}</td><td>-</td>{cell}</tr>");
            continue;
        }
        let mut points = Vec::new();
        for p in o.map_or(&[][..], |o| &o.points[..]) {
            if let Some(s) = summarize(&p.samples) {
                points.push((p.x, s));
                let _ = write!(
                    rows,
                    "<tr><td>{label}</td><td>{}</td>{}<td>{}</td></tr>",
                    fmt_sig(p.x),
                    summary_cells(&s, None),
                    sample_list(&p.samples)
                );
            }
        }
        lines.push(Line {
            label: &sys.label,
            color,
            points,
        });
    }
    let x_label = w.x_label.as_deref().unwrap_or("x");
    let svg = plot::lines(&w.title, &w.unit, x_label, &lines)?;
    let _ = write!(
        out,
        "<figure id=\"plot-{}\" class=\"plot\">{svg}</figure>\n<table><tr><th>system</th><th>{}</th>\
         <th>n</th><th>median ({})</th><th>quartiles</th><th>min - max</th><th>ratio</th>\
         <th>samples</th></tr>{rows}</table>\n",
        escape(&w.id),
        escape(x_label),
        escape(&w.unit),
    );
    Ok(())
}

/// Renders the whole page.
pub fn render(report: &Report, raw_json: &str) -> Result<String, PlotError> {
    let mut out = String::new();
    let h = &report.host;
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <title>hvlite benchmark report</title><style>{STYLE}</style></head><body>\n\
         <h1>hvlite benchmark report: microVMs and containers</h1>\n\
         <p>Mode <b>{mode}</b>, one run from {start} to {end}. Every number on this page comes \
         from this run; the systems were alternated within each iteration so host noise hits \
         them alike. Bars are medians, boxes the quartiles, whiskers min - max; ratios are to \
         the median of <b>{base}</b>, the plain container.</p>\n\
         <h2>Host</h2>\n<p>{kind}</p>\n<table><tr><th>KVM</th><td>{hk}</td></tr>\
         <tr><th>kernel</th><td>{kernel}</td></tr><tr><th>CPUs</th><td>{cpus} ({model})</td></tr>\
         <tr><th>memory</th><td>{mem} MiB</td></tr><tr><th>guest kernel</th><td>{guest}</td></tr>\
         <tr><th>hvlite commit</th><td>{commit}</td></tr></table>\n<h2>Systems</h2>\n<table>\
         <tr><th>system</th><th>version</th><th>status</th><th>note</th></tr>",
        mode = escape(&report.mode),
        start = escape(&report.started),
        end = escape(&report.finished),
        base = escape(&report.baseline),
        kind = host_kind_paragraph(&h.kind),
        hk = escape(&h.kind),
        kernel = escape(&h.kernel),
        cpus = h.cpus,
        model = escape(&h.cpu_model),
        mem = h.memory_mib,
        guest = escape(h.guest_kernel.as_deref().unwrap_or("-")),
        commit = escape(h.commit.as_deref().unwrap_or("-")),
    );
    for s in &report.systems {
        let status = match &s.skipped {
            Some(why) => format!("<td class=\"skipped\">skipped: {}</td>", escape(why)),
            None => "<td>ran</td>".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td>{status}<td>{}</td></tr>",
            escape(&s.label),
            escape(s.version.as_deref().unwrap_or("-")),
            escape(s.note.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>\n<h2>Workloads</h2>\n<ul>");
    for w in &report.workloads {
        let _ = write!(
            out,
            "<li><a href=\"#w-{}\">{}</a></li>",
            escape(&w.id),
            escape(&w.title)
        );
    }
    out.push_str("</ul>\n");
    for w in &report.workloads {
        let better = if w.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = write!(
            out,
            "<h3 id=\"w-{}\">{}</h3>\n<p>Command: <code>{}</code> ({better}).",
            escape(&w.id),
            escape(&w.title),
            escape(&w.command)
        );
        if let Some(note) = &w.note {
            let _ = write!(out, " {}", escape(note));
        }
        if let Some(run) = &w.run {
            let _ = write!(out, " Measured in the run started {}.", escape(run));
        }
        out.push_str("</p>\n");
        match w.kind {
            Kind::Bars => bars_section(report, w, &mut out)?,
            Kind::Lines => lines_section(report, w, &mut out)?,
        }
    }
    let _ = write!(
        out,
        "<h2>Raw numbers</h2>\n<details><summary>results.json</summary><pre>{}</pre></details>\n\
         </body></html>\n",
        escape(raw_json)
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Report, String) {
        let raw = r#"{"schema":1,"mode":"quick","started":"s","finished":"f",
          "host":{"kind":"pvm","kernel":"6.1","cpus":2,"memory_mib":24000,"cpu_model":"x"},
          "baseline":"runc",
          "systems":[{"id":"runc","label":"runc","version":"1.1"},
                     {"id":"hvlite","label":"hvlite <cold>"},
                     {"id":"crun","label":"crun"},
                     {"id":"qemu","label":"QEMU"},
                     {"id":"kata","label":"kata","skipped":"not installed"}],
          "workloads":[
            {"id":"true","title":"Start to exit","unit":"s","lower_is_better":true,
             "command":"/bin/true","kind":"bars","results":{
               "runc":{"samples":[0.05,0.04]},"hvlite":{"samples":[20.0,22.0]},
               "crun":{"error":"cgroups in hybrid mode not supported"},
               "qemu":{"samples":[1.5],"error":"exit 1: boom"}}},
            {"id":"density","title":"Density","unit":"MiB","lower_is_better":true,
             "command":"probe idle","kind":"lines","x_label":"instances","results":{
               "runc":{"points":[{"x":1,"samples":[1.5]},{"x":5,"samples":[7.0]}]},
               "hvlite":{"skipped":"too slow in quick mode"}}}]}"#;
        (serde_json::from_str(raw).unwrap(), raw.to_string())
    }

    #[test]
    fn every_workload_has_its_plot_and_failures_and_skips_are_shown() {
        let (report, raw) = sample();
        let page = render(&report, &raw).unwrap();
        assert_eq!(page.matches("<figure id=\"plot-").count(), 2);
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("id=\"plot-true\"") && page.contains("id=\"plot-density\""));
        assert!(page.contains("failed: cgroups in hybrid mode not supported"));
        assert!(page.contains("skipped: too slow in quick mode"));
        assert!(
            page.contains("(other runs failed: exit 1: boom)"),
            "samples kept"
        );
        assert!(page.contains("QEMU</td><td>1</td><td>1.50</td>"), "{page}");
        assert!(page.contains("skipped: not installed"));
        assert!(page.contains("hvlite &lt;cold&gt;"), "labels are escaped");
        assert!(page.contains("467x"), "ratio of 21 s to 0.045 s");
        assert!(page.contains("PVM"));
        assert!(page.ends_with("</body></html>\n"));
    }

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn host_kinds_have_their_own_paragraphs() {
        assert!(host_kind_paragraph("hardware").contains("VT-x"));
        assert!(host_kind_paragraph("pvm").contains("emulator"));
        assert!(host_kind_paragraph("none").contains("no usable"));
    }
}
