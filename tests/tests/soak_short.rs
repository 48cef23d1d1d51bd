//! The soak run in 30 seconds (the full one is `cargo xtask soak`): 8 simulated ranks at
//! about 50k traced calls/s, Prometheus on. llmdd must not crash, must keep serving
//! /metrics, must write its report with every event received or counted lost, and its
//! memory must not keep growing.

use std::time::Duration;

use llmdd_tests::{
    harness::require_root,
    soak::{run, SoakOpts},
};

#[test]
fn thirty_seconds_of_load() {
    require_root();
    let r = run(&SoakOpts {
        duration: Duration::from_secs(30),
        ranks: 8,
        rate: 50_000,
        sample_every: Duration::from_secs(2),
    })
    .expect("the soak runs");
    eprint!("{}", r.table());
    assert!(r.exit_ok, "llmdd exited cleanly on SIGTERM");
    assert!(r.report_written, "report written at the end");
    assert!(r.events_received > 0);
    assert!(r.scrapes_ok > 0 && r.scrapes_failed == 0, "{}", r.table());
    assert!(
        r.rss_growth_pct() < 50.0,
        "memory keeps growing: {}",
        r.table()
    );
}
