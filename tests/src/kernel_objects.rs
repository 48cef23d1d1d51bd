//! Enumerates the BPF programs, maps and links loaded in the kernel (the bpf syscall's
//! GET_NEXT_ID commands) and those one process holds, to check that llmdd leaves nothing
//! behind.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_GET_NEXT_ID: u32 = 11;
const BPF_MAP_GET_NEXT_ID: u32 = 12;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_GET_NEXT_ID: u32 = 31;

/// Program names of the llmdd object (the kernel keeps the first 15 bytes).
pub const PROGRAMS: &[&str] = &[
    "nccl_entry",
    "nccl_return",
    "cudart_entry",
    "cudart_return",
    "cuda_entry",
    "cuda_return",
    "floor_entry",
    "floor_return",
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
    "tcp_retransmit_skb",
    "sched_process_exit",
    "sys_enter_mmap",
    "sys_exit_mmap",
];

fn bpf(cmd: u32, attr: &mut [u8]) -> i64 {
    // SAFETY: `attr` is a zero-padded bpf_attr of the given size; pointers inside it refer to
    // buffers that outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) }
}

fn next_ids(cmd: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        // union bpf_attr: u32 start_id @0, u32 next_id @4.
        let mut attr = [0u8; 16];
        attr[0..4].copy_from_slice(&start.to_ne_bytes());
        if bpf(cmd, &mut attr) != 0 {
            return ids;
        }
        let next = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]);
        ids.push(next);
        start = next;
    }
}

fn fd_by_id(cmd: u32, id: u32) -> Option<OwnedFd> {
    // union bpf_attr: u32 prog_id/map_id/link_id @0.
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(cmd, &mut attr);
    // SAFETY: a successful GET_FD_BY_ID returns a new fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn info(fd: &OwnedFd, buf: &mut [u8]) -> bool {
    use std::os::fd::AsRawFd;
    // union bpf_attr, info member: u32 bpf_fd @0, u32 info_len @4, u64 info @8.
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0
}

fn name_at(buf: &[u8], at: usize) -> String {
    let raw = &buf[at..at + 16];
    let end = raw.iter().position(|b| *b == 0).unwrap_or(16);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// (id, name) of every loaded program whose name is one of llmdd's.
pub fn llmdd_programs() -> Vec<(u32, String)> {
    next_ids(BPF_PROG_GET_NEXT_ID)
        .into_iter()
        .filter_map(|id| {
            let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, id)?;
            // struct bpf_prog_info: char name[16] @64.
            let mut buf = [0u8; 256];
            info(&fd, &mut buf).then(|| (id, name_at(&buf, 64)))
        })
        .filter(|(_, n)| {
            PROGRAMS
                .iter()
                .any(|p| p.starts_with(n.as_str()) && !n.is_empty())
        })
        .collect()
}

/// BPF object ids held by process `pid`: (program ids, map ids, link ids), read from
/// `/proc/PID/fdinfo` (`prog_id:`, `map_id:`, `link_id:` lines). Identifies one process's
/// objects even while other BPF users are active.
pub fn ids_held_by(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let (mut progs, mut maps, mut links) = (Vec::new(), Vec::new(), Vec::new());
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (progs, maps, links);
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split(':');
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u32>() else {
                continue;
            };
            let list = match key.trim() {
                "prog_id" => &mut progs,
                "map_id" => &mut maps,
                "link_id" => &mut links,
                _ => continue,
            };
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }
    (progs, maps, links)
}

/// Which of `ids` still exist: programs, maps, links.
pub fn still_loaded(progs: &[u32], maps: &[u32], links: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let live = |cmd: u32, ids: &[u32]| -> Vec<u32> {
        let all = next_ids(cmd);
        ids.iter().copied().filter(|i| all.contains(i)).collect()
    };
    (
        live(BPF_PROG_GET_NEXT_ID, progs),
        live(BPF_MAP_GET_NEXT_ID, maps),
        live(BPF_LINK_GET_NEXT_ID, links),
    )
}
