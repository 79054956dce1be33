//! A fake Elasticsearch/OpenSearch HTTP server for tests.
//!
//! Hand-written HTTP/1.1 on `127.0.0.1:0` (keep-alive, `Content-Length`
//! bodies, gzip request bodies) following the documented contract:
//!
//! - `GET /`: version info of the chosen [`Flavor`] (ES sends
//!   `X-Elastic-Product: Elasticsearch`).
//! - `PUT /_index_template/{name}`, `PUT /_ilm/policy/{name}` (ES only),
//!   `GET`/`PUT /_plugins/_ism/policies/{name}` (OpenSearch only): recorded.
//! - `POST /_bulk` and `POST /{index}/_bulk`: NDJSON parsed; an index whose
//!   name matches a template with `data_stream` accepts only `create` and
//!   needs `@timestamp`, and values must fit the template's mapping (else
//!   item 400); `create` of an existing `_id` gives item 409
//!   `version_conflict_engine_exception`; documents are stored per index.
//!
//! Faults are switched on and off while it runs; [`FakeEs::wait_for_docs`]
//! and [`FakeEs::wait_for_requests`] let tests wait for progress without
//! sleeping.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest a `wait_for_*` call waits before failing the test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Which server the fake pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Elasticsearch 8.15.0.
    Elasticsearch8,
    /// Elasticsearch 7.10.2 (before the `X-Elastic-Product` header).
    Elasticsearch710,
    /// OpenSearch 2.17.0.
    OpenSearch2,
    /// Elasticsearch 6.8.23: unsupported.
    Elasticsearch6,
}

impl Flavor {
    fn is_opensearch(self) -> bool {
        self == Flavor::OpenSearch2
    }

    fn root(self) -> (Value, bool) {
        let es = |number: &str, header: bool| {
            (
                json!({
                    "name": "fake-node",
                    "cluster_name": "fake",
                    "cluster_uuid": "fake-uuid",
                    "version": {
                        "number": number,
                        "build_flavor": "default",
                        "build_type": "docker",
                        "lucene_version": "9.11.1",
                    },
                    "tagline": "You Know, for Search",
                }),
                header,
            )
        };
        match self {
            Flavor::Elasticsearch8 => es("8.15.0", true),
            Flavor::Elasticsearch710 => es("7.10.2", false),
            Flavor::Elasticsearch6 => es("6.8.23", false),
            Flavor::OpenSearch2 => (
                json!({
                    "name": "fake-node",
                    "cluster_name": "fake",
                    "version": {
                        "distribution": "opensearch",
                        "number": "2.17.0",
                        "lucene_version": "9.11.1",
                        "minimum_wire_compatibility_version": "7.10.0",
                    },
                    "tagline": "The OpenSearch Project: https://opensearch.org/",
                }),
                false,
            ),
        }
    }
}

/// One request as the fake received it (body decompressed).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    /// Body after gzip decoding.
    pub body: Vec<u8>,
    /// Body size on the wire.
    pub wire_len: usize,
    /// Whether the body came gzip-encoded.
    pub gzip: bool,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_bulk(&self) -> bool {
        self.path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/_bulk"))
    }
}

type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct Faults {
    /// Every bulk request is answered with this status.
    bulk_status: Option<u16>,
    /// The next requests (any kind) are answered with these statuses.
    fail_next: VecDeque<u16>,
    /// Bulk bodies (decoded) over this many bytes get 413.
    max_body: Option<usize>,
    /// Documents matching the predicate get this item status.
    item_failures: Vec<(Predicate, u16)>,
    /// The first `create` of each id gets this item status.
    first_attempt_status: Option<u16>,
    /// Answers wait this long.
    delay: Option<Duration>,
    /// The next N requests get their connection closed without an answer.
    reset_next: usize,
    /// `Authorization` header every request must carry.
    required_auth: Option<String>,
    /// Bulk answers lose their last item (a broken proxy).
    drop_last_item: bool,
}

struct State {
    flavor: Flavor,
    faults: Faults,
    templates: BTreeMap<String, Value>,
    template_puts: usize,
    ilm: BTreeMap<String, Value>,
    ism: BTreeMap<String, Value>,
    indices: BTreeMap<String, BTreeMap<String, Value>>,
    attempts: HashMap<String, usize>,
    log: Vec<Recorded>,
    next_auto_id: u64,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    stored: watch::Sender<usize>,
    requests: watch::Sender<usize>,
    down: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake server; stops when dropped.
pub struct FakeEs {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FakeEs {
    /// Starts a fake on a free port of 127.0.0.1.
    pub async fn start(flavor: Flavor) -> FakeEs {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake ES");
        let addr = listener.local_addr().expect("fake ES address");
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State {
                flavor,
                faults: Faults::default(),
                templates: BTreeMap::new(),
                template_puts: 0,
                ilm: BTreeMap::new(),
                ism: BTreeMap::new(),
                indices: BTreeMap::new(),
                attempts: HashMap::new(),
                log: Vec::new(),
                next_auto_id: 0,
            }),
            stored: watch::Sender::new(0),
            requests: watch::Sender::new(0),
            down: watch::Sender::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeEs {
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn set_flavor(&self, flavor: Flavor) {
        self.shared.state().flavor = flavor;
    }

    /// Requests without exactly this `Authorization` header get 401.
    pub fn require_authorization(&self, value: Option<&str>) {
        self.shared.state().faults.required_auth = value.map(str::to_owned);
    }

    /// Every bulk request is answered with `status` (None: normal service).
    pub fn set_bulk_status(&self, status: Option<u16>) {
        self.shared.state().faults.bulk_status = status;
    }

    /// The next `k` requests of any kind are answered with `status`.
    pub fn fail_next(&self, k: usize, status: u16) {
        let mut s = self.shared.state();
        s.faults.fail_next.extend(std::iter::repeat_n(status, k));
    }

    /// Bulk bodies larger than `bytes` (decoded) get 413.
    pub fn set_max_body(&self, bytes: Option<usize>) {
        self.shared.state().faults.max_body = bytes;
    }

    /// Documents for which `pred` holds get item status `status`.
    pub fn fail_items_where(
        &self,
        status: u16,
        pred: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) {
        self.shared
            .state()
            .faults
            .item_failures
            .push((Arc::new(pred), status));
    }

    pub fn clear_item_failures(&self) {
        self.shared.state().faults.item_failures.clear();
    }

    /// The first `create` attempt of each id gets item status `status`.
    pub fn set_first_attempt_status(&self, status: Option<u16>) {
        self.shared.state().faults.first_attempt_status = status;
    }

    /// Bulk answers lose their last item.
    pub fn set_drop_last_item(&self, on: bool) {
        self.shared.state().faults.drop_last_item = on;
    }

    /// Every answer is delayed by `delay`.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.state().faults.delay = delay;
    }

    /// The next `k` requests get their connection closed without an answer.
    pub fn reset_next(&self, k: usize) {
        self.shared.state().faults.reset_next = k;
    }

    /// Down: the port refuses connections and open connections are closed.
    /// Up again: the same port accepts again.
    pub async fn set_down(&self, down: bool) {
        if down {
            self.shared.down.send_replace(true);
            let handle = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                let _ = h.await;
            }
        } else {
            if !*self.shared.down.borrow() {
                return;
            }
            let listener = TcpListener::bind(self.shared.addr)
                .await
                .expect("rebind fake ES on its port");
            self.shared.down.send_replace(false);
            let h = tokio::spawn(accept_loop(listener, self.shared.clone()));
            *self.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
    }

    /// Stores a document as if indexed earlier.
    pub fn insert_doc(&self, index: &str, id: &str, doc: Value) {
        let total = {
            let mut s = self.shared.state();
            s.indices
                .entry(index.to_owned())
                .or_default()
                .insert(id.to_owned(), doc);
            s.indices.values().map(BTreeMap::len).sum()
        };
        self.shared.stored.send_replace(total);
    }

    /// Documents of `index` by id.
    pub fn docs(&self, index: &str) -> BTreeMap<String, Value> {
        self.shared
            .state()
            .indices
            .get(index)
            .cloned()
            .unwrap_or_default()
    }

    /// Documents stored in every index.
    pub fn doc_count(&self) -> usize {
        *self.shared.stored.borrow()
    }

    /// Waits until at least `n` documents are stored (fails the test after
    /// [`WAIT_LIMIT`]).
    pub async fn wait_for_docs(&self, n: usize) {
        let mut rx = self.shared.stored.subscribe();
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("fake ES: fewer than {n} documents stored in time"))
            .expect("fake ES stopped");
    }

    /// Requests received so far (including those answered by a fault).
    pub fn request_count(&self) -> usize {
        *self.shared.requests.borrow()
    }

    /// Waits until at least `n` requests were received.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.shared.requests.subscribe();
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("fake ES: fewer than {n} requests received in time"))
            .expect("fake ES stopped");
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().log.clone()
    }

    pub fn bulk_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_bulk)
            .collect()
    }

    pub fn templates(&self) -> BTreeMap<String, Value> {
        self.shared.state().templates.clone()
    }

    /// `PUT _index_template` requests accepted.
    pub fn template_puts(&self) -> usize {
        self.shared.state().template_puts
    }

    pub fn ilm_policies(&self) -> BTreeMap<String, Value> {
        self.shared.state().ilm.clone()
    }

    pub fn ism_policies(&self) -> BTreeMap<String, Value> {
        self.shared.state().ism.clone()
    }
}

impl Drop for FakeEs {
    fn drop(&mut self) {
        self.shared.down.send_replace(true);
        if let Some(h) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut down = shared.down.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = down.wait_for(|d| *d) => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream, shared.clone()));
                }
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `None` at a clean end of the connection or on garbage.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().ok())
        .unwrap_or(Some(0))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn json(status: u16, v: Value) -> Answer {
        Answer {
            status,
            body: v.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, ty: &str, reason: &str) -> Answer {
        Answer::json(
            status,
            json!({"error": {"root_cause": [{"type": ty, "reason": reason}], "type": ty, "reason": reason}, "status": status}),
        )
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut down = shared.down.subscribe();
    let mut reader = BufReader::new(stream);
    loop {
        let req = tokio::select! {
            biased;
            _ = down.wait_for(|d| *d) => return,
            r = read_request(&mut reader) => match r {
                Some(r) => r,
                None => return,
            },
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let Some((answer, delay)) = respond(&shared, req) else {
            // Connection reset: close without answering.
            return;
        };
        if let Some(d) = delay {
            tokio::select! {
                biased;
                _ = down.wait_for(|d| *d) => return,
                _ = tokio::time::sleep(d) => {}
            }
        }
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            answer.status,
            reason_phrase(answer.status),
            answer.body.len()
        );
        for (k, v) in &answer.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        // One write: head and body in separate segments would meet Nagle's
        // algorithm and delayed ACKs (40 ms per request).
        let mut out = head.into_bytes();
        out.extend_from_slice(&answer.body);
        let stream = reader.get_mut();
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() || close {
            return;
        }
    }
}

/// Records the request, applies faults, routes it. `None`: reset the
/// connection.
fn respond(shared: &Shared, req: Request) -> Option<(Answer, Option<Duration>)> {
    let gzip = req
        .header("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let wire_len = req.body.len();
    let body = if gzip {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&req.body[..]).read_to_end(&mut out) {
            Ok(_) => Some(out),
            Err(_) => None,
        }
    } else {
        Some(req.body.clone())
    };
    let mut s = shared.state();
    s.log.push(Recorded {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body: body.clone().unwrap_or_default(),
        wire_len,
        gzip,
    });
    let count = s.log.len();
    shared.requests.send_replace(count);
    if s.faults.reset_next > 0 {
        s.faults.reset_next -= 1;
        return None;
    }
    let delay = s.faults.delay;
    if let Some(status) = s.faults.fail_next.pop_front() {
        return Some((fault_answer(status), delay));
    }
    if let Some(required) = &s.faults.required_auth {
        if req.header("authorization") != Some(required.as_str()) {
            let mut a = Answer::error(
                401,
                "security_exception",
                "unable to authenticate user [x] for REST request [/_bulk]",
            );
            a.headers.push((
                "www-authenticate".into(),
                "Basic realm=\"security\" charset=\"UTF-8\"".into(),
            ));
            return Some((a, delay));
        }
    }
    let Some(body) = body else {
        return Some((
            Answer::error(400, "parse_exception", "cannot decompress the body"),
            delay,
        ));
    };
    let path = req.path.split('?').next().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let opensearch = s.flavor.is_opensearch();
    let answer = match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => {
            let (root, header) = s.flavor.root();
            let mut a = Answer::json(200, root);
            if header {
                a.headers
                    .push(("x-elastic-product".into(), "Elasticsearch".into()));
            }
            a
        }
        ("PUT", ["_index_template", name]) => match serde_json::from_slice::<Value>(&body) {
            Ok(t) if t.get("index_patterns").is_some() => {
                s.templates.insert((*name).to_owned(), t);
                s.template_puts += 1;
                Answer::json(200, json!({"acknowledged": true}))
            }
            _ => Answer::error(400, "parse_exception", "bad index template"),
        },
        ("PUT", ["_ilm", "policy", name]) if !opensearch => {
            match serde_json::from_slice::<Value>(&body) {
                Ok(p) if p.pointer("/policy/phases").is_some() => {
                    s.ilm.insert((*name).to_owned(), p);
                    Answer::json(200, json!({"acknowledged": true}))
                }
                _ => Answer::error(400, "parse_exception", "bad ILM policy"),
            }
        }
        ("GET", ["_plugins", "_ism", "policies", name]) if opensearch => match s.ism.get(*name) {
            Some(p) => Answer::json(200, json!({"_id": name, "policy": p["policy"]})),
            None => Answer::error(404, "status_exception", "Policy not found"),
        },
        ("PUT", ["_plugins", "_ism", "policies", name]) if opensearch => {
            if s.ism.contains_key(*name) {
                Answer::error(
                    409,
                    "version_conflict_engine_exception",
                    "policy already exists",
                )
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(p) if p.pointer("/policy/states").is_some() => {
                        s.ism.insert((*name).to_owned(), p);
                        Answer::json(201, json!({"_id": name, "_version": 1}))
                    }
                    _ => Answer::error(400, "parse_exception", "bad ISM policy"),
                }
            }
        }
        ("POST" | "PUT", ["_bulk"]) => bulk(shared, &mut s, None, &body),
        ("POST" | "PUT", [index, "_bulk"]) => bulk(shared, &mut s, Some(index), &body),
        (m, _) => Answer::error(
            400,
            "illegal_argument_exception",
            &format!("no handler found for uri [{path}] and method [{m}]"),
        ),
    };
    Some((answer, delay))
}

fn fault_answer(status: u16) -> Answer {
    match status {
        413 => Answer {
            status,
            body: Vec::new(),
            headers: Vec::new(),
        },
        429 => Answer::error(
            429,
            "circuit_breaking_exception",
            "[parent] Data too large, data for [<http_request>] would be larger than limit",
        ),
        401 => Answer::error(401, "security_exception", "unable to authenticate user"),
        403 => Answer::error(
            403,
            "security_exception",
            "action [indices:data/write/bulk] is unauthorized",
        ),
        s => Answer::error(s, "fake_fault", &format!("injected HTTP {s}")),
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && pattern_matches(tail, &rest[i..]))
        }
    }
}

/// The highest-priority template matching `index`.
fn template_for<'a>(s: &'a State, index: &str) -> Option<&'a Value> {
    s.templates
        .values()
        .filter(|t| {
            t["index_patterns"].as_array().is_some_and(|ps| {
                ps.iter()
                    .filter_map(Value::as_str)
                    .any(|p| pattern_matches(p, index))
            })
        })
        .max_by_key(|t| t["priority"].as_i64().unwrap_or(0))
}

/// First value that does not fit the mapping: (field, type).
fn mapping_error(
    props: &Value,
    doc: &Map<String, Value>,
    prefix: &str,
) -> Option<(String, String)> {
    for (k, v) in doc {
        let field = format!("{prefix}{k}");
        let Some(m) = props.get(k) else { continue };
        if let Some(sub) = m.get("properties") {
            match v {
                Value::Object(o) => {
                    if let Some(e) = mapping_error(sub, o, &format!("{field}.")) {
                        return Some(e);
                    }
                }
                Value::Null => {}
                _ => return Some((field, "object".into())),
            }
            continue;
        }
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("object");
        let values: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let ok = match ty {
                "long" | "integer" | "short" | "float" | "double" | "scaled_float" => match v {
                    Value::Number(_) | Value::Null => true,
                    Value::String(s) => s.parse::<f64>().is_ok(),
                    _ => false,
                },
                "ip" => match v {
                    Value::String(s) => s.parse::<std::net::IpAddr>().is_ok(),
                    Value::Null => true,
                    _ => false,
                },
                "date_range" => v.is_object(),
                "date" => v.is_string() || v.is_number(),
                "keyword" | "text" | "match_only_text" | "wildcard" => !v.is_object(),
                _ => true,
            };
            if !ok {
                return Some((field, ty.to_owned()));
            }
        }
    }
    None
}

fn item_error(status: u16, ty: &str, reason: &str) -> Value {
    json!({"type": ty, "reason": reason, "status": status})
}

fn bulk(shared: &Shared, s: &mut State, path_index: Option<&str>, body: &[u8]) -> Answer {
    if let Some(status) = s.faults.bulk_status {
        return fault_answer(status);
    }
    if s.faults.max_body.is_some_and(|max| body.len() > max) {
        return fault_answer(413);
    }
    if !body.ends_with(b"\n") {
        return Answer::error(
            400,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Answer::error(400, "parse_exception", "body is not UTF-8");
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action_line) = lines.next() {
        let Ok(Value::Object(action)) = serde_json::from_str::<Value>(action_line) else {
            return Answer::error(400, "x_content_parse_exception", "malformed action line");
        };
        let Some((op, meta)) = action.into_iter().next() else {
            return Answer::error(400, "illegal_argument_exception", "empty action");
        };
        let source = if op == "delete" {
            None
        } else {
            match lines.next().map(serde_json::from_str::<Value>) {
                Some(Ok(v)) => Some(v),
                _ => {
                    return Answer::error(400, "x_content_parse_exception", "malformed source line")
                }
            }
        };
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(path_index)
            .unwrap_or("")
            .to_owned();
        let id = match meta.get("_id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                s.next_auto_id += 1;
                format!("auto-{}", s.next_auto_id)
            }
        };
        let (status, error) = bulk_item(s, &op, &index, &id, source);
        errors |= status >= 300;
        let shown_index = match template_for(s, &index) {
            Some(t) if t.get("data_stream").is_some() => format!(".ds-{index}-2026.11.25-000001"),
            _ => index.clone(),
        };
        let mut item = json!({"_index": shown_index, "_id": id, "status": status});
        match error {
            Some(e) => item["error"] = e,
            None => {
                item["result"] = json!("created");
                item["_version"] = json!(1);
            }
        }
        items.push(json!({ op: item }));
    }
    if s.faults.drop_last_item {
        items.pop();
    }
    let total: usize = s.indices.values().map(BTreeMap::len).sum();
    shared.stored.send_replace(total);
    Answer::json(200, json!({"took": 3, "errors": errors, "items": items}))
}

fn bulk_item(
    s: &mut State,
    op: &str,
    index: &str,
    id: &str,
    source: Option<Value>,
) -> (u16, Option<Value>) {
    if index.is_empty() {
        return (
            400,
            Some(item_error(
                400,
                "action_request_validation_exception",
                "index is missing",
            )),
        );
    }
    let attempt = {
        let a = s.attempts.entry(id.to_owned()).or_insert(0);
        *a += 1;
        *a
    };
    let template = template_for(s, index).cloned();
    let data_stream = template
        .as_ref()
        .is_some_and(|t| t.get("data_stream").is_some());
    if data_stream && op != "create" {
        return (
            400,
            Some(item_error(
                400,
                "illegal_argument_exception",
                "only write ops with an op_type of create are allowed in data streams",
            )),
        );
    }
    if !matches!(op, "create" | "index") {
        return (
            400,
            Some(item_error(
                400,
                "illegal_argument_exception",
                &format!("fake ES does not do [{op}]"),
            )),
        );
    }
    let Some(Value::Object(doc)) = source else {
        return (
            400,
            Some(item_error(
                400,
                "mapper_parsing_exception",
                "source is not an object",
            )),
        );
    };
    if attempt == 1 {
        if let Some(status) = s.faults.first_attempt_status {
            return (
                status,
                Some(item_error(
                    status,
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation",
                )),
            );
        }
    }
    let as_value = Value::Object(doc);
    if let Some((_, status)) = s.faults.item_failures.iter().find(|(p, _)| p(&as_value)) {
        let status = *status;
        return (
            status,
            Some(item_error(
                status,
                "mapper_parsing_exception",
                "injected item failure",
            )),
        );
    }
    let Value::Object(doc) = as_value else {
        return (500, None);
    };
    if data_stream && !doc.contains_key("@timestamp") {
        return (
            400,
            Some(item_error(
                400,
                "illegal_argument_exception",
                "data stream timestamp field [@timestamp] is missing",
            )),
        );
    }
    if let Some(props) = template
        .as_ref()
        .and_then(|t| t.pointer("/template/mappings/properties"))
    {
        if let Some((field, ty)) = mapping_error(props, &doc, "") {
            return (
                400,
                Some(item_error(
                    400,
                    "document_parsing_exception",
                    &format!("[1:2] failed to parse field [{field}] of type [{ty}] in document with id '{id}'"),
                )),
            );
        }
    }
    let stored = s.indices.entry(index.to_owned()).or_default();
    if op == "create" && stored.contains_key(id) {
        return (
            409,
            Some(item_error(
                409,
                "version_conflict_engine_exception",
                &format!("[{id}]: version conflict, document already exists (current version [1])"),
            )),
        );
    }
    stored.insert(id.to_owned(), Value::Object(doc));
    (201, None)
}
