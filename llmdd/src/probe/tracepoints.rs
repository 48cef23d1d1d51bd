//! Kernel-side probes: tracepoints only (kprobes and fentry are not available on every
//! kernel we meet). Each one is checked against its tracefs `format` before attaching, and
//! each one degrades on its own: a missing or changed tracepoint costs that signal only,
//! with a message that says so.

use std::{fs, path::Path};

use aya::{programs::TracePoint, Ebpf};

/// Status of one kernel-side probe.
#[derive(Clone, Debug)]
pub struct KernelProbe {
    pub name: &'static str,
    /// `Ok` when attached, else why not.
    pub status: Result<(), String>,
}

struct Spec {
    program: &'static str,
    category: &'static str,
    event: &'static str,
    /// Fields the program reads, with the offsets compiled into it.
    fields: &'static [(&'static str, u32)],
    /// Attached only once a serving front is traced (see [`attach_front`]): these fire on
    /// every write of every process, so they are not paid for without a front.
    front_only: bool,
}

const SPECS: &[Spec] = &[
    Spec {
        program: "sock_send_length",
        category: "sock",
        event: "sock_send_length",
        fields: &[("sk", 8), ("family", 16), ("protocol", 18), ("ret", 20)],
        front_only: false,
    },
    Spec {
        program: "sock_recv_length",
        category: "sock",
        event: "sock_recv_length",
        fields: &[("sk", 8), ("family", 16), ("protocol", 18), ("ret", 20)],
        front_only: false,
    },
    Spec {
        program: "inet_sock_set_state",
        category: "sock",
        event: "inet_sock_set_state",
        fields: &[
            ("skaddr", 8),
            ("oldstate", 16),
            ("newstate", 20),
            ("sport", 24),
            ("dport", 26),
            ("family", 28),
            ("protocol", 30),
            ("saddr", 32),
            ("daddr", 36),
            ("saddr_v6", 40),
            ("daddr_v6", 56),
        ],
        front_only: false,
    },
    Spec {
        program: "tcp_retransmit_skb",
        category: "tcp",
        event: "tcp_retransmit_skb",
        fields: &[
            ("skaddr", 16),
            ("state", 24),
            ("sport", 28),
            ("dport", 30),
            ("family", 32),
            ("saddr", 34),
            ("daddr", 38),
            ("saddr_v6", 42),
            ("daddr_v6", 58),
        ],
        front_only: false,
    },
    Spec {
        program: "sys_enter_mmap",
        category: "syscalls",
        event: "sys_enter_mmap",
        fields: &[("prot", 32), ("fd", 48)],
        front_only: false,
    },
    Spec {
        program: "sys_exit_mmap",
        category: "syscalls",
        event: "sys_exit_mmap",
        fields: &[("ret", 16)],
        front_only: false,
    },
    Spec {
        program: "sched_process_exit",
        category: "sched",
        event: "sched_process_exit",
        fields: &[("group_dead", 32)],
        front_only: false,
    },
    Spec {
        program: "sys_enter_write",
        category: "syscalls",
        event: "sys_enter_write",
        fields: &[("buf", 24), ("count", 32)],
        front_only: true,
    },
    Spec {
        program: "sys_enter_sendto",
        category: "syscalls",
        event: "sys_enter_sendto",
        fields: &[("buff", 24), ("len", 32)],
        front_only: true,
    },
    Spec {
        program: "sys_enter_writev",
        category: "syscalls",
        event: "sys_enter_writev",
        fields: &[("vec", 24), ("vlen", 32)],
        front_only: true,
    },
    Spec {
        program: "sys_enter_sendmsg",
        category: "syscalls",
        event: "sys_enter_sendmsg",
        fields: &[("msg", 24)],
        front_only: true,
    },
];

/// Field offsets from a tracepoint `format` file: `(name, offset)`.
pub fn parse_format(text: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';');
        let Some(decl) = parts.next() else { continue };
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name);
        let offset = parts
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|o| o.trim().parse().ok());
        if let Some(offset) = offset {
            out.push((name.to_string(), offset));
        }
    }
    out
}

fn check(tracefs: &Path, spec: &Spec) -> Result<(), String> {
    let path = tracefs
        .join("events")
        .join(spec.category)
        .join(spec.event)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "{} is not readable ({e}): this kernel lacks the tracepoint",
            path.display()
        )
    })?;
    let have = parse_format(&text);
    for (field, want) in spec.fields {
        match have.iter().find(|(n, _)| n == field) {
            Some((_, got)) if got == want => {}
            Some((_, got)) => {
                return Err(format!(
                "field {field} is at offset {got}, the probe expects {want}: kernel layout changed"
            ))
            }
            None => return Err(format!("field {field} is missing from {}", path.display())),
        }
    }
    Ok(())
}

/// Loads and attaches every kernel-side program but the fronts' (see `Spec::front_only`);
/// never fails as a whole.
pub fn attach_all(bpf: &mut Ebpf) -> Vec<KernelProbe> {
    attach_where(bpf, |s| !s.front_only)
}

/// Loads and attaches the programs that remember what a serving front's threads send.
pub fn attach_front(bpf: &mut Ebpf) -> Vec<KernelProbe> {
    attach_where(bpf, |s| s.front_only)
}

fn attach_where(bpf: &mut Ebpf, which: impl Fn(&Spec) -> bool) -> Vec<KernelProbe> {
    let tracefs = crate::kernel::mount_tracefs();
    SPECS
        .iter()
        .filter(|s| which(s))
        .map(|spec| {
            let name = spec.program;
            let status = (|| {
                let root = tracefs.as_ref().map_err(|e| e.to_string())?;
                check(root, spec)?;
                let prog: &mut TracePoint = bpf
                    .program_mut(name)
                    .ok_or_else(|| format!("program {name} missing from the object"))?
                    .try_into()
                    .map_err(|e| format!("{e}"))?;
                prog.load()
                    .map_err(|e| format!("verifier refused {name}: {e}"))?;
                prog.attach(spec.category, spec.event)
                    .map_err(|e| format!("attaching {}:{}: {e}", spec.category, spec.event))?;
                Ok(())
            })();
            KernelProbe { name, status }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_offsets() {
        let text = "name: x\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                    \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                    \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";
        let f = parse_format(text);
        assert!(f.contains(&("skaddr".to_string(), 8)));
        assert!(f.contains(&("saddr_v6".to_string(), 40)));
        assert!(f.contains(&("common_type".to_string(), 0)));
    }
}
