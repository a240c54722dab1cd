//! The dashboard over HTTP, against fake read ports (a simulated fleet's
//! projection and log, two accounts, a fake core): sessions, roles, CSRF,
//! bad input and live-update resumption. `tests/tests/dashboard_http.rs`
//! runs the same kinds of checks against real replicas.

mod fixture;

use dashboard::ports::{OperatorAction, Role};
use fixture::{ADMIN, AUDITOR, Fixture};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

struct Served {
    fixture: Fixture,
    base: String,
    address: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _runtime: tokio::runtime::Runtime,
}

fn serve(role: Role) -> Served {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = runtime.block_on(async { Fixture::new(4, 200, 3, role) });
    let (address, stop) = runtime.block_on(fixture.serve("127.0.0.1:0"));
    Served {
        fixture,
        base: format!("http://{address}"),
        address,
        _stop: stop,
        _runtime: runtime,
    }
}

/// A browser: keeps cookies, follows no redirects.
struct Browser {
    base: String,
    cookies: HashMap<String, String>,
    agent: ureq::Agent,
}

struct Answer {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    fn new(base: &str) -> Browser {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Browser {
            base: base.to_owned(),
            cookies: HashMap::new(),
            agent,
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn finish(&mut self, response: Result<http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = response.expect("the server answers");
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Answer {
            status: response.status().as_u16(),
            location,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&mut self, path: &str) -> Answer {
        let request = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header());
        let response = request.call();
        self.finish(response)
    }

    fn post_form(&mut self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        let body = serde_urlencoded::to_string(pairs).unwrap();
        let response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.as_bytes());
        self.finish(response)
    }

    fn post_json(&mut self, path: &str, json: &str, csrf: Option<&str>) -> Answer {
        let mut request = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header())
            .header("content-type", "application/json");
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        let response = request.send(json.as_bytes());
        self.finish(response)
    }

    /// Logs in through the form; returns the session's CSRF token.
    fn log_in(&mut self, user: &str, password: &str) -> String {
        let form = self.get("/login");
        assert_eq!(form.status, 200);
        let token = hidden(&form.body, "csrf");
        let answer = self.post_form(
            "/login",
            &[
                ("user", user),
                ("password", password),
                ("csrf", &token),
                ("next", "/"),
            ],
        );
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert!(self.cookies.contains_key("vl_session"));
        let session = self.get("/api/v1/session");
        assert_eq!(session.status, 200);
        let json: serde_json::Value = serde_json::from_str(&session.body).unwrap();
        json["csrf"].as_str().unwrap().to_owned()
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("the field is there") + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// Every page and API route a session protects (GETs).
const READ_ROUTES: [&str; 22] = [
    "/",
    "/machines/VM-001",
    "/sales",
    "/sales?period=month",
    "/reconciliation",
    "/audit",
    "/replication",
    "/api/v1/session",
    "/api/v1/machines",
    "/api/v1/machines.csv",
    "/api/v1/machines/VM-001",
    "/api/v1/machines/VM-001/slots.csv",
    "/api/v1/alerts",
    "/api/v1/alerts.csv",
    "/api/v1/sales",
    "/api/v1/sales.csv",
    "/api/v1/reconciliation",
    "/api/v1/reconciliation.csv",
    "/api/v1/audit",
    "/api/v1/audit.csv",
    "/api/v1/replication",
    "/api/v1/events",
];

/// Every write, as a form and as JSON.
const WRITE_ROUTES: [(&str, &str); 10] = [
    ("/machines/VM-001/slots/1/price", "price=600"),
    ("/machines/VM-001/slots/1/name", "name=Tea"),
    ("/machines/VM-001/tickets/1/settle", ""),
    ("/fleet/price", "product=Coffee&price=600"),
    ("/alerts/acknowledge", "kind=sold_out&machine=VM-001&slot=1"),
    ("/api/v1/machines/VM-001/slots/1/price", r#"{"price":600}"#),
    ("/api/v1/machines/VM-001/slots/1/name", r#"{"name":"Tea"}"#),
    ("/api/v1/machines/VM-001/tickets/1/settle", "{}"),
    ("/api/v1/fleet/price", r#"{"product":"Coffee","price":600}"#),
    (
        "/api/v1/alerts/acknowledge",
        r#"{"kind":"sold_out","machine":"VM-001","slot":1}"#,
    ),
];

fn post(browser: &mut Browser, path: &str, body: &str, csrf: Option<&str>) -> Answer {
    if path.starts_with("/api/") {
        browser.post_json(path, body, csrf)
    } else {
        let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
        if let Some(csrf) = csrf {
            pairs.push(("csrf".into(), csrf.into()));
        }
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        browser.post_form(path, &pairs)
    }
}

#[test]
fn every_route_needs_a_session() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    for path in READ_ROUTES {
        let answer = browser.get(path);
        if path.starts_with("/api/") {
            assert_eq!(answer.status, 401, "{path}: {}", answer.body);
            let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert!(json["error"].as_str().unwrap().contains("log in"), "{path}");
        } else {
            assert_eq!(answer.status, 303, "{path}");
            assert!(answer.location.starts_with("/login?next="), "{path}");
        }
    }
    for (path, body) in WRITE_ROUTES {
        let answer = post(&mut browser, path, body, Some("whatever"));
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
    }
    // A forged session cookie is no session.
    browser.cookies.insert(
        "vl_session".into(),
        "v1.6b696d.00000000000000000000000000000000.1.1.abcd".into(),
    );
    assert_eq!(browser.get("/api/v1/machines").status, 401);
    // Outside the session: the login form, the assets, the status API.
    browser.cookies.clear();
    assert_eq!(browser.get("/login").status, 200);
    let style = browser.get("/static/style.css");
    assert_eq!(style.status, 200);
    assert!(style.body.contains(":root"));
    assert_eq!(browser.get("/api/v1/status").status, 200);
    assert!(served.fixture.requests.lock().unwrap().is_empty());
}

#[test]
fn a_login_needs_its_forms_token_and_the_password_and_locks_after_five_failures() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    // No form token (a cross-site post): refused.
    let answer = browser.post_form("/login", &[("user", ADMIN.0), ("password", ADMIN.1)]);
    assert_eq!(answer.status, 403);
    assert!(!browser.cookies.contains_key("vl_session"));
    for _ in 0..5 {
        let token = hidden(&browser.get("/login").body, "csrf");
        let answer = browser.post_form(
            "/login",
            &[
                ("user", AUDITOR.0),
                ("password", "wrong-pass-1!"),
                ("csrf", &token),
            ],
        );
        assert_eq!(answer.status, 401);
        assert!(answer.body.contains("Wrong name or password"));
    }
    // Locked now, even with the right password.
    let token = hidden(&browser.get("/login").body, "csrf");
    let answer = browser.post_form(
        "/login",
        &[
            ("user", AUDITOR.0),
            ("password", AUDITOR.1),
            ("csrf", &token),
        ],
    );
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(answer.body.contains("locked"));
    // Another account is not locked by it.
    browser.log_in(ADMIN.0, ADMIN.1);
    let page = browser.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Fleet overview") && page.body.contains("kim · admin"));
    // Logging out ends the session; the old cookie is refused.
    let stolen = browser.cookies.get("vl_session").cloned().unwrap();
    let csrf = hidden(&page.body, "csrf");
    assert_eq!(browser.post_form("/logout", &[("csrf", &csrf)]).status, 303);
    browser.cookies.insert("vl_session".into(), stolen);
    assert_eq!(browser.get("/api/v1/machines").status, 401);
}

#[test]
fn auditors_read_everything_and_change_nothing() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    let csrf = browser.log_in(AUDITOR.0, AUDITOR.1);
    for path in READ_ROUTES.iter().filter(|p| **p != "/api/v1/events") {
        let answer = browser.get(path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    let machine_page = browser.get("/machines/VM-001");
    assert!(
        !machine_page.body.contains("Set price"),
        "no write controls for auditors"
    );
    assert!(!browser.get("/").body.contains("Acknowledge"));
    for (path, body) in WRITE_ROUTES {
        let answer = post(&mut browser, path, body, Some(&csrf));
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    assert!(served.fixture.requests.lock().unwrap().is_empty());
}

#[test]
fn writes_need_the_sessions_csrf_token_and_reach_the_core_with_the_operators_name() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    let csrf = browser.log_in(ADMIN.0, ADMIN.1);
    let path = "/api/v1/machines/VM-001/slots/2/price";
    assert_eq!(
        browser.post_json(path, r#"{"price":600}"#, None).status,
        403
    );
    assert_eq!(
        browser
            .post_json(
                path,
                r#"{"price":600}"#,
                Some("0123456789abcdef0123456789abcdef")
            )
            .status,
        403
    );
    assert_eq!(
        post(
            &mut browser,
            "/machines/VM-001/slots/2/price",
            "price=600",
            None
        )
        .status,
        403
    );
    // Another session's token is not this one's.
    let mut other = Browser::new(&served.base);
    let other_csrf = other.log_in(ADMIN.0, ADMIN.1);
    assert_eq!(
        browser
            .post_json(path, r#"{"price":600}"#, Some(&other_csrf))
            .status,
        403
    );
    assert!(served.fixture.requests.lock().unwrap().is_empty());
    let answer = browser.post_json(path, r#"{"price":600}"#, Some(&csrf));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let receipt: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(receipt["commands"][0]["machine"], "VM-001");
    let form = post(
        &mut browser,
        "/machines/VM-001/slots/2/name",
        "name=Green Tea",
        Some(&csrf),
    );
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains("recorded in the log at gseq"));
    let requests = served.fixture.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].0, "kim");
    assert!(
        matches!(&requests[0].1, OperatorAction::SetPrice { price: 600, slot, .. } if slot.0 == 2)
    );
    assert!(matches!(&requests[1].1, OperatorAction::Rename { name, .. } if name == "Green Tea"));
}

#[test]
fn bad_input_gets_a_clear_4xx_never_a_5xx() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    let csrf = browser.log_in(ADMIN.0, ADMIN.1);
    for path in [
        "/machines/VM-999",
        "/machines/not%20an%20id",
        "/api/v1/machines/VM-999",
        "/sales?period=fortnight",
        "/sales?machine=VM-999",
        "/api/v1/sales?format=xml",
        "/audit?before=abc",
        "/audit?from=yesterday",
        "/api/v1/audit?kind=DROP%20TABLE",
        "/reconciliation?before=-1",
        "/no/such/page",
        "/static/../Cargo.toml",
    ] {
        let answer = browser.get(path);
        assert!(
            (400..500).contains(&answer.status),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
    }
    let bodies: [(&str, &str); 9] = [
        ("/api/v1/machines/VM-001/slots/1/price", r#"{"price":455}"#),
        ("/api/v1/machines/VM-001/slots/1/price", r#"{"price":-10}"#),
        (
            "/api/v1/machines/VM-001/slots/1/price",
            r#"{"price":"lots"}"#,
        ),
        ("/api/v1/machines/VM-001/slots/99/price", r#"{"price":600}"#),
        ("/api/v1/machines/VM-999/slots/1/price", r#"{"price":600}"#),
        ("/api/v1/machines/VM-001/slots/1/name", r#"{"name":""}"#),
        ("/api/v1/machines/VM-001/slots/1/name", "{not json"),
        ("/api/v1/fleet/price", r#"{"product":"Caviar","price":600}"#),
        (
            "/api/v1/alerts/acknowledge",
            r#"{"kind":"bored","machine":"VM-001"}"#,
        ),
    ];
    for (path, body) in bodies {
        let answer = browser.post_json(path, body, Some(&csrf));
        assert!(
            (400..500).contains(&answer.status),
            "{path} {body}: {} {}",
            answer.status,
            answer.body
        );
        let json: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON error");
        assert!(json["error"].is_string());
    }
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000));
    let answer = browser.post_json("/api/v1/machines/VM-001/slots/1/name", &huge, Some(&csrf));
    assert_eq!(answer.status, 413, "{}", answer.body);
    let answer = browser.post_form(
        "/machines/VM-001/slots/1/name",
        &[("name", &"x".repeat(100_000)), ("csrf", &csrf)],
    );
    assert_eq!(answer.status, 413);
    assert!(served.fixture.requests.lock().unwrap().is_empty());
}

#[test]
fn a_follower_says_where_the_primary_is() {
    let served = serve(Role::Backup);
    let mut browser = Browser::new(&served.base);
    let csrf = browser.log_in(ADMIN.0, ADMIN.1);
    let page = browser.get("/");
    assert!(page.body.contains("not the primary"), "{}", page.body);
    assert!(page.body.contains("http://127.0.0.1:7123"));
    assert!(
        page.body.contains("see primary"),
        "link state is the primary's"
    );
    // Forms post to the primary's dashboard.
    assert!(
        page.body
            .contains("action=\"http://127.0.0.1:7123/fleet/price\"")
    );
    let answer = browser.post_json(
        "/api/v1/fleet/price",
        r#"{"product":"커피","price":600}"#,
        Some(&csrf),
    );
    assert_eq!(answer.status, 409);
    assert!(answer.body.contains("replica-3"), "{}", answer.body);
}

/// Reads a live-update stream until `count` events arrived; their ids.
fn read_events(
    address: std::net::SocketAddr,
    cookie: &str,
    last_id: Option<u64>,
    count: usize,
) -> Vec<u64> {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /api/v1/events HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n{resume}\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while seen.len() < count {
        let n = stream.read(&mut chunk).expect("events arrive");
        assert!(n > 0, "the stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        seen = text
            .lines()
            .filter_map(|line| {
                line.strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
            })
            .map(|id| id.trim().parse().unwrap())
            .collect();
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    seen
}

#[test]
fn live_updates_resume_after_a_reconnect_without_losing_or_repeating() {
    let served = serve(Role::Primary);
    let mut browser = Browser::new(&served.base);
    browser.log_in(ADMIN.0, ADMIN.1);
    let cookie = browser.cookie_header();
    let tip = served.fixture.snapshot.borrow().status.commit;
    // A client that saw up to tip-5 comes back: it gets the five it
    // missed from the log, then live entries, each once.
    let address = served.address;
    let reader = {
        let cookie = cookie.clone();
        std::thread::spawn(move || read_events(address, &cookie, Some(tip - 5), 12))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut committed = Vec::new();
    for _ in 0..7 {
        committed.push(served.fixture.commit_entry("VM-002", "product_purchased"));
    }
    let seen = reader.join().unwrap();
    let expected: Vec<u64> = (tip - 4..=tip + 7).collect();
    assert_eq!(seen, expected);
    assert_eq!(committed, (tip + 1..=tip + 7).collect::<Vec<_>>());
    // A bad Last-Event-ID is refused.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET /api/v1/events HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nLast-Event-ID: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn https_serves_the_pages_and_plain_http_only_the_status_api() {
    let temp = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate = temp.path().join("cert.pem");
    let private_key = temp.path().join("key.pem");
    std::fs::write(&certificate, certified.cert.pem()).unwrap();
    std::fs::write(&private_key, certified.signing_key.serialize_pem()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut fixture = runtime.block_on(async { Fixture::new(2, 50, 1, Role::Primary) });
    fixture.options.tls = Some(dashboard::TlsFiles {
        certificate,
        private_key,
    });
    let (address, _stop) = runtime.block_on(fixture.serve("127.0.0.1:0"));
    // Plain HTTP: pages move to HTTPS; the status API still answers.
    let mut plain = Browser::new(&format!("http://{address}"));
    let answer = plain.get("/machines/VM-001");
    assert_eq!(answer.status, 308);
    assert_eq!(
        answer.location,
        format!("https://{address}/machines/VM-001")
    );
    assert_eq!(plain.get("/api/v1/status").status, 200);
    // TLS: the login form, with a Secure cookie.
    let answer = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Secure"), "{answer}");
}

#[test]
fn live_update_subscribers_are_bounded() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut fixture = runtime.block_on(async { Fixture::new(1, 20, 1, Role::Primary) });
    fixture.options.sse_subscribers_max = 1;
    let (address, _stop) = runtime.block_on(fixture.serve("127.0.0.1:0"));
    let mut browser = Browser::new(&format!("http://{address}"));
    browser.log_in(ADMIN.0, ADMIN.1);
    let cookie = browser.cookie_header();
    let open = |cookie: &str| {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /api/v1/events HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        (stream, String::from_utf8_lossy(&head).into_owned())
    };
    let (first, status) = open(&cookie);
    assert_eq!(status, "HTTP/1.1 200");
    let (_, status) = open(&cookie);
    assert_eq!(status, "HTTP/1.1 503");
    // The slot frees when the first subscriber leaves.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = open(&cookie);
        if status == "HTTP/1.1 200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
