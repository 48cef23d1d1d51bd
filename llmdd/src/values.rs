//! Value parsers shared by the command line, the configuration file and `loadgen`: sizes and
//! durations, each an error or a value for any text (property-tested in `cli`).

use std::time::Duration;

/// A size in bytes: `4096`, or with a K, M or G suffix (powers of 1024): `64K`, `8M`, `2G`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (8, 64K, 1M, 2G)"))
}

/// Parses `5`, `5s`, `250ms`, `2m`, `1h` (also fractional, `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 5, 5s, 250ms, 2m, 1h"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s, m or h")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive duration"));
    }
    if secs > MAX_DURATION_S {
        return Err(format!(
            "`{s}` is longer than llmdd takes (at most {MAX_DURATION_S:e} s, about 31 years)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// The longest duration any option takes: beyond it a value is a typo, and much beyond it
/// arithmetic on instants would overflow.
pub const MAX_DURATION_S: f64 = 1e9;
