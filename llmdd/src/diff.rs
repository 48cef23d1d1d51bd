//! `llmdd diff BASELINE CURRENT`: two JSON reports (or record files, analysed first as
//! `llmdd report` would) compared, to gate a rollout.
//!
//! Rows are (communicator size, op, message-size bucket): communicator ids are random per
//! run (they hash each run's `ncclUniqueId`), so communicators are compared by rank count.
//! Per row: the change of p50 and p99 latency, p50 arrival skew and p50 bus bandwidth. A
//! change counts only when both runs have at least [`MIN_SAMPLES`] samples of it and it
//! exceeds the threshold: with percentile summaries only, that is the significance check
//! (a rank-sum test needs the samples, which a report does not keep). Findings are compared
//! by kind and culprit rank: new and vanished ones are listed. The verdict is a regression
//! when any latency or skew rose, or any bandwidth fell, by more than the threshold, or a
//! new critical finding appeared.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Fewest samples on both sides for a change to count.
pub const MIN_SAMPLES: u64 = 20;

/// Exit code when a regression beyond the threshold was found.
pub const EXIT_REGRESSION: i32 = 3;

/// One compared figure of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub row: String,
    pub figure: &'static str,
    pub baseline: f64,
    pub current: f64,
    /// Relative change in percent (current vs baseline).
    pub pct: f64,
    /// Whether higher is worse (latency, skew) or better (bandwidth).
    pub higher_is_worse: bool,
    /// Enough samples on both sides.
    pub significant: bool,
}

impl Change {
    /// Whether this change is a regression beyond `threshold_pct`.
    pub fn regresses(&self, threshold_pct: f64) -> bool {
        self.significant
            && if self.higher_is_worse {
                self.pct > threshold_pct
            } else {
                self.pct < -threshold_pct
            }
    }
}

/// The comparison of two reports.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub only_baseline: Vec<String>,
    pub only_current: Vec<String>,
    /// (kind, rank, severity) of findings in one report and not the other.
    pub new_findings: Vec<(String, Option<u64>, String)>,
    pub vanished_findings: Vec<(String, Option<u64>, String)>,
}

fn load(path: &Path) -> Result<Value> {
    // A record file: analysed first, as `llmdd report` would.
    let mut magic = [0u8; 8];
    if std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == crate::record::MAGIC
    {
        return crate::offline::report_document(&[path.to_path_buf()]);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a JSON report (write one with `llmdd attach --report` or `llmdd report --report`)",
            path.display()
        )
    })?;
    if doc.get("schema_version").is_none() || doc.get("communicators").is_none() {
        bail!(
            "{} is JSON but not an llmdd report (no schema_version/communicators)",
            path.display()
        );
    }
    Ok(doc)
}

/// (row key) -> the op statistics object, over every communicator of the report.
fn rows(doc: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for c in doc["communicators"].as_array().into_iter().flatten() {
        let nranks = c["nranks"].as_u64().unwrap_or(0);
        for op in c["ops"].as_array().into_iter().flatten() {
            let key = format!(
                "{nranks} ranks {} {}",
                op["op"].as_str().unwrap_or("?"),
                op["size"].as_str().unwrap_or("?")
            );
            // Two communicators of one size doing the same op: keep the busier.
            let calls = op["calls"].as_u64().unwrap_or(0);
            let keep = out
                .get(&key)
                .map(|o: &Value| o["calls"].as_u64().unwrap_or(0) < calls)
                .unwrap_or(true);
            if keep {
                out.insert(key, op.clone());
            }
        }
    }
    out
}

fn findings(doc: &Value) -> Vec<(String, Option<u64>, String)> {
    let mut out: Vec<_> = doc["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_string(),
                f["culprit"]["rank"].as_u64(),
                f["severity"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Compares two report documents.
pub fn compare(baseline: &Value, current: &Value) -> Diff {
    let (b, c) = (rows(baseline), rows(current));
    let mut d = Diff::default();
    for (key, bo) in &b {
        let Some(co) = c.get(key) else {
            d.only_baseline.push(key.clone());
            continue;
        };
        let figures: [(&'static str, &str, Option<&str>, bool); 4] = [
            ("latency p50", "latency_ns", Some("p50"), true),
            ("latency p99", "latency_ns", Some("p99"), true),
            ("arrival skew p50", "arrival_skew_ns", Some("p50"), true),
            (
                "bus bandwidth p50",
                "bus_bandwidth_bytes_per_second_p50",
                None,
                false,
            ),
        ];
        for (figure, field, pct, higher_is_worse) in figures {
            let (bv, cv, bn, cn) = match pct {
                Some(p) => (
                    bo[field][p].as_f64(),
                    co[field][p].as_f64(),
                    bo[field]["count"].as_u64().unwrap_or(0),
                    co[field]["count"].as_u64().unwrap_or(0),
                ),
                None => (
                    bo[field].as_f64(),
                    co[field].as_f64(),
                    bo["latency_ns"]["count"].as_u64().unwrap_or(0),
                    co["latency_ns"]["count"].as_u64().unwrap_or(0),
                ),
            };
            let (Some(bv), Some(cv)) = (bv, cv) else {
                continue;
            };
            let pct = if bv > 0.0 {
                (cv - bv) / bv * 100.0
            } else if cv > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            d.changes.push(Change {
                row: key.clone(),
                figure,
                baseline: bv,
                current: cv,
                pct,
                higher_is_worse,
                significant: bn >= MIN_SAMPLES && cn >= MIN_SAMPLES,
            });
        }
    }
    d.only_current = c.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let (bf, cf) = (findings(baseline), findings(current));
    d.new_findings = cf.iter().filter(|f| !bf.contains(f)).cloned().collect();
    d.vanished_findings = bf.iter().filter(|f| !cf.contains(f)).cloned().collect();
    d
}

impl Diff {
    /// Whether the current run regressed beyond `threshold_pct`.
    pub fn regressed(&self, threshold_pct: f64) -> bool {
        self.changes.iter().any(|c| c.regresses(threshold_pct))
            || self.new_findings.iter().any(|f| f.2 == "critical")
    }

    /// The comparison as text, ending with the verdict line.
    pub fn render(&self, threshold_pct: f64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:<18} {:>14} {:>14} {:>9}",
            "row", "figure", "baseline", "current", "change"
        );
        for c in &self.changes {
            let mark = if c.regresses(threshold_pct) {
                "  REGRESSION"
            } else if !c.significant {
                "  (too few samples)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<34} {:<18} {:>14} {:>14} {:>+8.1}%{mark}",
                c.row,
                c.figure,
                human(c.baseline, c.figure),
                human(c.current, c.figure),
                c.pct
            );
        }
        for k in &self.only_baseline {
            let _ = writeln!(out, "only in the baseline: {k}");
        }
        for k in &self.only_current {
            let _ = writeln!(out, "only in the current run: {k}");
        }
        for (kind, rank, sev) in &self.new_findings {
            let _ = writeln!(out, "new finding: {kind} ({sev}){}", rank_of(*rank));
        }
        for (kind, rank, sev) in &self.vanished_findings {
            let _ = writeln!(out, "vanished finding: {kind} ({sev}){}", rank_of(*rank));
        }
        let worst = self
            .changes
            .iter()
            .filter(|c| c.regresses(threshold_pct))
            .max_by(|a, b| a.pct.abs().total_cmp(&b.pct.abs()));
        let verdict = if self.regressed(threshold_pct) {
            let mut why = Vec::new();
            if let Some(w) = worst {
                why.push(format!("{} {} {:+.1}%", w.row, w.figure, w.pct));
            }
            if let Some(f) = self.new_findings.iter().find(|f| f.2 == "critical") {
                why.push(format!("new critical finding {}{}", f.0, rank_of(f.1)));
            }
            format!(
                "verdict: REGRESSION beyond {threshold_pct}% ({})",
                why.join("; ")
            )
        } else {
            format!("verdict: no regression beyond {threshold_pct}%")
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

fn rank_of(r: Option<u64>) -> String {
    r.map(|r| format!(" on rank {r}")).unwrap_or_default()
}

fn human(v: f64, figure: &str) -> String {
    if figure.starts_with("bus") {
        format!("{:.2} GB/s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.1} us", v / 1e3)
    }
}

/// `llmdd diff`: prints the comparison; the exit code (0, or [`EXIT_REGRESSION`]).
pub fn run(baseline: &Path, current: &Path, threshold_pct: f64) -> Result<i32> {
    let d = compare(&load(baseline)?, &load(current)?);
    print!("{}", d.render(threshold_pct));
    Ok(if d.regressed(threshold_pct) {
        EXIT_REGRESSION
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p50: u64, skew: u64, bw: f64, findings: Value) -> Value {
        json!({
            "schema_version": 1,
            "communicators": [{
                "nranks": 4,
                "ops": [{
                    "op": "all-reduce", "size": "<=16 KiB", "calls": 400,
                    "latency_ns": {"count": 400, "p50": p50, "p99": p50 * 2},
                    "arrival_skew_ns": {"count": 100, "p50": skew, "p99": skew},
                    "bus_bandwidth_bytes_per_second_p50": bw
                }]
            }],
            "findings": findings
        })
    }

    #[test]
    fn the_same_run_is_no_regression() {
        let a = report(1_000_000, 10_000, 5e9, json!([]));
        let d = compare(&a, &a);
        assert!(!d.regressed(10.0));
        assert!(d
            .render(10.0)
            .ends_with("verdict: no regression beyond 10%\n"));
    }

    #[test]
    fn slower_collectives_and_a_new_straggler_regress() {
        let a = report(1_000_000, 10_000, 5e9, json!([]));
        let b = report(
            1_300_000,
            20_000_000,
            3e9,
            json!([{"kind": "straggler", "severity": "critical", "culprit": {"rank": 2}}]),
        );
        let d = compare(&a, &b);
        assert!(d.regressed(10.0));
        let text = d.render(10.0);
        assert!(
            text.contains("new finding: straggler (critical) on rank 2"),
            "{text}"
        );
        assert!(text.contains("verdict: REGRESSION beyond 10%"), "{text}");
        assert!(text.contains("arrival skew p50"), "{text}");
        // A 30% rise is within a 50% threshold, but the new critical finding still counts.
        assert!(d.regressed(50.0) && d.regressed(1e6));
    }

    #[test]
    fn faster_is_not_a_regression_and_vanished_findings_are_listed() {
        let a = report(
            1_000_000,
            10_000,
            5e9,
            json!([{"kind": "stall", "severity": "critical", "culprit": {"rank": 1}}]),
        );
        let b = report(800_000, 10_000, 6e9, json!([]));
        let d = compare(&a, &b);
        assert!(!d.regressed(10.0));
        assert!(d
            .render(10.0)
            .contains("vanished finding: stall (critical) on rank 1"));
    }

    #[test]
    fn too_few_samples_do_not_count() {
        let mut a = report(1_000_000, 10_000, 5e9, json!([]));
        let mut b = report(2_000_000, 10_000, 5e9, json!([]));
        for d in [&mut a, &mut b] {
            d["communicators"][0]["ops"][0]["latency_ns"]["count"] = json!(5);
        }
        let d = compare(&a, &b);
        assert!(!d.regressed(10.0), "{}", d.render(10.0));
        assert!(d.render(10.0).contains("too few samples"));
    }
}
