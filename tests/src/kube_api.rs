//! A small stand-in for the Kubernetes API server (no package here ships a real one), enough
//! for kube-rs's watcher: `GET /api/v1/nodes/NAME`, and list and watch of `/api/v1/pods` (with a
//! `spec.nodeName=` field selector) and `/api/v1/namespaces`.
//!
//! It speaks the protocol's essentials: lists carry a `resourceVersion`; watches replay the
//! events after the requested version, then stream new ones as chunked JSON lines, with
//! `BOOKMARK` events when asked for; a version older than the compacted history gets an `ERROR`
//! event with a 410 Gone `Status`; [`FakeApi::disconnect`] ends every open watch and
//! [`FakeApi::set_down`] makes it close every connection at once (the API being unreachable).
//! Plain HTTP on 127.0.0.1; every response closes its connection.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pod,
    Namespace,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// "namespace/name" -> pod; name -> namespace.
    pods: BTreeMap<String, Value>,
    namespaces: BTreeMap<String, Value>,
    nodes: Vec<String>,
    /// (resourceVersion, kind, event type, object).
    history: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    down: bool,
    /// Bumped to end every open watch.
    generation: u64,
    /// Request lines received ("GET /api/v1/pods?..."), for assertions.
    requests: Vec<String>,
}

pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    kubeconfig: PathBuf,
    accept: Option<thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Starts the server, listening on 127.0.0.1 of network namespace `netns` (where the
    /// controller runs), with the given node names; writes a kubeconfig pointing at it.
    pub fn start(netns: &str, nodes: &[&str]) -> FakeApi {
        let listener = crate::in_netns(netns, || {
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind the fake API server: {e}"))
        })
        .join()
        .expect("bind thread")
        .unwrap_or_else(|e| panic!("{netns}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new((
            Mutex::new(State {
                rv: 100,
                nodes: nodes.iter().map(ToString::to_string).collect(),
                ..State::default()
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = PathBuf::from(format!(
            "/tmp/xfp-kubeconfig-{}-{}.yaml",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&kubeconfig, kubeconfig_for(&format!("http://{addr}")))
            .expect("write kubeconfig");
        let (s, st) = (shared.clone(), stop.clone());
        let accept = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        thread::spawn(move || serve(conn, &s, &st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeApi {
            addr,
            shared,
            stop,
            kubeconfig,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file for this server (removed on drop).
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (m, cv) = &*self.shared;
        let r = f(&mut m.lock().expect("fake API lock"));
        cv.notify_all();
        r
    }

    fn record(st: &mut State, kind: Kind, ty: &'static str, mut obj: Value) -> Value {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.history.push((st.rv, kind, ty, obj.clone()));
        obj
    }

    /// Adds or replaces a pod (ADDED / MODIFIED).
    pub fn put_pod(&self, pod: Value) {
        self.with(|st| {
            let key = format!(
                "{}/{}",
                pod["metadata"]["namespace"].as_str().unwrap_or("default"),
                pod["metadata"]["name"].as_str().expect("pod name")
            );
            let ty = if st.pods.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let obj = Self::record(st, Kind::Pod, ty, pod);
            st.pods.insert(key, obj);
        });
    }

    /// Adds or replaces a namespace.
    pub fn put_namespace(&self, ns: Value) {
        self.with(|st| {
            let key = ns["metadata"]["name"]
                .as_str()
                .expect("namespace name")
                .to_string();
            let ty = if st.namespaces.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let obj = Self::record(st, Kind::Namespace, ty, ns);
            st.namespaces.insert(key, obj);
        });
    }

    /// Forgets the history (watches from before now get 410 Gone) and ends open watches.
    pub fn compact_and_disconnect(&self) {
        self.with(|st| {
            st.compacted = st.rv + 1;
            st.history.clear();
            st.generation += 1;
        });
    }

    /// Ends every open watch (clients resume from their last version).
    pub fn disconnect(&self) {
        self.with(|st| st.generation += 1);
    }

    /// Down: every connection is closed at once, open watches end.
    pub fn set_down(&self, down: bool) {
        self.with(|st| {
            st.down = down;
            st.generation += 1;
        });
    }

    /// The request lines received so far that contain `needle`.
    pub fn requests_with(&self, needle: &str) -> Vec<String> {
        self.with(|st| {
            st.requests
                .iter()
                .filter(|r| r.contains(needle))
                .cloned()
                .collect()
        })
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set_down(true);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n"
    )
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn chunk(conn: &mut TcpStream, v: &Value) -> bool {
    let line = format!("{v}\n");
    write!(conn, "{:x}\r\n{line}\r\n", line.len()).is_ok() && conn.flush().is_ok()
}

fn matches(kind: Kind, obj: &Value, node: Option<&str>) -> bool {
    kind == Kind::Namespace || node.is_none_or(|n| obj["spec"]["nodeName"] == n)
}

#[expect(
    clippy::too_many_lines,
    reason = "one request, read to the end of its answer"
)]
fn serve(mut conn: TcpStream, shared: &Arc<(Mutex<State>, Condvar)>, stop: &AtomicBool) {
    let (m, cv) = &**shared;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    {
        let mut st = m.lock().expect("lock");
        st.requests.push(format!("GET {}", decode(&target)));
        if st.down {
            return; // closes the connection without a response
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let q: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
        let known = m.lock().expect("lock").nodes.iter().any(|n| n == name);
        if known {
            respond(
                &mut conn,
                200,
                &json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}}),
            );
        } else {
            let msg = format!("nodes \"{name}\" not found");
            respond(&mut conn, 404, &status(404, "NotFound", &msg));
        }
        return;
    }
    let kind = match path {
        "/api/v1/pods" => Kind::Pod,
        "/api/v1/namespaces" => Kind::Namespace,
        _ => {
            respond(&mut conn, 404, &status(404, "NotFound", "no such path"));
            return;
        }
    };
    let node = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    if q.get("watch").map(String::as_str) != Some("true") {
        let st = m.lock().expect("lock");
        let items: Vec<&Value> = match kind {
            Kind::Pod => st.pods.values().collect::<Vec<_>>(),
            Kind::Namespace => st.namespaces.values().collect(),
        }
        .into_iter()
        .filter(|o| matches(kind, o, node.as_deref()))
        .collect();
        let list_kind = if kind == Kind::Pod {
            "PodList"
        } else {
            "NamespaceList"
        };
        respond(
            &mut conn,
            200,
            &json!({"kind": list_kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        );
        return;
    }

    // A watch.
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    let mut st = m.lock().expect("lock");
    if from < st.compacted {
        let gone = status(410, "Expired", "too old resource version");
        drop(st);
        chunk(&mut conn, &json!({"type": "ERROR", "object": gone}));
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    let generation = st.generation;
    let started = Instant::now();
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    loop {
        let events: Vec<Value> = st
            .history
            .iter()
            .filter(|(rv, k, _, o)| *rv > sent && *k == kind && matches(kind, o, node.as_deref()))
            .map(|(_, _, ty, o)| json!({"type": ty, "object": o}))
            .collect();
        sent = st.rv;
        let bookmark =
            (bookmarks && last_bookmark.elapsed() >= Duration::from_millis(500)).then(|| {
                let k = if kind == Kind::Pod {
                    "Pod"
                } else {
                    "Namespace"
                };
                json!({"type": "BOOKMARK", "object": {"kind": k, "apiVersion": "v1",
                   "metadata": {"resourceVersion": st.rv.to_string()}}})
            });
        drop(st);
        for e in &events {
            if !chunk(&mut conn, e) {
                return;
            }
        }
        if let Some(b) = bookmark {
            last_bookmark = Instant::now();
            if !chunk(&mut conn, &b) {
                return;
            }
        }
        st = m.lock().expect("lock");
        if st.generation != generation
            || st.down
            || stop.load(Ordering::Relaxed)
            || started.elapsed() >= timeout
        {
            drop(st);
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        st = cv
            .wait_timeout(st, Duration::from_millis(100))
            .expect("wait")
            .0;
    }
}
