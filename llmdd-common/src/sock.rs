//! Kernel socket tracepoint records (sock:sock_send_length, sock:sock_recv_length,
//! sock:inet_sock_set_state, tcp:tcp_retransmit_skb). Sizes, addresses and timing only,
//! with one exception: on a serving front's connection, the first send after a receive
//! (the start of a response) is checked for an HTTP/1 status line and its header block,
//! reading its bytes one at a time up to the blank line that ends the headers and never
//! past it, so that a response whose headers go out before its first token is timed from
//! that token. No byte read leaves the probe: the record carries two flags.

/// `SockRecord::event` values.
pub const SOCK_SEND: u32 = 1;
pub const SOCK_RECV: u32 = 2;
pub const SOCK_STATE: u32 = 3;
pub const SOCK_RETRANSMIT: u32 = 4;

/// Record flag: `sport`, `dport`, `saddr`, `daddr` are valid.
pub const SF_ADDR: u32 = 1 << 0;
/// Record flag (sends): the send starts an HTTP/1 response (`HTTP/1.` status line).
pub const SF_STATUS_LINE: u32 = 1 << 1;
/// Record flag (sends, with `SF_STATUS_LINE`): the send ends where its header block ends
/// (it holds no body byte: the response's first token comes in a later send).
pub const SF_HEADERS_ONLY: u32 = 1 << 2;

/// `TRACED` map value bits: the process is traced; it is a serving front (its responses
/// are checked for a status line, see the module documentation).
pub const TRACED_ON: u32 = 1;
pub const TRACED_FRONT: u32 = 2;

/// The buffer a thread's current write/send system call passes (its first I/O vector for
/// writev/sendmsg), kept per thread until the socket layer reports the send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SendBuf {
    pub ptr: u64,
    pub len: u64,
}

/// Most header bytes scanned for the blank line ending a response's header block.
pub const MAX_HEADER_SCAN: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockRecord {
    /// Always `RecordKind::Sock`.
    pub kind: u32,
    /// `SOCK_*`.
    pub event: u32,
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`: identifies the connection while it lives.
    pub sk: u64,
    /// Bytes sent or received (negative: an errno), 0 for other events.
    pub bytes: i64,
    pub family: u16,
    pub protocol: u16,
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// TCP states for `SOCK_STATE` (old, new); for `SOCK_RETRANSMIT` `oldstate` is the state.
    pub oldstate: i32,
    pub newstate: i32,
    /// Local and remote address (IPv4 in the first 4 bytes, or IPv6).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `SF_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SockRecord>() == 96);

/// Offsets inside `struct sock` (its leading `struct sock_common`) used to read the
/// addresses and ports of a socket from the send/recv tracepoints, which carry only the
/// socket pointer. Userspace derives them from the kernel's BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCfg {
    /// 1 when the offsets are valid; 0 makes the probes send records without addresses.
    pub valid: u32,
    pub daddr_off: u32,
    pub rcv_saddr_off: u32,
    pub dport_off: u32,
    pub num_off: u32,
    pub family_off: u32,
    pub v6_daddr_off: u32,
    pub v6_rcv_saddr_off: u32,
}

const _: () = assert!(core::mem::size_of::<SockCfg>() == 32);

/// Address families, as in the kernel.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// IPPROTO_TCP.
pub const IPPROTO_TCP: u16 = 6;
