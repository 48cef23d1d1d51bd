//! The end of a live run: the last records, the probes out, the recording's end, the
//! final summary and the file views.

use std::{collections::BTreeSet, time::Instant};

use anyhow::Result;

use super::{Run, Stop};
use crate::{
    probe::Detached,
    record,
    session::{monotonic_ns, End, Session},
    tracee::Target,
    userprobe::UserProbe,
};

impl Run {
    /// Ends the run stopped by `stop`; `last_render_s`: seconds since the last plain
    /// summary (the final one covers them).
    pub(super) fn finish(mut self, stop: Stop, last_render_s: f64) -> Result<()> {
        // Whatever was submitted before the stop is still counted.
        self.drain(false)?;
        // Counters as of the stop: events the targets make while the probes are being
        // removed are outside the traced window and are not reported as lost.
        self.report_losses()?;
        self.live
            .summary_figures(&mut self.session, self.aggregating)?;
        self.live.sample_node(&mut self.session);
        let lost = self.live.tracer.counters()?;
        self.detach();
        let why = stop.why();
        if let Some(w) = self.recorder.take() {
            self.end_recording(w, &why, &lost);
        }
        self.session.finish(
            &End {
                records: self.reader.records,
                undecodable: self.reader.decode_errors,
                counters: &lost,
                why: &why,
                duration_s: self.started.elapsed().as_secs_f64(),
            },
            last_render_s,
        )
    }

    /// Takes every probe out and waits for their release.
    fn detach(&mut self) {
        let began = Instant::now();
        let mut detached = Detached::default();
        let mut attached: BTreeSet<u32> = self.targets.iter().map(|t| t.pid).collect();
        attached.extend(self.live.tracer.attached_pids());
        for pid in attached {
            detached.extend(self.live.tracer.detach(pid));
        }
        detached.release();
        for h in self.live.reaper.drain(..) {
            let _ = h.join();
        }
        tracing::info!("detached in {:?}", began.elapsed());
    }

    /// Writes the recording's end: counters, why it stopped, the processes found after
    /// its start.
    fn end_recording(&self, mut w: record::Writer, why: &str, lost: &[u64]) {
        let known: BTreeSet<u32> = self.targets.iter().map(|t| t.pid).collect();
        let end = record::End {
            realtime_offset_ns: record::realtime_offset_ns(),
            end_ns: monotonic_ns(),
            records: self.reader.records,
            undecodable: self.reader.decode_errors,
            counters: lost.to_vec(),
            stopped_because: why.to_string(),
            processes: record_procs(&self.session)
                .into_iter()
                .filter(|p| !known.contains(&p.pid))
                .collect(),
        };
        match w.finish(&end) {
            Ok(()) => eprintln!("llmdd: recording written to {}", w.path().display()),
            Err(e) => eprintln!("llmdd: error: {e}"),
        }
    }
}

/// The processes the session knows, as a record file keeps them.
fn record_procs(session: &Session) -> Vec<record::RecProc> {
    session
        .outputs
        .run
        .procs
        .values()
        .map(|p| {
            let hints = session.hints.get(&p.pid).cloned().unwrap_or_default();
            record::RecProc::from_info(p, &hints)
        })
        .collect()
}

/// The start metadata of a record file.
pub(super) fn record_meta(
    targets: &[Target],
    session: &Session,
    host: Option<String>,
    user_probes: &[UserProbe],
) -> record::Meta {
    let kernel = &session.outputs.run.kernel;
    let mut processes = record_procs(session);
    for p in &mut processes {
        if let Some(t) = targets.iter().find(|t| t.pid == p.pid) {
            p.local_rank = t.rank_hints.local_rank;
        }
    }
    record::Meta {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        host,
        kernel_release: kernel.release.clone(),
        kernel_version: kernel.version.clone(),
        machine: kernel.machine.clone(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string()),
        realtime_offset_ns: record::realtime_offset_ns(),
        start_ns: monotonic_ns(),
        started_unix_s: session.outputs.run.started_unix_s,
        processes,
        user_probes: user_probes.to_vec(),
    }
}
