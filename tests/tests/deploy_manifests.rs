//! deploy/: the Kubernetes manifests are read into the typed Kubernetes API (a field the API
//! does not know is an error), the DaemonSet is checked for what tracing needs (host PID,
//! tracefs and BTF mounts, the BPF capabilities, GPU nodes) and for a command line llmdd
//! itself accepts; the Prometheus rules and the Grafana dashboard are parsed as PromQL and
//! every metric they name must be one llmdd's own `/metrics` encoder exports, every label
//! they use one the metric carries when the DaemonSet's command runs against the simulated
//! job. The node entrypoint script is run: it restarts llmdd and passes SIGTERM on.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Service, ServiceAccount},
};
use llmdd::engine::FindingKind;
use llmdd_tests::harness::{built, workspace_root, Proc, Stream};
use promql_parser::{label::MatchOp, parser::Expr};
use serde_json::Value;

/// Parses `llmdd ARGS` with llmdd's own clap definitions; returns the attach arguments.
fn parse_llmdd(args: &[String]) -> Result<llmdd::cli::AttachArgs, String> {
    use clap::Parser;
    let argv = std::iter::once("llmdd".to_string()).chain(args.iter().cloned());
    match llmdd::cli::Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        llmdd::cli::Command::Attach(a) => Ok(a),
        other => Err(format!("not `attach`: {other:?}")),
    }
}

fn deploy() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
            serde_json::to_value(v)
                .unwrap_or_else(|e| panic!("{}: not JSON-shaped: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every field of `written` must survive a trip through the typed API object: a misspelt or
/// misplaced field is dropped by the typed deserializer and reported here with its path.
fn unknown_fields(written: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (k, v) in w {
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(w), Value::Array(t)) if w.len() == t.len() => {
            for (i, (a, b)) in w.iter().zip(t).enumerate() {
                unknown_fields(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (w, t) if w == t => {}
        (w, t) => out.push(format!("{path}: wrote {w}, the API reads {t}")),
    }
}

/// Reads `doc` as the API type `T` and checks that nothing in it is unknown to the API.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid object: {e}\n{doc:#}"));
    let back = serde_json::to_value(&t).expect("serializes");
    let mut bad = Vec::new();
    unknown_fields(doc, &back, what, &mut bad);
    assert!(
        bad.is_empty(),
        "{what}: fields the API does not know: {bad:#?}"
    );
    t
}

fn manifests() -> Vec<Value> {
    yaml_docs(&deploy().join("kubernetes/llmdd.yaml"))
}

fn daemonset() -> DaemonSet {
    let docs = manifests();
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/llmdd.yaml");
    typed(doc, "DaemonSet")
}

#[test]
fn every_kubernetes_object_is_valid_for_the_api() {
    let docs = manifests();
    let mut kinds = BTreeSet::new();
    for d in &docs {
        let kind = d["kind"].as_str().expect("kind").to_string();
        let name = format!("{kind}/{}", d["metadata"]["name"].as_str().expect("name"));
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(d, &name)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(d, &name)),
            "DaemonSet" => drop(typed::<DaemonSet>(d, &name)),
            "Service" => drop(typed::<Service>(d, &name)),
            other => panic!("{name}: unexpected kind {other}"),
        }
        assert!(kinds.insert(kind), "two objects of one kind");
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "llmdd", "{name}");
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    // The typed check catches a misspelt field: prove it on one.
    let mut bad = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .cloned()
        .expect("DaemonSet");
    bad["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    let r = std::panic::catch_unwind(|| typed::<DaemonSet>(&bad, "misspelt"));
    assert!(r.is_err(), "a misspelt field (hostPid) went unnoticed");
}

#[test]
fn the_daemonset_has_what_tracing_needs() {
    let ds = daemonset();
    let spec = ds.spec.expect("spec");
    let pod = spec.template.spec.expect("pod spec");
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.expect("matchLabels") {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "selector {k}={v} misses the pod template"
        );
    }
    assert_eq!(
        pod.host_pid,
        Some(true),
        "hostPID: targets are found by host pid"
    );
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("nvidia.com/gpu.present")
            .map(String::as_str),
        Some("true"),
        "GPU nodes only"
    );
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((v.name, v.host_path?.path)))
        .collect();
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let mounts: BTreeMap<String, String> = c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let host = volumes
                .get(&m.name)
                .unwrap_or_else(|| panic!("mount {} has no hostPath volume", m.name));
            (m.mount_path, host.clone())
        })
        .collect();
    for path in ["/sys/kernel/tracing", "/sys/kernel/btf"] {
        assert_eq!(
            mounts.get(path).map(String::as_str),
            Some(path),
            "host {path} mounted at {path}: {mounts:?}"
        );
    }
    let sc = c.security_context.clone().expect("securityContext");
    if sc.privileged != Some(true) {
        let add: BTreeSet<String> = sc
            .capabilities
            .and_then(|c| c.add)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for cap in ["BPF", "PERFMON", "SYS_PTRACE"] {
            assert!(add.contains(cap), "capability {cap} missing: {add:?}");
        }
        assert_eq!(
            sc.seccomp_profile.map(|p| p.type_),
            Some("Unconfined".to_string()),
            "the default seccomp profile refuses bpf(2)"
        );
    }

    // The container runs an llmdd command line llmdd accepts, serving metrics on the port
    // the container, the scrape annotations and the Service declare.
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(command, ["/usr/local/bin/llmdd-node"], "{command:?}");
    // It listens on the pod's IP (the node's address under host networking), which
    // Kubernetes puts in $(POD_IP) from the downward API: not on every interface.
    let pod_ip = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "POD_IP")
        .and_then(|e| e.value_from?.field_ref)
        .map(|f| f.field_path);
    assert_eq!(pod_ip.as_deref(), Some("status.podIP"));
    let args: Vec<String> = c
        .args
        .clone()
        .expect("args")
        .into_iter()
        .map(|a| a.replace("$(POD_IP)", "10.1.2.3"))
        .collect();
    let attach = parse_llmdd(&args).unwrap_or_else(|e| panic!("llmdd rejects {args:?}: {e}"));
    assert!(attach.all && attach.no_tui, "{args:?}");
    let listen = attach.run.prometheus.expect("--prometheus");
    assert_eq!(
        listen.ip().to_string(),
        "10.1.2.3",
        "{listen}: the pod's IP, reachable from the scraper"
    );
    let port = c
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(port.container_port, i32::from(listen.port()));
    let ann = ds_template_annotations();
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ann.get("prometheus.io/port"),
        Some(&listen.port().to_string())
    );
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

fn ds_template_annotations() -> BTreeMap<String, String> {
    daemonset()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

#[test]
fn service_and_podmonitor_select_the_daemonset_pods() {
    let docs = manifests();
    let svc: Service = typed(
        docs.iter()
            .find(|d| d["kind"] == "Service")
            .expect("Service"),
        "Service",
    );
    let pod_labels = daemonset()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let svc = svc.spec.expect("spec");
    for (k, v) in svc.selector.unwrap_or_default() {
        assert_eq!(pod_labels.get(&k), Some(&v), "Service selects {k}={v}");
    }
    let pm = yaml_docs(&deploy().join("kubernetes/podmonitor.yaml"));
    assert_eq!(pm.len(), 1, "{pm:?}");
    let pm = &pm[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    let sel = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in sel {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            v.as_str(),
            "PodMonitor selects {k}={v}"
        );
    }
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
}

/// Sample names llmdd's `/metrics` exposes, from its own encoder: a counter family `x` is
/// stored as `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`.
fn exported() -> BTreeSet<String> {
    let state = Arc::new(Mutex::new(llmdd::views::metrics::State::new(0)));
    let text = llmdd::views::metrics::State::encode(state).expect("encodes");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let (Some(n), Some(t)) = (w.next(), w.next()) else {
            continue;
        };
        match t {
            "counter" => {
                names.insert(format!("{n}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{n}{s}"));
                }
            }
            _ => {
                names.insert(n.to_string());
            }
        }
    }
    assert!(names.len() > 10, "{text}");
    names
}

/// Metric names and `kind` label values an expression selects.
fn selected(e: &Expr, names: &mut BTreeSet<String>, kinds: &mut BTreeSet<String>) {
    let mut vs = |v: &promql_parser::parser::VectorSelector| {
        if let Some(n) = &v.name {
            names.insert(n.clone());
        }
        for m in &v.matchers.matchers {
            match (&m.op, m.name.as_str()) {
                (MatchOp::Equal, "__name__") => {
                    names.insert(m.value.clone());
                }
                (MatchOp::Equal, "kind") => {
                    kinds.insert(m.value.clone());
                }
                _ => {}
            }
        }
    };
    match e {
        Expr::VectorSelector(v) => vs(v),
        Expr::MatrixSelector(m) => vs(&m.vs),
        Expr::Aggregate(a) => {
            selected(&a.expr, names, kinds);
            if let Some(p) = &a.param {
                selected(p, names, kinds);
            }
        }
        Expr::Unary(u) => selected(&u.expr, names, kinds),
        Expr::Binary(b) => {
            selected(&b.lhs, names, kinds);
            selected(&b.rhs, names, kinds);
        }
        Expr::Paren(p) => selected(&p.expr, names, kinds),
        Expr::Subquery(s) => selected(&s.expr, names, kinds),
        Expr::Call(c) => {
            for a in &c.args.args {
                selected(a, names, kinds);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Checks one expression: valid PromQL naming only exported metrics (plus Prometheus's own
/// `up`) and known finding kinds. Returns the names it uses.
fn check_expr(expr: &str, what: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let e = promql_parser::parser::parse(expr)
        .unwrap_or_else(|err| panic!("{what}: invalid PromQL `{expr}`: {err}"));
    let (mut names, mut kinds) = (BTreeSet::new(), BTreeSet::new());
    selected(&e, &mut names, &mut kinds);
    assert!(!names.is_empty(), "{what}: `{expr}` selects no metric");
    for n in &names {
        assert!(
            n == "up" || exported.contains(n),
            "{what}: `{n}` is not a metric llmdd exports ({exported:?})"
        );
    }
    let known: BTreeSet<&str> = [
        FindingKind::Straggler,
        FindingKind::Stall,
        FindingKind::Bubble,
        FindingKind::MemoryPressure,
        FindingKind::Link,
        FindingKind::LostEvents,
        FindingKind::MemberLeft,
    ]
    .map(FindingKind::name)
    .into();
    for k in &kinds {
        assert!(known.contains(k.as_str()), "{what}: no finding kind `{k}`");
    }
    names.extend(kinds.into_iter().map(|k| format!("kind={k}")));
    names
}

/// A Prometheus duration (`30s`, `5m`, `1h30m`).
fn is_prom_duration(s: &str) -> bool {
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(u) = unit else { return false };
        rest = &rest[u.len()..];
        parts += 1;
    }
    parts > 0
}

#[test]
fn alert_rules_are_well_formed_and_use_exported_metrics() {
    let exported = exported();
    let docs = yaml_docs(&deploy().join("prometheus/llmdd-rules.yml"));
    assert_eq!(docs.len(), 1);
    let groups = docs[0]["groups"].as_array().expect("groups: a list");
    let mut group_names = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for g in groups {
        let gname = g["name"].as_str().expect("group name");
        assert!(group_names.insert(gname), "group {gname} twice");
        let obj = g.as_object().expect("group");
        for k in obj.keys() {
            assert!(
                ["name", "interval", "rules", "limit"].contains(&k.as_str()),
                "group {gname}: unknown key {k}"
            );
        }
        let rules = g["rules"].as_array().expect("rules: a list");
        assert!(!rules.is_empty(), "group {gname} has no rule");
        for r in rules {
            let obj = r.as_object().expect("rule");
            for k in obj.keys() {
                assert!(
                    [
                        "alert",
                        "expr",
                        "for",
                        "keep_firing_for",
                        "labels",
                        "annotations"
                    ]
                    .contains(&k.as_str()),
                    "{gname}: unknown rule key {k}"
                );
            }
            let alert = r["alert"].as_str().expect("alert name");
            assert!(
                alert.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{alert}: not a valid alert name"
            );
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for: a string");
                assert!(is_prom_duration(f), "{alert}: `for: {f}` is not a duration");
            }
            let sev = r["labels"]["severity"].as_str().expect("severity label");
            assert!(
                ["info", "warning", "critical"].contains(&sev),
                "{alert}: {sev}"
            );
            assert!(r["annotations"]["summary"].is_string(), "{alert}: summary");
            assert!(
                r["annotations"]["description"].is_string(),
                "{alert}: description"
            );
            let expr = r["expr"].as_str().expect("expr");
            used.extend(check_expr(expr, alert, &exported));
        }
    }
    // The alerts the fleet view promises.
    for want in [
        "kind=straggler",
        "kind=stall",
        "llmdd_events_lost_total",
        "llmdd_findings_active",
        "llmdd_collective_arrival_skew_seconds_bucket",
    ] {
        assert!(used.contains(want), "no alert on {want}: {used:?}");
    }
}

#[test]
fn prometheus_config_scrapes_the_pods_and_loads_the_rules() {
    let docs = yaml_docs(&deploy().join("prometheus/prometheus.yml"));
    assert_eq!(docs.len(), 1);
    let cfg = &docs[0];
    let files: Vec<&str> = cfg["rule_files"]
        .as_array()
        .expect("rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in &files {
        assert!(
            deploy().join("prometheus").join(f).is_file(),
            "rule file {f} is not beside prometheus.yml"
        );
    }
    let jobs = cfg["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "llmdd")
        .expect("job llmdd");
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    assert_eq!(job["metrics_path"], "/metrics");
    let relabel = job["relabel_configs"].as_array().expect("relabel_configs");
    assert!(relabel.iter().any(|r| r["action"] == "keep"
        && r["source_labels"][0] == "__meta_kubernetes_pod_annotation_prometheus_io_scrape"));
    // The `node` label every alert and dashboard panel groups by.
    assert!(relabel.iter().any(|r| r["target_label"] == "node"
        && r["source_labels"][0] == "__meta_kubernetes_pod_node_name"));
    for j in jobs {
        for k in ["scrape_interval", "scrape_timeout"] {
            if let Some(d) = j.get(k) {
                assert!(is_prom_duration(d.as_str().expect("string")), "{k}: {d}");
            }
        }
    }
}

/// Grafana variables replaced by values PromQL accepts.
fn without_grafana_vars(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    while let Some(i) = out.find('$') {
        let rest = &out[i + 1..];
        let len = if rest.starts_with('{') {
            rest.find('}').map_or(rest.len(), |j| j + 1)
        } else {
            rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    .len()
        };
        out.replace_range(i..i + 1 + len, "x");
    }
    out
}

#[test]
fn grafana_dashboard_is_valid_and_uses_exported_metrics() {
    let exported = exported();
    let path = deploy().join("grafana/llmdd-dashboard.json");
    let d: Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    for k in ["title", "uid", "panels", "templating", "schemaVersion"] {
        assert!(d.get(k).is_some(), "dashboard has no {k}");
    }
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id twice"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(
            x + w <= 24 && g["h"].as_u64().is_some_and(|h| h > 0),
            "{title}: {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            used.extend(check_expr(&without_grafana_vars(expr), title, &exported));
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.rsplit_once(','))
            .map(|(m, _)| m)
            .unwrap_or_else(|| panic!("variable query {q}"));
        used.extend(check_expr(
            &without_grafana_vars(inner),
            "variable",
            &exported,
        ));
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        let expr = a["expr"].as_str().expect("annotation expr");
        check_expr(&without_grafana_vars(expr), "annotation", &exported);
    }
    // The dashboard shows each family llmdd exports except its own label-cap counter, which
    // is shown as part of "Processes traced".
    for family in [
        "llmdd_collective_duration_seconds_bucket",
        "llmdd_collective_arrival_skew_seconds_bucket",
        "llmdd_collective_bus_bandwidth_bytes_per_second",
        "llmdd_request_ttft_seconds_bucket",
        "llmdd_request_inter_token_seconds_bucket",
        "llmdd_calls_total",
        "llmdd_call_errors_total",
        "llmdd_findings_total",
        "llmdd_findings_active",
        "llmdd_events_total",
        "llmdd_events_lost_total",
        "llmdd_processes_traced",
        "llmdd_metrics_series_dropped_total",
    ] {
        assert!(used.contains(family), "the dashboard never shows {family}");
    }
}

#[test]
fn the_image_builds_llmdd_and_runs_the_daemonset_command() {
    let df = read(&deploy().join("Dockerfile"));
    assert!(
        df.contains("cargo build --release --locked -p llmdd"),
        "{df}"
    );
    for pkg in ["rustc-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"] {
        assert!(
            df.contains(pkg),
            "the BPF toolchain package {pkg} is missing"
        );
    }
    assert!(df.contains("bpf-linker"));
    // The entrypoint is the node script (present in the repository), its default arguments
    // an llmdd command line llmdd accepts.
    assert!(deploy().join("llmdd-node.sh").is_file());
    let entry = df
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("exec-form ENTRYPOINT");
    assert_eq!(entry, ["/usr/local/bin/llmdd-node"]);
    let cmd = df
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD");
    let attach = parse_llmdd(&cmd).unwrap_or_else(|e| panic!("llmdd rejects {cmd:?}: {e}"));
    assert!(attach.all && attach.run.prometheus.is_some());
}

#[test]
fn the_node_entrypoint_restarts_llmdd_and_passes_sigterm_on() {
    // llmdd refuses a pid that does not exist and exits at once; the script starts it again.
    let mut cmd = Command::new("sh");
    cmd.arg(deploy().join("llmdd-node.sh"))
        .args(["attach", "--pid", "2147483646", "--no-tui"])
        .env("LLMDD_BIN", built("llmdd"))
        .env("LLMDD_RETRY_S", "0.1");
    let mut node = Proc::spawn("llmdd-node", cmd).expect("starts");
    for _ in 0..2 {
        node.wait_line("restart line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.starts_with("llmdd-node: llmdd exited with status")
        })
        .expect("llmdd restarted");
    }
    node.signal(libc::SIGTERM).expect("SIGTERM");
    let status = node.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{status}:\n{}", node.transcript());
}

/// Label names an expression uses (matchers, `by`/`without`, `on`/`ignoring`/`group_*`)
/// and the metric names it selects.
fn labels_used(e: &Expr, labels: &mut BTreeSet<String>, names: &mut BTreeSet<String>) {
    use promql_parser::parser::LabelModifier;
    let mut vs = |v: &promql_parser::parser::VectorSelector| {
        if let Some(n) = &v.name {
            names.insert(n.clone());
        }
        for m in &v.matchers.matchers {
            if m.name != "__name__" {
                labels.insert(m.name.clone());
            }
        }
    };
    let modifier = |m: &LabelModifier, labels: &mut BTreeSet<String>| {
        labels.extend(m.labels().labels.iter().cloned());
    };
    match e {
        Expr::VectorSelector(v) => vs(v),
        Expr::MatrixSelector(m) => vs(&m.vs),
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                modifier(m, labels);
            }
            labels_used(&a.expr, labels, names);
            if let Some(p) = &a.param {
                labels_used(p, labels, names);
            }
        }
        Expr::Unary(u) => labels_used(&u.expr, labels, names),
        Expr::Binary(b) => {
            if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                modifier(m, labels);
            }
            labels_used(&b.lhs, labels, names);
            labels_used(&b.rhs, labels, names);
        }
        Expr::Paren(p) => labels_used(&p.expr, labels, names),
        Expr::Subquery(s) => labels_used(&s.expr, labels, names),
        Expr::Call(c) => {
            for a in &c.args.args {
                labels_used(a, labels, names);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Every PromQL expression of the rules, the dashboard panels, its variables (the metric of
/// `label_values(metric, label)` with `label` as a use of it) and its annotations.
fn all_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = yaml_docs(&deploy().join("prometheus/llmdd-rules.yml"));
    for g in rules[0]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            out.push((
                r["alert"].as_str().expect("alert").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    let d: Value = serde_json::from_str(&read(&deploy().join("grafana/llmdd-dashboard.json")))
        .expect("dashboard");
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("panel").to_string(),
                without_grafana_vars(t["expr"].as_str().expect("expr")),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'));
            if let Some((metric, label)) = inner.and_then(|s| s.rsplit_once(',')) {
                let metric = without_grafana_vars(metric);
                // `sum by (label) (metric)` uses the label of the metric as the variable does.
                out.push((
                    format!("variable {}", v["name"]),
                    format!("sum by ({}) ({metric})", label.trim()),
                ));
            }
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        out.push((
            "annotation".to_string(),
            without_grafana_vars(a["expr"].as_str().expect("expr")),
        ));
    }
    out
}

/// Sample name -> label names, from an exposition text.
fn scraped_labels(body: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let key = line.rsplit_once(' ').map_or(line, |x| x.0);
        let (name, labels) = key.split_once('{').unwrap_or((key, ""));
        let set = out.entry(name.to_string()).or_default();
        for pair in labels.trim_end_matches('}').split("\",") {
            if let Some((k, _)) = pair.split_once('=') {
                set.insert(k.trim_start_matches(',').to_string());
            }
        }
    }
    out
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

#[test]
fn every_label_the_queries_use_is_on_the_metrics_of_a_live_daemonset_command() {
    llmdd_tests::harness::require_root();
    // The DaemonSet's own command line, aimed at the simulated job instead of `--all` and
    // at a free local port instead of the pod's IP, port 9400.
    let c = daemonset()
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .clone();
    let mut job = llmdd_tests::job::Job::start(
        &llmdd_tests::harness::fake_lib_dir(),
        &[
            "--ranks",
            "4",
            "--forever",
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--straggler",
            "2:5:1",
            "--oom-every",
            "5",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let mut cmd = Command::new(built("llmdd"));
    for a in c.args.expect("args") {
        match a.as_str() {
            "--all" => {
                for p in &job.pids {
                    cmd.args(["--pid", &p.to_string()]);
                }
            }
            "$(POD_IP):9400" => {
                cmd.arg("127.0.0.1:0");
            }
            other => {
                cmd.arg(other);
            }
        }
    }
    let mut llmdd = Proc::spawn("llmdd", cmd).expect("llmdd starts");
    let line = llmdd
        .wait_line("metrics line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.starts_with("llmdd: serving metrics on http://")
        })
        .expect("serves metrics");
    let addr: std::net::SocketAddr = line
        .trim_start_matches("llmdd: serving metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("address");
    llmdd
        .wait_line("'tracing' line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.starts_with("llmdd: tracing")
        })
        .expect("attaches");
    job.go().expect("go");
    // Scrape until every labelled family has series.
    let want = [
        "llmdd_collective_duration_seconds_bucket",
        "llmdd_collective_arrival_skew_seconds_bucket",
        "llmdd_collective_bus_bandwidth_bytes_per_second",
        "llmdd_calls_total",
        "llmdd_call_errors_total",
        "llmdd_findings_total",
        "llmdd_findings_active",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let labels = loop {
        let l = scraped_labels(&scrape(addr));
        if want
            .iter()
            .all(|w| l.get(*w).is_some_and(|s| !s.is_empty()))
        {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "families without series: {:?}\n{}",
            want.iter()
                .filter(|w| l.get(**w).is_none_or(|s| s.is_empty()))
                .collect::<Vec<_>>(),
            llmdd.transcript()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    llmdd.signal(libc::SIGTERM).expect("SIGTERM");
    let _ = llmdd.wait_exit(Duration::from_secs(60));
    job.proc.signal(libc::SIGTERM).expect("stopping the job");
    let _ = job.proc.wait_exit(Duration::from_secs(60));

    // Labels Prometheus adds itself (target labels from the scrape configuration).
    let target = ["node", "instance", "job", "pod", "cluster"];
    for (what, expr) in all_queries() {
        let e = promql_parser::parser::parse(&expr)
            .unwrap_or_else(|err| panic!("{what}: `{expr}`: {err}"));
        let (mut used, mut names) = (BTreeSet::new(), BTreeSet::new());
        labels_used(&e, &mut used, &mut names);
        let mut have: BTreeSet<String> = target.iter().map(|s| s.to_string()).collect();
        for n in &names {
            if let Some(l) = labels.get(n) {
                have.extend(l.iter().cloned());
            }
        }
        for l in &used {
            assert!(
                have.contains(l),
                "{what}: label `{l}` is on none of {names:?} (their labels: {have:?})"
            );
        }
    }
}
