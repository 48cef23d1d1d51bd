//! Where `--ras auto` may dial. NCCL's RAS service listens on a TCP port of the node
//! (`NCCL_RAS_ADDR`, else localhost:28028); any local user could listen there first, and a
//! containerised job's service listens in the container's network namespace, where a dial
//! from llmdd's own namespace reaches something else or nothing. So `auto` dials only a
//! listener that one of the traced processes holds (its socket inode among the process's
//! descriptors), and only when that process shares llmdd's network namespace; otherwise it
//! says why and asks nothing. A `--ras HOST:PORT` the user gives is dialled as given.

use crate::tracee::procfs;

/// The RAS port of a traced process: from its `NCCL_RAS_ADDR` (`HOST:PORT`), else NCCL's
/// default.
pub fn port_of(pid: u32) -> u16 {
    procfs::read(pid, "environ")
        .ok()
        .map(|raw| procfs::split_nul(&raw))
        .and_then(|env| {
            env.iter()
                .find_map(|kv| kv.strip_prefix("NCCL_RAS_ADDR=").map(str::to_string))
        })
        .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .unwrap_or(28028)
}

/// A listening TCP socket: its inode and the address to dial it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub inode: u64,
    pub dial: String,
}

/// Listeners on `port` in a `/proc/PID/net/tcp` or `tcp6` table.
pub fn listeners(table: &str, port: u16) -> Vec<Listener> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let (ip, p) = local.split_once(':')?;
            if *state != "0A" || u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            let dial = match ip.len() {
                8 => {
                    let a = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
                    let a = std::net::Ipv4Addr::from(a);
                    let a = if a.is_unspecified() {
                        std::net::Ipv4Addr::LOCALHOST
                    } else {
                        a
                    };
                    format!("{a}:{port}")
                }
                _ => format!("[::1]:{port}"),
            };
            Some(Listener {
                inode: inode.parse().ok()?,
                dial,
            })
        })
        .collect()
}

/// Whether `pid` holds the socket of inode `inode`.
fn holds(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(procfs::proc_path(pid, "fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

/// Whether `pid` is in llmdd's own network namespace.
fn same_netns(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).ok();
    ns("self").is_some_and(|mine| ns(&pid.to_string()) == Some(mine))
}

/// The address `auto` may dial for the traced processes `pids` (those with a RAS-capable
/// NCCL), or why it may not.
pub fn auto_address(pids: &[u32]) -> Result<String, String> {
    let Some(&first) = pids.first() else {
        return Err("no traced process runs a NCCL with RAS".to_string());
    };
    let port = port_of(first);
    let mut seen = Vec::new();
    for &pid in pids {
        for file in ["net/tcp", "net/tcp6"] {
            if let Ok(raw) = procfs::read(pid, file) {
                seen.extend(listeners(&String::from_utf8_lossy(&raw), port));
            }
        }
    }
    if seen.is_empty() {
        return Err(format!(
            "no RAS service listens on port {port} where the traced processes are"
        ));
    }
    for l in &seen {
        if let Some(&owner) = pids.iter().find(|&&p| holds(p, l.inode)) {
            if !same_netns(owner) {
                return Err(format!(
                    "pid {owner}'s NCCL RAS service listens on port {port} in another network \
                     namespace (a container's): llmdd does not dial into it; give --ras HOST:PORT \
                     reachable from llmdd's namespace"
                ));
            }
            return Ok(l.dial.clone());
        }
    }
    Err(format!(
        "the listener on port {port} belongs to no traced process: not dialled (another \
         local user could be answering there); give --ras HOST:PORT to ask it anyway"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:6D7C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
   2: 0100007F:6D7C 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_are_read_from_the_table() {
        assert_eq!(
            listeners(TCP, 28028),
            vec![Listener {
                inode: 4242,
                dial: "127.0.0.1:28028".into()
            }]
        );
        assert_eq!(
            listeners(TCP, 8080)[0].dial,
            "127.0.0.1:8080",
            "0.0.0.0 is dialled on localhost"
        );
        assert!(listeners(TCP, 1).is_empty());
    }

    /// A listener this test process holds is dialled; one it does not hold is refused.
    #[test]
    fn only_a_traced_process_listener_is_dialled() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = std::process::id();
        let mut found = Vec::new();
        for file in ["net/tcp", "net/tcp6"] {
            if let Ok(raw) = procfs::read(me, file) {
                found.extend(listeners(&String::from_utf8_lossy(&raw), port));
            }
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(holds(me, found[0].inode));
        assert!(!holds(1, found[0].inode));
        assert!(same_netns(me));
    }
}
