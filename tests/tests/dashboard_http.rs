//! The operators' dashboard served by real `vend-replica` processes on free
//! ports, with a fleet selling over the real link and accounts made with
//! `vendctl user add`: every page and API route needs a session (on every
//! replica), auditors are refused every write, writes need the session's
//! CSRF token, bad input gets a 4xx (never a 5xx), live updates resume
//! after a reconnect without losing or repeating an entry, and the API's
//! sales and inventory equal `vendctl replay --json` of the same log.
//!
//! One cluster serves every check, to keep the run short.

mod common;

use common::web::{Browser, log_in_when_ready, user_add};
use common::{Cluster, base_port, finish_fleet, init_cluster, primaries, start_fleet, vendctl};
use ledger::admin::PasswordParams;
use ledger::money::MoneyKind;
use ledger::{Command as VmCommand, MachineId};
use link::driver::UplinkReport;
use replica::config::LocalClusterPlan;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

const ADMIN: (&str, &str) = ("kim", "admin-pass-1!");
const AUDITOR: (&str, &str) = ("lee", "audit-pass-2!");

/// Every GET a session protects.
const READ_ROUTES: [&str; 21] = [
    "/",
    "/machines/VM-001",
    "/sales",
    "/sales?period=week",
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
];

/// Every write (forms and JSON).
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

/// Polls `done` until it holds (at most 20 s).
fn wait_until(browser: &mut Browser, what: &str, mut done: impl FnMut(&mut Browser) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(browser) {
        assert!(Instant::now() < deadline, "still waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads live updates until `stop` says so; the ids seen. `last_id`
/// resumes a stream.
fn read_events(
    address: SocketAddr,
    cookie: &str,
    last_id: Option<u64>,
    stop: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /api/v1/events HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n{resume}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop(&seen) {
        let n = stream.read(&mut chunk).expect("live updates arrive");
        assert!(
            n > 0,
            "the stream ended: {}",
            &text[text.len().saturating_sub(500)..]
        );
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        // Whole lines only; the last one may be cut.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        seen = complete
            .lines()
            .filter_map(|line| {
                line.strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
            })
            .map(|id| id.trim().parse().unwrap())
            .collect();
    }
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    seen
}

fn status_address(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + 21 + u16::try_from(index).unwrap()))
}

fn check_sessions_everywhere(addresses: &[SocketAddr]) {
    for &address in addresses {
        let mut browser = Browser::new(address);
        for path in READ_ROUTES.iter().chain(["/api/v1/events"].iter()) {
            let answer = browser.get(path);
            if path.starts_with("/api/") {
                assert_eq!(answer.status, 401, "{address}{path}: {}", answer.body);
                let json: Value = serde_json::from_str(&answer.body).unwrap();
                assert!(json["error"].is_string());
            } else {
                assert_eq!(answer.status, 303, "{address}{path}");
                assert!(answer.location.starts_with("/login"), "{address}{path}");
            }
        }
        for (path, body) in WRITE_ROUTES {
            let answer = browser.post(path, body, Some("0123456789abcdef0123456789abcdef"));
            assert_eq!(answer.status, 401, "{address}{path}: {}", answer.body);
        }
        assert_eq!(browser.get("/login").status, 200);
        assert_eq!(browser.get("/api/v1/status").status, 200);
    }
}

fn check_roles_and_csrf(
    primary: SocketAddr,
    follower: SocketAddr,
    admin_csrf: &str,
    admin: &mut Browser,
) {
    let mut auditor = Browser::new(primary);
    let auditor_csrf = log_in_when_ready(&mut auditor, AUDITOR.0, AUDITOR.1);
    for path in READ_ROUTES {
        let answer = auditor.get(path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    assert!(!auditor.get("/machines/VM-001").body.contains("Set price"));
    for (path, body) in WRITE_ROUTES {
        let answer = auditor.post(path, body, Some(&auditor_csrf));
        assert_eq!(answer.status, 403, "auditor {path}: {}", answer.body);
    }
    // The admin's writes need the session's token.
    let path = "/api/v1/machines/VM-001/slots/1/price";
    assert_eq!(admin.post(path, r#"{"price":600}"#, None).status, 403);
    assert_eq!(
        admin
            .post(path, r#"{"price":600}"#, Some(&auditor_csrf))
            .status,
        403
    );
    let form = "/machines/VM-001/slots/1/price";
    assert_eq!(admin.post(form, "price=600", None).status, 403);
    assert_eq!(admin.post(form, "price=600", Some("forged")).status, 403);
    // The session made on the primary works on a follower, which says
    // where the primary is.
    let mut on_follower = admin.at(follower);
    let page = on_follower.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("not the primary"), "{}", page.body);
    assert!(
        page.body.contains(&primary.to_string()),
        "links to the primary"
    );
    let answer = on_follower.post(path, r#"{"price":600}"#, Some(admin_csrf));
    assert_eq!(answer.status, 409, "{}", answer.body);
}

fn check_bad_input(admin: &mut Browser, csrf: &str) {
    for path in [
        "/machines/VM-999",
        "/machines/bad%20id",
        "/api/v1/machines/VM-999",
        "/sales?period=fortnight",
        "/api/v1/sales?format=xml",
        "/audit?before=abc",
        "/audit?from=yesterday",
        "/api/v1/audit?kind=DROP%20TABLE",
        "/reconciliation?machine=VM-999",
        "/no/such/page",
    ] {
        let answer = admin.get(path);
        assert!(
            (400..500).contains(&answer.status),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
    }
    for (path, body) in [
        ("/api/v1/machines/VM-001/slots/1/price", r#"{"price":455}"#),
        (
            "/api/v1/machines/VM-001/slots/1/price",
            r#"{"price":20000000}"#,
        ),
        (
            "/api/v1/machines/VM-001/slots/1/price",
            r#"{"price":"cheap"}"#,
        ),
        ("/api/v1/machines/VM-001/slots/77/price", r#"{"price":600}"#),
        ("/api/v1/machines/VM-999/slots/1/price", r#"{"price":600}"#),
        ("/api/v1/machines/VM-001/slots/1/name", "{oops"),
        ("/api/v1/fleet/price", r#"{"product":"Caviar","price":600}"#),
        ("/api/v1/machines/VM-001/tickets/999999/settle", "{}"),
        (
            "/api/v1/alerts/acknowledge",
            r#"{"kind":"bored","machine":"VM-001"}"#,
        ),
        ("/machines/VM-001/slots/1/price", "price=abc"),
    ] {
        let answer = admin.post(path, body, Some(csrf));
        assert!(
            (400..500).contains(&answer.status),
            "{path} {body}: {} {}",
            answer.status,
            answer.body
        );
    }
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(64 * 1024));
    let answer = admin.post("/api/v1/machines/VM-001/slots/1/name", &huge, Some(csrf));
    assert_eq!(answer.status, 413, "{}", answer.body);
}

/// A machine as its app runs it (`vm-iced`'s `Machine` with its uplink,
/// applying the dashboard's commands as `App::on_uplink` does), in this
/// process: the simulated fleet does not apply commands.
struct RunningMachine {
    machine: Machine,
    reports: tokio::sync::mpsc::Receiver<UplinkReport>,
}

impl RunningMachine {
    fn start(config: &MachineConfig, runtime: &tokio::runtime::Runtime) -> RunningMachine {
        let mut machine = Machine::open(config, system_clock(), PasswordParams::Light).unwrap();
        let reports = machine
            .start_uplink(runtime.handle(), config.replicas.clone())
            .expect("replicas configured");
        RunningMachine { machine, reports }
    }

    /// Handles the uplink's reports until `done` holds (at most 20 s).
    fn run_until(&mut self, what: &str, done: impl Fn(&Machine) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.machine) {
            assert!(Instant::now() < deadline, "still waiting for {what}");
            match self.reports.try_recv() {
                Ok(UplinkReport::Acknowledged(seq)) => self.machine.acknowledged(seq),
                Ok(UplinkReport::Remote(command)) => {
                    self.machine.execute(VmCommand::Remote(command)).unwrap();
                }
                Ok(UplinkReport::State { .. }) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn caught_up(&mut self) {
        self.run_until("the machine's events to be acknowledged", |m| {
            m.unacknowledged() == 0
        });
    }
}

/// The machine's page model from the API.
fn machine_json(admin: &mut Browser, id: &str) -> Value {
    admin.json(&format!("/api/v1/machines/{id}"))
}

/// A command's outcome on the machine's page, once it is `outcome`.
fn wait_for_command(admin: &mut Browser, id: &str, command_id: u64, outcome: &str) -> Value {
    let mut found = Value::Null;
    wait_until(admin, &format!("command {command_id} {outcome}"), |admin| {
        let detail = machine_json(admin, id);
        found = detail["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["command_id"] == command_id)
            .cloned()
            .unwrap_or(Value::Null);
        found["outcome"] == outcome
    });
    found
}

/// The operators' flows that need a machine applying commands: an alert
/// acknowledged (who, when, note), a price change requested → applied,
/// a change-owed ticket settled, each shown on the machine's page.
fn check_operator_flows(dir: &Path, base: u16, admin: &mut Browser, csrf: &str) {
    let id = MachineId::numbered(9);
    ledger::keys::create_machine_keys(&dir.join("keys"), std::slice::from_ref(&id)).unwrap();
    let plan = LocalClusterPlan {
        base_port: base,
        host: Ipv4Addr::LOCALHOST,
    };
    let mut config = MachineConfig::new(id.clone(), dir.join("vm-009"), dir.join("keys"));
    config.initial_admin_password = Some("vend-admin-1!".into());
    config.replicas = (1..=3).map(|n| plan.machine_addr(n).to_string()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut vm = RunningMachine::start(&config, &runtime);
    // Stocked, two 500-won coins in, then Return with the 500-won tube
    // jammed: nothing else can pay them back, so 1,000 won is owed on a
    // ticket (change is owed only after such a fault).
    let admin_password = "vend-admin-1!".to_owned();
    for command in [
        VmCommand::AdminLogin {
            password: admin_password,
        },
        VmCommand::RefillAll,
        VmCommand::AdminLogout,
    ] {
        vm.machine.execute(command).unwrap();
    }
    for _ in 0..2 {
        let coin = VmCommand::Insert {
            kind: MoneyKind::Coin,
            value: 500,
        };
        vm.machine.execute(coin).unwrap();
    }
    let jammed = VmCommand::ReturnChangeJammed {
        jammed: ledger::money::Denomination::Coin500,
    };
    vm.machine.execute(jammed).unwrap();
    vm.caught_up();
    let vm_id = id.to_string();
    let mut ticket = 0;
    wait_until(admin, "the ticket on the machine's page", |admin| {
        let answer = admin.get(&format!("/api/v1/machines/{vm_id}"));
        let detail: Value = serde_json::from_str(&answer.body).unwrap_or_default();
        ticket = detail["change_owed"][0]["ticket"].as_u64().unwrap_or(0);
        detail["change_owed"][0]["amount"] == 1_000
    });

    // Acknowledge the change-owed alert: recorded, shown with who and why.
    let is_ours =
        |a: &Value| a["key"]["machine"] == vm_id.as_str() && a["key"]["kind"] == "ChangeOwed";
    wait_until(admin, "the change-owed alert", |admin| {
        let alerts = admin.json("/api/v1/alerts");
        alerts.as_array().unwrap().iter().any(is_ours)
    });
    let body = format!(r#"{{"kind":"change_owed","machine":"{vm_id}","note":"coins on the way"}}"#);
    let answer = admin.post("/api/v1/alerts/acknowledge", &body, Some(csrf));
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_until(admin, "the alert acknowledged", |admin| {
        let alerts = admin.json("/api/v1/alerts");
        alerts.as_array().unwrap().iter().any(|a| {
            is_ours(a)
                && a["acknowledged"]["by"] == "kim"
                && a["acknowledged"]["note"] == "coins on the way"
        })
    });
    let page = admin.get(&format!("/machines/{vm_id}"));
    assert!(page.body.contains("coins on the way"), "{}", page.body);

    // A price change: requested, delivered, applied by the machine.
    let path = format!("/api/v1/machines/{vm_id}/slots/2/price");
    let answer = admin.post(&path, r#"{"price":650}"#, Some(csrf));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let receipt: Value = serde_json::from_str(&answer.body).unwrap();
    let command_id = receipt["commands"][0]["command_id"].as_u64().unwrap();
    assert_eq!(receipt["commands"][0]["delivered"], true, "{receipt}");
    let requested = wait_for_command(admin, &vm_id, command_id, "pending");
    assert_eq!(requested["requested_by"], "kim");
    vm.run_until("the price change", |m| {
        m.state().slots[&ledger::SlotId(2)].config.product.price == 650
    });
    vm.caught_up();
    let applied = wait_for_command(admin, &vm_id, command_id, "applied");
    assert!(applied["outcome_gseq"].as_u64().unwrap() > requested["gseq"].as_u64().unwrap());
    let detail = machine_json(admin, &vm_id);
    assert_eq!(detail["slots"][1]["price"], 650, "{detail}");
    let page = admin.get(&format!("/machines/{vm_id}"));
    assert!(page.body.contains("price to ₩650"), "{}", page.body);

    // Settle the ticket: the machine records it, the page shows it gone.
    let path = format!("/api/v1/machines/{vm_id}/tickets/{ticket}/settle");
    let answer = admin.post(&path, "{}", Some(csrf));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let receipt: Value = serde_json::from_str(&answer.body).unwrap();
    let settle_id = receipt["commands"][0]["command_id"].as_u64().unwrap();
    vm.run_until("the ticket settled", |m| m.state().owed.is_empty());
    vm.caught_up();
    wait_for_command(admin, &vm_id, settle_id, "applied");
    assert_eq!(
        machine_json(admin, &vm_id)["change_owed"],
        Value::Array(Vec::new())
    );
    // The audit log shows who asked for what.
    let audit = admin.json("/api/v1/audit?kind=command_requested");
    let requests: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"]["machine"] == vm_id.as_str())
        .collect();
    assert_eq!(requests.len(), 2, "{audit}");
    assert!(
        requests.iter().all(|e| e["kind"]["operator"] == "kim"),
        "{audit}"
    );
    let page = admin.get("/audit?kind=alert_acknowledged");
    assert!(page.body.contains("alert acknowledged") && page.body.contains("by kim"));
    drop(vm);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// `vendctl user disable` ends the account's sessions and logins.
fn check_disabled_account(dir: &Path, primary: SocketAddr) {
    let mut auditor = Browser::new(primary);
    log_in_when_ready(&mut auditor, AUDITOR.0, AUDITOR.1);
    assert_eq!(auditor.get("/api/v1/session").status, 200);
    let disabled = vendctl(&[
        "user",
        "disable",
        AUDITOR.0,
        "--cluster",
        dir.to_str().unwrap(),
    ]);
    assert!(
        disabled.status.success(),
        "{}",
        String::from_utf8_lossy(&disabled.stderr)
    );
    assert_eq!(auditor.get("/api/v1/session").status, 401);
    assert!(auditor.get("/").location.starts_with("/login"));
    assert_eq!(auditor.log_in(AUDITOR.0, AUDITOR.1), Err(401));
}

/// Gseqs of the log's entries in `from..=to`, from `vendctl dump`.
fn logged_gseqs(dir: &Path, from: u64, to: u64) -> Vec<u64> {
    let data = dir.join("replica-1");
    let dump = vendctl(&["dump", "--data", data.to_str().unwrap()]);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["gseq"]
                .as_u64()
                .unwrap()
        })
        .filter(|gseq| (from..=to).contains(gseq))
        .collect()
}

/// Sales rows and each machine's stock per slot, as a comparable map.
fn inventory(machines: &[Value]) -> BTreeMap<String, Vec<(u64, String, u64, i64)>> {
    machines
        .iter()
        .map(|m| {
            let id = m["machine_id"]
                .as_str()
                .or(m["machine"].as_str())
                .unwrap()
                .to_owned();
            let slots = m["slots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["slot"].as_u64().unwrap(),
                        s["product"].as_str().unwrap().to_owned(),
                        s["stock"].as_u64().unwrap(),
                        s["price"].as_i64().unwrap(),
                    )
                })
                .collect();
            (id, slots)
        })
        .collect()
}

#[test]
fn the_dashboard_over_a_real_cluster() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let base = base_port();
    let topology = init_cluster(dir, base);
    let mut cluster = Cluster::start(dir, topology);
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let primary_index = primaries(&status)[0].0;
    let primary = status_address(base, primary_index);
    let follower = status_address(base, (primary_index + 1) % 3);
    check_sessions_everywhere(&[primary, follower]);

    user_add(dir, ADMIN.0, "admin", ADMIN.1);
    user_add(dir, AUDITOR.0, "auditor", AUDITOR.1);
    let listed = vendctl(&["user", "list", "--cluster", dir.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("kim") && listed.contains("auditor"),
        "{listed}"
    );
    let fleet = start_fleet(dir, 3, 400, 120);
    let mut admin = Browser::new(primary);
    let admin_csrf = log_in_when_ready(&mut admin, ADMIN.0, ADMIN.1);

    // Live updates while the fleet sells: read some, drop the connection,
    // resume with Last-Event-ID, read on until the fleet is done.
    let cookie = admin.cookie_header();
    let start = admin.json("/api/v1/status")["commit"].as_u64().unwrap();
    let first = read_events(primary, &cookie, Some(start), |seen| seen.len() >= 200);
    let resumed_from = *first.last().unwrap();
    // Pages read the projection, republished at most every 500 ms.
    wait_until(
        &mut admin,
        "the fleet's machines in the projection",
        |admin| admin.get("/api/v1/machines/VM-001").status == 200,
    );
    check_roles_and_csrf(primary, follower, &admin_csrf, &mut admin);
    check_bad_input(&mut admin, &admin_csrf);
    let summary = finish_fleet(fleet, 3 * 400);
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let status = admin.json("/api/v1/status");
        let (commit, tip) = (
            status["commit"].as_u64().unwrap(),
            status["tip"].as_u64().unwrap(),
        );
        if commit == tip || Instant::now() > deadline {
            break commit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let second = read_events(primary, &cookie, Some(resumed_from), |seen| {
        seen.last() >= Some(&end)
    });
    check_operator_flows(dir, base, &mut admin, &admin_csrf);
    check_disabled_account(dir, primary);
    let mut seen = first.clone();
    seen.extend(&second);
    // The stream may run past `end` (read from a status snapshot that can
    // be a round old): what counts is that it holds every entry once, in
    // order, from the first after `start` to the last it delivered.
    let last = *seen.last().expect("the stream delivered entries");
    assert!(last >= end, "the stream reached the commit {end}: {last}");
    let expected: Vec<u64> = (start + 1..=last).collect();
    assert_eq!(
        seen, expected,
        "every committed entry once, across the reconnect (resumed after {resumed_from})"
    );
    assert_eq!(
        seen,
        logged_gseqs_later(dir, start, last, &mut cluster, &mut admin, summary)
    );
}

/// Saves the API's sales and inventory, stops the cluster, and compares
/// them with `vendctl replay --json` of replica-1's log; returns the log's
/// gseqs in `from..=to`.
fn logged_gseqs_later(
    dir: &Path,
    from: u64,
    to: u64,
    cluster: &mut Cluster,
    admin: &mut Browser,
    _summary: Value,
) -> Vec<u64> {
    // Wait until this replica's projection has every entry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (sales, machines, tip) = loop {
        let tip = admin.json("/api/v1/status")["tip"].as_u64().unwrap();
        let sales = admin.json("/api/v1/sales?period=month");
        let overview = admin.json("/api/v1/machines");
        if sales["as_of_gseq"].as_u64() == Some(tip) || Instant::now() > deadline {
            let mut machines = Vec::new();
            for row in overview["machines"].as_array().unwrap() {
                let id = row["machine"].as_str().unwrap();
                machines.push(admin.json(&format!("/api/v1/machines/{id}")));
            }
            break (sales, machines, tip);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sales["as_of_gseq"].as_u64(), Some(tip));
    cluster.stop_all();
    let data = dir.join("replica-1");
    let replay = vendctl(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--period",
        "month",
        "--json",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replayed: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert!(replayed["as_of_gseq"].as_u64().unwrap() >= tip);
    assert_eq!(
        sales["rows"], replayed["sales"],
        "sales per month, machine and product"
    );
    assert_eq!(
        inventory(&machines),
        inventory(replayed["machines"].as_array().unwrap()),
        "every slot's product, stock and price"
    );
    for (api, replay) in machines
        .iter()
        .zip(replayed["machines"].as_array().unwrap())
    {
        assert_eq!(api["cash_box_won"], replay["cash_box"]);
        assert_eq!(api["stacker_won"], replay["stacker"]);
        assert_eq!(api["sales_won"], replay["sales_won"]);
    }
    logged_gseqs(dir, from + 1, to)
}
