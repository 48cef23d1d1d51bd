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
        println!("traceable processes:");
        for t in &targets {
            println!("{}", crate::live::targets::describe_target(t));
        }
    }
    ok
}
