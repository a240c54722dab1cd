//! `vendctl demo --no-gui` as a newcomer runs it: it starts three replicas
//! and a fleet, its dashboards answer, the fleet's sales reach the log, and
//! Ctrl-C (SIGINT) stops every child and exits 0; a second run on the same
//! directory carries on with the same data.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vendctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vendctl"))
}

/// A base port unlikely to be taken by another test run at the same time.
fn base_port() -> u16 {
    let spread = u16::try_from(std::process::id() % 200).unwrap();
    30_000 + spread * 100
}

/// Starts the demo and reads its printout up to "Ctrl-C stops everything".
fn start_demo(dir: &Path, base: u16) -> (Child, Vec<String>) {
    let mut child = vendctl()
        .args([
            "demo",
            "--no-gui",
            "--machines",
            "3",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vendctl demo starts");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).unwrap();
        assert!(read > 0, "demo exited early; it printed {lines:#?}");
        let done = line.contains("Ctrl-C stops everything");
        lines.push(line.trim_end().to_owned());
        if done {
            break;
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, lines)
}

fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

/// Logs in to a dashboard with the login the demo printed; the session
/// cookie.
fn log_in(base: &str, password: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let cookies = |response: &ureq::http::Response<ureq::Body>| -> String {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut form = agent.get(&format!("{base}/login")).call().unwrap();
    let pre_session = cookies(&form);
    let page = form.body_mut().read_to_string().unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form carries a CSRF token")
        .to_owned();
    let answer = agent
        .post(&format!("{base}/login"))
        .header("cookie", &pre_session)
        .send_form([
            ("csrf", csrf.as_str()),
            ("next", "/"),
            ("user", "demo"),
            ("password", password),
        ])
        .unwrap();
    assert_eq!(answer.status().as_u16(), 303, "logged in and sent on");
    cookies(&answer)
}

/// Items sold today as a dashboard's fleet overview shows them.
fn sold_today(base: &str, session: &str) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let Ok(mut response) = agent
        .get(&format!("{base}/api/v1/machines"))
        .header("cookie", session)
        .call()
    else {
        return 0;
    };
    let body = response.body_mut().read_to_string().unwrap_or_default();
    let overview: Value = serde_json::from_str(&body).unwrap_or_default();
    overview["totals"]["sales_today_items"]
        .as_u64()
        .unwrap_or(0)
}

fn purchases(data: &Path) -> u64 {
    let out = vendctl()
        .args(["replay", "--json", "--data"])
        .arg(data)
        .output()
        .unwrap();
    if !out.status.success() {
        return 0;
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report["totals"]["purchases"].as_u64().unwrap_or(0)
}

fn replica_pids(dir: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    file["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .map(|pid| i32::try_from(pid).unwrap())
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// SIGINT, as Ctrl-C sends, then the exit status within a bound.
fn interrupt(mut child: Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_runs_sells_and_stops_cleanly_then_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_port();
    let (child, printed) = start_demo(dir.path(), base);
    let text = printed.join("\n");
    for n in 0..3 {
        assert!(
            text.contains(&format!("http://127.0.0.1:{}/", base + n)),
            "{text}"
        );
    }
    assert!(
        text.contains("(primary)") && text.contains("replication over"),
        "{text}"
    );
    let pids = replica_pids(dir.path());
    assert_eq!(pids.len(), 3, "cluster.json names the running replicas");
    // Every replica answers on its dashboard port.
    for n in 0..3 {
        let (status, body) = get(&format!("http://127.0.0.1:{}/api/v1/status", base + n))
            .expect("the dashboard answers");
        assert_eq!(status, 200, "{body}");
    }
    // The demo made an admin login and printed it once; with it, a
    // follower's dashboard shows the fleet's sales of today.
    let password = text
        .split("with password ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("the demo prints its login")
        .to_owned();
    let follower = format!("http://127.0.0.1:{}", base + 1);
    let session = log_in(&follower, &password);
    let deadline = Instant::now() + Duration::from_secs(90);
    while sold_today(&follower, &session) == 0 {
        assert!(
            Instant::now() < deadline,
            "no sale reached the overview in 90 s"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let data = dir.path().join("replica-1");
    let status = interrupt(child);
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status}");
    for pid in &pids {
        assert!(!alive(*pid), "replica pid {pid} outlived the demo");
    }
    assert!(
        replica_pids(dir.path()).is_empty(),
        "cluster.json says nothing runs"
    );
    let sold = purchases(&data);

    // Again on the same directory: the same keys, login and data, more
    // sales; the password is not printed again.
    let (child, printed) = start_demo(dir.path(), base);
    assert!(
        !printed.iter().any(|l| l.contains("created")),
        "{printed:#?}"
    );
    assert!(
        !printed.iter().any(|l| l.contains(&password)),
        "{printed:#?}"
    );
    log_in(&follower, &password);
    let deadline = Instant::now() + Duration::from_secs(90);
    while purchases(&data) <= sold {
        assert!(
            Instant::now() < deadline,
            "no new purchase in 90 s after a restart"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(interrupt(child).success());
}

#[test]
fn a_port_in_use_is_named_with_the_flag_that_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_port() + 50;
    let _held = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let out = vendctl()
        .args([
            "demo",
            "--no-gui",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("port {}", base + 1)) && stderr.contains("--base-port"),
        "{stderr}"
    );
}
