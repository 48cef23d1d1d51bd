//! Merge tests on synthetic recordings with known, injected clock offsets: the estimated
//! interval must hold the injected offset.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    engine::synth,
    events::{SockEvent, SockKind},
};

/// A small deterministic generator (xorshift), so the tests need no crate and never flake.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const A_ADDR: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 41000);
const B_ADDR: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2)), 5000);

fn sock_ev(
    kind: SockKind,
    pid: u32,
    sk: u64,
    ts: u64,
    bytes: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
) -> Event {
    Event::Sock(SockEvent {
        kind,
        pid,
        tid: pid,
        ts_ns: ts,
        sk,
        bytes: bytes as i64,
        local: Some(local),
        remote: Some(remote),
        oldstate: 0,
        newstate: 0,
        http: None,
    })
}

/// Events tagged with the number of the message they belong to.
type Tagged = Vec<(usize, Event)>;

/// True-time events of a request/response exchange over one TCP connection: every `period`
/// A sends a framed message (16-byte header, then a payload, two sends) and B answers the
/// same way. A send returns after its copy; its bytes arrive `delay` after the send started
/// (possibly before the send returns); a receive returns after the bytes arrived. Returns
/// (A's events, B's events) with true times, each tagged with the message number.
fn exchange(rng: &mut Rng, messages: usize, period: u64, start: u64) -> (Tagged, Tagged) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (pa, pb) = (100, 200);
    let (ska, skb) = (0xffff_8880_0000_1000, 0xffff_8880_0000_2000);
    for k in 0..messages {
        let t0 = start + k as u64 * period;
        // One framed message from (sender) to (receiver); returns when the receiver is done.
        let one = |rng: &mut Rng,
                   t: u64,
                   payload: u64,
                   send: &mut Vec<(usize, Event)>,
                   recv: &mut Vec<(usize, Event)>,
                   (sp, ssk, sl, sr): (u32, u64, (IpAddr, u16), (IpAddr, u16)),
                   (rp, rsk): (u32, u64)|
         -> u64 {
            let mut s_start = t;
            let mut r_ready = t;
            for len in [16, payload] {
                let copy = rng.between(1_000, 30_000);
                let arrive = s_start + rng.between(5_000, 200_000);
                let s_ret = s_start + copy;
                send.push((k, sock_ev(SockKind::Send, sp, ssk, s_ret, len, sl, sr)));
                let r_ret = arrive.max(r_ready) + rng.between(1_000, 20_000);
                recv.push((k, sock_ev(SockKind::Recv, rp, rsk, r_ret, len, sr, sl)));
                r_ready = r_ret;
                s_start = s_ret + rng.between(500, 2_000);
            }
            r_ready
        };
        let done = one(
            rng,
            t0,
            1024,
            &mut a,
            &mut b,
            (pa, ska, A_ADDR, B_ADDR),
            (pb, skb),
        );
        one(
            rng,
            done + 100_000,
            4096,
            &mut b,
            &mut a,
            (pb, skb, B_ADDR, A_ADDR),
            (pa, ska),
        );
    }
    (a, b)
}

/// Local times of a host whose clock reads `true - theta` (so local + θ = true).
fn local(evs: Vec<(usize, Event)>, theta: i64, from_message: usize) -> Vec<Event> {
    evs.into_iter()
        .filter(|(k, _)| *k >= from_message)
        .map(|(_, mut e)| {
            match &mut e {
                Event::Sock(s) => s.ts_ns = (s.ts_ns as i64 - theta) as u64,
                Event::Call(c) => {
                    c.entry_ns = (c.entry_ns as i64 - theta) as u64;
                    c.exit_ns = c.exit_ns.map(|x| (x as i64 - theta) as u64);
                }
                Event::ProcExit(p) => p.ts_ns = (p.ts_ns as i64 - theta) as u64,
            }
            e
        })
        .collect()
}

fn rec(host: &str, events: Vec<Event>, realtime: Option<i64>) -> HostRecording {
    HostRecording {
        host: host.into(),
        boot_id: Some(format!("boot-{host}")),
        realtime_offset_ns: realtime.map(|r| (r, r)),
        processes: Vec::new(),
        events,
        span_ns: None,
    }
}

fn assert_brackets(h: &HostClock, theta: i64, max_err: u64) {
    let o = &h.offset;
    assert!(
        matches!(o.method, ClockMethod::Data | ClockMethod::DataRealtime),
        "{h:?}"
    );
    let (lo, hi) = (o.lower_ns.expect("lower"), o.upper_ns.expect("upper"));
    assert!(
        lo <= theta && theta <= hi,
        "{theta} outside [{lo}, {hi}]: {h:?}"
    );
    let err = o.error_ns.expect("error");
    eprintln!(
        "{}: injected {theta} ns, estimated {} ± {err} ns (interval [{lo}, {hi}])",
        h.host, o.offset_ns
    );
    assert!(
        (o.offset_ns - theta).unsigned_abs() <= err,
        "estimate {} ± {err} misses {theta}",
        o.offset_ns
    );
    assert!(err <= max_err, "error {err} ns over {max_err}: {h:?}");
    assert!(!o.inconsistent);
}

const THETA_B: i64 = -3_217_654_321;

#[test]
fn tcp_both_ends_bracket_the_injected_offset_when_both_saw_the_first_byte() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (a, b) = exchange(&mut rng, 200, 5_000_000, 10_000_000_000);
    // No wall-clock prior at all: the streams are aligned from their first byte.
    let m = merge(vec![
        rec("node-a", local(a, 0, 0), None),
        rec("node-b", local(b, THETA_B, 0), None),
    ])
    .expect("merges");
    assert_eq!(m.hosts[0].offset.method, ClockMethod::Reference);
    assert_brackets(&m.hosts[1], THETA_B, 100_000);
    assert!(m.bounds.iter().all(|b| b.source == BoundSource::Tcp));
    assert_eq!(m.bounds.len(), 2, "{:?}", m.bounds);
}

#[test]
fn tcp_recorded_mid_stream_is_aligned_with_the_wall_clock_prior() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (a, b) = exchange(&mut rng, 300, 5_000_000, 50_000_000_000);
    // Recordings start at different messages; the wall clocks are 1.5 ms off (NTP).
    let realtime_a = 1_700_000_000_000_000_000;
    let realtime_b = realtime_a + THETA_B + 1_500_000;
    let m = merge(vec![
        rec("node-a", local(a, 0, 3), Some(realtime_a)),
        rec("node-b", local(b, THETA_B, 7), Some(realtime_b)),
    ])
    .expect("merges");
    assert_brackets(&m.hosts[1], THETA_B, 100_000);
    assert_eq!(m.hosts[1].realtime_offset_ns, Some(THETA_B + 1_500_000));
}

#[test]
fn bounds_chain_through_hosts_with_no_direct_connection() {
    let mut rng = Rng(7);
    let (ab_a, ab_b) = exchange(&mut rng, 100, 5_000_000, 1_000_000_000);
    let (bc_b, bc_c) = exchange(&mut rng, 100, 5_000_000, 1_000_000_000);
    // Second link: b is the first party, c the second, other addresses.
    let readdress = |evs: Vec<(usize, Event)>| -> Vec<(usize, Event)> {
        evs.into_iter()
            .map(|(k, mut e)| {
                if let Event::Sock(s) = &mut e {
                    let map = |x: (IpAddr, u16)| {
                        let IpAddr::V4(v) = x.0 else { unreachable!() };
                        (
                            IpAddr::V4(Ipv4Addr::new(10, 201, 0, v.octets()[3] + 1)),
                            x.1,
                        )
                    };
                    s.local = s.local.map(map);
                    s.remote = s.remote.map(map);
                    s.sk += 0x10;
                    s.pid += 1000;
                    s.tid = s.pid;
                }
                (k, e)
            })
            .collect()
    };
    let theta_c = 987_654_321_000;
    let mut b_events = local(ab_b, THETA_B, 0);
    b_events.extend(local(readdress(bc_b), THETA_B, 0));
    let m = merge(vec![
        rec("a", local(ab_a, 0, 0), None),
        rec("b", b_events, None),
        rec("c", local(readdress(bc_c), theta_c, 0), None),
    ])
    .expect("merges");
    assert_brackets(&m.hosts[1], THETA_B, 100_000);
    // c: only through b, so the error adds up along the chain.
    assert_brackets(&m.hosts[2], theta_c, 200_000);
    assert!(!m
        .bounds
        .iter()
        .any(|b| (b.from, b.to) == (0, 2) || (b.from, b.to) == (2, 0)));
}

#[test]
fn collective_instances_bound_hosts_without_tcp() {
    let mut rng = Rng(99);
    let uid = 0xabcd_ef01_2345_6789;
    let theta = 42_000_000_123i64;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    a.push((0, synth::init(10, uid, 0, 2, 0x1000, 1_000, 50_000)));
    b.push((0, synth::init(10, uid, 1, 2, 0x2000, 2_000, 60_000)));
    for k in 0..200u64 {
        let t = 1_000_000 + k * 1_000_000;
        let ea = t + rng.between(0, 300_000);
        let eb = t + rng.between(0, 300_000);
        let last = ea.max(eb);
        let xa = last + rng.between(5_000, 40_000);
        let xb = last + rng.between(5_000, 40_000);
        a.push((
            0,
            synth::coll(synth::ALL_REDUCE, 10, 0x1000, Some(0), 2, 4096, 1, ea, xa),
        ));
        b.push((
            0,
            synth::coll(synth::ALL_REDUCE, 10, 0x2000, Some(1), 2, 4096, 1, eb, xb),
        ));
    }
    let m = merge(vec![
        rec("a", local(a, 0, 0), None),
        rec("b", local(b, theta, 0), None),
    ])
    .expect("merges");
    assert_brackets(&m.hosts[1], theta, 100_000);
    assert!(m.bounds.iter().all(|b| b.source == BoundSource::Collective));
    assert!(
        m.clock_lines()[1].contains("bound(s) in the data (collectives)"),
        "{:?}",
        m.clock_lines()
    );
    // One communicator across both hosts; both pid 10, so job-wide ids differ.
    assert_eq!(m.communicators.len(), 1);
    let c = &m.communicators[0];
    assert_eq!(c.uid_hash, "abcdef0123456789");
    assert_eq!(c.hosts, ["a", "b"]);
    assert_eq!(
        c.members
            .iter()
            .map(|x| (x.rank, x.host.as_str(), x.pid))
            .collect::<Vec<_>>(),
        [(0, "a", 10), (1, "b", 10)]
    );
    assert_ne!(c.members[0].id, c.members[1].id);
}

#[test]
fn without_data_the_wall_clocks_are_used_and_the_error_is_unknown() {
    let a = vec![synth::plain(synth::DEVICE_SYNC, 1, 10, 20)];
    let b = vec![synth::plain(synth::DEVICE_SYNC, 2, 10, 20)];
    let m = merge(vec![
        rec("a", a.clone(), Some(1_000)),
        rec("b", b.clone(), Some(-5_000)),
    ])
    .expect("merges");
    let o = &m.hosts[1].offset;
    assert_eq!(
        (o.method, o.offset_ns, o.error_ns),
        (ClockMethod::Realtime, -6_000, None)
    );
    let m = merge(vec![rec("a", a, None), rec("b", b, None)]).expect("merges");
    assert_eq!(m.hosts[1].offset.method, ClockMethod::Unknown);
    assert!(
        m.clock_lines()[1].contains("unknown"),
        "{:?}",
        m.clock_lines()
    );
}

#[test]
fn loopback_connections_of_two_hosts_are_not_matched() {
    // Both hosts talk to themselves on 127.0.0.1 with mirror ports: not one connection.
    let a = vec![
        synth::sock(SockKind::Send, 1, 0x10, 100, 64, 5000, 6000),
        synth::sock(SockKind::Recv, 1, 0x10, 200, 64, 5000, 6000),
    ];
    let b = vec![
        synth::sock(SockKind::Recv, 2, 0x20, 100, 64, 6000, 5000),
        synth::sock(SockKind::Send, 2, 0x20, 150, 64, 6000, 5000),
    ];
    let m = merge(vec![rec("a", a, None), rec("b", b, None)]).expect("merges");
    assert!(m.bounds.is_empty(), "{:?}", m.bounds);
}

#[test]
fn pids_shared_by_hosts_get_job_wide_ids_and_events_are_shifted_and_ordered() {
    let a = vec![
        synth::plain(synth::DEVICE_SYNC, 100, 4_000, 5_000),
        synth::plain(synth::DEVICE_SYNC, 7, 8_000, 9_000),
    ];
    let b = vec![synth::plain(synth::DEVICE_SYNC, 100, 2_000, 2_500)];
    let mut ra = rec("a", a, Some(0));
    ra.span_ns = Some((0, 20_000));
    ra.processes = vec![(
        100,
        ProcessHints {
            rank: Some(0),
            ..Default::default()
        },
    )];
    let mut rb = rec("b", b, Some(3_000));
    rb.span_ns = Some((0, 20_000));
    rb.processes = vec![(
        100,
        ProcessHints {
            rank: Some(1),
            ..Default::default()
        },
    )];
    let m = merge(vec![ra, rb]).expect("merges");
    let ids: Vec<(u32, &str, u32, Option<u32>)> = m
        .processes
        .iter()
        .map(|p| (p.id, p.host.as_str(), p.pid, p.rank))
        .collect();
    assert_eq!(
        ids,
        [
            (7, "a", 7, None),
            (100, "a", 100, Some(0)),
            (10_000_100, "b", 100, Some(1))
        ]
    );
    assert_eq!(m.process(10_000_100).map(|p| p.host.as_str()), Some("b"));
    // b's call moved onto a's clock (+3 µs) and sorted among a's.
    let seen: Vec<(u32, u64)> = m
        .events
        .iter()
        .map(|e| match e {
            Event::Call(c) => (c.pid, c.entry_ns),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(seen, [(100, 4_000), (10_000_100, 5_000), (7, 8_000)]);
    let Event::Call(c) = &m.events[1] else {
        unreachable!()
    };
    assert_eq!((c.tid, c.exit_ns), (10_000_100, Some(5_500)));
    let hosts: Vec<(u32, Option<String>)> = m
        .registrations
        .iter()
        .map(|(id, h)| (*id, h.host.clone()))
        .collect();
    assert_eq!(
        hosts,
        [(100, Some("a".into())), (10_000_100, Some("b".into()))]
    );
}

#[test]
fn recordings_of_one_host_and_boot_share_a_clock() {
    let a1 = rec(
        "a",
        vec![synth::plain(synth::DEVICE_SYNC, 1, 10, 20)],
        Some(0),
    );
    let a2 = rec(
        "a",
        vec![synth::plain(synth::DEVICE_SYNC, 2, 10, 20)],
        Some(999),
    );
    let mut other_boot = rec(
        "a",
        vec![synth::plain(synth::DEVICE_SYNC, 3, 10, 20)],
        Some(5),
    );
    other_boot.boot_id = Some("rebooted".into());
    let m = merge(vec![a1, a2, other_boot]).expect("merges");
    assert_eq!(m.hosts.len(), 2);
    assert_eq!(m.hosts[0].recordings, [0, 1]);
    assert_eq!(m.hosts[1].host, "a#2");
    assert_eq!(merge(Vec::new()).err(), Some(MergeError::Empty));
}

#[test]
fn contradicting_bounds_are_flagged_not_hidden() {
    let bounds = [
        Bound {
            from: 0,
            to: 1,
            min_ns: 100,
            source: BoundSource::Tcp,
        },
        Bound {
            from: 1,
            to: 0,
            min_ns: -50,
            source: BoundSource::Tcp,
        },
    ];
    let o = clock::solve(&[None, None], &bounds);
    assert!(o[1].inconsistent);
    assert_eq!(o[1].method, ClockMethod::Data);
    assert_eq!((o[1].lower_ns, o[1].upper_ns), (Some(100), Some(50)));
}

#[test]
fn only_the_time_every_host_recorded_is_kept() {
    // a records 1000..9000, b (same clock) only 4000..6000 by its own account.
    let a: Vec<Event> = (1..=9)
        .map(|k| synth::plain(synth::DEVICE_SYNC, 1, k * 1_000, k * 1_000 + 10))
        .collect();
    let mut rb = rec(
        "b",
        vec![synth::plain(synth::DEVICE_SYNC, 2, 5_000, 5_010)],
        Some(0),
    );
    rb.span_ns = Some((4_000, 6_000));
    let m = merge(vec![rec("a", a, Some(0)), rb]).expect("merges");
    assert_eq!(m.window_ns, Some((4_000, 6_000)));
    let kept: Vec<u64> = m
        .events
        .iter()
        .map(|e| match e {
            Event::Call(c) => c.entry_ns,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(kept, [4_000, 5_000, 5_000, 6_000]);
    assert_eq!(m.events_outside_window, 6);
    // One host: nothing is cut.
    let one = merge(vec![rec(
        "a",
        vec![synth::plain(synth::DEVICE_SYNC, 1, 1, 2)],
        None,
    )])
    .expect("merges");
    assert_eq!((one.window_ns, one.events_outside_window), (None, 0));
}

#[test]
fn printed_offsets_are_exact_to_the_nanosecond() {
    assert_eq!(fmt_ns(-3_217_654_321), "-3.217654321 s");
    assert_eq!(fmt_ns(1_500_000), "+1.500000 ms");
    assert_eq!(fmt_ns(26_485), "+26.485 µs");
    assert_eq!(fmt_ns(0), "+0.000 µs");
}

#[test]
fn one_way_traffic_with_wall_clocks_falls_back_to_them() {
    // Only a -> b messages: no pair of directions to tell the right alignment from a
    // shifted one once the wall clocks are there, so no data bound is claimed.
    let mut rng = Rng(11);
    let (a, b) = exchange(&mut rng, 50, 5_000_000, 1_000_000_000);
    let keep = |evs: Vec<(usize, Event)>, kind: SockKind| -> Vec<(usize, Event)> {
        evs.into_iter()
            .filter(|(_, e)| matches!(e, Event::Sock(s) if s.kind == kind))
            .collect()
    };
    let m = merge(vec![
        rec("a", local(keep(a, SockKind::Send), 0, 0), Some(0)),
        rec(
            "b",
            local(keep(b, SockKind::Recv), THETA_B, 0),
            Some(THETA_B + 1_000),
        ),
    ])
    .expect("merges");
    let o = &m.hosts[1].offset;
    assert_eq!(o.method, ClockMethod::Realtime, "{o:?}");
    assert_eq!(o.offset_ns, THETA_B + 1_000);
}

#[test]
fn ipv4_mapped_ipv6_endpoints_match_their_ipv4_twins() {
    // Host b's socket reports ::ffff:10.200.0.x addresses (a dual-stack listener).
    let mut rng = Rng(12);
    let (a, b) = exchange(&mut rng, 50, 5_000_000, 1_000_000_000);
    let mapped = |evs: Vec<(usize, Event)>| -> Vec<(usize, Event)> {
        evs.into_iter()
            .map(|(k, mut e)| {
                if let Event::Sock(s) = &mut e {
                    let to6 = |x: (IpAddr, u16)| match x.0 {
                        IpAddr::V4(v) => (IpAddr::V6(v.to_ipv6_mapped()), x.1),
                        IpAddr::V6(_) => x,
                    };
                    s.local = s.local.map(to6);
                    s.remote = s.remote.map(to6);
                }
                (k, e)
            })
            .collect()
    };
    let m = merge(vec![
        rec("a", local(a, 0, 0), None),
        rec("b", local(mapped(b), THETA_B, 0), None),
    ])
    .expect("merges");
    assert_brackets(&m.hosts[1], THETA_B, 100_000);
}

/// Two hosts, one rank each, no TCP between them; host b's rank enters every all-reduce
/// `late` after host a's. Merged and analysed: (host b's rank, its lag p50 as the engine
/// measured it) when named, and the engine's notes.
/// (rank, lag p50) of each straggler named.
type Named = Vec<(Option<u32>, u64)>;

fn late_host(late: u64, priors: bool) -> (Named, Vec<String>, Merged) {
    let mut rng = Rng(7);
    let uid = 0x1234_5678_9abc_def0;
    // Host b's clock reads 5 s ahead of host a's (local + θ = true).
    let theta = -5_000_000_000i64;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    a.push((0, synth::init(10, uid, 0, 2, 0x1000, 1_000, 50_000)));
    b.push((0, synth::init(20, uid, 1, 2, 0x2000, 2_000, 60_000)));
    for k in 0..300u64 {
        let t = 1_000_000 + k * 50_000_000;
        let ea = t + rng.between(0, 200_000);
        let eb = t + late + rng.between(0, 200_000);
        let xa = eb + rng.between(50_000, 80_000);
        let xb = eb + rng.between(50_000, 80_000);
        a.push((
            0,
            synth::coll(synth::ALL_REDUCE, 10, 0x1000, Some(0), 2, 4096, 1, ea, xa),
        ));
        b.push((
            0,
            synth::coll(synth::ALL_REDUCE, 20, 0x2000, Some(1), 2, 4096, 1, eb, xb),
        ));
    }
    let (pa, pb) = if priors {
        (Some(0), Some(theta))
    } else {
        (None, None)
    };
    // Both recorders ran from true time 0 to 20 s.
    let (mut ra, mut rb) = (
        rec("a", local(a, 0, 0), pa),
        rec("b", local(b, theta, 0), pb),
    );
    ra.span_ns = Some((0, 20_000_000_000));
    ra.processes = vec![(10, Default::default())];
    rb.processes = vec![(20, Default::default())];
    rb.span_ns = Some(((-theta) as u64, (20_000_000_000 - theta) as u64));
    let m = merge(vec![ra, rb]).expect("merges");
    let mut e = crate::engine::Engine::new(crate::engine::Config::default());
    for (id, hints) in &m.registrations {
        e.register_process(*id, hints.clone());
    }
    e.set_host_clocks(m.host_clocks());
    e.ingest_batch(m.events.clone());
    let end = m.events.last().map_or(0, |ev| match ev {
        Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
        _ => 0,
    });
    e.advance(end + 10_000_000_000);
    let s = e.snapshot();
    let named = e
        .findings()
        .iter()
        .filter(|f| f.kind == crate::engine::FindingKind::Straggler)
        .map(|f| {
            let lag = s.communicators[0]
                .lane
                .members
                .iter()
                .find(|mm| mm.rank == f.culprit.rank)
                .map_or(0, |mm| mm.lag.p50);
            (f.culprit.rank, lag)
        })
        .collect();
    (named, e.notes(), m)
}

/// A host late on every collective, with no TCP between the hosts: the collective bounds
/// alone cannot tell its lateness from its clock's offset (the middle of the interval they
/// allow hides half the lateness). With the recorders' wall clocks the offset is theirs
/// (within the bounds): the rank is named with its whole lag, and the finding says how far
/// the data alone could move it. Without them it is not named, and the notes say why.
#[test]
fn a_host_late_on_every_collective_is_neither_halved_nor_guessed() {
    let late = 20_000_000;
    let (named, _, m) = late_host(late, true);
    assert_eq!(m.hosts[1].offset.method, ClockMethod::DataRealtime);
    assert_eq!(named.len(), 1, "{named:?}");
    let (rank, lag) = named[0];
    assert_eq!(rank, Some(1));
    assert!(
        (18_000_000..=22_000_000).contains(&lag),
        "lag {lag} ns, late by {late}: the whole lateness, not half"
    );
    let (named, notes, m) = late_host(late, false);
    assert_eq!(m.hosts[1].offset.method, ClockMethod::Data);
    assert!(named.is_empty(), "{named:?}");
    assert!(
        notes.iter().any(|n| n.contains("clock alignment error")),
        "{notes:?}"
    );
}
