//! A small client for a replica's dashboard, as a browser uses it: keeps
//! the cookies it is given, logs in through the form with its CSRF token.
//! `vendctl bench` times pages with it.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest a single request may take before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DashboardClient {
    base: String,
    agent: ureq::Agent,
    cookies: BTreeMap<String, String>,
}

impl DashboardClient {
    /// A client for the dashboard at `host_port` (plain HTTP on loopback).
    pub fn new(host_port: &str) -> DashboardClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        DashboardClient {
            base: format!("http://{host_port}"),
            agent,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
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

    /// The status and body of a GET of `path`.
    pub fn get(&mut self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("cookie", &self.cookie_header())
            .call()
            .with_context(|| format!("GET {url}"))?;
        self.keep_cookies(&response);
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading {url}"))?;
        Ok((status, body))
    }

    /// Logs in through the login form; later requests carry the session.
    pub fn log_in(&mut self, user: &str, password: &str) -> Result<()> {
        let (_, form) = self.get("/login")?;
        let marker = "name=\"csrf\" value=\"";
        let Some(start) = form.find(marker).map(|at| at + marker.len()) else {
            bail!("{}/login has no login form", self.base);
        };
        let token = &form[start..start + form[start..].find('"').unwrap_or(0)];
        let body =
            serde_urlencoded::to_string([("user", user), ("password", password), ("csrf", token)])?;
        let url = format!("{}/login", self.base);
        let response = self
            .agent
            .post(&url)
            .header("cookie", &self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .with_context(|| format!("POST {url}"))?;
        if response.status().as_u16() != 303 {
            bail!(
                "logging in as {user} at {url} was refused ({})",
                response.status()
            );
        }
        self.keep_cookies(&response);
        Ok(())
    }
}
