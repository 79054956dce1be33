//! A minimal Elasticsearch 8 stand-in for benchmarks
//! (`packaging/bench/indexer-vs-broker.sh`): answers `GET /` like
//! Elasticsearch 8.15, acknowledges every `PUT` (templates, policies), and
//! answers `_bulk` with every `create` item stored (201, or 409 for an id it
//! already has). `GET /_count` gives the number of documents stored and
//! `last`, the time (Unix seconds) the count last grew, so that a benchmark
//! can poll it cheaply and still time the last document exactly.
//!
//! It keeps only ids and reads only the action lines, and it is compiled:
//! on a machine whose cores the indexer shares with the broker and the
//! publishers, the stand-in's own CPU (shown by the benchmark) is taken from
//! them, while a real Elasticsearch runs elsewhere. The contract tests use
//! the complete fake in `tests/common/fake_es.rs`.
//!
//! Usage: cargo run --release --example es_standin -- PORT

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;

/// Largest request body taken (bytes): far above the indexer's bulk size.
const MAX_BODY: usize = 256 << 20;

const ROOT: &str = r#"{"name":"standin","cluster_name":"bench","cluster_uuid":"bench","version":{"number":"8.15.0","build_flavor":"default"},"tagline":"You Know, for Search"}"#;

#[derive(Default)]
struct Store {
    ids: HashSet<Vec<u8>>,
    /// When `ids` last grew (Unix seconds).
    last: f64,
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn main() -> io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("usage: es_standin PORT"))?;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let store = Arc::new(Mutex::new(Store::default()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let store = store.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, &store) {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("es_standin: {e}");
                }
            }
        });
    }
    Ok(())
}

/// Answers the requests of one keep-alive connection until it closes.
fn serve(conn: TcpStream, store: &Mutex<Store>) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut input = BufReader::new(conn);
    while let Some(req) = read_request(&mut input)? {
        let (status, body) = match (req.method.as_str(), req.path.as_str()) {
            ("GET", p) if p.starts_with("/_count") => {
                let s = lock(store);
                (
                    200,
                    format!(r#"{{"count":{},"last":{:.6}}}"#, s.ids.len(), s.last).into_bytes(),
                )
            }
            ("GET", _) => (200, ROOT.as_bytes().to_vec()),
            ("POST", p) if p.contains("_bulk") => bulk(&req.body, store),
            _ => (200, br#"{"acknowledged":true}"#.to_vec()),
        };
        let head = format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nX-Elastic-Product: Elasticsearch\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        out.write_all(&[head.as_bytes(), &body].concat())?;
    }
    Ok(())
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// `None` when the connection closed between requests.
fn read_request(input: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let (mut length, mut gzip) = (0usize, false);
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| io::Error::other("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("content-encoding") {
            gzip = value.eq_ignore_ascii_case("gzip");
        }
    }
    if length > MAX_BODY {
        return Err(io::Error::other("body too large"));
    }
    let mut body = vec![0; length];
    input.read_exact(&mut body)?;
    if gzip {
        let mut plain = Vec::with_capacity(length * 8);
        GzDecoder::new(&body[..]).read_to_end(&mut plain)?;
        body = plain;
    }
    Ok(Some(Request { method, path, body }))
}

/// Every `create` item stored: 201, or 409 for an id seen before. Action
/// lines alternate with sources, which are not looked at.
fn bulk(body: &[u8], store: &Mutex<Store>) -> (u16, Vec<u8>) {
    let mut items = Vec::with_capacity(body.len() / 4);
    items.extend_from_slice(br#"{"took":1,"errors":false,"items":["#);
    let mut s = lock(store);
    let before = s.ids.len();
    // Lines found with memchr: splitting byte by byte was most of the
    // stand-in's own CPU, taken from the cores it shares in a benchmark.
    let mut start = 0;
    let lines = memchr::memchr_iter(b'\n', body)
        .chain(std::iter::once(body.len()))
        .filter_map(|end| {
            let line = body.get(start..end);
            start = end + 1;
            line.filter(|l| !l.is_empty())
        });
    for (n, action) in lines.step_by(2).enumerate() {
        let (Some(index), Some(id)) = (
            field(action, b"\"_index\":\""),
            field(action, b"\"_id\":\""),
        ) else {
            return (
                400,
                br#"{"error":"action line without _index and _id"}"#.to_vec(),
            );
        };
        let status = if s.ids.insert(id.to_vec()) { 201 } else { 409 };
        if n > 0 {
            items.push(b',');
        }
        items.extend_from_slice(br#"{"create":{"_index":""#);
        items.extend_from_slice(index);
        items.extend_from_slice(br#"","_id":""#);
        items.extend_from_slice(id);
        items.extend_from_slice(format!(r#"","status":{status}}}}}"#).as_bytes());
    }
    if s.ids.len() > before {
        s.last = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
    }
    items.extend_from_slice(b"]}");
    (200, items)
}

/// The string value after `key` (which ends with its opening quote); JSON
/// escapes are not decoded: the indexer's names and ids have none.
fn field<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = memchr::memmem::find(line, key)? + key.len();
    let rest = line.get(start..)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}
