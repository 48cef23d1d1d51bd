//! `cargo xtask soak`: the long soak run (see `llmdd_tests::soak`). Prints a table and exits
//! non-zero when llmdd crashed, lost its report, or its memory kept growing.
//!
//! Usage: soak [--duration SECONDS] [--ranks N] [--rate CALLS_PER_S]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use llmdd_tests::soak::{run, SoakOpts};

fn main() -> Result<()> {
    let mut o = SoakOpts {
        duration: Duration::from_secs(600),
        ranks: 8,
        rate: 50_000,
        sample_every: Duration::from_secs(5),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => o.duration = Duration::from_secs(value()?.parse()?),
            "--ranks" => o.ranks = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    eprintln!(
        "soak: {} ranks, ~{} traced calls/s, {} s",
        o.ranks,
        o.rate,
        o.duration.as_secs()
    );
    let r = run(&o)?;
    print!("{}", r.table());
    if !r.exit_ok || !r.report_written || r.rss_growth_pct() > 25.0 {
        bail!("soak failed");
    }
    Ok(())
}
