//! Is this pod in the mesh, and why: Istio's markers on a Kubernetes pod and its namespace.
//! Pure (objects in, `Sources` bits out), so every shape is unit-tested.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::Sources;

/// Set by Istio's sidecar injector on every injected pod.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The name of Istio's proxy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Ambient mode, on the pod or its namespace (`ambient`; `none` on the pod opts out).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Our own opt-out annotation: `"false"` keeps the pod on the kernel path.
pub const ENABLED_ANNOTATION: &str = "xdp-fastpath.io/enabled";

fn get<'a>(m: Option<&'a BTreeMap<String, String>>, k: &str) -> Option<&'a str> {
    m.and_then(|m| m.get(k)).map(String::as_str)
}

/// The `Sources` bits of `pod` (0: no marker), given its namespace's labels, if known.
pub fn pod_sources(pod: &Pod, ns_labels: Option<&BTreeMap<String, String>>) -> u32 {
    let (annotations, labels) = (
        pod.metadata.annotations.as_ref(),
        pod.metadata.labels.as_ref(),
    );
    if get(annotations, ENABLED_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    {
        return Sources::OPTED_OUT;
    }
    let mut bits = 0;
    if get(annotations, SIDECAR_STATUS_ANNOTATION).is_some() {
        bits |= Sources::KUBE_ANNOTATION;
    }
    if let Some(spec) = &pod.spec {
        if spec.containers.iter().any(|c| c.name == PROXY_CONTAINER) {
            bits |= Sources::KUBE_CONTAINER;
        }
        // A native sidecar: an init container that keeps running (Istio's default since 1.27).
        // A plain init container named istio-proxy would have exited before the app started.
        let native =
            spec.init_containers.iter().flatten().any(|c| {
                c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always")
            });
        if native {
            bits |= Sources::KUBE_NATIVE_SIDECAR;
        }
    }
    // Ambient: the pod's own label wins over its namespace's (Istio's rule), `none` opts out.
    let mode = get(labels, DATAPLANE_MODE_LABEL).or_else(|| get(ns_labels, DATAPLANE_MODE_LABEL));
    if mode == Some("ambient") {
        bits |= Sources::KUBE_AMBIENT;
    }
    bits
}

/// The pod's addresses (`status.podIPs`, else `status.podIP`). Host-network pods share the
/// node's address and are never pod endpoints: none.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Vec::new();
    }
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = st
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(st.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
    }
    out
}

/// What the kube source says about every pod address of the node: address -> `Sources` bits,
/// for pods with a marker (or opted out). Pods that finished (Succeeded, Failed) are left out:
/// their address may already be another pod's.
pub fn snapshot<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> std::collections::HashMap<IpAddr, u32> {
    let ns_labels: std::collections::HashMap<&str, &BTreeMap<String, String>> = namespaces
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
        .collect();
    let mut out = std::collections::HashMap::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let bits = pod_sources(pod, ns_labels.get(ns).copied());
        if bits == 0 {
            continue;
        }
        for ip in pod_ips(pod) {
            // Two live pods claiming one address: an opt-out wins, else the union.
            let e = out.entry(ip).or_insert(0);
            *e |= bits;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn ns(name: &str, labels: &serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn app(extra: &serde_json::Value) -> serde_json::Value {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"podIP": "10.244.0.5",
                       "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]}
        });
        merge(&mut p, extra);
        p
    }

    fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b.clone(),
        }
    }

    type Case<'a> = (
        &'a str,
        serde_json::Value,
        Option<&'a BTreeMap<String, String>>,
        u32,
    );

    #[test]
    fn istio_markers() {
        let ambient = BTreeMap::from([(DATAPLANE_MODE_LABEL.to_string(), "ambient".to_string())]);
        let cases: [Case; 9] = [
            ("no mesh", json!({}), None, 0),
            (
                "injected sidecar annotation",
                json!({"metadata": {"annotations": {SIDECAR_STATUS_ANNOTATION: "{}"}}}),
                None,
                Sources::KUBE_ANNOTATION,
            ),
            (
                "istio-proxy container",
                json!({"spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}}),
                None,
                Sources::KUBE_CONTAINER,
            ),
            (
                "native sidecar",
                json!({"spec": {"initContainers": [
                    {"name": "istio-validation"},
                    {"name": "istio-proxy", "restartPolicy": "Always"}]}}),
                None,
                Sources::KUBE_NATIVE_SIDECAR,
            ),
            (
                "istio-proxy as a plain init container is no sidecar",
                json!({"spec": {"initContainers": [{"name": "istio-proxy"}]}}),
                None,
                0,
            ),
            (
                "ambient namespace",
                json!({}),
                Some(&ambient),
                Sources::KUBE_AMBIENT,
            ),
            (
                "ambient namespace, pod says none",
                json!({"metadata": {"labels": {DATAPLANE_MODE_LABEL: "none"}}}),
                Some(&ambient),
                0,
            ),
            (
                "ambient pod label",
                json!({"metadata": {"labels": {DATAPLANE_MODE_LABEL: "ambient"}}}),
                None,
                Sources::KUBE_AMBIENT,
            ),
            (
                "opt-out wins",
                json!({"metadata": {"annotations": {
                    SIDECAR_STATUS_ANNOTATION: "{}", ENABLED_ANNOTATION: "false"}}}),
                Some(&ambient),
                Sources::OPTED_OUT,
            ),
        ];
        for (what, extra, ns, want) in cases {
            let p = pod(app(&extra));
            assert_eq!(pod_sources(&p, ns), want, "{what}");
        }
    }

    #[test]
    fn addresses_and_snapshot() {
        let meshed = pod(app(
            &json!({"metadata": {"annotations": {SIDECAR_STATUS_ANNOTATION: "{}"}}}),
        ));
        assert_eq!(
            pod_ips(&meshed),
            vec![
                "10.244.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let host = pod(app(&json!({"spec": {"hostNetwork": true}})));
        assert!(pod_ips(&host).is_empty());
        let only_pod_ip = pod(json!({"metadata": {"name": "q"},
            "status": {"podIP": "10.244.0.9"}}));
        assert_eq!(
            pod_ips(&only_pod_ip),
            vec!["10.244.0.9".parse::<IpAddr>().unwrap()]
        );

        let in_ambient = pod(json!({"metadata": {"name": "a", "namespace": "mesh"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"podIPs": [{"ip": "10.244.0.6"}]}}));
        let done = pod(app(&json!({
            "metadata": {"annotations": {SIDECAR_STATUS_ANNOTATION: "{}"}},
            "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.244.0.7"}]}})));
        let plain = pod(json!({"metadata": {"name": "b"},
            "status": {"podIPs": [{"ip": "10.244.0.8"}]}}));
        let namespaces = [ns("mesh", &json!({DATAPLANE_MODE_LABEL: "ambient"}))];
        let snap = snapshot([&meshed, &in_ambient, &done, &plain], &namespaces);
        let mut got: Vec<(String, u32)> = snap.iter().map(|(a, b)| (a.to_string(), *b)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.244.0.5".into(), Sources::KUBE_ANNOTATION),
                ("10.244.0.6".into(), Sources::KUBE_AMBIENT),
                ("fd00::5".into(), Sources::KUBE_ANNOTATION),
            ]
        );
    }
}
