//! Hostile input (issue 14): every malformed request gets a precise 4xx at the edge and the
//! daemon keeps serving. First the regressions found by the 724-case run against the demo, one
//! test each; then [`hostile_suite_every_case_answers_precisely`], a table-driven suite of
//! several hundred cases across every route against one daemon, each checked for its status, its
//! RFC 7644 §3.12 error body (with `scimType` where the RFC defines one) and followed by an
//! authenticated request that must still be served.

use crate::harness::daemon::{assert_scim_error, Backend, Resp, TestDaemon};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

fn user(name: &str) -> Value {
    json!({"schemas": [USER_SCHEMA], "userName": name, "name": {"givenName": "G", "familyName": "F"}})
}

fn group(name: &str) -> Value {
    json!({"schemas": [GROUP_SCHEMA], "displayName": name, "members": []})
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A request with raw header values (bytes a `&str` cannot hold).
async fn send_raw_headers(
    t: &TestDaemon,
    method: Method,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Option<&Value>,
) -> Resp {
    let mut req = t
        .client
        .request(method, format!("{}{}", t.base, path))
        .bearer_auth(&t.token);
    for (k, v) in headers {
        req = req.header(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(serde_json::to_vec(b).unwrap());
    }
    TestDaemon::finish(req.send().await.unwrap()).await
}

/// Write `request` on a fresh connection and read until the server closes it or `wait` passes.
/// Returns the status of the first response (if any), everything read, whether it closed, and
/// how long the answer took.
async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> (Option<u16>, String, bool, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    let mut first = None;
    while let Some(left) = wait.checked_sub(start.elapsed()) {
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                first.get_or_insert_with(|| start.elapsed());
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (
        status,
        text,
        closed,
        first.unwrap_or_else(|| start.elapsed()),
    )
}

async fn create_user(t: &TestDaemon, name: &str) -> String {
    let r = t.post("/Users", &user(name)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

async fn create_group(t: &TestDaemon, name: &str) -> String {
    let r = t.post("/Groups", &group(name)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// Regressions (issue 14's list), each failing on the code before its fix.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unreadable_if_match_is_412_and_never_acts() {
    let t = TestDaemon::start().await;
    let uid = create_user(&t, "ifmatch@x").await;
    let gid = create_group(&t, "IfMatch").await;
    let bad: [&[u8]; 3] = [b"\xff\xfe", "W/\"1\"\u{e9}".as_bytes(), b"\x80"];
    for value in bad {
        for (endpoint, id, body) in [
            ("Users", &uid, user("ifmatch-renamed@x")),
            ("Groups", &gid, group("IfMatchRenamed")),
        ] {
            let path = format!("/{endpoint}/{id}");
            let patch = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "externalId", "value": "changed"}]});
            for (method, body) in [
                (Method::DELETE, None),
                (Method::PUT, Some(&body)),
                (Method::PATCH, Some(&patch)),
            ] {
                let r =
                    send_raw_headers(&t, method.clone(), &path, &[("if-match", value)], body).await;
                assert_scim_error(&r, 412, None);
                let now = t.get(&path).await;
                assert_eq!(now.status, StatusCode::OK, "{method} {path} acted");
                assert_eq!(
                    now.headers["etag"], "W/\"1\"",
                    "{method} {path} changed the resource"
                );
            }
        }
    }
    // A readable If-Match still works, as a list too.
    let r = send_raw_headers(
        &t,
        Method::DELETE,
        &format!("/Users/{uid}"),
        &[("if-match", b"W/\"1\", W/\"1\"")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn search_body_with_wrong_types_or_unknown_members_is_invalid_value() {
    let t = TestDaemon::start().await;
    create_user(&t, "search@x").await;
    let cases = [
        json!({"schemas": [SEARCH_SCHEMA], "filter": {"userName": "x"}}),
        json!({"schemas": [SEARCH_SCHEMA], "filter": true}),
        json!({"schemas": [SEARCH_SCHEMA], "filter": 5}),
        json!({"schemas": [SEARCH_SCHEMA], "startIndex": "abc"}),
        json!({"schemas": [SEARCH_SCHEMA], "startIndex": true}),
        json!({"schemas": [SEARCH_SCHEMA], "count": {"n": 1}}),
        json!({"schemas": [SEARCH_SCHEMA], "count": 1.5}),
        json!({"schemas": [SEARCH_SCHEMA], "attributes": 7}),
        json!({"schemas": [SEARCH_SCHEMA], "sortOrder": ["a"]}),
        json!({"schemas": "nope"}),
        json!({"schemas": [SEARCH_SCHEMA], "filterx": "userName pr"}),
    ];
    for endpoint in ["Users", "Groups"] {
        for body in &cases {
            let r = t.post(&format!("/{endpoint}/.search"), body).await;
            assert_scim_error(&r, 400, Some("invalidValue"));
        }
    }
    let ok = t
        .post(
            "/Users/.search",
            &json!({"schemas": [SEARCH_SCHEMA], "filter": "userName eq \"search@x\"", "startIndex": 1, "count": 10, "attributes": ["userName"]}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["totalResults"], 1);
}

#[tokio::test]
async fn stalled_bodies_are_answered_408_long_before_the_request_deadline() {
    let t = TestDaemon::start_full(Backend::Sqlite, "body_timeout_secs = 1\n", "").await;
    let addr = t.d().scim_addr;
    let auth = format!("Authorization: Bearer {}\r\n", t.token);
    let short = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/scim+json\r\nContent-Length: 1000\r\n\r\n{{\"userName\""
    );
    let chunked = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/scim+json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"use\r\n"
    );
    for request in [short, chunked] {
        let (status, text, closed, took) =
            raw_exchange(addr, request.as_bytes(), Duration::from_secs(8)).await;
        assert_eq!(status, Some(408), "{text}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert!(text.contains("urn:ietf:params:scim:api:messages:2.0:Error"));
        assert!(closed, "the connection must be closed after a stalled body");
    }
    assert_eq!(t.get("/Users").await.status, StatusCode::OK);
}

#[tokio::test]
async fn http11_without_host_or_with_two_hosts_is_400() {
    let t = TestDaemon::start().await;
    let addr = t.d().scim_addr;
    let auth = format!("Authorization: Bearer {}\r\n", t.token);
    for request in [
        format!("GET /scim/v2/Users HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"),
        format!(
            "GET /scim/v2/Users HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}Connection: close\r\n\r\n"
        ),
        format!("GET /scim/v2/Users HTTP/1.0\r\nHost: a\r\nHost: b\r\n{auth}\r\n"),
    ] {
        let (status, text, _, _) =
            raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status, Some(400), "{request:?} -> {text}");
        assert!(text.contains("urn:ietf:params:scim:api:messages:2.0:Error"));
    }
    let ok = format!("GET /scim/v2/Users HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
    let (status, text, _, _) = raw_exchange(addr, ok.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, Some(200), "{text}");
    // HTTP/1.0 may omit Host.
    let old = format!("GET /scim/v2/Users HTTP/1.0\r\n{auth}\r\n");
    let (status, _, _, _) = raw_exchange(addr, old.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn discovery_paths_below_a_resource_are_404() {
    let t = TestDaemon::start().await;
    for path in [
        "/Schemas/a/b/c",
        "/Schemas/a/b",
        "/ResourceTypes/User/extra",
        "/ServiceProviderConfig/x/y",
    ] {
        assert_scim_error(&t.get(path).await, 404, None);
        assert_scim_error(&t.call(Method::POST, path, None).await, 404, None);
    }
    assert_scim_error(&t.call(Method::POST, "/Schemas", None).await, 405, None);
}

#[tokio::test]
async fn admin_listener_refuses_wrong_methods_cuts_slow_loris_and_caps_connections() {
    let t = TestDaemon::start_full(Backend::Sqlite, "header_timeout_secs = 1\n", "").await;
    // The generated config has no admin.max_connections; the default cap is checked by
    // `http::server` unit tests, the 405s and the timeouts here.
    let admin = t.d().admin_addr.unwrap();
    let client = reqwest::Client::new();
    for (method, path) in [
        (Method::DELETE, "/healthz"),
        (Method::POST, "/metrics"),
        (Method::PUT, "/readyz"),
        (Method::PATCH, "/healthz"),
    ] {
        let r = client
            .request(method.clone(), format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }
    let r = client
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Slow-loris: half a request line, then nothing; and a silent socket.
    for request in [&b"GET /healthz HTTP/1.1\r\nHost:"[..], &b""[..]] {
        let (_, _, closed, took) = raw_exchange(admin, request, Duration::from_secs(6)).await;
        assert!(closed, "admin kept a stalled connection open for {took:?}");
        assert!(took < Duration::from_secs(4), "cut after {took:?}");
    }
}

#[tokio::test]
async fn admin_listener_caps_its_connections() {
    let t = TestDaemon::start_full(Backend::Sqlite, "header_timeout_secs = 30\n", "").await;
    let cfg = std::fs::read_to_string(&t.config_path).unwrap();
    assert!(!cfg.contains("max_connections"));
    let admin = t.d().admin_addr.unwrap();
    // The default cap is 64: hold 64 silent sockets, the 65th is closed at once.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, closed, took) = raw_exchange(admin, b"", Duration::from_secs(3)).await;
    assert!(
        closed && took < Duration::from_secs(2),
        "not refused: {took:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn attribute_values_over_the_limit_are_400_naming_the_attribute() {
    // The default limit (scim.max_value_bytes = 8192).
    let t = TestDaemon::start().await;
    let long = "x".repeat(8193);
    let uid = create_user(&t, "sizes@x").await;
    let gid = create_group(&t, "Sizes").await;
    let mut u = user(&long);
    let cases: Vec<(Method, String, Value, &str)> = vec![
        (Method::POST, "/Users".into(), u.clone(), "userName"),
        (Method::PUT, format!("/Users/{uid}"), u.clone(), "userName"),
        (
            Method::POST,
            "/Users".into(),
            {
                u["userName"] = json!("ok@x");
                u["emails"] = json!([{"value": long, "primary": true}]);
                u.clone()
            },
            "emails.value",
        ),
        (
            Method::POST,
            "/Users".into(),
            json!({"userName": "ok2@x", ENTERPRISE: {"department": long}}),
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User.department",
        ),
        (
            Method::PATCH,
            format!("/Users/{uid}"),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "displayName", "value": long}]}),
            "displayName",
        ),
        (
            Method::PATCH,
            format!("/Users/{uid}"),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"name": {"givenName": long}}}]}),
            "name.givenName",
        ),
        (Method::POST, "/Groups".into(), group(&long), "displayName"),
        (
            Method::PATCH,
            format!("/Groups/{gid}"),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "displayName", "value": long}]}),
            "displayName",
        ),
    ];
    for (method, path, body, attr) in cases {
        let r = t.call(method.clone(), &path, Some(&body)).await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{attr} is longer")),
            "{method} {path}: {detail}"
        );
        assert!(detail.len() < 300, "the detail must not echo the value");
    }
    // At the limit is fine.
    let r = t.post("/Users", &user(&"y".repeat(8192))).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn silent_and_preface_only_sockets_are_cut_and_an_authenticated_get_still_works() {
    let t = TestDaemon::start_full(
        Backend::Sqlite,
        "max_connections = 8\nheader_timeout_secs = 1\n",
        "",
    )
    .await;
    let addr = t.d().scim_addr;
    // Eight sockets take every permit: four say nothing, two send half an HTTP/2 preface (the
    // version sniff waits for more), two a whole preface and nothing after it.
    let mut held = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match i % 4 {
            0 | 1 => {}
            2 => s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(),
            _ => s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap(),
        }
        held.push(s);
    }
    // More silent sockets are refused while the permits are held (and logged rate-limited).
    for _ in 0..50 {
        let _ = TcpStream::connect(addr).await.unwrap();
    }
    // Each held socket is closed by the daemon within the first-bytes / idle limits.
    let start = Instant::now();
    for mut s in held {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue, // HTTP/2 SETTINGS or GOAWAY frames
                Err(_) => panic!("a silent socket was still open after {:?}", start.elapsed()),
            }
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    let r = t.get("/Users").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A served HTTP/1.1 keep-alive connection is closed when idle too (header timeout).
    let auth = format!("Authorization: Bearer {}\r\n", t.token);
    let req = format!("GET /scim/v2/Users HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let (status, _, closed, _) = raw_exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, Some(200));
    assert!(closed, "an idle keep-alive connection must be closed");
}

#[tokio::test]
async fn http2_connections_are_served_and_closed_when_idle() {
    let t = TestDaemon::start_full(
        Backend::Sqlite,
        "header_timeout_secs = 1\nidle_timeout_secs = 1\n",
        "",
    )
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/Users", t.base))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // After the idle timeout the daemon has sent GOAWAY; the client reconnects transparently.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = client
        .get(format!("{}/Users", t.base))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The table-driven suite.
// ---------------------------------------------------------------------------------------------

/// What a case must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A SCIM error body with this status and exactly this `scimType` (None: no scimType).
    Error(u16, Option<&'static str>),
    /// A success with this status (hostile-looking but valid input).
    Status(u16),
}

/// One hostile request.
struct Case {
    family: &'static str,
    name: String,
    method: Method,
    /// Below the base path, with any query string.
    path: String,
    /// `None`: the right token; `Some(values)`: exactly these Authorization headers.
    auth: Option<Vec<Vec<u8>>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    content_type: &'static str,
    expect: Expect,
}

impl Case {
    fn new(
        family: &'static str,
        name: impl Into<String>,
        method: Method,
        path: impl Into<String>,
    ) -> Self {
        Case {
            family,
            name: name.into(),
            method,
            path: path.into(),
            auth: None,
            headers: Vec::new(),
            body: None,
            content_type: "application/scim+json",
            expect: Expect::Error(400, None),
        }
    }
    fn json(mut self, v: &Value) -> Self {
        self.body = Some(serde_json::to_vec(v).unwrap());
        self
    }
    fn bytes(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(b.into());
        self
    }
    fn auth(mut self, values: Vec<Vec<u8>>) -> Self {
        self.auth = Some(values);
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<Vec<u8>>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn content_type(mut self, ct: &'static str) -> Self {
        self.content_type = ct;
        self
    }
    fn error(mut self, status: u16, scim_type: Option<&'static str>) -> Self {
        self.expect = Expect::Error(status, scim_type);
        self
    }
    fn ok(mut self, status: u16) -> Self {
        self.expect = Expect::Status(status);
        self
    }
}

/// Check one answer against its case; `Err` says what is wrong.
fn check(
    case: &Case,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    match case.expect {
        Expect::Status(want) if status == want => Ok(()),
        Expect::Status(want) => Err(format!(
            "status {status}, want {want}: {}",
            String::from_utf8_lossy(body)
        )),
        Expect::Error(want, scim_type) => {
            if status != want {
                return Err(format!(
                    "status {status}, want {want}: {}",
                    String::from_utf8_lossy(body)
                ));
            }
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
            if ct != Some("application/scim+json") {
                return Err(format!("content-type {ct:?}"));
            }
            let v: Value =
                serde_json::from_slice(body).map_err(|e| format!("body not JSON: {e}"))?;
            if v["schemas"][0] != "urn:ietf:params:scim:api:messages:2.0:Error" {
                return Err(format!("not a SCIM error: {v}"));
            }
            if v["status"].as_str() != Some(want.to_string().as_str()) {
                return Err(format!("body status {}: {v}", v["status"]));
            }
            if v.get("scimType").and_then(Value::as_str) != scim_type {
                return Err(format!(
                    "scimType {:?}, want {scim_type:?}: {v}",
                    v.get("scimType")
                ));
            }
            if !v["detail"].is_string() {
                return Err(format!("no detail: {v}"));
            }
            Ok(())
        }
    }
}

/// The 16 authenticated routes, each with a payload that would upset a parser were it reached.
fn authenticated_routes(uid: &str, gid: &str) -> Vec<(Method, String, Option<Vec<u8>>)> {
    let deep_filter = url_encode(&format!(
        "{}userName pr{}",
        "(".repeat(2_000),
        ")".repeat(2_000)
    ));
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let broken = b"{\"userName\": ".to_vec();
    let mut routes = Vec::new();
    for (endpoint, id) in [("Users", uid), ("Groups", gid)] {
        routes.push((
            Method::GET,
            format!("/{endpoint}?filter={deep_filter}&count=abc"),
            None,
        ));
        routes.push((
            Method::POST,
            format!("/{endpoint}"),
            Some(deep_json.clone()),
        ));
        routes.push((
            Method::GET,
            format!("/{endpoint}/{id}?attributes=%00%FF"),
            None,
        ));
        routes.push((
            Method::PUT,
            format!("/{endpoint}/{id}"),
            Some(broken.clone()),
        ));
        routes.push((
            Method::PATCH,
            format!("/{endpoint}/{id}"),
            Some(deep_json.clone()),
        ));
        routes.push((Method::DELETE, format!("/{endpoint}/{id}"), None));
        routes.push((
            Method::POST,
            format!("/{endpoint}/.search"),
            Some(broken.clone()),
        ));
    }
    routes.push((Method::POST, "/.search".to_string(), Some(broken.clone())));
    routes.push((Method::POST, "/Bulk".to_string(), Some(deep_json.clone())));
    routes
}

fn auth_cases(token: &str, uid: &str, gid: &str) -> Vec<Case> {
    let b = |s: String| s.into_bytes();
    let modes: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("no header", vec![]),
        (
            "wrong token",
            vec![b("Bearer scim_wrongwrongwrongwrongwrong".into())],
        ),
        ("empty bearer", vec![b("Bearer".into())]),
        ("bearer and space", vec![b("Bearer ".into())]),
        ("basic scheme", vec![b(format!("Basic {token}"))]),
        ("token scheme", vec![b(format!("Token {token}"))]),
        ("no scheme", vec![b(token.to_string())]),
        ("token with a suffix", vec![b(format!("Bearer {token}x"))]),
        (
            "token truncated",
            vec![b(format!("Bearer {}", &token[..token.len() - 1]))],
        ),
        (
            "oversized token",
            vec![b(format!("Bearer {}", "a".repeat(4_000)))],
        ),
        (
            "non-ascii token",
            vec![[b"Bearer ".as_slice(), "\u{e9}t\u{e9}".as_bytes()].concat()],
        ),
        (
            "two right headers",
            vec![b(format!("Bearer {token}")), b(format!("Bearer {token}"))],
        ),
        (
            "right and wrong header",
            vec![b(format!("Bearer {token}")), b("Bearer nope".into())],
        ),
        (
            "token and more words",
            vec![b(format!("Bearer {token} extra"))],
        ),
        ("tab separator", vec![b(format!("Bearer\t{token}"))]),
        (
            "comma list",
            vec![b(format!("Bearer nope, Bearer {token}"))],
        ),
    ];
    let mut cases = Vec::new();
    for (mode, values) in &modes {
        for (method, path, body) in authenticated_routes(uid, gid) {
            let mut c = Case::new("auth", format!("{mode}: {method} {path:.40}"), method, path)
                .auth(values.clone())
                .error(401, None);
            c.body = body;
            cases.push(c);
        }
    }
    // A token in the query string is not a token.
    for (method, path, body) in authenticated_routes(uid, gid) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut c = Case::new(
            "auth",
            format!("query token: {method} {path:.40}"),
            method,
            format!("{path}{sep}access_token={token}"),
        )
        .auth(vec![])
        .error(401, None);
        c.body = body;
        cases.push(c);
    }
    cases
}

fn body_routes(uid: &str, gid: &str) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/Users".into()),
        (Method::PUT, format!("/Users/{uid}")),
        (Method::PATCH, format!("/Users/{uid}")),
        (Method::POST, "/Users/.search".into()),
        (Method::POST, "/Groups".into()),
        (Method::PUT, format!("/Groups/{gid}")),
        (Method::PATCH, format!("/Groups/{gid}")),
        (Method::POST, "/Groups/.search".into()),
    ]
}

fn malformed_json_cases(uid: &str, gid: &str) -> Vec<Case> {
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("open brace", b"{".to_vec()),
        ("array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("string", b"\"s\"".to_vec()),
        ("number", b"42".to_vec()),
        ("boolean", b"true".to_vec()),
        ("trailing garbage", b"{}x".to_vec()),
        ("trailing comma", b"{\"a\": 1,}".to_vec()),
        (
            "deep arrays",
            format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes(),
        ),
        (
            "deep objects",
            format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300)).into_bytes(),
        ),
        ("invalid utf-8", b"{\"userName\": \"\xff\xfe\"}".to_vec()),
        ("byte order mark", "\u{feff}{}".as_bytes().to_vec()),
        ("single quotes", b"{'userName': 'x'}".to_vec()),
        ("NaN", b"{\"userName\": NaN}".to_vec()),
        ("lone surrogate", b"{\"userName\": \"\\ud800\"}".to_vec()),
        ("control character", b"{\"userName\": \"a\x01b\"}".to_vec()),
        ("two documents", b"{} {}".to_vec()),
    ];
    let mut cases = Vec::new();
    for (method, path) in body_routes(uid, gid) {
        for (name, payload) in &payloads {
            cases.push(
                Case::new(
                    "malformed json",
                    format!("{name}: {method} {path}"),
                    method.clone(),
                    path.clone(),
                )
                .bytes(payload.clone())
                .error(400, Some("invalidSyntax")),
            );
        }
        for ct in [
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=x",
        ] {
            cases.push(
                Case::new(
                    "malformed json",
                    format!("content type {ct}: {method} {path}"),
                    method.clone(),
                    path.clone(),
                )
                .bytes(b"{}".to_vec())
                .content_type(ct)
                .error(415, None),
            );
        }
        let limit = if path.starts_with("/Groups") {
            16 * 1024 * 1024
        } else {
            1024 * 1024
        };
        cases.push(
            Case::new(
                "malformed json",
                format!("over the body limit: {method} {path}"),
                method.clone(),
                path.clone(),
            )
            .bytes(vec![b' '; limit + 1])
            .error(413, None),
        );
    }
    cases
}

/// Wrong JSON types for every core and enterprise attribute, on POST and PUT.
fn wrong_type_cases(uid: &str, gid: &str) -> Vec<Case> {
    let s = |v: Value| v;
    let strings = [
        "userName",
        "externalId",
        "displayName",
        "nickName",
        "profileUrl",
        "title",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
    ];
    let mut bodies: Vec<(String, Value)> = Vec::new();
    for attr in strings {
        for (what, v) in [
            ("number", json!(42)),
            ("boolean", json!(true)),
            ("array", json!(["a"])),
            ("object", json!({"a": "b"})),
        ] {
            let mut u = user("types@x");
            u[attr] = v;
            bodies.push((format!("{attr} as {what}"), u));
        }
    }
    for (what, v) in [
        ("word", json!("maybe")),
        ("number", json!(1)),
        ("array", json!([true])),
        ("object", json!({})),
    ] {
        let mut u = user("types@x");
        u["active"] = v;
        bodies.push((format!("active as {what}"), u));
    }
    for (what, v) in [
        ("string", json!("G F")),
        ("array", json!([{"givenName": "G"}])),
        ("sub number", json!({"givenName": 5})),
        ("sub object", json!({"familyName": {"x": 1}})),
    ] {
        let mut u = user("types@x");
        u["name"] = v;
        bodies.push((format!("name as {what}"), u));
    }
    for attr in [
        "emails",
        "phoneNumbers",
        "ims",
        "photos",
        "addresses",
        "entitlements",
        "roles",
        "x509Certificates",
    ] {
        let sub = if attr == "addresses" {
            "streetAddress"
        } else {
            "value"
        };
        for (what, v) in [
            ("string", json!("a")),
            ("number", json!(3)),
            ("array of numbers", json!([1, 2])),
            ("sub-attribute number", json!([{sub: 5}])),
            ("primary as word", json!([{sub: "a", "primary": "yes"}])),
        ] {
            let mut u = user("types@x");
            u[attr] = v;
            bodies.push((format!("{attr} as {what}"), u));
        }
    }
    for (what, v) in [
        ("string", json!("x")),
        ("number", json!(1)),
        ("array", json!([])),
    ] {
        let mut u = user("types@x");
        u[ENTERPRISE] = v;
        bodies.push((format!("enterprise extension as {what}"), u));
    }
    for attr in [
        "employeeNumber",
        "costCenter",
        "organization",
        "division",
        "department",
    ] {
        let mut u = user("types@x");
        u[ENTERPRISE] = json!({attr: 7});
        bodies.push((format!("enterprise {attr} as number"), u));
    }
    for (what, v) in [("number", json!(1)), ("array", json!(["1"]))] {
        let mut u = user("types@x");
        u[ENTERPRISE] = json!({"manager": v});
        bodies.push((format!("enterprise manager as {what}"), u));
    }
    let mut u = user("types@x");
    u["password"] = json!(12345);
    bodies.push(("password as number".into(), u));
    let mut u = user("types@x");
    u["userName"] = json!("   ");
    bodies.push(("userName blank".into(), u));
    bodies.push((
        "userName missing".into(),
        json!({"schemas": [USER_SCHEMA], "name": {"givenName": "x"}}),
    ));
    let mut cases = Vec::new();
    for (name, body) in &bodies {
        for (method, path) in [
            (Method::POST, "/Users".to_string()),
            (Method::PUT, format!("/Users/{uid}")),
        ] {
            cases.push(
                Case::new("wrong types", format!("{name}: {method}"), method, path)
                    .json(body)
                    .error(400, Some("invalidValue")),
            );
        }
    }
    let mut gbodies: Vec<(String, Value)> = Vec::new();
    for (what, v) in [
        ("number", json!(1)),
        ("array", json!(["a"])),
        ("object", json!({})),
        ("blank", json!(" ")),
    ] {
        let mut g = group("Types");
        g["displayName"] = v;
        gbodies.push((format!("displayName as {what}"), g));
    }
    let mut g = group("Types");
    g["externalId"] = json!(5);
    gbodies.push(("externalId as number".into(), g));
    for (what, v) in [
        ("string", json!("u1")),
        ("object", json!({"value": "u1"})),
        ("array of numbers", json!([1])),
        ("value as number", json!([{"value": 1}])),
        ("no value", json!([{"display": "x"}])),
        ("nested group", json!([{"value": "g", "type": "Group"}])),
        ("unknown user", json!([{"value": "no-such-user"}])),
    ] {
        let mut g = group("Types");
        g["members"] = v;
        gbodies.push((format!("members as {what}"), g));
    }
    gbodies.push((
        "displayName missing".into(),
        s(json!({"schemas": [GROUP_SCHEMA]})),
    ));
    for (name, body) in &gbodies {
        for (method, path) in [
            (Method::POST, "/Groups".to_string()),
            (Method::PUT, format!("/Groups/{gid}")),
        ] {
            cases.push(
                Case::new("wrong types", format!("{name}: {method}"), method, path)
                    .json(body)
                    .error(400, Some("invalidValue")),
            );
        }
    }
    cases
}

/// Ids with encoding tricks: none names a resource.
fn id_cases(uid: &str) -> Vec<Case> {
    let long = "a".repeat(3_000);
    let ids = [
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "%FF%FE",
        "a%20b",
        "*",
        "%27%20OR%201%3D1--",
        "%E2%80%AE",
        "%25",
        "%0D%0ASet-Cookie:x",
        "(uid=*)",
        "cn=admin,dc=example,dc=com",
        long.as_str(),
        "%C0%AF",
        "\u{1F600}",
        "null",
    ];
    let mut cases = Vec::new();
    for id in ids {
        for endpoint in ["Users", "Groups"] {
            let path = format!("/{endpoint}/{id}");
            let body = if endpoint == "Users" {
                user("ids@x")
            } else {
                group("Ids")
            };
            let patch = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "externalId", "value": "x"}]});
            cases.push(
                Case::new("ids", format!("GET {path:.60}"), Method::GET, path.clone())
                    .error(404, None),
            );
            cases.push(
                Case::new(
                    "ids",
                    format!("DELETE {path:.60}"),
                    Method::DELETE,
                    path.clone(),
                )
                .error(404, None),
            );
            cases.push(
                Case::new("ids", format!("PUT {path:.60}"), Method::PUT, path.clone())
                    .json(&body)
                    .error(404, None),
            );
            cases.push(
                Case::new(
                    "ids",
                    format!("PATCH {path:.60}"),
                    Method::PATCH,
                    path.clone(),
                )
                .json(&patch)
                .error(404, None),
            );
        }
    }
    // An id with a trailing segment is no route.
    cases.push(
        Case::new(
            "ids",
            "id with a second segment",
            Method::GET,
            format!("/Users/{uid}/x"),
        )
        .error(404, None),
    );
    cases
}

/// DN and LDAP filter metacharacters are data: created, found by filter, and read back intact.
fn metachar_cases() -> (Vec<Case>, Vec<String>) {
    let names = [
        "comma,user@x",
        "plus+user@x",
        "quote\"user@x",
        "back\\slash@x",
        "angle<>user@x",
        "semi;colon@x",
        "equals=user@x",
        "#hash@x",
        " lead-space@x",
        "trail-space @x",
        "star*user@x",
        "paren(user)@x",
        "nul\u{0}byte@x",
        "uid=admin,ou=people",
        "\u{e9}l\u{e8}ve@x",
        "cn=*)(objectClass=*",
        "slash/user@x",
    ];
    let mut cases = Vec::new();
    for n in names {
        cases.push(
            Case::new("metachars", format!("create {n:?}"), Method::POST, "/Users")
                .json(&user(n))
                .ok(201),
        );
        // A filter's string literal is a JSON string (RFC 7644 §3.4.2.2).
        let filter = url_encode(&format!(
            "userName eq {}",
            serde_json::to_string(n).unwrap()
        ));
        cases.push(
            Case::new(
                "metachars",
                format!("find {n:?}"),
                Method::GET,
                format!("/Users?filter={filter}"),
            )
            .ok(200),
        );
        let mut g = group(n);
        g["displayName"] = json!(n);
        cases.push(
            Case::new("metachars", format!("group {n:?}"), Method::POST, "/Groups")
                .json(&g)
                .ok(201),
        );
    }
    (cases, names.iter().map(|s| s.to_string()).collect())
}

fn filter_cases() -> Vec<Case> {
    let too_deep = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
    let too_long = format!("userName eq \"{}\"", "a".repeat(5_000));
    let filters: Vec<&str> = vec![
        "(",
        ")",
        "()",
        "userName eq",
        "userName",
        "eq \"x\"",
        "userName eq \"x",
        "userName eq x\"",
        "userName xx \"x\"",
        "userName eq \"x\" and",
        "and userName eq \"x\"",
        "not",
        "not (",
        "userName eq \"x\" or or userName eq \"y\"",
        "emails[value eq \"x\"",
        "emails[value eq \"x\"]]",
        "emails[emails[value eq \"x\"]]",
        "userName eq \"x\" )",
        "userName pr pr",
        "\"x\" eq userName",
        "userName eq \"\\u\"",
        "userName eq \"x\"\u{0}",
        "userName gt",
        "meta.lastModified gt",
        "userName eq 'x'",
        "userName.. eq \"x\"",
        ".userName eq \"x\"",
        "userName eq \"x\" not",
        too_deep.as_str(),
        too_long.as_str(),
        // Attributes no schema defines (issue 11): an error, never an empty or a full list.
        "noSuchAttribute eq \"x\"",
        "noSuchAttribute ne \"x\"",
        "not (noSuchAttribute pr)",
        "externalId eq \"x\" or noSuchAttribute gt 1",
        "emails[noSuch eq \"x\"]",
        "urn:ietf:params:scim:schemas:extension:nope:2.0:User:x eq \"y\"",
        "password eq \"x\"",
    ];
    let mut cases = Vec::new();
    for f in filters {
        for endpoint in ["Users", "Groups"] {
            cases.push(
                Case::new(
                    "filters",
                    format!("GET {endpoint} {f:.50}"),
                    Method::GET,
                    format!("/{endpoint}?filter={}", url_encode(f)),
                )
                .error(400, Some("invalidFilter")),
            );
            cases.push(
                Case::new(
                    "filters",
                    format!(".search {endpoint} {f:.50}"),
                    Method::POST,
                    format!("/{endpoint}/.search"),
                )
                .json(&json!({"schemas": [SEARCH_SCHEMA], "filter": f}))
                .error(400, Some("invalidFilter")),
            );
        }
        cases.push(
            Case::new(
                "filters",
                format!(".search root {f:.50}"),
                Method::POST,
                "/.search".to_string(),
            )
            .json(&json!({"schemas": [SEARCH_SCHEMA], "filter": f}))
            .error(400, Some("invalidFilter")),
        );
    }
    cases
}

fn patch_cases(uid: &str, gid: &str) -> Vec<Case> {
    let op = |o: Value| json!({"schemas": [PATCH_SCHEMA], "Operations": [o]});
    let many: Vec<Value> = (0..1_001)
        .map(|i| json!({"op": "replace", "path": "title", "value": format!("t{i}")}))
        .collect();
    let bodies: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "no Operations",
            json!({"schemas": [PATCH_SCHEMA]}),
            400,
            Some("invalidSyntax"),
        ),
        (
            "Operations object",
            json!({"schemas": [PATCH_SCHEMA], "Operations": {}}),
            400,
            Some("invalidSyntax"),
        ),
        (
            "Operations string",
            json!({"schemas": [PATCH_SCHEMA], "Operations": "x"}),
            400,
            Some("invalidSyntax"),
        ),
        (
            "operation not an object",
            json!({"schemas": [PATCH_SCHEMA], "Operations": [1]}),
            400,
            Some("invalidSyntax"),
        ),
        (
            "op move",
            op(json!({"op": "move", "path": "title", "value": "x"})),
            400,
            Some("invalidSyntax"),
        ),
        (
            "op missing",
            op(json!({"path": "title", "value": "x"})),
            400,
            Some("invalidSyntax"),
        ),
        (
            "op number",
            op(json!({"op": 1, "path": "title", "value": "x"})),
            400,
            Some("invalidSyntax"),
        ),
        (
            "too many operations",
            json!({"schemas": [PATCH_SCHEMA], "Operations": many}),
            400,
            Some("tooMany"),
        ),
        (
            "remove without path",
            op(json!({"op": "remove"})),
            400,
            Some("noTarget"),
        ),
        (
            "path number",
            op(json!({"op": "replace", "path": 5, "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        // An empty path is read as no path: the value must then be an object.
        (
            "path empty",
            op(json!({"op": "replace", "path": "", "value": "x"})),
            400,
            Some("invalidValue"),
        ),
        (
            "path unbalanced bracket",
            op(json!({"op": "replace", "path": "emails[type eq \"work\"", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "path bad filter",
            op(json!({"op": "replace", "path": "emails[type xx \"work\"].value", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "path nested brackets",
            op(
                json!({"op": "replace", "path": "emails[value eq \"a\"][type eq \"b\"]", "value": "x"}),
            ),
            400,
            Some("invalidPath"),
        ),
        (
            "path double dot",
            op(json!({"op": "replace", "path": "name..givenName", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "path trailing dot",
            op(json!({"op": "replace", "path": "name.", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "path too deep",
            op(json!({"op": "replace", "path": "name.givenName.extra", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "path with spaces",
            op(json!({"op": "replace", "path": "user name", "value": "x"})),
            400,
            Some("invalidPath"),
        ),
        (
            "replace id",
            op(json!({"op": "replace", "path": "id", "value": "x"})),
            400,
            Some("mutability"),
        ),
        (
            "replace meta.created",
            op(json!({"op": "replace", "path": "meta.created", "value": "x"})),
            400,
            Some("mutability"),
        ),
        (
            "add without value",
            op(json!({"op": "add", "path": "title"})),
            400,
            Some("invalidSyntax"),
        ),
        (
            "path-less replace of a number",
            op(json!({"op": "replace", "value": 5})),
            400,
            Some("invalidValue"),
        ),
        (
            "schemas not a list",
            json!({"schemas": "x", "Operations": []}),
            400,
            Some("invalidSyntax"),
        ),
    ];
    let mut cases = Vec::new();
    for (name, body, status, scim_type) in &bodies {
        for path in [format!("/Users/{uid}"), format!("/Groups/{gid}")] {
            cases.push(
                Case::new("patch", format!("{name}: {path:.10}"), Method::PATCH, path)
                    .json(body)
                    .error(*status, *scim_type),
            );
        }
    }
    // Wrong value types through PATCH land in the same validation as PUT.
    for (name, o) in [
        (
            "userName number",
            json!({"op": "replace", "path": "userName", "value": 5}),
        ),
        (
            "active word",
            json!({"op": "replace", "path": "active", "value": "maybe"}),
        ),
        (
            "emails string",
            json!({"op": "add", "path": "emails", "value": "a@b"}),
        ),
        (
            "name number",
            json!({"op": "replace", "path": "name", "value": 1}),
        ),
    ] {
        cases.push(
            Case::new(
                "patch",
                format!("user {name}"),
                Method::PATCH,
                format!("/Users/{uid}"),
            )
            .json(&op(o))
            .error(400, Some("invalidValue")),
        );
    }
    // Removing a required attribute is a mutability error.
    cases.push(
        Case::new(
            "patch",
            "user remove userName",
            Method::PATCH,
            format!("/Users/{uid}"),
        )
        .json(&op(json!({"op": "remove", "path": "userName"})))
        .error(400, Some("mutability")),
    );
    cases.push(
        Case::new(
            "patch",
            "group remove displayName",
            Method::PATCH,
            format!("/Groups/{gid}"),
        )
        .json(&op(json!({"op": "remove", "path": "displayName"})))
        .error(400, Some("mutability")),
    );
    for (name, o) in [
        (
            "add member number",
            json!({"op": "add", "path": "members", "value": [{"value": 5}]}),
        ),
        (
            "add unknown member",
            json!({"op": "add", "path": "members", "value": [{"value": "no-such"}]}),
        ),
        (
            "displayName number",
            json!({"op": "replace", "path": "displayName", "value": 5}),
        ),
    ] {
        cases.push(
            Case::new(
                "patch",
                format!("group {name}"),
                Method::PATCH,
                format!("/Groups/{gid}"),
            )
            .json(&op(o))
            .error(400, Some("invalidValue")),
        );
    }
    cases
}

fn paging_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for endpoint in ["Users", "Groups"] {
        for q in [
            "startIndex=abc",
            "count=abc",
            "startIndex=1.5",
            "count=1e3",
            "startIndex=",
            "count=%00",
            "count=0x10",
            "startIndex=--1",
        ] {
            cases.push(
                Case::new(
                    "paging",
                    format!("{endpoint}?{q}"),
                    Method::GET,
                    format!("/{endpoint}?{q}"),
                )
                .error(400, Some("invalidValue")),
            );
        }
        // RFC 7644 §3.4.2.4: out-of-range numbers are read, not refused.
        for q in [
            "startIndex=0",
            "startIndex=-5",
            "count=-1",
            "count=0",
            "count=99999999999999999999999",
            "startIndex=99999999999999999999999",
            "count=1000000&startIndex=1000000",
        ] {
            cases.push(
                Case::new(
                    "paging",
                    format!("{endpoint}?{q}"),
                    Method::GET,
                    format!("/{endpoint}?{q}"),
                )
                .ok(200),
            );
        }
        for (name, body) in [
            ("filter object", json!({"filter": {"a": 1}})),
            ("filter boolean", json!({"filter": true})),
            ("filter null-like array", json!({"filter": []})),
            ("startIndex string", json!({"startIndex": "1"})),
            ("startIndex float", json!({"startIndex": 1.5})),
            ("count boolean", json!({"count": false})),
            ("count object", json!({"count": {}})),
            ("attributes number", json!({"attributes": 1})),
            ("attributes of numbers", json!({"attributes": [1]})),
            (
                "excludedAttributes object",
                json!({"excludedAttributes": {}}),
            ),
            ("sortBy number", json!({"sortBy": 1})),
            ("unknown member", json!({"filterr": "userName pr"})),
            ("schemas string", json!({"schemas": "x"})),
        ] {
            cases.push(
                Case::new(
                    "paging",
                    format!(".search {endpoint} {name}"),
                    Method::POST,
                    format!("/{endpoint}/.search"),
                )
                .json(&body)
                .error(400, Some("invalidValue")),
            );
        }
    }
    cases
}

fn route_and_header_cases(uid: &str, gid: &str) -> Vec<Case> {
    let mut cases = vec![
        Case::new("routes", "DELETE collection", Method::DELETE, "/Users").error(405, None),
        Case::new("routes", "PUT collection", Method::PUT, "/Groups").error(405, None),
        Case::new("routes", "PATCH collection", Method::PATCH, "/Users").error(405, None),
        Case::new(
            "routes",
            "POST to an id",
            Method::POST,
            format!("/Users/{uid}"),
        )
        .error(405, None),
        Case::new("routes", "GET .search", Method::GET, "/Groups/.search").error(404, None),
        Case::new(
            "routes",
            "POST discovery",
            Method::POST,
            "/ServiceProviderConfig",
        )
        .error(405, None),
        Case::new("routes", "DELETE schemas", Method::DELETE, "/Schemas").error(405, None),
        Case::new("routes", "deep schemas", Method::GET, "/Schemas/a/b/c").error(404, None),
        Case::new(
            "routes",
            "deep resource type",
            Method::GET,
            "/ResourceTypes/User/extra",
        )
        .error(404, None),
        Case::new(
            "routes",
            "unknown resource type",
            Method::GET,
            "/ResourceTypes/Nope",
        )
        .error(404, None),
        Case::new("routes", "unknown schema", Method::GET, "/Schemas/urn:nope").error(404, None),
        Case::new("routes", "unknown endpoint", Method::GET, "/Nope").error(404, None),
        Case::new("routes", "users sub-path", Method::GET, "/Users/a/b").error(404, None),
        Case::new("routes", "bulk without a body", Method::POST, "/Bulk")
            .error(400, Some("invalidSyntax")),
        Case::new("routes", "bulk by GET", Method::GET, "/Bulk").error(405, None),
        Case::new("routes", "bulk not a BulkRequest", Method::POST, "/Bulk")
            .json(&json!({"Operations": [{"method": "GET", "path": "/Users"}]}))
            .error(400, Some("invalidSyntax")),
        Case::new("routes", "root search by GET", Method::GET, "/.search").error(405, None),
        Case::new("routes", "me (unsupported)", Method::GET, "/Me").error(404, None),
    ];
    for (endpoint, id, body) in [("Users", uid, user("ifm@x")), ("Groups", gid, group("Ifm"))] {
        let path = format!("/{endpoint}/{id}");
        let patch = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "externalId", "value": "x"}]});
        for (name, value) in [
            ("non-ascii", b"\xff\xfe".to_vec()),
            ("latin-1", b"W/\"1\xe9\"".to_vec()),
            ("junk", b"junk".to_vec()),
            ("other version", b"W/\"999\"".to_vec()),
            ("two versions", b"W/\"1\", W/\"2\"".to_vec()),
            ("empty", b"".to_vec()),
        ] {
            cases.push(
                Case::new(
                    "if-match",
                    format!("{name}: DELETE {endpoint}"),
                    Method::DELETE,
                    path.clone(),
                )
                .header("if-match", value.clone())
                .error(412, None),
            );
            cases.push(
                Case::new(
                    "if-match",
                    format!("{name}: PUT {endpoint}"),
                    Method::PUT,
                    path.clone(),
                )
                .json(&body)
                .header("if-match", value.clone())
                .error(412, None),
            );
            cases.push(
                Case::new(
                    "if-match",
                    format!("{name}: PATCH {endpoint}"),
                    Method::PATCH,
                    path.clone(),
                )
                .json(&patch)
                .header("if-match", value)
                .error(412, None),
            );
        }
    }
    let long = "v".repeat(8_193);
    for (name, path, method, body) in [
        ("userName", "/Users".to_string(), Method::POST, user(&long)),
        (
            "displayName",
            "/Groups".to_string(),
            Method::POST,
            group(&long),
        ),
        (
            "title",
            format!("/Users/{uid}"),
            Method::PATCH,
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "title", "value": long}]}),
        ),
        ("attribute name", "/Users".to_string(), Method::POST, {
            let mut u = user("n@x");
            u[long.as_str()] = json!("x");
            u
        }),
    ] {
        cases.push(
            Case::new("sizes", format!("{name} over the limit"), method, path)
                .json(&body)
                .error(400, Some("invalidValue")),
        );
    }
    cases
}

#[tokio::test]
async fn hostile_suite_every_case_answers_precisely() {
    let t = TestDaemon::start().await;
    let uid = create_user(&t, "fixture@x").await;
    let gid = create_group(&t, "Fixture").await;
    let (metachars, names) = metachar_cases();
    let mut cases = Vec::new();
    cases.extend(auth_cases(&t.token, &uid, &gid));
    cases.extend(malformed_json_cases(&uid, &gid));
    cases.extend(wrong_type_cases(&uid, &gid));
    cases.extend(id_cases(&uid));
    cases.extend(metachars);
    cases.extend(filter_cases());
    cases.extend(patch_cases(&uid, &gid));
    cases.extend(paging_cases());
    cases.extend(route_and_header_cases(&uid, &gid));
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut per_family = std::collections::BTreeMap::<&str, usize>::new();
    for case in &cases {
        *per_family.entry(case.family).or_default() += 1;
        let mut req = t
            .client
            .request(case.method.clone(), format!("{}{}", t.base, case.path));
        match &case.auth {
            None => req = req.bearer_auth(&t.token),
            Some(values) => {
                for v in values {
                    req = req.header("authorization", HeaderValue::from_bytes(v).unwrap());
                }
            }
        }
        for (k, v) in &case.headers {
            req = req.header(*k, HeaderValue::from_bytes(v).unwrap());
        }
        if let Some(b) = &case.body {
            req = req
                .header("content-type", case.content_type)
                .body(b.clone());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                if let Err(e) = check(case, status, &headers, &body) {
                    failures.push(format!("[{}] {}: {e:.400}", case.family, case.name));
                }
            }
            // Over-limit bodies without a token may be cut while still being sent.
            Err(e) if case.body.as_ref().is_some_and(|b| b.len() > 1_000_000) => {
                if !matches!(case.expect, Expect::Error(401 | 413, _)) {
                    failures.push(format!("[{}] {}: {e}", case.family, case.name));
                }
            }
            Err(e) => failures.push(format!(
                "[{}] {}: request failed: {e}",
                case.family, case.name
            )),
        }
        // The daemon still serves, and nothing hostile touched the fixtures.
        let u = t.get(&format!("/Users/{uid}")).await;
        let g = t.get(&format!("/Groups/{gid}")).await;
        if u.status != StatusCode::OK
            || u.body["userName"] != "fixture@x"
            || u.headers["etag"] != "W/\"1\""
        {
            failures.push(format!(
                "[{}] {}: fixture user now {} {}",
                case.family, case.name, u.status, u.body
            ));
            break;
        }
        if g.status != StatusCode::OK
            || g.body["displayName"] != "Fixture"
            || g.headers["etag"] != "W/\"1\""
        {
            failures.push(format!(
                "[{}] {}: fixture group now {} {}",
                case.family, case.name, g.status, g.body
            ));
            break;
        }
    }
    // Metacharacters were stored as sent.
    for n in &names {
        let filter = url_encode(&format!(
            "userName eq {}",
            serde_json::to_string(n).unwrap()
        ));
        let r = t.get(&format!("/Users?filter={filter}")).await;
        if r.body["totalResults"] != 1 || r.body["Resources"][0]["userName"] != n.as_str() {
            failures.push(format!("[metachars] {n:?} did not round-trip: {}", r.body));
        }
    }
    eprintln!("hostile suite: {} cases {per_family:?}", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
