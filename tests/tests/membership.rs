//! Who is in the mesh (DESIGN.md section 4a), on real namespaces and traffic: with no source
//! nobody is meshed; the sidecar source follows TCP listeners inside pod namespaces within a
//! second; the kube source follows pods and namespaces through a list/watch server in this
//! crate (`kube_api`), across 410 Gone, disconnects and an API outage; bad input fails cleanly
//! or leaves the controller not ready. Needs root: `#[ignore]`d, failing without root.
use std::{
    collections::BTreeMap,
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    assert_clean_failure, for_each_datapath, in_netns, kube_api::FakeApi, poll_until, require_root,
    tcp_echo, try_run, Bench, Controller, Datapath, TcpFlow, XdpCtl,
};
use serde_json::{json, Value};

for_each_datapath!(
    default_start_fast_paths_nothing,
    sidecar_port_follows_listeners
);

const READY: Duration = Duration::from_secs(5);
const T_OK: Duration = Duration::from_secs(5);
/// The bound for a pod to join or leave the mesh.
const JOIN: Duration = Duration::from_secs(1);
const ISTIO_INBOUND: u16 = 15006;

/// prefix -> (meshed, sources), from `endpoint list --json`.
#[track_caller]
fn membership(ctl: &XdpCtl) -> BTreeMap<String, (bool, Vec<String>)> {
    let v = ctl.json(&["endpoint", "list"]);
    v["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints array: {v}"))
        .iter()
        .map(|e| {
            let sources = e["sources"]
                .as_array()
                .unwrap_or_else(|| panic!("endpoint without sources: {e}"))
                .iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect();
            (
                e["prefix"].as_str().unwrap_or_default().to_string(),
                (e["meshed"] == true, sources),
            )
        })
        .collect()
}

/// The membership of pod `i`'s two addresses: Some((meshed, sources)) when both agree.
fn pod_membership(
    m: &BTreeMap<String, (bool, Vec<String>)>,
    b: &Bench,
    i: u32,
) -> Option<(bool, Vec<String>)> {
    let v4 = m.get(&format!("{}/32", b.pod_v4(i)))?;
    let v6 = m.get(&format!("{}/128", b.pod_v6(i)))?;
    (v4 == v6).then(|| v4.clone())
}

/// Waits until pod `i` is (not) meshed with `sources`; returns how long it took.
#[track_caller]
fn wait_pod(
    ctl: &XdpCtl,
    b: &Bench,
    i: u32,
    meshed: bool,
    sources: &[&str],
    timeout: Duration,
) -> Duration {
    let t0 = Instant::now();
    let want = (
        meshed,
        sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
    );
    let mut last = None;
    poll_until(timeout, || {
        let got = pod_membership(&membership(ctl), b, i);
        let ok = got.as_ref() == Some(&want);
        last = got;
        ok.then(|| t0.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "pod{i} not {want:?} within {timeout:?}: last {last:?}; endpoints: {:?}",
            membership(ctl)
        )
    })
}

/// TCP pod `from` -> pod `to` (both families) must go over the fast path: no FORWARD DROP hit,
/// `redirected` grows.
#[track_caller]
fn assert_fast_path(b: &Bench, from: u32, to: u32, when: &str) {
    let (before, drops) = (b.stats("redirected").0, b.forward_drops());
    for v6 in [false, true] {
        tcp_echo(
            &b.pod_ns(from),
            &b.pod_ns(to),
            b.pod_addr(to, v6),
            32 * 1024,
            T_OK,
        )
        .unwrap_or_else(|e| panic!("{when}: pod{from} -> pod{to}: {e}"));
    }
    assert!(
        b.stats("redirected").0 >= before + 10,
        "{when}: nothing redirected"
    );
    assert_eq!(b.forward_drops(), drops, "{when}: FORWARD DROP hits");
}

/// TCP pod `from` -> pod `to` must take the kernel path, where the FORWARD DROP rules stop it.
#[track_caller]
fn assert_kernel_path(b: &Bench, from: u32, to: u32, when: &str) {
    let drops = b.forward_drops();
    let r = tcp_echo(
        &b.pod_ns(from),
        &b.pod_ns(to),
        b.pod_addr(to, false),
        1024,
        Duration::from_millis(700),
    );
    assert!(
        r.is_err(),
        "{when}: pod{from} -> pod{to} got through the DROP rules: {r:?}"
    );
    assert!(b.forward_drops().0 > drops.0, "{when}: no FORWARD DROP hit");
}

/// A TCP listener on `port` (IPv6 any, dual-stack) inside namespace `ns`, held by the test.
#[track_caller]
fn listen_in(ns: &str, port: u16) -> TcpListener {
    in_netns(ns, move || {
        TcpListener::bind(("::", port)).map_err(|e| format!("listen on {port}: {e}"))
    })
    .join()
    .expect("listener thread")
    .unwrap_or_else(|e| panic!("{ns}: {e}"))
}

// ---------------------------------------------------------------------------------------------

fn default_start_fast_paths_nothing(dp: Datapath) {
    let b = Bench::up(2);
    b.drop_pod_forwarding();
    let ctl = b.xdp_ctl();
    let mut c = b.controller_bare(&["--datapath", dp.name()]);
    c.wait_ready(READY);
    assert!(
        c.log().contains("no membership source"),
        "{dp}: no clear log line:\n{}",
        c.log()
    );
    let st = ctl.status();
    assert_eq!(st["membership"]["sources"], json!([]), "{dp}: {st}");
    assert!(
        st["membership"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("nothing is fast-pathed")),
        "{dp}: status --json: {st}"
    );
    let text = ctl.run_ok(&["status"]).stdout;
    assert!(
        text.contains("nothing is fast-pathed"),
        "{dp}: status: {text}"
    );
    let m = membership(&ctl);
    assert_eq!(m.len(), 4, "{dp}: endpoints: {m:?}");
    assert!(
        m.values().all(|(meshed, s)| !meshed && s.is_empty()),
        "{dp}: something is meshed: {m:?}"
    );
    assert_kernel_path(&b, 1, 2, &format!("{dp}: no source"));
    c.assert_log_clean();
}

fn sidecar_port_follows_listeners(dp: Datapath) {
    let b = Bench::up(3);
    b.drop_pod_forwarding();
    let ctl = b.xdp_ctl();
    let port = ISTIO_INBOUND.to_string();
    let mut c = b.controller_bare(&["--datapath", dp.name(), "--sidecar-port", &port]);
    c.wait_ready(READY);
    let st = ctl.status();
    assert_eq!(st["membership"]["sources"], json!(["sidecar-port"]), "{st}");
    for i in 1..=3 {
        wait_pod(&ctl, &b, i, false, &[], JOIN);
    }

    // Proxies start in pods 1 and 2.
    let t0 = Instant::now();
    let l1 = listen_in(&b.pod_ns(1), ISTIO_INBOUND);
    let mut l2 = Some(listen_in(&b.pod_ns(2), ISTIO_INBOUND));
    wait_pod(&ctl, &b, 1, true, &["sidecar-port"], JOIN);
    wait_pod(&ctl, &b, 2, true, &["sidecar-port"], JOIN);
    let joined = t0.elapsed();
    eprintln!("{dp}: listeners started -> both pods meshed in {joined:?}");
    assert!(joined < JOIN, "{dp}: joined after {joined:?}");
    assert_fast_path(&b, 1, 2, &format!("{dp}: both pods with a listener"));
    assert_kernel_path(&b, 1, 3, &format!("{dp}: pod3 has no listener"));
    wait_pod(&ctl, &b, 3, false, &[], JOIN);

    // A flow born on the fast path survives pod 2 leaving the mesh: the DROP rules go, and
    // kube-proxy's INVALID drop comes in (DESIGN.md section 3a).
    b.allow_pod_forwarding();
    b.kube_proxy_forward();
    let flow = TcpFlow::start(
        &b.pod_ns(1),
        &b.pod_ns(2),
        b.pod_v4(2).into(),
        16 * 1024,
        Duration::from_millis(5),
        T_OK,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        flow.wait_for_echoed(256 * 1024, T_OK),
        "{dp}: the flow does not get going"
    );
    let not_meshed = b.stats("not_meshed").0;
    let t0 = Instant::now();
    drop(l2.take());
    let left = wait_pod(&ctl, &b, 2, false, &[], JOIN);
    eprintln!(
        "{dp}: listener closed -> pod2 left the mesh in {left:?} ({:?} total)",
        t0.elapsed()
    );
    let at = flow.echoed();
    assert!(
        flow.wait_for_echoed(at + 512 * 1024, T_OK),
        "{dp}: the flow stalled after pod2 left the mesh ({} echoed, {at} when it left)",
        flow.echoed()
    );
    assert!(
        b.stats("not_meshed").0 > not_meshed,
        "{dp}: the flow did not move to the kernel path"
    );
    let report = flow.finish().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{dp}: flow across pod2 leaving the mesh: {report}");
    assert!(report.complete(), "{dp}: {report}");
    wait_pod(&ctl, &b, 1, true, &["sidecar-port"], JOIN);
    drop(l1);
    c.assert_log_clean();
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

const NODE: &str = "node-a";

fn pod_obj(b: &Bench, i: u32, ns: &str, extra: &Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod{i}"), "namespace": ns, "uid": format!("uid-{i}")},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": b.pod_v4(i).to_string(),
                   "podIPs": [{"ip": b.pod_v4(i).to_string()}, {"ip": b.pod_v6(i).to_string()}]}
    });
    merge(&mut p, extra);
    p
}

fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn ns_obj(name: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

const ANNOTATED: &str = "kube:sidecar-annotation";

#[test]
#[ignore = "needs root: run scripts/test.sh"]
#[expect(
    clippy::too_many_lines,
    reason = "one story: start, events, 410, disconnect, outage"
)]
fn kube_source_follows_pods_namespaces_and_outages() {
    require_root!();
    let b = Bench::up(6);
    b.drop_pod_forwarding();
    let ctl = b.xdp_ctl();
    let api = FakeApi::start(&b.node_ns(), &[NODE]);
    api.put_namespace(ns_obj("default", &json!({})));
    api.put_namespace(ns_obj(
        "mesh",
        &json!({"istio.io/dataplane-mode": "ambient"}),
    ));
    let sidecar = json!({"metadata": {"annotations": {"sidecar.istio.io/status": "{}"}}});
    api.put_pod(pod_obj(&b, 1, "default", &sidecar));
    api.put_pod(pod_obj(
        &b,
        2,
        "default",
        &json!({"spec": {"initContainers": [
        {"name": "istio-proxy", "image": "proxy", "restartPolicy": "Always"}]}}),
    ));
    api.put_pod(pod_obj(&b, 3, "mesh", &json!({})));
    api.put_pod(pod_obj(
        &b,
        4,
        "default",
        &json!({"metadata": {"annotations": {
        "sidecar.istio.io/status": "{}", "xdp-fastpath.io/enabled": "false"}}}),
    ));
    api.put_pod(pod_obj(&b, 5, "default", &json!({})));
    api.put_pod(pod_obj(
        &b,
        6,
        "mesh",
        &json!({"metadata": {"labels": {
        "istio.io/dataplane-mode": "none"}}}),
    ));
    // Another node's pod with pod 5's addresses must not count.
    let mut other = pod_obj(&b, 5, "default", &sidecar);
    other["metadata"]["name"] = json!("elsewhere");
    other["spec"]["nodeName"] = json!("node-b");
    api.put_pod(other);

    let kubeconfig = api.kubeconfig().display().to_string();
    let mut c = b.controller_bare(&[
        "--datapath",
        "tc",
        "--kube",
        "--kubeconfig",
        &kubeconfig,
        "--node-name",
        NODE,
    ]);
    c.wait_ready(READY);
    let st = ctl.status();
    assert_eq!(st["membership"]["sources"], json!(["kube"]), "{st}");
    assert_eq!(st["membership"]["synced"], true, "{st}");
    wait_pod(&ctl, &b, 1, true, &[ANNOTATED], JOIN);
    wait_pod(&ctl, &b, 2, true, &["kube:native-sidecar"], JOIN);
    wait_pod(&ctl, &b, 3, true, &["kube:ambient"], JOIN);
    wait_pod(&ctl, &b, 4, false, &["kube:opted-out"], JOIN);
    wait_pod(&ctl, &b, 5, false, &[], JOIN);
    wait_pod(&ctl, &b, 6, false, &[], JOIN);
    assert_fast_path(&b, 1, 2, "sidecar annotation -> native sidecar");
    assert_kernel_path(&b, 1, 5, "to a pod without a mesh");
    assert!(
        !api.requests_with("fieldSelector=spec.nodeName=node-a")
            .is_empty(),
        "the pod watch does not select this node's pods: {:?}",
        api.requests_with("/api/v1/pods")
    );

    // Watch events: pod 5 gets injected, the ambient namespace leaves ambient mode.
    let t0 = Instant::now();
    api.put_pod(pod_obj(&b, 5, "default", &sidecar));
    api.put_namespace(ns_obj("mesh", &json!({})));
    wait_pod(&ctl, &b, 5, true, &[ANNOTATED], JOIN);
    wait_pod(&ctl, &b, 3, false, &[], JOIN);
    eprintln!("kube: watch events applied in {:?}", t0.elapsed());

    // 410 Gone: history compacted and watches cut; a change made meanwhile shows after the
    // relist.
    let lists_before = api
        .requests_with("/api/v1/pods?")
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    api.compact_and_disconnect();
    api.put_pod(pod_obj(&b, 4, "default", &sidecar));
    api.compact_and_disconnect();
    wait_pod(&ctl, &b, 4, true, &[ANNOTATED], Duration::from_secs(8));
    let lists_after = api
        .requests_with("/api/v1/pods?")
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "no relist after 410 Gone");

    // A plain disconnect: the watch resumes.
    api.disconnect();
    api.put_pod(pod_obj(&b, 6, "default", &sidecar));
    wait_pod(&ctl, &b, 6, true, &[ANNOTATED], Duration::from_secs(8));

    // The API goes down: the last known state stays, the controller stays ready.
    let before = membership(&ctl);
    api.set_down(true);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        membership(&ctl),
        before,
        "state changed while the API was down"
    );
    let st = c.status().expect("controller status");
    assert!(st["ready"] == true, "not ready while the API is down: {st}");
    assert_fast_path(&b, 1, 2, "while the API is down");
    // Back: a change made meanwhile arrives.
    api.put_pod(pod_obj(&b, 1, "default", &json!({})));
    api.set_down(false);
    wait_pod(&ctl, &b, 1, false, &[], Duration::from_secs(10));
    assert!(
        c.log().contains("retrying with back-off"),
        "no clear log line about the outage:\n{}",
        c.log()
    );
    c.assert_log_clean();
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
#[expect(clippy::too_many_lines, reason = "one bad input after the other")]
fn kube_source_not_ready_until_the_api_answers_and_bad_input() {
    require_root!();
    let b = Bench::up(1);
    let ctl = b.xdp_ctl();
    let api = FakeApi::start(&b.node_ns(), &[NODE]);
    api.put_namespace(ns_obj("default", &json!({})));
    api.put_pod(pod_obj(
        &b,
        1,
        "default",
        &json!({"metadata": {"annotations": {
        "sidecar.istio.io/status": "{}"}}}),
    ));
    let kubeconfig = api.kubeconfig().display().to_string();

    // The API is down at start: running, not ready, a clear log line; ready once it answers.
    api.set_down(true);
    let mut c = b.controller_bare(&["--kube", "--kubeconfig", &kubeconfig, "--node-name", NODE]);
    let st = poll_until(READY, || {
        ctl.controller_status().filter(|s| s["running"] == true)
    })
    .unwrap_or_else(|| panic!("never running; log:\n{}", c.log()));
    thread::sleep(Duration::from_secs(1));
    let st2 = c.status().expect("status");
    assert!(
        st["ready"] == false && st2["ready"] == false,
        "ready without the API: {st2}"
    );
    assert_eq!(ctl.status()["membership"]["synced"], false);
    assert!(
        c.log().contains("unreachable"),
        "no clear log line:\n{}",
        c.log()
    );
    assert!(ctl.run_ok(&["status"]).stdout.contains("NOT READY"));
    api.set_down(false);
    c.wait_ready(Duration::from_secs(10));
    wait_pod(&ctl, &b, 1, true, &[ANNOTATED], JOIN);
    c.assert_log_clean();
    drop(c);

    // An unknown node: not ready, and the log says why.
    let mut c = b.controller_bare(&[
        "--kube",
        "--kubeconfig",
        &kubeconfig,
        "--node-name",
        "no-such-node",
    ]);
    thread::sleep(Duration::from_millis(1500));
    let st = c.status().expect("status");
    assert!(st["running"] == true && st["ready"] == false, "{st}");
    assert!(
        c.log().contains("no node \"no-such-node\""),
        "log:\n{}",
        c.log()
    );
    assert!(c.exited().is_none());
    c.assert_log_clean();
    drop(c);

    // Nothing listens: not ready, a clear line.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = format!("/tmp/xfp-kubeconfig-dead-{}.yaml", std::process::id());
    let text = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
    std::fs::write(
        &dead,
        text.replace(&api.url(), &format!("http://127.0.0.1:{closed}")),
    )
    .expect("write");
    let c = b.controller_bare(&["--kube", "--kubeconfig", &dead, "--node-name", NODE]);
    thread::sleep(Duration::from_millis(1500));
    let _ = std::fs::remove_file(&dead);
    let st = c.status().expect("status");
    assert!(st["running"] == true && st["ready"] == false, "{st}");
    assert!(
        c.log().contains("Kubernetes API unreachable"),
        "log:\n{}",
        c.log()
    );
    c.assert_log_clean();
    drop(c);

    // Errors at start.
    let run = |args: &[&str], env: &[(&str, Option<&str>)]| {
        let mut full = vec!["run", "--iface-prefix", "xfpnomatch"];
        full.extend_from_slice(args);
        let mut cmd = ctl.command(&full);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        try_run(cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    };
    let garbage = format!("/tmp/xfp-kubeconfig-bad-{}.yaml", std::process::id());
    std::fs::write(&garbage, "this: [is not a kubeconfig").expect("write");
    let out = run(
        &["--kube", "--kubeconfig", &garbage, "--node-name", NODE],
        &[],
    );
    let _ = std::fs::remove_file(&garbage);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_clean_failure(&out, Some(&garbage));
    let out = run(
        &[
            "--kube",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--node-name",
            NODE,
        ],
        &[],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert_clean_failure(&out, Some("/nonexistent/kubeconfig"));
    let out = run(
        &["--kube", "--kubeconfig", &kubeconfig],
        &[("NODE_NAME", None)],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert_clean_failure(&out, Some("NODE_NAME"));
    for bad in ["0", "65536", "http"] {
        let out = run(&["--sidecar-port", bad], &[]);
        assert_eq!(out.code(), Some(2), "{out}");
        assert_clean_failure(&out, Some(bad));
    }
    // Options from the environment: a bad port there is as clear.
    let out = run(&[], &[("XDP_FASTPATH_SIDECAR_PORT", Some("15006,70000"))]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert_clean_failure(&out, Some("70000"));
}

/// Options from the environment: `XDP_FASTPATH_*` (and `NODE_NAME`) work like the flags.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn run_options_from_the_environment() {
    require_root!();
    let b = Bench::up(2);
    let ctl = b.xdp_ctl();
    let mut cmd_env = vec![
        ("XDP_FASTPATH_IFACE_PREFIX", b.iface_prefix()),
        (
            "XDP_FASTPATH_MESHED_CIDR",
            format!("{}/32,{}/128", b.pod_v4(1), b.pod_v6(1)),
        ),
        // Not the default (tc on this kernel), so the variable is what chose it.
        ("XDP_FASTPATH_DATAPATH", "xdp".to_string()),
    ];
    cmd_env.push(("XDP_FASTPATH_RESYNC_INTERVAL", "5".to_string()));
    let mut c = Controller::spawn_with_env(&ctl, &[], &cmd_env);
    c.wait_ready(READY);
    let st = ctl.status();
    assert_eq!(st["membership"]["sources"], json!(["cidr"]), "{st}");
    wait_pod(&ctl, &b, 1, true, &["cidr"], JOIN);
    wait_pod(&ctl, &b, 2, false, &[], JOIN);
    assert!(ctl
        .status_interfaces()
        .iter()
        .all(|i| i["datapath"] == "xdp"));
    c.assert_log_clean();
}
