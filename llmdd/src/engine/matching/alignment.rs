//! Which instance each member's calls belong to. A member attached while the job ran is
//! aligned from its first calls against the instances the others built (`align`); after
//! lost events a member is re-checked and moved forward over what was lost (`verify`,
//! `realign_behind`); and whenever an instance's arrivals contradict each other (a member
//! arrived after another's call was seen complete) the numbering is re-checked and the
//! member that contradicts the others is moved (`repair`).
//!
//! Evidence used, in order: causality (a call that returned, or a sync that returned after
//! it, bounds when its instance completed: no member can have arrived after that, for ops
//! that need every member), call signatures (function, bytes, op, dtype), and time.

use super::*;

impl Lane {
    /// Aligns a pending member against the instances the aligned members have built.
    pub(super) fn align(&mut self, m: u32, cfg: &Config, out: &mut LaneOut) {
        let mi = m as usize;
        let buf: Vec<MemberCall> = self.members[mi].calls.iter().copied().collect();
        let base_idx = self.members[mi].calls_base;
        let have_history = self.instances.iter().any(|i| i.real > 0);
        let start_seq = if buf.is_empty() || !have_history {
            self.end_seq()
        } else {
            self.best_start(&buf, mi, cfg)
        };
        let offset = start_seq as i64 - base_idx as i64;
        {
            let mm = &mut self.members[mi];
            mm.offset = Some(offset);
            mm.first_seq = start_seq.max(self.base_seq);
        }
        self.pending -= 1;
        self.recompute_expected();
        for (j, c) in buf.iter().enumerate() {
            let seq = start_seq + j as u64;
            if seq < self.base_seq {
                out.dropped_calls += 1;
                continue;
            }
            self.place(m, seq, *c, cfg, out);
        }
        // Instances before this member's first call may be complete now.
        self.recheck_all(cfg, out);
    }

    /// The instance the first buffered call belongs to.
    pub(super) fn best_start(&self, buf: &[MemberCall], mi: usize, cfg: &Config) -> u64 {
        // Centre: the kept instance whose first arrival is closest to the first call.
        let e0 = buf[0].entry_ns;
        let centre = self
            .instances
            .iter()
            .filter(|i| i.real > 0)
            .min_by_key(|i| i.first_ns.abs_diff(e0))
            .map(|i| i.seq)
            .unwrap_or(self.end_seq());
        let k = cfg.align_max_shift as u64;
        let lo = centre.saturating_sub(k);
        let hi = centre + k;
        let mut best: Option<((u64, u64, u64), u64)> = None;
        let mut dists: Vec<u64> = Vec::with_capacity(buf.len());
        for s0 in lo..=hi {
            let mut bad = 0u64;
            let mut pairs = 0u64;
            dists.clear();
            for (j, c) in buf.iter().enumerate() {
                let seq = s0 + j as u64;
                if seq < self.base_seq {
                    continue;
                }
                let Some(inst) = self.instances.get((seq - self.base_seq) as usize) else {
                    break;
                };
                if let Some(k) = contradictions(c, inst, mi) {
                    pairs += 1;
                    bad += k.bad;
                    dists.push(k.dist);
                }
            }
            let need = (buf.len().min(self.instances.len()) as u64 / 2).max(1);
            if pairs < need {
                continue;
            }
            let d = crate::engine::util::median(&mut dists);
            // Fewest contradictions, then most overlap, then closest in time.
            let score = (bad, u64::MAX - pairs, d);
            if best.as_ref().is_none_or(|(b, _)| score < *b) {
                best = Some((score, s0));
            }
        }
        best.map(|(_, s)| s).unwrap_or(self.end_seq())
    }

    pub(super) fn furthest_next(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.left_ns.is_none())
            .filter_map(|m| m.next_seq())
            .max()
    }

    /// Shifts members that lag behind the lane's furthest instance forward, excusing the
    /// instances they skipped (their records were presumably lost).
    pub(super) fn realign_behind(&mut self, missing: &[u32], cfg: &Config, out: &mut LaneOut) {
        let Some(furthest) = self.furthest_next() else {
            return;
        };
        for &m in missing {
            let Some(next) = self.members[m as usize].next_seq() else {
                continue;
            };
            if next < furthest {
                self.shift_member(m, furthest - next, out);
            }
        }
        self.recheck_all(cfg, out);
        if self.open == 0 {
            self.suspect_since = None;
            self.unverified_since = None;
        }
    }

    /// Moves a member's numbering `skip` instances forward; the instances it skipped are
    /// excused for it.
    pub(super) fn shift_member(&mut self, m: u32, skip: u64, out: &mut LaneOut) {
        let n = self.members.len();
        let mm = &mut self.members[m as usize];
        let Some(next) = mm.next_seq() else { return };
        mm.offset = mm.offset.map(|o| o + skip as i64);
        mm.excused += skip;
        self.realignments += 1;
        out.realigned.push((m, skip));
        for seq in next..next + skip {
            if seq < self.base_seq {
                continue;
            }
            if let Some(inst) = self.instances.get_mut((seq - self.base_seq) as usize) {
                if inst.slots.len() < n {
                    inst.slots.resize(n, ABSENT);
                }
                if inst.slots[m as usize] == ABSENT {
                    inst.slots[m as usize] = EXCUSED;
                    inst.arrived += 1;
                }
            }
        }
    }

    /// After lost events: re-checks each member that is behind the furthest one against the
    /// others' arrivals, and shifts it forward when a shift removes contradictions (signature
    /// or causality). With such evidence confirming the numbering the lane is no longer
    /// suspect; without any, it stays suspect until it is seen complete and quiet.
    pub(super) fn verify(&mut self, cfg: &Config, out: &mut LaneOut) {
        let Some(furthest) = self.furthest_next() else {
            self.unverified_since = None;
            return;
        };
        let window = (2 * cfg.align_min_calls).max(4);
        let mut conclusive = true;
        for m in 0..self.members.len() {
            let mm = &self.members[m];
            if mm.left_ns.is_some() {
                continue;
            }
            let (Some(o), Some(next)) = (mm.offset, mm.next_seq()) else {
                continue;
            };
            let maxd = furthest
                .saturating_sub(next)
                .min(cfg.align_max_shift as u64);
            let skip = mm.calls.len().saturating_sub(window);
            let calls: Vec<(i64, MemberCall)> = mm
                .calls
                .iter()
                .enumerate()
                .skip(skip)
                .map(|(j, c)| ((mm.calls_base + j as u64) as i64 + o, *c))
                .collect();
            let score = |d: u64| -> (u64, u64) {
                let (mut bad, mut pairs) = (0, 0);
                for (seq, c) in &calls {
                    let s = *seq + d as i64;
                    if s < self.base_seq as i64 {
                        continue;
                    }
                    let Some(inst) = self.instances.get((s as u64 - self.base_seq) as usize) else {
                        break;
                    };
                    if let Some(k) = contradictions(c, inst, m) {
                        bad += k.bad;
                        pairs += 1;
                    }
                }
                (bad, pairs)
            };
            let (bad0, _) = score(0);
            if bad0 == 0 {
                // Confirmed only when every shift it could have suffered contradicts.
                let ambiguous = (1..=maxd).any(|d| matches!(score(d), (0, p) if p > 0));
                conclusive &= !ambiguous;
                continue;
            }
            let best = (1..=maxd)
                .map(|d| (score(d), d))
                .filter(|((_, p), _)| *p > 0)
                .min_by_key(|((b, _), d)| (*b, *d));
            match best {
                Some(((b, _), d)) if b < bad0 => self.shift_member(m as u32, d, out),
                _ => conclusive = false,
            }
        }
        self.unverified_since = None;
        if conclusive {
            self.suspect_since = None;
        }
        self.recheck_all(cfg, out);
    }

    /// Runs the re-check an inconsistent instance asked for (see `repair`).
    pub fn repair_if_due(&mut self, cfg: &Config, out: &mut LaneOut) {
        if self.repair_due && self.pending == 0 {
            self.repair_due = false;
            self.repair(cfg, out);
        }
    }

    /// Re-checks every aligned member's recent calls against the other members' arrivals
    /// and completion bounds, and moves the member that contradicts them most to the
    /// numbering (within `align_max_shift`) where it contradicts least, for as long as that
    /// removes contradictions. A member whose calls contradict the others at its numbering
    /// and not one instance over was numbered wrong (aligned by time against a rank late by
    /// most of a period, or a record lost), whatever it looked like: "late in every instance
    /// by about one period" is this, not a straggler.
    fn repair(&mut self, cfg: &Config, out: &mut LaneOut) {
        for _ in 0..self.members.len() {
            let mut worst: Option<(u32, u64, u64)> = None;
            for m in 0..self.members.len() {
                let mm = &self.members[m];
                if mm.offset.is_none() || mm.left_ns.is_some() {
                    continue;
                }
                let (bad, pairs) = self.member_score(m, 0);
                // Highest share of contradicted pairs first; on a tie the later member (the
                // first one defines the numbering, later ones were aligned to it).
                let worse = |&(_, b, p): &(u32, u64, u64)| bad * p >= b * pairs;
                if bad > 0 && worst.as_ref().is_none_or(worse) {
                    worst = Some((m as u32, bad, pairs));
                }
            }
            let Some((m, bad0, pairs0)) = worst else {
                break;
            };
            let need = (pairs0 / 2).max(1);
            let k = cfg.align_max_shift as i64;
            let best = (-k..=k)
                .filter(|&d| d != 0)
                .filter_map(|d| {
                    let (b, p) = self.member_score(m as usize, d);
                    (p >= need).then_some(((b, d.unsigned_abs()), d))
                })
                .min();
            match best {
                Some(((b, _), d)) if b < bad0 => self.move_member(m, d, cfg, out),
                _ => break,
            }
        }
    }

    /// Contradictions and compared pairs of member `m`'s kept calls, numbered `d` instances
    /// from where they are, against the other members' arrivals and completion bounds.
    fn member_score(&self, m: usize, d: i64) -> (u64, u64) {
        let mm = &self.members[m];
        let Some(o) = mm.offset else {
            return (0, 0);
        };
        let (mut bad, mut pairs) = (0u64, 0u64);
        for (j, c) in mm.calls.iter().enumerate() {
            let seq = (mm.calls_base + j as u64) as i64 + o + d;
            if seq < self.base_seq as i64 {
                continue;
            }
            let Some(inst) = self.instances.get((seq as u64 - self.base_seq) as usize) else {
                break;
            };
            for (other, &e) in inst.slots.iter().enumerate() {
                if other == m || e >= EXCUSED {
                    continue;
                }
                pairs += 1;
                let ub = inst.ubs.get(other).copied().unwrap_or(0);
                if (c.ub != 0 && e > c.ub) || (ub != 0 && c.entry_ns > ub) {
                    bad += 1;
                }
            }
        }
        (bad, pairs)
    }

    /// Renumbers member `m`'s kept calls `d` instances over: its arrivals are taken out of
    /// the instances they were in (which are re-evaluated, their straggler evidence dropped)
    /// and placed again; instances it skips moving forward are excused for it.
    fn move_member(&mut self, m: u32, d: i64, cfg: &Config, out: &mut LaneOut) {
        let mi = m as usize;
        let (old_start, calls) = {
            let mm = &self.members[mi];
            let Some(o) = mm.offset else { return };
            (
                mm.calls_base as i64 + o,
                mm.calls.iter().copied().collect::<Vec<_>>(),
            )
        };
        let new_start = old_start + d;
        let clear_from = old_start.min(new_start).max(self.base_seq as i64) as u64;
        for i in 0..self.instances.len() {
            if self.instances[i].seq >= clear_from {
                self.take_out(i, mi);
            }
        }
        self.evidence_ring.forget_from(clear_from);
        {
            let mm = &mut self.members[mi];
            mm.offset = mm.offset.map(|o| o + d);
            if new_start < mm.first_seq as i64 {
                mm.first_seq = new_start.max(self.base_seq as i64) as u64;
            }
        }
        self.recompute_expected();
        // Moving forward skips instances: excused, as after lost records.
        for seq in old_start.max(clear_from as i64)..new_start {
            if let Some(inst) = self
                .instances
                .get_mut((seq as u64 - self.base_seq) as usize)
            {
                if inst.slots[mi] == ABSENT {
                    inst.slots[mi] = EXCUSED;
                    inst.arrived += 1;
                }
            }
        }
        for (j, c) in calls.iter().enumerate() {
            let seq = new_start + j as i64;
            if seq >= self.base_seq as i64 {
                self.place(m, seq as u64, *c, cfg, out);
            }
        }
        self.realignments += 1;
        out.realigned.push((m, d.unsigned_abs()));
        self.recheck_all(cfg, out);
    }

    /// Takes member `mi`'s arrival out of instance `i`, which is open again.
    fn take_out(&mut self, i: usize, mi: usize) {
        let inst = &mut self.instances[i];
        let Some(&e) = inst.slots.get(mi) else {
            return;
        };
        if e == ABSENT {
            return;
        }
        inst.slots[mi] = ABSENT;
        inst.arrived -= 1;
        if e < EXCUSED {
            inst.real -= 1;
        }
        inst.exits[mi] = 0;
        inst.synced[mi] = NO_SYNC;
        inst.ubs[mi] = 0;
        let real = || inst.slots.iter().copied().filter(|&e| e < EXCUSED);
        inst.first_ns = real().min().unwrap_or(u64::MAX);
        inst.last_ns = real().max().unwrap_or(0);
        let (ub, by) = inst
            .ubs
            .iter()
            .enumerate()
            .filter(|(_, &u)| u != 0)
            .map(|(b, &u)| (u, b as u32))
            .min()
            .unwrap_or((0, u32::MAX));
        (inst.ub, inst.ub_by) = (ub, by);
        if inst.sig_by == mi as u32 {
            inst.sig_by = u32::MAX;
        }
        if inst.finished {
            inst.finished = false;
            inst.ub_recorded = false;
            self.open += 1;
            self.finished_total = self.finished_total.saturating_sub(1);
        }
    }
}

/// Compares a member's call with the other members' arrivals at an instance: the number of
/// contradictions (different signature; the call came after the instance was seen complete;
/// the others arrived after the call was seen complete) and the distance to the others' first
/// arrival. None when no other member arrived there.
pub(super) fn contradictions(c: &MemberCall, inst: &Instance, exclude: usize) -> Option<Check> {
    let mut first = u64::MAX;
    for (mi, &e) in inst.slots.iter().enumerate() {
        if mi != exclude && e < EXCUSED {
            first = first.min(e);
        }
    }
    if first == u64::MAX {
        return None;
    }
    let mut k = Check {
        bad: 0,
        dist: c.entry_ns.abs_diff(first),
    };
    if inst.sig_by as usize != exclude && inst.sig != 0 && c.sig != 0 && inst.sig != c.sig {
        k.bad += 1;
    }
    if inst.ub_by as usize != exclude && inst.ub != 0 && c.entry_ns > inst.ub {
        k.bad += 1;
    }
    if c.ub != 0 && first > c.ub {
        k.bad += 1;
    }
    Some(k)
}

pub(super) struct Check {
    bad: u64,
    dist: u64,
}
