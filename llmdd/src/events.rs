//! Typed events decoded from the ring buffer's raw records (`llmdd_common`). This is the
//! boundary between the kernel's byte layout and everything downstream.

use llmdd_common::{
    call::{CallRecord, F_DEREF, F_OUT, F_RANK, F_RETURNED, F_STR, F_UID, F_USTACK, NO_SLOT},
    funcs::{self, CallKind, Family, FuncSpec},
    proc::ProcExitRecord,
    sock::{
        SockRecord, SF_ADDR, SF_HEADERS_ONLY, SF_STATUS_LINE, SOCK_RECV, SOCK_RETRANSMIT,
        SOCK_SEND, SOCK_STATE,
    },
    RecordKind,
};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a raw record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its {kind} layout ({need} bytes)")]
    Short {
        kind: &'static str,
        got: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown function id {0}")]
    UnknownFunc(u16),
    #[error("{0} records are control notices for the reader, not events")]
    NotAnEvent(&'static str),
}

/// One decoded event.
// Events travel in batches by value; boxing the large call variant would add an allocation
// per event on the hottest path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Call(CallEvent),
    Sock(SockEvent),
    ProcExit(ProcExitEvent),
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError::Short {
                kind: "any",
                got: bytes.len(),
                need: 4,
            });
        }
        let kind = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        match RecordKind::from_u32(kind) {
            Some(RecordKind::Call) => {
                let r: CallRecord = read_record(bytes, "call")?;
                CallEvent::from_record(&r).map(Event::Call)
            }
            Some(RecordKind::Sock) => Ok(Event::Sock(SockEvent::from_record(&read_record(
                bytes, "sock",
            )?))),
            Some(RecordKind::ProcExit) => {
                let r: ProcExitRecord = read_record(bytes, "proc_exit")?;
                Ok(Event::ProcExit(ProcExitEvent {
                    pid: r.pid,
                    ts_ns: r.ts_ns,
                }))
            }
            Some(RecordKind::ExecMap) => Err(DecodeError::NotAnEvent("exec_map")),
            None => Err(DecodeError::UnknownKind(kind)),
        }
    }

    /// The process the event belongs to.
    pub fn pid(&self) -> u32 {
        match self {
            Event::Call(c) => c.pid,
            Event::Sock(s) => s.pid,
            Event::ProcExit(p) => p.pid,
        }
    }
}

fn read_record<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            kind,
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a plain-integer #[repr(C)] record valid for any bit
    // pattern; read_unaligned copes with any alignment of the ring-buffer slice.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A traced library call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallEvent {
    #[serde(serialize_with = "ser_func")]
    pub func: u16,
    pub family: &'static str,
    pub pid: u32,
    pub tid: u32,
    /// Library slot: which probed object (see `probe::Tracer::library`).
    pub lib_slot: u16,
    pub entry_ns: u64,
    pub exit_ns: Option<u64>,
    /// Return value as the C `int`/enum the functions return (low 32 bits, sign-extended).
    pub ret: Option<i64>,
    pub rank: Option<i32>,
    pub nranks: Option<i32>,
    pub uid_hash: Option<u64>,
    pub comm: Option<u64>,
    pub stream: Option<u64>,
    pub event_handle: Option<u64>,
    pub count: Option<u64>,
    pub bytes: Option<u64>,
    pub dtype: Option<u64>,
    pub op: Option<u64>,
    pub peer: Option<i64>,
    /// Value written through the out-pointer (new communicator, allocated address).
    pub out: Option<u64>,
    /// The caller's user stack, as an id into the probes' stack map (`--stacks`); resolved
    /// to frames by `stacks::StackWalker` while the process lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    /// The immediate caller's return address (with `stack_id`).
    #[serde(skip)]
    pub caller: u64,
    /// What a user probe records (`--probe ...,arg=N,ret`): `argN` and `ret`.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_values")]
    pub values: Vec<(String, u64)>,
    #[serde(skip)]
    pub args: [u64; 9],
    /// A string argument captured hashed (NIXL's remote agent name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<StrArg>,
}

/// A `std::string` argument as the probe captures it: a hash of its length and first 64
/// bytes (equal strings, equal hashes), and its first 8 bytes for people to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct StrArg {
    pub hash: u64,
    pub prefix: String,
}

impl StrArg {
    fn from_record(r: &CallRecord) -> Option<StrArg> {
        if r.flags & F_STR == 0 {
            return None;
        }
        let bytes = r.deref_val.to_le_bytes();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(8);
        let prefix: String = String::from_utf8_lossy(&bytes[..end])
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Some(StrArg {
            hash: r.uid_hash,
            prefix,
        })
    }
}

/// The communicator handle of a Gloo call whose context could not be read (see
/// `CallEvent::from_record`): one per job, ranks from the environment.
pub const GLOO_HANDLE: u64 = 0x6c00_6c00_0000_0001;

/// What an event of an unregistered function id claims to be (never reached: decoding
/// refuses unknown ids).
static UNKNOWN_FUNC: FuncSpec = FuncSpec {
    id: u16::MAX,
    name: "unknown",
    family: Family::User,
    kind: funcs::CallKind::Other,
    symbols: &[],
    roles: funcs::NO_ROLES,
    entry_only: true,
};

fn ser_values<S: serde::Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, x) in v {
        m.serialize_entry(k, x)?;
    }
    m.end()
}

fn ser_func<S: serde::Serializer>(id: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(funcs::spec(*id).map(|f| f.name).unwrap_or("unknown"))
}

fn slot(args: &[u64; 9], slot: u8) -> Option<u64> {
    if slot == NO_SLOT {
        None
    } else {
        args.get(slot as usize).copied()
    }
}

impl CallEvent {
    pub fn from_record(r: &CallRecord) -> Result<CallEvent, DecodeError> {
        let spec = funcs::spec(r.func).ok_or(DecodeError::UnknownFunc(r.func))?;
        let roles = &spec.roles;
        let args = r.args;
        let returned = r.flags & F_RETURNED != 0;
        let count = slot(&args, roles.count).map(|c| {
            if roles.count_is_int {
                c & 0xffff_ffff
            } else {
                c
            }
        });
        let dtype = if roles.fixed_dtype != NO_SLOT {
            Some(u64::from(roles.fixed_dtype))
        } else {
            slot(&args, roles.dtype).map(|d| d & 0xffff_ffff)
        };
        let bytes = match (count, roles.count_is_bytes) {
            (Some(c), true) => Some(c),
            (Some(c), false) => dtype
                .and_then(funcs::nccl_dtype_size)
                .map(|s| c.saturating_mul(s)),
            (None, _) => None,
        };
        let (mut rank, mut nranks) = if r.flags & F_RANK != 0 {
            (Some(r.rank), Some(r.nranks))
        } else {
            (None, None)
        };
        if let Some(n) = slot(&args, roles.nranks_arg) {
            nranks = Some(n as u32 as i32);
        }
        if let Some(k) = slot(&args, roles.rank_arg) {
            rank = Some(k as u32 as i32);
        }
        let stream = if r.flags & F_DEREF != 0
            && roles.deref != NO_SLOT
            && roles.stream == NO_SLOT
            && !roles.comm_is_deref
            && !roles.deref_is_str
        {
            Some(r.deref_val)
        } else {
            slot(&args, roles.stream)
        };
        let out = (r.flags & F_OUT != 0).then_some(r.out_val);
        let comm = match spec.kind {
            // For communicator creation the handle is the one written back.
            CallKind::CommInit | CallKind::CommInitAll => out,
            _ if spec.family == Family::User => crate::userprobe::collective_handle(r.func),
            // Gloo: the process group's context, read through the options object (ranks
            // through it too); without it, one communicator per job, ranks from the
            // environment.
            _ if roles.comm_is_deref => Some(if r.flags & F_DEREF != 0 {
                r.deref_val
            } else {
                GLOO_HANDLE
            }),
            _ => slot(&args, roles.comm),
        };
        // A user probe's return value is data, not a status code.
        let user = spec.family == Family::User;
        let values = if user {
            crate::userprobe::values(r.func, &args, returned.then_some(r.ret))
        } else {
            Vec::new()
        };
        Ok(CallEvent {
            func: r.func,
            family: spec.family.name(),
            pid: r.pid,
            tid: r.tid,
            lib_slot: r.lib_slot,
            entry_ns: r.entry_ns,
            exit_ns: returned.then_some(r.exit_ns),
            ret: (returned && spec.family.returns_status()).then_some(r.ret as u32 as i32 as i64),
            rank,
            nranks,
            uid_hash: (r.flags & F_UID != 0).then_some(r.uid_hash),
            stack_id: (r.flags & F_USTACK != 0).then_some(r.stack_id),
            caller: r.caller,
            comm,
            stream,
            event_handle: slot(&args, roles.event),
            count,
            bytes,
            dtype,
            op: slot(&args, roles.op).map(|o| o & 0xffff_ffff),
            peer: slot(&args, roles.peer).map(|p| p as u32 as i32 as i64),
            out,
            values,
            args,
            text: StrArg::from_record(r),
        })
    }

    pub fn spec(&self) -> &'static FuncSpec {
        // Constructed only from a valid id (see `from_record`); user probes are registered
        // before any record is read and never unregistered.
        funcs::spec(self.func).unwrap_or(&UNKNOWN_FUNC)
    }

    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    pub fn family(&self) -> Family {
        self.spec().family
    }

    /// Call duration in nanoseconds, when it returned.
    pub fn duration_ns(&self) -> Option<u64> {
        self.exit_ns.map(|e| e.saturating_sub(self.entry_ns))
    }
}

/// What happened on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SockKind {
    Send,
    Recv,
    State,
    Retransmit,
    Unknown,
}

/// A kernel socket event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SockEvent {
    pub kind: SockKind,
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    /// Kernel socket address: connection identity while the socket lives.
    pub sk: u64,
    pub bytes: i64,
    pub local: Option<(IpAddr, u16)>,
    pub remote: Option<(IpAddr, u16)>,
    pub oldstate: i32,
    pub newstate: i32,
    /// For the first send of a response on a serving front's connection: whether it starts
    /// with an HTTP/1 status line, and whether it holds the header block only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStart>,
}

/// What the first send of a response on a front's connection held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpStart {
    /// The status line and header block only: the first token comes in a later send.
    HeadersOnly,
    /// The status line, headers and the start of the body.
    WithBody,
}

impl SockEvent {
    pub fn from_record(r: &SockRecord) -> SockEvent {
        let kind = match r.event {
            SOCK_SEND => SockKind::Send,
            SOCK_RECV => SockKind::Recv,
            SOCK_STATE => SockKind::State,
            SOCK_RETRANSMIT => SockKind::Retransmit,
            _ => SockKind::Unknown,
        };
        let addr = |a: &[u8; 16]| -> IpAddr {
            if r.family == llmdd_common::sock::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(*a))
            } else {
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            }
        };
        let has = r.flags & SF_ADDR != 0;
        SockEvent {
            kind,
            pid: r.pid,
            tid: r.tid,
            ts_ns: r.ts_ns,
            sk: r.sk,
            bytes: r.bytes,
            local: has.then(|| (addr(&r.saddr), r.sport)),
            remote: has.then(|| (addr(&r.daddr), r.dport)),
            oldstate: r.oldstate,
            newstate: r.newstate,
            http: match (
                r.flags & SF_STATUS_LINE != 0,
                r.flags & SF_HEADERS_ONLY != 0,
            ) {
                (false, _) => None,
                (true, true) => Some(HttpStart::HeadersOnly),
                (true, false) => Some(HttpStart::WithBody),
            },
        }
    }
}

/// A traced process's last thread exited.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcExitEvent {
    pub pid: u32,
    pub ts_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmdd_common::call::F_RETURNED;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: viewing a plain record as bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_allreduce_with_bytes_and_rank() {
        let mut r = CallRecord {
            kind: RecordKind::Call as u32,
            func: 0,
            pid: 10,
            tid: 11,
            entry_ns: 100,
            exit_ns: 250,
            flags: F_RETURNED | F_RANK,
            rank: 2,
            nranks: 4,
            ..Default::default()
        };
        r.args[2] = 1024; // count
        r.args[3] = 7; // float32
        r.args[4] = 0; // sum
        r.args[5] = 0xdead_0000; // comm
        r.args[6] = 0x5000; // stream (stack slot)
        r.ret = 0xffff_ffff_0000_0004; // garbage in the upper half, int 4 below
        let Event::Call(c) = Event::decode(&bytes_of(&r)).expect("decodes") else {
            panic!("not a call")
        };
        assert_eq!(c.name(), "ncclAllReduce");
        assert_eq!(c.bytes, Some(4096));
        assert_eq!(c.comm, Some(0xdead_0000));
        assert_eq!(c.stream, Some(0x5000));
        assert_eq!((c.rank, c.nranks), (Some(2), Some(4)));
        assert_eq!(c.ret, Some(4));
        assert_eq!(c.duration_ns(), Some(150));
    }

    #[test]
    fn comm_init_takes_rank_from_arguments_and_handle_from_out() {
        let mut r = CallRecord {
            kind: RecordKind::Call as u32,
            func: 13,
            flags: F_RETURNED | F_OUT | F_UID,
            out_val: 0x7777,
            uid_hash: 99,
            ..Default::default()
        };
        r.args[1] = 4;
        r.args[2] = 3;
        let Event::Call(c) = Event::decode(&bytes_of(&r)).expect("decodes") else {
            panic!("not a call")
        };
        assert_eq!(
            (c.rank, c.nranks, c.comm, c.uid_hash),
            (Some(3), Some(4), Some(0x7777), Some(99))
        );
    }

    #[test]
    fn gloo_calls_take_their_context_as_communicator() {
        let mut r = CallRecord {
            kind: RecordKind::Call as u32,
            func: 64, // gloo::allreduce
            pid: 9,
            tid: 9,
            entry_ns: 10,
            exit_ns: 20,
            flags: F_RETURNED | F_DEREF | F_RANK,
            deref_val: 0x5555_0000_1000,
            rank: 1,
            nranks: 3,
            ..CallRecord::default()
        };
        r.args[0] = 0x7fff_0000_2000; // the options object
        r.ret = 0x9321_0003; // a void function's return register: not a status
        let c = CallEvent::from_record(&r).expect("decodes");
        assert_eq!(c.family, "gloo");
        assert_eq!(c.ret, None, "gloo's entry points return void");
        assert_eq!(c.comm, Some(0x5555_0000_1000));
        assert_eq!(c.stream, None, "the context is not a stream");
        assert_eq!((c.rank, c.nranks), (Some(1), Some(3)));
        // Without the context (the read failed): one communicator per job.
        r.flags &= !(F_DEREF | F_RANK);
        let c = CallEvent::from_record(&r).expect("decodes");
        assert_eq!(c.comm, Some(GLOO_HANDLE));
    }

    #[test]
    fn vllm_calls_take_this_as_communicator_and_their_template_type() {
        let mut r = CallRecord {
            kind: RecordKind::Call as u32,
            func: funcs::id::VLLM_ALLREDUCE_BF16,
            pid: 9,
            tid: 9,
            entry_ns: 10,
            exit_ns: 20,
            flags: F_RETURNED | F_RANK,
            rank: 1,
            nranks: 4,
            ..CallRecord::default()
        };
        r.args[0] = 0x5555_0000_2000; // this
        r.args[1] = 0x7000; // stream
        r.args[4] = 0xdead_beef_0000_1000; // int size: the upper half is not the count
        let c = CallEvent::from_record(&r).expect("decodes");
        assert_eq!(c.family, "vllm");
        assert_eq!(c.comm, Some(0x5555_0000_2000));
        assert_eq!(c.stream, Some(0x7000));
        assert_eq!(c.count, Some(0x1000));
        assert_eq!(c.dtype, Some(9), "bfloat16, from the template argument");
        assert_eq!(c.bytes, Some(0x2000));
        assert_eq!(c.spec().op_label(), "all-reduce");
        // allgather counts bytes.
        r.func = funcs::id::VLLM_ALLGATHER;
        let c = CallEvent::from_record(&r).expect("decodes");
        assert_eq!((c.bytes, c.dtype), (Some(0x1000), None));
    }

    #[test]
    fn a_captured_string_keeps_its_hash_and_readable_first_bytes() {
        let mut r = CallRecord {
            kind: RecordKind::Call as u32,
            func: funcs::id::NIXL_CREATE_XFER_REQ,
            pid: 9,
            tid: 9,
            entry_ns: 10,
            flags: F_DEREF | F_STR,
            deref_val: u64::from_le_bytes(*b"p1-\x01\0\0\0\0"),
            uid_hash: 0xabc,
            ..CallRecord::default()
        };
        let c = CallEvent::from_record(&r).expect("decodes");
        let t = c.text.expect("the string");
        assert_eq!((t.hash, t.prefix.as_str()), (0xabc, "p1-?"));
        assert_eq!(c.stream, None, "a string is not a stream");
        r.flags = F_DEREF;
        assert_eq!(CallEvent::from_record(&r).expect("decodes").text, None);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(
            Event::decode(&[1, 0, 0, 0, 9]),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(
            Event::decode(&[9, 0, 0, 0]),
            Err(DecodeError::UnknownKind(9))
        );
        let r = CallRecord {
            kind: 1,
            func: 999,
            ..Default::default()
        };
        assert_eq!(
            Event::decode(&bytes_of(&r)),
            Err(DecodeError::UnknownFunc(999))
        );
    }
}
