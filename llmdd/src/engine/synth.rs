//! Builders of synthetic events, for the engine's tests, its benchmark, and anyone feeding the
//! engine a scripted stream. Function ids are those of `llmdd_common::funcs::FUNCS`.

use std::net::{IpAddr, Ipv4Addr};

use llmdd_common::funcs;

use crate::events::{CallEvent, Event, ProcExitEvent, SockEvent, SockKind};

pub const ALL_REDUCE: u16 = 0;
pub const ALL_GATHER: u16 = 1;
pub const REDUCE_SCATTER: u16 = 2;
pub const BROADCAST: u16 = 3;
pub const SEND: u16 = 9;
pub const RECV: u16 = 10;
pub const GROUP_START: u16 = 11;
pub const GROUP_END: u16 = 12;
pub const COMM_INIT_RANK: u16 = 13;
pub const COMM_SPLIT: u16 = 16;
pub const COMM_DESTROY: u16 = 17;
pub const LAUNCH_KERNEL: u16 = 19;
pub const GRAPH_LAUNCH: u16 = 21;
pub const MEMCPY_ASYNC: u16 = 22;
pub const STREAM_SYNC: u16 = 24;
pub const DEVICE_SYNC: u16 = 25;
pub const EVENT_SYNC: u16 = 26;
pub const EVENT_RECORD: u16 = 27;
pub const EVENT_QUERY: u16 = 28;
pub const MALLOC: u16 = 30;
pub const FREE: u16 = 31;
pub const CU_GRAPH_LAUNCH: u16 = 37;
pub const CU_MEM_ALLOC: u16 = 42;

/// A bare call of `func` that returned 0 (`exit` = None: it did not return).
pub fn call(func: u16, pid: u32, tid: u32, entry: u64, exit: Option<u64>) -> CallEvent {
    let spec = funcs::spec(func).expect("valid function id");
    CallEvent {
        func,
        family: spec.family.name(),
        pid,
        tid,
        lib_slot: 0,
        entry_ns: entry,
        exit_ns: exit,
        ret: exit.map(|_| 0),
        rank: None,
        nranks: None,
        uid_hash: None,
        comm: None,
        stream: None,
        event_handle: None,
        count: None,
        bytes: None,
        dtype: None,
        op: None,
        peer: None,
        out: None,
        stack_id: None,
        caller: 0,
        values: Vec::new(),
        args: [0; 9],
        text: None,
    }
}

/// A collective (`func`) on `comm` by rank `rank` of `nranks` (pass `None` to model unknown
/// communicator offsets), float32 sum, `bytes` per rank, on `stream`.
#[allow(clippy::too_many_arguments)]
pub fn coll(
    func: u16,
    pid: u32,
    comm: u64,
    rank: Option<i32>,
    nranks: i32,
    bytes: u64,
    stream: u64,
    entry: u64,
    exit: u64,
) -> Event {
    let mut c = call(func, pid, pid, entry, Some(exit));
    c.comm = Some(comm);
    c.rank = rank;
    c.nranks = rank.map(|_| nranks);
    c.bytes = Some(bytes);
    c.count = Some(bytes / 4);
    c.dtype = Some(7);
    c.op = Some(0);
    c.stream = Some(stream);
    Event::Call(c)
}

/// `ncclSend` (send = true) or `ncclRecv` to/from `peer`.
#[allow(clippy::too_many_arguments)]
pub fn p2p(
    send: bool,
    pid: u32,
    comm: u64,
    rank: i32,
    nranks: i32,
    peer: i64,
    bytes: u64,
    entry: u64,
    exit: u64,
) -> Event {
    let mut c = call(if send { SEND } else { RECV }, pid, pid, entry, Some(exit));
    c.comm = Some(comm);
    c.rank = Some(rank);
    c.nranks = Some(nranks);
    c.bytes = Some(bytes);
    c.peer = Some(peer);
    c.stream = Some(1);
    Event::Call(c)
}

/// `ncclCommInitRank` that returned handle `comm`.
pub fn init(pid: u32, uid: u64, rank: i32, nranks: i32, comm: u64, entry: u64, exit: u64) -> Event {
    let mut c = call(COMM_INIT_RANK, pid, pid, entry, Some(exit));
    c.uid_hash = Some(uid);
    c.rank = Some(rank);
    c.nranks = Some(nranks);
    c.comm = Some(comm);
    c.out = Some(comm);
    Event::Call(c)
}

/// `ncclCommSplit(parent, color, key, &new)`.
pub fn split(
    pid: u32,
    parent: u64,
    color: i32,
    key: i32,
    new: u64,
    entry: u64,
    exit: u64,
) -> Event {
    let mut c = call(COMM_SPLIT, pid, pid, entry, Some(exit));
    c.comm = Some(parent);
    c.args[0] = parent;
    c.args[1] = color as u32 as u64;
    c.args[2] = key as u32 as u64;
    c.out = Some(new);
    Event::Call(c)
}

/// A call of `func` with only a stream (launches, syncs, graph launches, async copies).
pub fn on_stream(func: u16, pid: u32, stream: u64, entry: u64, exit: u64) -> Event {
    let mut c = call(func, pid, pid, entry, Some(exit));
    c.stream = Some(stream);
    Event::Call(c)
}

/// A call with no arguments of interest (device sync, group start/end).
pub fn plain(func: u16, pid: u32, entry: u64, exit: u64) -> Event {
    Event::Call(call(func, pid, pid, entry, Some(exit)))
}

/// An allocation of `bytes` returning `ret` and (on success) `addr`.
pub fn alloc(func: u16, pid: u32, bytes: u64, addr: u64, ret: i64, entry: u64, exit: u64) -> Event {
    let mut c = call(func, pid, pid, entry, Some(exit));
    c.bytes = Some(bytes);
    c.count = Some(bytes);
    c.ret = Some(ret);
    c.out = (ret == 0).then_some(addr);
    Event::Call(c)
}

/// A free of `addr`.
pub fn free(func: u16, pid: u32, addr: u64, entry: u64, exit: u64) -> Event {
    let mut c = call(func, pid, pid, entry, Some(exit));
    c.args[0] = addr;
    Event::Call(c)
}

/// A socket event on connection `sk` between 127.0.0.1:`lport` and 127.0.0.2:`rport`.
pub fn sock(
    kind: SockKind,
    pid: u32,
    sk: u64,
    ts: u64,
    bytes: i64,
    lport: u16,
    rport: u16,
) -> Event {
    Event::Sock(SockEvent {
        kind,
        pid,
        tid: pid,
        ts_ns: ts,
        sk,
        bytes,
        local: Some((IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), lport)),
        remote: Some((IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), rport)),
        oldstate: 0,
        newstate: 0,
        http: None,
    })
}

/// A TCP state change on `sk`.
pub fn state(pid: u32, sk: u64, ts: u64, old: i32, new: i32, lport: u16, rport: u16) -> Event {
    let Event::Sock(mut s) = sock(SockKind::State, pid, sk, ts, 0, lport, rport) else {
        unreachable!()
    };
    s.oldstate = old;
    s.newstate = new;
    Event::Sock(s)
}

/// The process exited.
pub fn exit(pid: u32, ts: u64) -> Event {
    Event::ProcExit(ProcExitEvent { pid, ts_ns: ts })
}
