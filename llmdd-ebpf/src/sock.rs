//! Kernel socket tracepoints. Sizes, addresses, ports and timing only: no payload is read.
//!
//! - sock:sock_send_length / sock:sock_recv_length: bytes per send/recv, from traced
//!   processes only (filtered here by tgid). The records carry the socket's addresses, read
//!   from `struct sock` at offsets userspace took from the kernel's BTF (`SOCK_CFG`).
//! - sock:inet_sock_set_state: TCP state changes of traced processes' sockets.
//! - tcp:tcp_retransmit_skb: retransmits on sockets traced processes used (softirq context,
//!   so attributed through `KNOWN_SOCKS`).
//! - syscalls:sys_enter_{write,sendto,writev,sendmsg} of serving fronts: the buffer the
//!   thread sends (its address and length only), so that the first send of a response can
//!   be checked for an HTTP/1 status line and header block (see `response_start`).
//!
//! Field offsets below are those of the tracepoints' `format` files; userspace checks them
//! against tracefs before attaching and refuses a mismatch with a clear message.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use llmdd_common::{
    counters,
    sock::{
        SendBuf, SockRecord, AF_INET, AF_INET6, IPPROTO_TCP, MAX_HEADER_SCAN, SF_ADDR,
        SF_HEADERS_ONLY, SF_STATUS_LINE, SOCK_RECV, SOCK_RETRANSMIT, SOCK_SEND, SOCK_STATE,
    },
    RecordKind,
};

use crate::{
    emit::send,
    maps::{count, is_front, is_traced, KNOWN_SOCKS, RESPONSE_DUE, SEND_BUFS, SOCK_CFG},
};

/// sock_send_length / sock_recv_length: sk, family, protocol, ret.
const LEN_SK: usize = 8;
const LEN_FAMILY: usize = 16;
const LEN_PROTOCOL: usize = 18;
const LEN_RET: usize = 20;
/// inet_sock_set_state.
const ST_SK: usize = 8;
const ST_OLD: usize = 16;
const ST_NEW: usize = 20;
const ST_SPORT: usize = 24;
const ST_DPORT: usize = 26;
const ST_FAMILY: usize = 28;
const ST_PROTOCOL: usize = 30;
const ST_SADDR: usize = 32;
const ST_DADDR: usize = 36;
const ST_SADDR6: usize = 40;
const ST_DADDR6: usize = 56;
/// tcp_retransmit_skb.
const RT_SK: usize = 16;
const RT_STATE: usize = 24;
const RT_SPORT: usize = 28;
const RT_DPORT: usize = 30;
const RT_FAMILY: usize = 32;
const RT_SADDR: usize = 34;
const RT_DADDR: usize = 38;
const RT_SADDR6: usize = 42;
const RT_DADDR6: usize = 58;

/// sys_enter_write / sendto / writev / sendmsg: the buffer (or vector, or msghdr) and its
/// length (or vector length).
const SYS_BUF: usize = 24;
const SYS_LEN: usize = 32;
/// `struct user_msghdr`: `msg_iov` after the name pointer and length.
const MSGHDR_IOV: u64 = 16;

const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;

#[inline(always)]
fn read_kernel<T: Copy + Default>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counters::KERNEL_READ_FAILED);
            None
        }
    }
}

/// Fills addresses and ports from the socket itself.
#[inline(always)]
fn fill_addrs(rec: &mut SockRecord, sk: u64) {
    let Some(cfg) = SOCK_CFG.get(0) else { return };
    if cfg.valid != 1 {
        return;
    }
    let Some(num) = read_kernel::<u16>(sk + cfg.num_off as u64) else {
        return;
    };
    let Some(dport_be) = read_kernel::<u16>(sk + cfg.dport_off as u64) else {
        return;
    };
    rec.sport = num;
    rec.dport = u16::from_be(dport_be);
    if rec.family == AF_INET {
        let Some(d) = read_kernel::<[u8; 4]>(sk + cfg.daddr_off as u64) else {
            return;
        };
        let Some(s) = read_kernel::<[u8; 4]>(sk + cfg.rcv_saddr_off as u64) else {
            return;
        };
        rec.daddr[..4].copy_from_slice(&d);
        rec.saddr[..4].copy_from_slice(&s);
    } else {
        let Some(d) = read_kernel::<[u8; 16]>(sk + cfg.v6_daddr_off as u64) else {
            return;
        };
        let Some(s) = read_kernel::<[u8; 16]>(sk + cfg.v6_rcv_saddr_off as u64) else {
            return;
        };
        rec.daddr = d;
        rec.saddr = s;
    }
    rec.flags |= SF_ADDR;
}

#[inline(always)]
fn on_length(ctx: &TracePointContext, event: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: reads of the tracepoint record at its format offsets.
    let (sk, family, protocol, ret) = unsafe {
        (
            ctx.read_at::<u64>(LEN_SK).unwrap_or(0),
            ctx.read_at::<u16>(LEN_FAMILY).unwrap_or(0),
            ctx.read_at::<u16>(LEN_PROTOCOL).unwrap_or(0),
            ctx.read_at::<i32>(LEN_RET).unwrap_or(0),
        )
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    // Keep real transfers and the errors that mean a broken link; drop EAGAIN and friends,
    // which non-blocking sockets produce in floods.
    if ret <= 0 && ret != -ECONNRESET && ret != -EPIPE {
        return 0;
    }
    // SAFETY: read-only lookup.
    if unsafe { KNOWN_SOCKS.get(&sk) }.is_none() {
        let _ = KNOWN_SOCKS.insert(&sk, &tgid, 0);
    }
    let mut rec = sock_record(event, tgid, pid_tgid as u32, sk, protocol);
    rec.bytes = ret as i64;
    rec.family = family;
    fill_addrs(&mut rec, sk);
    if protocol == IPPROTO_TCP && ret > 0 && is_front(tgid) {
        if event == SOCK_RECV {
            let _ = RESPONSE_DUE.insert(&sk, &1, 0);
        } else if RESPONSE_DUE.remove(&sk).is_ok() {
            rec.flags |= response_start(pid_tgid as u32, ret as u64);
        }
    }
    send(&rec);
    0
}

/// The first send after a receive on a front's connection: whether it starts an HTTP/1
/// response and, if so, whether it ends where its header block does. The thread's send
/// buffer is read byte by byte up to the blank line that ends the headers, and never past
/// it: no body byte is read (and nothing read leaves this function but the two flags).
#[inline(always)]
fn response_start(tid: u32, sent: u64) -> u32 {
    // SAFETY: read-only lookup of a plain value.
    let Some(buf) = (unsafe { SEND_BUFS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SEND_BUFS.remove(&tid);
    let len = sent.min(buf.len);
    if len < 8 || buf.ptr == 0 {
        return 0;
    }
    // SAFETY: validated user reads of the thread's own send buffer.
    let Ok(head) = (unsafe { bpf_probe_read_user(buf.ptr as *const [u8; 8]) }) else {
        return 0;
    };
    if &head[..7] != b"HTTP/1." {
        return 0;
    }
    // The last four bytes read, as a window over the header bytes.
    let mut window: u32 = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let mut i: u64 = 8;
    while i < MAX_HEADER_SCAN as u64 {
        if i >= len {
            // The send ended inside the header block: the rest (and any body) comes later.
            return SF_STATUS_LINE | SF_HEADERS_ONLY;
        }
        // SAFETY: as above, one header byte.
        let Ok(b) = (unsafe { bpf_probe_read_user((buf.ptr + i) as *const u8) }) else {
            return SF_STATUS_LINE;
        };
        window = (window << 8) | b as u32;
        i += 1;
        if window == 0x0d0a_0d0a {
            return if i == len {
                SF_STATUS_LINE | SF_HEADERS_ONLY
            } else {
                SF_STATUS_LINE
            };
        }
    }
    SF_STATUS_LINE
}

/// Remembers the buffer a front thread is about to send.
#[inline(always)]
fn remember_send(ptr: u64, len: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_front((pid_tgid >> 32) as u32) {
        return;
    }
    let _ = SEND_BUFS.insert(&(pid_tgid as u32), &SendBuf { ptr, len }, 0);
}

/// The first I/O vector of `iov` (a user `struct iovec *`).
#[inline(always)]
fn first_iov(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: validated user read of two words.
    let v = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((v[0], v[1]))
}

#[inline(always)]
fn sys_args(ctx: &TracePointContext) -> (u64, u64) {
    // SAFETY: reads of the tracepoint record at its format offsets.
    unsafe {
        (
            ctx.read_at::<u64>(SYS_BUF).unwrap_or(0),
            ctx.read_at::<u64>(SYS_LEN).unwrap_or(0),
        )
    }
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let (buf, len) = sys_args(&ctx);
    remember_send(buf, len);
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let (buf, len) = sys_args(&ctx);
    remember_send(buf, len);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let (vec, _) = sys_args(&ctx);
    if let Some((ptr, len)) = first_iov(vec) {
        remember_send(ptr, len);
    }
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let (msg, _) = sys_args(&ctx);
    if msg == 0 {
        return 0;
    }
    // SAFETY: validated user read of the msghdr's iov pointer.
    let Ok(iov) = (unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) }) else {
        return 0;
    };
    if let Some((ptr, len)) = first_iov(iov) {
        remember_send(ptr, len);
    }
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_length(&ctx, SOCK_SEND)
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_length(&ctx, SOCK_RECV)
}

/// Which process a socket event belongs to: the current one when traced, else the owner
/// remembered in `KNOWN_SOCKS`.
#[inline(always)]
fn owner(sk: u64) -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_traced(tgid) {
        return Some((tgid, pid_tgid as u32));
    }
    // SAFETY: read-only lookup.
    unsafe { KNOWN_SOCKS.get(&sk) }.map(|t| (*t, 0))
}

/// Where a state-change or retransmit tracepoint keeps the connection's endpoints.
struct Endpoints {
    sport: usize,
    dport: usize,
    family: usize,
    saddr: usize,
    daddr: usize,
    saddr6: usize,
    daddr6: usize,
}

const ST_ENDPOINTS: Endpoints = Endpoints {
    sport: ST_SPORT,
    dport: ST_DPORT,
    family: ST_FAMILY,
    saddr: ST_SADDR,
    daddr: ST_DADDR,
    saddr6: ST_SADDR6,
    daddr6: ST_DADDR6,
};

const RT_ENDPOINTS: Endpoints = Endpoints {
    sport: RT_SPORT,
    dport: RT_DPORT,
    family: RT_FAMILY,
    saddr: RT_SADDR,
    daddr: RT_DADDR,
    saddr6: RT_SADDR6,
    daddr6: RT_DADDR6,
};

/// A socket record for `sk`, owned by (pid, tid), stamped now.
#[inline(always)]
fn sock_record(event: u32, pid: u32, tid: u32, sk: u64, protocol: u16) -> SockRecord {
    SockRecord {
        kind: RecordKind::Sock as u32,
        event,
        pid,
        tid,
        // SAFETY: ktime is always readable.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk,
        protocol,
        ..SockRecord::default()
    }
}

/// Fills ports, family and addresses from a tracepoint record laid out as `at` says.
#[inline(always)]
fn read_endpoints(ctx: &TracePointContext, rec: &mut SockRecord, at: &Endpoints) {
    // SAFETY: reads of the tracepoint record at its format offsets.
    unsafe {
        rec.sport = ctx.read_at::<u16>(at.sport).unwrap_or(0);
        rec.dport = ctx.read_at::<u16>(at.dport).unwrap_or(0);
        rec.family = ctx.read_at::<u16>(at.family).unwrap_or(0);
        if rec.family == AF_INET {
            rec.saddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(at.saddr).unwrap_or_default());
            rec.daddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(at.daddr).unwrap_or_default());
        } else {
            rec.saddr = ctx.read_at::<[u8; 16]>(at.saddr6).unwrap_or_default();
            rec.daddr = ctx.read_at::<[u8; 16]>(at.daddr6).unwrap_or_default();
        }
    }
    rec.flags |= SF_ADDR;
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: reads of the tracepoint record at its format offsets.
    let (sk, protocol) = unsafe {
        (
            ctx.read_at::<u64>(ST_SK).unwrap_or(0),
            ctx.read_at::<u16>(ST_PROTOCOL).unwrap_or(0),
        )
    };
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let Some((pid, tid)) = owner(sk) else {
        return 0;
    };
    let mut rec = sock_record(SOCK_STATE, pid, tid, sk, protocol);
    // SAFETY: as above.
    unsafe {
        rec.oldstate = ctx.read_at::<i32>(ST_OLD).unwrap_or(0);
        rec.newstate = ctx.read_at::<i32>(ST_NEW).unwrap_or(0);
    }
    read_endpoints(&ctx, &mut rec, &ST_ENDPOINTS);
    send(&rec);
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    // SAFETY: read of the tracepoint record at its format offset.
    let sk = unsafe { ctx.read_at::<u64>(RT_SK).unwrap_or(0) };
    let Some((pid, tid)) = owner(sk) else {
        return 0;
    };
    let mut rec = sock_record(SOCK_RETRANSMIT, pid, tid, sk, IPPROTO_TCP);
    // SAFETY: as above.
    rec.oldstate = unsafe { ctx.read_at::<i32>(RT_STATE).unwrap_or(0) };
    read_endpoints(&ctx, &mut rec, &RT_ENDPOINTS);
    send(&rec);
    0
}
