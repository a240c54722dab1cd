//! A browser for the multi-process tests: keeps cookies, follows no
//! redirects, logs in through the form; and `vendctl user add` for the
//! accounts it logs in with.

use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A browser: keeps cookies, follows no redirects.
pub struct Browser {
    base: String,
    cookies: HashMap<String, String>,
    agent: ureq::Agent,
}

pub struct Answer {
    pub status: u16,
    pub location: String,
    pub body: String,
}

impl Browser {
    pub fn new(address: SocketAddr) -> Browser {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Browser {
            base: format!("http://{address}"),
            cookies: HashMap::new(),
            agent,
        }
    }

    /// Another replica, with this browser's cookies (cookies ignore ports).
    pub fn at(&self, address: SocketAddr) -> Browser {
        let mut other = Browser::new(address);
        other.cookies = self.cookies.clone();
        other
    }

    pub fn cookie_header(&self) -> String {
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.join("; ")
    }

    pub fn finish(
        &mut self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Answer {
        let mut response = response.expect("the dashboard answers");
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (name, value) = text.split(';').next().unwrap().split_once('=').unwrap();
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

    pub fn get(&mut self, path: &str) -> Answer {
        let response = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header())
            .call();
        self.finish(response)
    }

    pub fn json(&mut self, path: &str) -> Value {
        let answer = self.get(path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    /// A form (`body` urlencoded) or, under /api/, JSON with the CSRF header.
    pub fn post(&mut self, path: &str, body: &str, csrf: Option<&str>) -> Answer {
        let mut request = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("cookie", &self.cookie_header());
        let body = if path.starts_with("/api/") {
            request = request.header("content-type", "application/json");
            if let Some(csrf) = csrf {
                request = request.header("x-csrf-token", csrf);
            }
            body.to_owned()
        } else {
            request = request.header("content-type", "application/x-www-form-urlencoded");
            match csrf {
                Some(csrf) if body.is_empty() => format!("csrf={csrf}"),
                Some(csrf) => format!("{body}&csrf={csrf}"),
                None => body.to_owned(),
            }
        };
        let response = request.send(body.as_bytes());
        self.finish(response)
    }

    /// Logs in through the form; returns the session's CSRF token, or the
    /// refusal's status.
    pub fn log_in(&mut self, user: &str, password: &str) -> Result<String, u16> {
        let form = self.get("/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let token = hidden(&form.body, "csrf");
        let body =
            serde_urlencoded_pairs(&[("user", user), ("password", password), ("csrf", &token)]);
        let answer = self.post("/login", &body, None);
        if answer.status != 303 {
            return Err(answer.status);
        }
        Ok(self.json("/api/v1/session")["csrf"]
            .as_str()
            .unwrap()
            .to_owned())
    }
}

pub fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let escaped: String = v
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={escaped}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("the field is there") + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

pub fn user_add(dir: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(super::binary("vendctl"))
        .args([
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--cluster",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "vendctl user add {name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Logs in, retrying while the account is still on its way into the
/// replica's projection.
pub fn log_in_when_ready(browser: &mut Browser, user: &str, password: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match browser.log_in(user, password) {
            Ok(csrf) => return csrf,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status, 401, "only an unknown account is retried");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(status) => panic!("{user} cannot log in: {status}"),
        }
    }
}
