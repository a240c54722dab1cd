//! Page latency over a large log: builds a simulated fleet's log and
//! projection in memory (the fixture the HTTP tests use), serves the
//! dashboard on loopback, logs in, and requests each page one after the
//! other, printing p50, p99 and the slowest per page as a Markdown table.
//!
//! `cargo run --example bench_pages -- [MACHINES] [STEPS] [REQUESTS]`
//! (defaults 20 machines × 25,000 steps, about half a million entries, and
//! 200 requests per page). Figures are in BENCHMARKS.md.

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Client {
    base: String,
    agent: ureq::Agent,
    cookies: HashMap<String, String>,
}

impl Client {
    fn cookie_header(&self) -> String {
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.join("; ")
    }

    fn keep_cookies(&mut self, response: &ureq::http::Response<ureq::Body>) {
        for value in response.headers().get_all("set-cookie") {
            let Ok(text) = value.to_str() else { continue };
            if let Some((name, value)) = text.split(';').next().and_then(|p| p.split_once('=')) {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// The status and body of a GET.
    fn get(&mut self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header())
            .call()
            .expect("the dashboard answers");
        self.keep_cookies(&response);
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }

    fn log_in(&mut self) {
        let (_, form) = self.get("/login");
        let marker = "name=\"csrf\" value=\"";
        let start = form.find(marker).expect("the login form has a token") + marker.len();
        let token = &form[start..start + form[start..].find('"').unwrap_or(0)];
        let body = serde_urlencoded::to_string([
            ("user", fixture::ADMIN.0),
            ("password", fixture::ADMIN.1),
            ("csrf", token),
        ])
        .expect("a form");
        let response = self
            .agent
            .post(&format!("{}/login", self.base))
            .header("cookie", &self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .expect("the dashboard answers");
        assert_eq!(response.status().as_u16(), 303, "the login is accepted");
        self.keep_cookies(&response);
    }
}

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let (machines, steps, requests) = (arg(1, 20), arg(2, 25_000), arg(3, 200));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let built = Instant::now();
    let fixture = fixture::Fixture::new(
        u32::try_from(machines).expect("machines"),
        steps,
        60,
        dashboard::ports::Role::Primary,
    );
    let tip = fixture.log.0.lock().expect("the log").len() as u64;
    eprintln!(
        "built {tip} entries from {machines} machines in {:.1}s",
        built.elapsed().as_secs_f64()
    );
    let (bound, _stop) = runtime.block_on(fixture.serve("127.0.0.1:0"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut client = Client {
        base: format!("http://{bound}"),
        agent,
        cookies: HashMap::new(),
    };
    client.log_in();
    let deep = tip / 10;
    let pages = [
        "/".to_owned(),
        "/machines/VM-001".to_owned(),
        "/sales?period=day".to_owned(),
        "/sales?period=month".to_owned(),
        "/reconciliation".to_owned(),
        "/audit".to_owned(),
        format!("/audit?before={deep}"),
        "/audit?machine=VM-007".to_owned(),
        "/replication".to_owned(),
        "/api/v1/machines".to_owned(),
        "/api/v1/sales.csv?period=day".to_owned(),
    ];
    println!("{tip} entries, {machines} machines, {requests} sequential requests per page\n");
    println!("| page | p50 ms | p99 ms | max ms | bytes |");
    println!("|---|---:|---:|---:|---:|");
    for page in &pages {
        let (status, body) = client.get(page);
        assert_eq!(status, 200, "{page}: {body}");
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let start = Instant::now();
            let (status, _) = client.get(page);
            times.push(start.elapsed());
            assert_eq!(status, 200, "{page}");
        }
        times.sort();
        println!(
            "| `{page}` | {} | {} | {} | {} |",
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().expect("requests")),
            body.len()
        );
    }
}
