//! Who a process is on a vLLM / llm-d node, from its command line and environment.
//!
//! vLLM names its processes with `setproctitle` (which rewrites `/proc/PID/cmdline`):
//! `VLLM::APIServer[_N|_DPn]`, `VLLM::EngineCore[_DPn]`, `VLLM::Worker[_DPn][_PPn][_PCPn]
//! [_TPn][_DCPn][_EPn]`, `VLLM::DPCoordinator` (the prefix is `VLLM_PROCESS_NAME_PREFIX`,
//! `VLLM` unless set). Without `setproctitle` installed the titles stay the original
//! command: `vllm serve ...` or `python -m vllm.entrypoints.openai.api_server ...` is an API
//! server. llm-d's routing sidecar is `llm-d-routing-sidecar -port=P -vllm-port=V
//! -connector=C`: it proxies requests on P to the vLLM server on V after sending the prefill
//! leg to the prefill server the request names, so the server on V is a decode server.
//!
//! Nothing here is guessed from timing or traffic: a process whose title and command say
//! none of this has no role.

use std::fmt;

/// Parallel ranks in a vLLM worker's title (absent when that dimension is 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerRanks {
    pub dp: Option<u32>,
    pub pp: Option<u32>,
    pub pcp: Option<u32>,
    pub tp: Option<u32>,
    pub dcp: Option<u32>,
    pub ep: Option<u32>,
}

/// What a process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// vLLM's OpenAI-compatible front: `index` of several API servers, `dp` of a
    /// data-parallel one; `port` and `kv_connector` from its command line when it is the
    /// original one.
    VllmApiServer {
        index: Option<u32>,
        dp: Option<u32>,
        port: Option<u16>,
        kv_connector: Option<String>,
    },
    /// vLLM's engine core (the scheduler), one per data-parallel rank.
    VllmEngineCore { dp: Option<u32> },
    /// A vLLM GPU worker.
    VllmWorker(WorkerRanks),
    /// vLLM's data-parallel coordinator.
    VllmDpCoordinator,
    /// llm-d's routing sidecar in front of a decode server.
    RoutingSidecar {
        port: Option<u16>,
        vllm_port: Option<u16>,
        connector: Option<String>,
    },
}

/// The number after `tag` in an underscore-separated title part (`DP1` for tag `DP`).
fn tagged(parts: &[&str], tag: &str) -> Option<u32> {
    parts
        .iter()
        .find_map(|p| p.strip_prefix(tag).and_then(|n| n.parse().ok()))
}

/// The value of `--name V`, `--name=V` or (Go's flag style) `-name=V` / `-name V`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let short = format!("-{name}");
    args.iter().enumerate().find_map(|(i, a)| {
        for f in [&long, &short] {
            if let Some(v) = a.strip_prefix(f.as_str()).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
            if a == f {
                return args.get(i + 1).map(String::as_str);
            }
        }
        None
    })
}

/// The `kv_connector` of a `--kv-transfer-config` JSON argument.
fn kv_connector(args: &[String]) -> Option<String> {
    let cfg = flag(args, "kv-transfer-config")?;
    let v: serde_json::Value = serde_json::from_str(cfg).ok()?;
    Some(v.get("kv_connector")?.as_str()?.to_string())
}

/// The role of a process with command line `cmdline` and environment `env` (`KEY=value`).
pub fn role_of<S: AsRef<str>>(cmdline: &[String], env: &[S]) -> Option<Role> {
    let prefix = env
        .iter()
        .find_map(|kv| kv.as_ref().strip_prefix("VLLM_PROCESS_NAME_PREFIX="))
        .unwrap_or("VLLM");
    let first = cmdline.first().map(String::as_str).unwrap_or("");
    if let Some(title) = first
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix("::"))
    {
        return vllm_title(title.trim());
    }
    let exe = first.rsplit('/').next().unwrap_or(first);
    if exe == "llm-d-routing-sidecar" {
        let port = |n| flag(cmdline, n).and_then(|v| v.parse().ok());
        return Some(Role::RoutingSidecar {
            port: port("port"),
            vllm_port: port("vllm-port"),
            connector: flag(cmdline, "connector").map(str::to_string),
        });
    }
    let serve = (exe == "vllm" && cmdline.get(1).is_some_and(|a| a == "serve"))
        || cmdline
            .windows(2)
            .any(|w| w[0] == "-m" && w[1] == "vllm.entrypoints.openai.api_server")
        || (exe.starts_with("python")
            && cmdline.get(1).is_some_and(|a| a.ends_with("/vllm"))
            && cmdline.get(2).is_some_and(|a| a == "serve"));
    serve.then(|| Role::VllmApiServer {
        index: None,
        dp: None,
        port: flag(cmdline, "port").and_then(|v| v.parse().ok()),
        kv_connector: kv_connector(cmdline),
    })
}

fn vllm_title(title: &str) -> Option<Role> {
    let parts: Vec<&str> = title.split('_').collect();
    let rest = &parts[1..];
    match parts[0] {
        "APIServer" => Some(Role::VllmApiServer {
            index: rest.first().and_then(|p| p.parse().ok()),
            dp: tagged(rest, "DP"),
            port: None,
            kv_connector: None,
        }),
        "EngineCore" => Some(Role::VllmEngineCore {
            dp: tagged(rest, "DP"),
        }),
        "Worker" => Some(Role::VllmWorker(WorkerRanks {
            dp: tagged(rest, "DP"),
            pcp: tagged(rest, "PCP"),
            dcp: tagged(rest, "DCP"),
            pp: tagged(rest, "PP"),
            tp: tagged(rest, "TP"),
            ep: tagged(rest, "EP"),
        })),
        "DPCoordinator" => Some(Role::VllmDpCoordinator),
        _ => None,
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |tag: &str, v: Option<u32>| v.map(|n| format!(" {tag}{n}")).unwrap_or_default();
        match self {
            Role::VllmApiServer {
                index,
                dp,
                port,
                kv_connector,
            } => {
                write!(f, "vllm api-server{}{}", opt("#", *index), opt("DP", *dp))?;
                if let Some(p) = port {
                    write!(f, " :{p}")?;
                }
                if let Some(k) = kv_connector {
                    write!(f, " (kv {k})")?;
                }
                Ok(())
            }
            Role::VllmEngineCore { dp } => write!(f, "vllm engine-core{}", opt("DP", *dp)),
            Role::VllmWorker(r) => {
                write!(f, "vllm worker")?;
                for (tag, v) in [
                    ("DP", r.dp),
                    ("PP", r.pp),
                    ("PCP", r.pcp),
                    ("TP", r.tp),
                    ("DCP", r.dcp),
                    ("EP", r.ep),
                ] {
                    write!(f, "{}", opt(tag, v))?;
                }
                Ok(())
            }
            Role::VllmDpCoordinator => write!(f, "vllm dp-coordinator"),
            Role::RoutingSidecar {
                port,
                vllm_port,
                connector,
            } => {
                write!(f, "llm-d routing sidecar")?;
                if let (Some(p), Some(v)) = (port, vllm_port) {
                    write!(f, " :{p} -> decode :{v}")?;
                }
                if let Some(c) = connector {
                    write!(f, " ({c})")?;
                }
                Ok(())
            }
        }
    }
}

/// Names the vLLM API servers that a routing sidecar on the same node fronts as decode
/// servers: `(pid, role)` pairs in, the label of each process out (same order).
pub fn labels(roles: &[(u32, Option<Role>)]) -> Vec<Option<String>> {
    let decode_ports: Vec<u16> = roles
        .iter()
        .filter_map(|(_, r)| match r {
            Some(Role::RoutingSidecar { vllm_port, .. }) => *vllm_port,
            _ => None,
        })
        .collect();
    roles
        .iter()
        .map(|(_, r)| {
            let r = r.as_ref()?;
            let behind =
                matches!(r, Role::VllmApiServer { port: Some(p), .. } if decode_ports.contains(p));
            Some(if behind {
                format!("{r}, decode (behind the routing sidecar)")
            } else {
                r.to_string()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn vllm_titles() {
        let none: [&str; 0] = [];
        let r = |t: &str| role_of(&args(t), &none).map(|r| r.to_string());
        assert_eq!(r("VLLM::Worker_TP1").as_deref(), Some("vllm worker TP1"));
        assert_eq!(
            r("VLLM::Worker_DP1_PP0_TP3_EP7").as_deref(),
            Some("vllm worker DP1 PP0 TP3 EP7")
        );
        assert_eq!(
            r("VLLM::Worker_PCP1_TP0_DCP2").as_deref(),
            Some("vllm worker PCP1 TP0 DCP2")
        );
        assert_eq!(r("VLLM::Worker").as_deref(), Some("vllm worker"));
        assert_eq!(
            r("VLLM::EngineCore_DP2").as_deref(),
            Some("vllm engine-core DP2")
        );
        assert_eq!(r("VLLM::EngineCore").as_deref(), Some("vllm engine-core"));
        assert_eq!(
            r("VLLM::APIServer_0").as_deref(),
            Some("vllm api-server #0")
        );
        assert_eq!(
            r("VLLM::APIServer_DP3").as_deref(),
            Some("vllm api-server DP3")
        );
        assert_eq!(
            r("VLLM::DPCoordinator").as_deref(),
            Some("vllm dp-coordinator")
        );
        assert_eq!(r("VLLM::Something"), None);
        assert_eq!(r("python3 train.py"), None);
        // Another prefix.
        let env = ["VLLM_PROCESS_NAME_PREFIX=MYVLLM"];
        assert_eq!(
            role_of(&args("MYVLLM::Worker_TP0"), &env).map(|r| r.to_string()),
            Some("vllm worker TP0".into())
        );
        assert_eq!(role_of(&args("VLLM::Worker_TP0"), &env), None);
    }

    #[test]
    fn commands_and_the_sidecar() {
        let none: [&str; 0] = [];
        let mut serve = args("/usr/bin/vllm serve Qwen/Qwen3-0.6B --port 8001");
        serve.push("--kv-transfer-config".into());
        serve.push(r#"{"kv_connector":"NixlConnector","kv_role":"kv_both"}"#.into());
        let api = role_of(&serve, &none);
        assert_eq!(
            api.as_ref().map(|r| r.to_string()).as_deref(),
            Some("vllm api-server :8001 (kv NixlConnector)")
        );
        let m = role_of(
            &args("python3 -m vllm.entrypoints.openai.api_server --port=8002"),
            &none,
        );
        assert!(matches!(
            m,
            Some(Role::VllmApiServer {
                port: Some(8002),
                ..
            })
        ));
        let car = role_of(
            &args("/app/llm-d-routing-sidecar -port=8000 -vllm-port=8001 -connector=nixlv2"),
            &none,
        );
        assert_eq!(
            car.as_ref().map(|r| r.to_string()).as_deref(),
            Some("llm-d routing sidecar :8000 -> decode :8001 (nixlv2)")
        );
        let l = labels(&[(1, api), (2, m), (3, car), (4, None)]);
        assert_eq!(
            l[0].as_deref(),
            Some("vllm api-server :8001 (kv NixlConnector), decode (behind the routing sidecar)")
        );
        assert_eq!(l[1].as_deref(), Some("vllm api-server :8002"));
        assert_eq!(l[3], None);
    }
}
