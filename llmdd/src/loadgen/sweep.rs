//! The pure part of `llmdd loadgen`: which sizes a sweep visits, how time becomes algorithm
//! and bus bandwidth (the nccl-tests conventions), where the curve bends (inflection points),
//! and the baseline document `llmdd diff` reads. Tested without a GPU.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A collective the sweep runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
}

impl Op {
    pub const ALL: [Op; 4] = [
        Op::AllReduce,
        Op::AllGather,
        Op::ReduceScatter,
        Op::Broadcast,
    ];

    /// The NCCL function, as llmdd names calls everywhere (the diff rows match on it).
    pub fn nccl_name(self) -> &'static str {
        match self {
            Op::AllReduce => "ncclAllReduce",
            Op::AllGather => "ncclAllGather",
            Op::ReduceScatter => "ncclReduceScatter",
            Op::Broadcast => "ncclBroadcast",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['_', '-'], "")
            .as_str()
        {
            "allreduce" => Some(Op::AllReduce),
            "allgather" => Some(Op::AllGather),
            "reducescatter" => Some(Op::ReduceScatter),
            "broadcast" | "bcast" => Some(Op::Broadcast),
            _ => None,
        }
    }

    /// Bus bandwidth factor for `n` ranks: what turns algorithm bandwidth into the load on
    /// the slowest link, so figures compare across rank counts (nccl-tests' PERFORMANCE.md).
    pub fn busbw_factor(self, n: u32) -> f64 {
        let n = f64::from(n.max(1));
        match self {
            Op::AllReduce => 2.0 * (n - 1.0) / n,
            Op::AllGather | Op::ReduceScatter => (n - 1.0) / n,
            Op::Broadcast => 1.0,
        }
    }
}

/// The sizes visited: `min` to `max` bytes, each `factor` times the last, rounded to whole
/// 4-byte elements (the sweep moves float32), and for the gather/scatter ops divisible by
/// the rank count.
pub fn sizes(min: u64, max: u64, factor: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut s = min.max(4);
    while s <= max {
        out.push(s / 4 * 4);
        s = s.saturating_mul(factor.max(2));
    }
    out.dedup();
    out
}

/// One measured point of the sweep: an op at a size, every rank's per-iteration times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub op: Op,
    /// Bytes of the operation (nccl-tests' "size": the buffer each rank reduces, gathers
    /// into, or receives).
    pub bytes: u64,
    pub ranks: u32,
    /// Per-iteration times in ns of the slowest rank at each iteration.
    pub times_ns: Vec<u64>,
    /// NCCL's algorithm for this size, where its tuning log said.
    pub algorithm: Option<String>,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Point {
    fn sorted(&self) -> Vec<u64> {
        let mut v = self.times_ns.clone();
        v.sort_unstable();
        v
    }
    pub fn p50_ns(&self) -> u64 {
        pct(&self.sorted(), 0.5)
    }
    /// Algorithm bandwidth (bytes/s) at the median time.
    pub fn algbw(&self) -> f64 {
        let t = self.p50_ns();
        if t == 0 {
            0.0
        } else {
            self.bytes as f64 / (t as f64 / 1e9)
        }
    }
    pub fn busbw(&self) -> f64 {
        self.algbw() * self.op.busbw_factor(self.ranks)
    }
}

/// Where the curve of one op bends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inflections {
    pub op: Op,
    /// The first size from which bus bandwidth stops growing (grows less than 10% over
    /// the next step while within 85% of the best seen): more bytes do not go faster.
    pub bandwidth_plateau_bytes: Option<u64>,
    /// The last size still latency-bound (time within 50% of the smallest size's): above
    /// it, time grows with size.
    pub latency_bound_until_bytes: Option<u64>,
    /// Sizes where time jumps more than the size grew (by 50% more): a protocol or
    /// algorithm switch, or a buffer that stops fitting.
    pub jumps_at_bytes: Vec<u64>,
    /// The best bandwidth seen, of the kind `bandwidth` names.
    pub peak_busbw: f64,
    /// "bus", or "algorithm" for a one-rank communicator (whose bus bandwidth is 0 by
    /// definition: nothing crosses a link, and the curve is that of the local copy).
    pub bandwidth: &'static str,
}

/// The inflection points of one op's points (sorted by size).
pub fn inflections(op: Op, points: &[&Point]) -> Inflections {
    let mut pts: Vec<&&Point> = points.iter().filter(|p| p.op == op).collect();
    pts.sort_by_key(|p| p.bytes);
    let one_rank = pts
        .first()
        .is_some_and(|p| p.op.busbw_factor(p.ranks) == 0.0);
    let bw: Vec<f64> = pts
        .iter()
        .map(|p| if one_rank { p.algbw() } else { p.busbw() })
        .collect();
    let t: Vec<u64> = pts.iter().map(|p| p.p50_ns()).collect();
    let peak = bw.iter().copied().fold(0.0, f64::max);
    let plateau = (0..pts.len().saturating_sub(1))
        .find(|&i| bw[i] >= 0.85 * peak && bw[i + 1] < bw[i] * 1.10)
        .or_else(|| (!pts.is_empty() && bw.last() == Some(&peak)).then(|| pts.len() - 1))
        .map(|i| pts[i].bytes);
    let floor = t.first().copied().unwrap_or(0) as f64;
    let latency_bound = t
        .iter()
        .take_while(|&&x| (x as f64) <= floor * 1.5)
        .count()
        .checked_sub(1)
        .map(|i| pts[i].bytes);
    let jumps = (1..pts.len())
        .filter(|&i| {
            let size_ratio = pts[i].bytes as f64 / pts[i - 1].bytes.max(1) as f64;
            let time_ratio = t[i] as f64 / t[i - 1].max(1) as f64;
            time_ratio > size_ratio.max(1.0) * 1.5
        })
        .map(|i| pts[i].bytes)
        .collect();
    Inflections {
        op,
        bandwidth_plateau_bytes: plateau,
        latency_bound_until_bytes: latency_bound,
        jumps_at_bytes: jumps,
        peak_busbw: peak,
        bandwidth: if one_rank { "algorithm" } else { "bus" },
    }
}

fn dist(sorted: &[u64]) -> Value {
    json!({
        "count": sorted.len(),
        "p50": pct(sorted, 0.5),
        "p90": pct(sorted, 0.9),
        "p99": pct(sorted, 0.99),
        "max": sorted.last().copied().unwrap_or(0),
    })
}

/// The baseline document: the rows `llmdd diff` compares (rank count, NCCL op, size bucket:
/// latency percentiles and bus bandwidth), the same keys an `attach --report` of the same
/// job gives, plus the sweep itself.
pub fn baseline(points: &[Point], ranks: u32, notes: &[String]) -> Value {
    let ops: Vec<Value> = points
        .iter()
        .map(|p| {
            let sorted = p.sorted();
            json!({
                "op": p.op.nccl_name(),
                "size": crate::engine::util::size_bucket_label(crate::engine::util::size_bucket(p.bytes)),
                "calls": sorted.len(),
                "latency_ns": dist(&sorted),
                "bus_bandwidth_bytes_per_second_p50": p.busbw(),
            })
        })
        .collect();
    let infl: Vec<Inflections> = Op::ALL
        .iter()
        .filter(|op| points.iter().any(|p| p.op == **op))
        .map(|op| inflections(*op, &points.iter().collect::<Vec<_>>()))
        .collect();
    json!({
        "schema_version": crate::views::report::SCHEMA_VERSION,
        "tool": {"name": "llmdd loadgen", "version": env!("CARGO_PKG_VERSION")},
        "communicators": [{"nranks": ranks, "ops": ops}],
        "findings": [],
        "loadgen": {
            "points": points.iter().map(|p| json!({
                "op": p.op,
                "bytes": p.bytes,
                "ranks": p.ranks,
                "time_p50_ns": p.p50_ns(),
                "algbw_bytes_per_second": p.algbw(),
                "busbw_bytes_per_second": p.busbw(),
                "algorithm": p.algorithm,
            })).collect::<Vec<_>>(),
            "inflections": infl,
            "notes": notes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(op: Op, bytes: u64, ns: u64) -> Point {
        Point {
            op,
            bytes,
            ranks: 8,
            times_ns: vec![ns; 20],
            algorithm: None,
        }
    }

    #[test]
    fn sizes_double_from_min_to_max_in_whole_elements() {
        assert_eq!(sizes(8, 64, 2), vec![8, 16, 32, 64]);
        assert_eq!(sizes(1, 16, 4), vec![4, 16]);
        assert_eq!(sizes(6, 6, 2), vec![4]);
    }

    #[test]
    fn bus_bandwidth_follows_the_nccl_tests_factors() {
        assert_eq!(Op::AllReduce.busbw_factor(8), 1.75);
        assert_eq!(Op::AllGather.busbw_factor(4), 0.75);
        assert_eq!(Op::Broadcast.busbw_factor(4), 1.0);
        assert_eq!(Op::AllReduce.busbw_factor(1), 0.0, "one rank moves nothing");
        // 1 GiB in 10 ms: 107.4 GB/s algorithm bandwidth.
        let p = point(Op::AllReduce, 1 << 30, 10_000_000);
        assert!((p.algbw() - 107_374_182_400.0).abs() < 1.0);
        assert!((p.busbw() - p.algbw() * 1.75).abs() < 1.0);
        assert_eq!(Op::parse("all_reduce"), Some(Op::AllReduce));
        assert_eq!(Op::parse("reduce-scatter"), Some(Op::ReduceScatter));
        assert_eq!(Op::parse("alltoall"), None);
    }

    #[test]
    fn inflections_of_a_typical_curve() {
        // 20 us of latency plus 100 GB/s, and a protocol switch that adds 100 us from 4 MiB
        // on: latency-bound to 512 KiB, a jump at 4 MiB, bandwidth flat from 64 MiB.
        let mut pts = Vec::new();
        let mut b = 1u64 << 10;
        while b <= 1 << 28 {
            let extra = if b >= 4 << 20 { 100_000 } else { 0 };
            pts.push(point(Op::AllReduce, b, 20_000 + b / 100 + extra));
            b *= 2;
        }
        let refs: Vec<&Point> = pts.iter().collect();
        let i = inflections(Op::AllReduce, &refs);
        assert_eq!(i.latency_bound_until_bytes, Some(512 << 10), "{i:?}");
        assert_eq!(i.jumps_at_bytes, vec![4 << 20], "{i:?}");
        assert_eq!(i.bandwidth_plateau_bytes, Some(64 << 20), "{i:?}");
        assert!(i.peak_busbw > 0.0);
        assert_eq!(i.bandwidth, "bus");
        // One rank: bus bandwidth is 0 throughout, the curve is read on algorithm bandwidth.
        for p in &mut pts {
            p.ranks = 1;
        }
        let refs: Vec<&Point> = pts.iter().collect();
        let one = inflections(Op::AllReduce, &refs);
        assert_eq!(one.bandwidth, "algorithm");
        assert_eq!(one.bandwidth_plateau_bytes, i.bandwidth_plateau_bytes);
        assert!(one.peak_busbw > 0.0);
    }

    #[test]
    fn the_baseline_is_a_document_diff_compares_row_by_row() {
        let base = baseline(
            &[
                point(Op::AllReduce, 1 << 20, 100_000),
                point(Op::AllGather, 1 << 20, 80_000),
            ],
            8,
            &["one GPU".into()],
        );
        let slower = baseline(
            &[
                point(Op::AllReduce, 1 << 20, 150_000),
                point(Op::AllGather, 1 << 20, 80_000),
            ],
            8,
            &[],
        );
        let d = crate::diff::compare(&base, &base);
        assert!(!d.regressed(10.0));
        assert_eq!(
            d.changes.len(),
            2 * 3,
            "latency p50/p99 and bandwidth per row"
        );
        let d = crate::diff::compare(&base, &slower);
        assert!(d.regressed(10.0));
        assert!(d
            .changes
            .iter()
            .any(|c| c.row == "8 ranks ncclAllReduce <=1 MiB" && c.regresses(10.0)));
    }
}
