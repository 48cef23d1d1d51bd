//! `llmdd doctor`: one line per check, with the remedy when it fails, then the processes that
//! can be traced and the libraries found in each.

use std::path::Path;

use crate::{kernel, privileges, probe::Tracer, tracee};

struct Check {
    name: &'static str,
    result: Result<String, String>,
}

fn line(c: &Check) -> String {
    match &c.result {
        Ok(detail) => format!("[ ok ] {:<22} {detail}", c.name),
        Err(remedy) => format!("[FAIL] {:<22} {remedy}", c.name),
    }
}

/// Runs every check; returns whether all passed.
pub fn run() -> bool {
    let mut checks = Vec::new();
    let privileged = privileges::check();
    checks.push(Check {
        name: "privileges",
        result: privileged
            .clone()
            .map(|()| "root or CAP_BPF+CAP_PERFMON".to_string()),
    });
    checks.push(Check {
        name: "kernel BTF",
        result: if Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("/sys/kernel/btf/vmlinux".to_string())
        } else {
            Err(
                "no /sys/kernel/btf/vmlinux: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y \
                 (socket addresses will be missing; calls are still traced)"
                    .to_string(),
            )
        },
    });
    checks.push(Check {
        name: "uprobes",
        result: if Path::new("/sys/bus/event_source/devices/uprobe").exists() {
            Ok("perf uprobe PMU present".to_string())
        } else {
            Err(
                "no uprobe PMU (/sys/bus/event_source/devices/uprobe): the kernel needs \
                 CONFIG_UPROBE_EVENTS=y"
                    .to_string(),
            )
        },
    });
    checks.push(Check {
        name: "tracefs",
        result: match kernel::tracefs_root() {
            Ok(p) => Ok(format!("mounted at {}", p.display())),
            Err(_) => kernel::mount_tracefs()
                .map(|p| format!("was not mounted; mounted it at {}", p.display()))
                .map_err(|e| {
                    format!("{e}: mount it with `mount -t tracefs tracefs /sys/kernel/tracing`")
                }),
        },
    });
    checks.push(Check {
        name: "ring buffers",
        result: kernel::ringbuf_supported()
            .then(|| "kernel >= 5.8".to_string())
            .ok_or_else(|| "BPF ring buffers need Linux 5.8 or later".to_string()),
    });
    if privileged.is_ok() {
        let loaded = Tracer::load(kernel::sock_offsets().ok());
        checks.push(Check {
            name: "BPF object",
            result: loaded
                .as_ref()
                .map(|t| {
                    let degraded: Vec<String> = t
                        .kernel_probes()
                        .iter()
                        .filter_map(|k| {
                            k.status.as_ref().err().map(|e| format!("{} ({e})", k.name))
                        })
                        .collect();
                    if degraded.is_empty() {
                        "all programs verified; every kernel probe attaches".to_string()
                    } else {
                        format!(
                            "uprobe programs verified; degraded kernel probes: {}",
                            degraded.join("; ")
                        )
                    }
                })
                .map_err(|e| e.to_string()),
        });
        checks.push(Check {
            name: "socket offsets (BTF)",
            result: kernel::sock_offsets()
                .map(|c| {
                    format!(
                        "sock_common: daddr@{} dport@{} num@{}",
                        c.daddr_off, c.dport_off, c.num_off
                    )
                })
                .map_err(|e| format!("{e}: socket events will carry no addresses")),
        });
    }
    let mut ok = true;
    for c in &checks {
        ok &= c.result.is_ok();
        println!("{}", line(c));
    }

    println!();
    let targets = tracee::discover_all();
    if targets.is_empty() {
        println!("no traceable process found (none maps libnccl, librccl, libcudart or libcuda)");
    } else {
        println!("traceable processes, by parent (roles in brackets):");
    }
    let traced: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    let others = tracee::role_processes(&traced);
    for line in node_tree(&targets, &others) {
        println!("{line}");
    }
    ok
}

/// The traceable processes and the other processes with a role (API servers, the routing
/// sidecar), as a tree by parent process, each line indented by its depth.
fn node_tree(targets: &[tracee::Target], others: &[tracee::RoleProcess]) -> Vec<String> {
    use tracee::role::labels;
    let mut nodes: Vec<(u32, Option<u32>, Option<tracee::role::Role>)> = targets
        .iter()
        .map(|t| (t.pid, t.ppid, t.role.clone()))
        .chain(others.iter().map(|o| (o.pid, o.ppid, Some(o.role.clone()))))
        .collect();
    nodes.sort_by_key(|n| n.0);
    let roles: Vec<(u32, Option<tracee::role::Role>)> =
        nodes.iter().map(|(p, _, r)| (*p, r.clone())).collect();
    let label = labels(&roles);
    let text = |i: usize| -> String {
        let pid = nodes[i].0;
        match targets.iter().find(|t| t.pid == pid) {
            Some(t) => crate::live::targets::describe_target(t, label[i].as_deref()),
            None => {
                let o = others.iter().find(|o| o.pid == pid);
                format!(
                    "  pid {pid} ({}) [{}] (maps no traced library)",
                    o.map_or("?", |o| o.comm.as_str()),
                    label[i].as_deref().unwrap_or("?")
                )
            }
        }
    };
    let pids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
    let mut out = Vec::new();
    // Roots: parents outside the listed set. Depth-first, children by pid.
    let mut stack: Vec<(usize, usize)> = (0..nodes.len())
        .rev()
        .filter(|&i| nodes[i].1.is_none_or(|pp| !pids.contains(&pp)))
        .map(|i| (i, 0))
        .collect();
    let mut seen = vec![false; nodes.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        // "  pid ..." at the top, "    `- pid ..." below it, a process's own lines under it.
        let indent = "  ".repeat(depth);
        for (k, l) in text(i).lines().enumerate() {
            let l = l.strip_prefix("  ").unwrap_or(l);
            let mark = match (depth, k) {
                (0, _) => "",
                (_, 0) => "`- ",
                _ => "   ",
            };
            out.push(format!("  {indent}{mark}{l}"));
        }
        for c in (0..nodes.len())
            .rev()
            .filter(|&c| nodes[c].1 == Some(nodes[i].0))
        {
            stack.push((c, depth + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracee::{role::role_of, RoleProcess};

    fn proc(pid: u32, ppid: u32, cmd: &str) -> RoleProcess {
        let args: Vec<String> = cmd.split(' ').map(str::to_string).collect();
        let none: [&str; 0] = [];
        RoleProcess {
            pid,
            ppid: Some(ppid),
            comm: "python3".into(),
            role: role_of(&args, &none).expect("a role"),
        }
    }

    #[test]
    fn a_node_is_listed_as_a_tree_with_roles() {
        let others = [
            proc(14, 12, "VLLM::Worker_TP1"),
            proc(
                10,
                1,
                "/app/llm-d-routing-sidecar -port=8000 -vllm-port=8001",
            ),
            proc(11, 1, "vllm serve m --port 8001"),
            proc(12, 11, "VLLM::EngineCore"),
            proc(13, 12, "VLLM::Worker_TP0"),
        ];
        let lines = node_tree(&[], &others);
        let want = [
            "  pid 10 (python3) [llm-d routing sidecar :8000 -> decode :8001] (maps no traced library)",
            "  pid 11 (python3) [vllm api-server :8001, decode (behind the routing sidecar)] (maps no traced library)",
            "    `- pid 12 (python3) [vllm engine-core] (maps no traced library)",
            "      `- pid 13 (python3) [vllm worker TP0] (maps no traced library)",
            "      `- pid 14 (python3) [vllm worker TP1] (maps no traced library)",
        ];
        assert_eq!(lines, want);
    }
}
