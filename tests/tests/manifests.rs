//! The manifests in `deploy/` (issue 9): they parse into the Kubernetes API types, carry what
//! a node agent needs (host network, bpffs with mount propagation, capabilities rather than
//! privilege, probes that survive a busy node, Prometheus annotations, node-critical priority,
//! tolerations, a one-node-at-a-time rolling update, NODE_NAME from the downward API, minimal
//! RBAC, an uninstall path), and agree with the binary: probe paths and port, environment
//! variable names and values, subcommands. Needs no root.

use std::{collections::BTreeSet, path::Path, process::Command};

use integration_tests::{repo_root, XdpCtl};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Deserialize as _;

/// The documents of a YAML file, as JSON values.
fn docs(file: &str) -> Vec<serde_json::Value> {
    let path = repo_root().join("deploy").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            serde_json::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The one document of `kind` in `file`, as the API type.
#[track_caller]
fn one<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let found: Vec<_> = docs(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{file}: {} documents of kind {kind}",
        found.len()
    );
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{file}: {kind} does not parse into the API type: {e}"))
}

/// `xdp-ctl ARGS --help` (the binary the tests run).
fn help(args: &[&str]) -> String {
    let bin = XdpCtl::bin_path();
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build --bins)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(out.status.success(), "xdp-ctl {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The environment variables `xdp-ctl run` reads (clap's `[env: NAME=...]`).
fn run_env_names() -> BTreeSet<String> {
    let h = help(&["run"]);
    h.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split('=').next())
        .map(str::to_string)
        .collect()
}

fn probe_path(p: Option<&Probe>, what: &str) -> (String, IntOrString, i32) {
    let p = p.unwrap_or_else(|| panic!("no {what}"));
    let g = p
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("{what} is not httpGet"));
    let timeout = p.timeout_seconds.unwrap_or(1);
    (g.path.clone().unwrap_or_default(), g.port.clone(), timeout)
}

fn container<'a>(cs: &'a [Container], name: &str) -> &'a Container {
    cs.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one manifest, every field the issue asks for"
)]
fn daemonset_is_a_node_agent_that_matches_the_binary() {
    let ds: DaemonSet = one("daemonset.yaml", "DaemonSet");
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let spec = ds.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
    let tmpl = &spec.template;
    let pod = tmpl.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t.operator.as_deref() == Some("Exists"))),
        "tolerates every taint"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("xdp-fastpath"));

    // bpffs: the host's /sys/fs/bpf; the init step mounts it (Bidirectional, privileged), the
    // agent sees it (HostToContainer) without privilege.
    let vols = pod.volumes.as_ref().expect("volumes");
    let bpffs = vols
        .iter()
        .find(|v| v.name == "bpffs")
        .expect("bpffs volume");
    assert_eq!(
        bpffs.host_path.as_ref().expect("hostPath").path,
        "/sys/fs/bpf"
    );
    let inits = pod.init_containers.as_deref().expect("initContainers");
    let init = container(inits, "mount-bpffs");
    assert_eq!(
        init.args.as_deref(),
        Some(&["mount-bpffs".to_string(), "/sys/fs/bpf".to_string()][..])
    );
    assert!(help(&["mount-bpffs"]).contains("Mount bpffs on DIR"));
    let m = init
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "bpffs")
        .expect("bpffs mount");
    assert_eq!(m.mount_path, "/sys/fs/bpf");
    assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));

    let c = container(&pod.containers, "xdp-fastpath");
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let m = c
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "bpffs")
        .expect("bpffs mount");
    assert_eq!(m.mount_path, "/sys/fs/bpf");
    assert_eq!(m.mount_propagation.as_deref(), Some("HostToContainer"));
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(
        sc.privileged,
        Some(true),
        "the agent must not be privileged"
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let add: BTreeSet<&str> = caps
        .add
        .as_ref()
        .expect("add")
        .iter()
        .map(String::as_str)
        .collect();
    let allowed: BTreeSet<&str> = ["NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"].into();
    assert!(
        add.is_subset(&allowed),
        "capabilities beyond {allowed:?}: {add:?}"
    );
    assert!(add.contains("NET_ADMIN") && add.contains("BPF"), "{add:?}");

    // Probes: the binary's paths, on its port, with timeouts a busy node survives.
    let ports = c.ports.as_ref().expect("ports");
    let metrics_port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port");
    let data = cm.data.as_ref().expect("ConfigMap data");
    let listen = data
        .get("XDP_FASTPATH_LISTEN")
        .expect("XDP_FASTPATH_LISTEN");
    let listen: std::net::SocketAddr = listen.parse().expect("an address");
    assert_eq!(i32::from(listen.port()), metrics_port.container_port);
    let default: std::net::SocketAddr = xdp_ctl::http::DEFAULT_LISTEN.parse().expect("default");
    assert_eq!(listen.port(), default.port(), "the documented port");
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
        (c.startup_probe.as_ref(), "/healthz"),
    ] {
        let (p, port, timeout) = probe_path(probe, path);
        assert_eq!(p, path);
        assert_eq!(port, IntOrString::String("metrics".into()));
        assert!(
            timeout >= 5,
            "{path}: a {timeout} s probe timeout restarts busy agents"
        );
    }
    let ann = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .expect("annotations");
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

    // Options: the ConfigMap's keys are the binary's environment variables, NODE_NAME comes
    // from the downward API.
    let env_names = run_env_names();
    assert!(
        env_names.contains("XDP_FASTPATH_LISTEN") && env_names.contains("NODE_NAME"),
        "{env_names:?}"
    );
    for key in data.keys().filter(|k| *k != "RUST_LOG") {
        assert!(
            env_names.contains(key),
            "ConfigMap key {key} is no option of `xdp-ctl run` ({env_names:?})"
        );
    }
    let from_cm = c.env_from.as_ref().expect("envFrom")[0]
        .config_map_ref
        .as_ref()
        .expect("configMapRef");
    assert_eq!(from_cm.name, cm.metadata.name.clone().expect("name"));
    let env = c.env.as_ref().expect("env");
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    for e in env {
        assert!(
            env_names.contains(&e.name),
            "env {} is no option of `xdp-ctl run`",
            e.name
        );
    }
    // The binary accepts every value: parsing the ConfigMap's environment is no usage error
    // (exit 2); it then stops at the deliberately relative pin dir (or, without root, at the
    // privilege check), before touching anything.
    let out = Command::new(XdpCtl::bin_path())
        .env_clear()
        .envs(data.iter())
        .env("NODE_NAME", "node-a")
        .args(["--pin-dir", "not-absolute", "run"])
        .output()
        .expect("run xdp-ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("must be an absolute path") || stderr.contains("missing privileges"),
        "{stderr}"
    );
    assert_eq!(
        data.get("XDP_FASTPATH_DETACH_ON_EXIT").map(String::as_str),
        Some("false"),
        "upgrades need the datapath to stay"
    );
}

#[test]
fn rbac_is_pods_and_namespaces_read_only() {
    let _: Namespace = one("namespace.yaml", "Namespace");
    let sa: ServiceAccount = one("rbac.yaml", "ServiceAccount");
    let role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let binding: ClusterRoleBinding = one("rbac.yaml", "ClusterRoleBinding");
    let rules = role.rules.expect("rules");
    let mut granted = BTreeSet::new();
    for r in &rules {
        assert_eq!(
            r.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core API group only"
        );
        for res in r.resources.as_ref().expect("resources") {
            for v in &r.verbs {
                granted.insert(format!("{v} {res}"));
            }
        }
    }
    let want: BTreeSet<String> = ["get", "list", "watch"]
        .iter()
        .flat_map(|v| ["pods", "namespaces"].map(|r| format!("{v} {r}")))
        .collect();
    assert_eq!(granted, want);
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.expect("role name")
    );
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(Some(subject.name.clone()), sa.metadata.name);
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn uninstall_detaches_everything_on_every_node() {
    let ds: DaemonSet = one("uninstall/cleanup.yaml", "DaemonSet");
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert!(pod
        .tolerations
        .is_some_and(|t| t.iter().any(|t| t.operator.as_deref() == Some("Exists"))));
    let init = container(pod.init_containers.as_deref().expect("init"), "detach");
    assert_eq!(
        init.args.as_deref(),
        Some(&["detach".to_string(), "--all".to_string()][..])
    );
    assert!(help(&["detach"]).contains("--all"));
    let pin_dir = init
        .env
        .as_ref()
        .expect("env")
        .iter()
        .find(|e| e.name == "XDP_FASTPATH_PIN_DIR")
        .and_then(|e| e.value.clone());
    assert_eq!(
        pin_dir.as_ref(),
        cm.data.as_ref().expect("data").get("XDP_FASTPATH_PIN_DIR")
    );
    assert!(help(&[]).contains("[env: XDP_FASTPATH_PIN_DIR="));
    // `kubectl apply -f deploy/` (not recursive) must not pick it up.
    assert!(!Path::new(&repo_root().join("deploy/cleanup.yaml")).exists());
}
