//! `vendctl export` against the ledger's own counters: DuckDB reads the
//! csv and jsonl exports and its totals equal `vendctl replay --json`; each
//! machine's DEX file, read back by a parser written here, carries the
//! ledger's counters since installation and since the last collection, a
//! correct CRC and segment count.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vendctl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_vendctl"))
        .args(args)
        .output()
        .expect("vendctl runs");
    assert!(
        out.status.success(),
        "vendctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A simulated fleet log in `dir/fleet`; its path and the summary.
fn simulated_fleet(
    dir: &Path,
    machines: u32,
    events_per_machine: u32,
    seed: u32,
) -> (String, Value) {
    let data = dir.join("fleet").to_str().unwrap().to_owned();
    let summary = json_of(&vendctl(&[
        "simulate",
        "--offline",
        "--data",
        &data,
        "--machines",
        &machines.to_string(),
        "--events-per-machine",
        &events_per_machine.to_string(),
        "--seed",
        &seed.to_string(),
        "--json",
    ]));
    (data, summary)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A Python that can import duckdb: the system's, or a virtual environment
/// under the build's temporary directory, made and filled once.
fn python_with_duckdb() -> PathBuf {
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import duckdb"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let system = PathBuf::from("python3");
    if imports(&system) {
        return system;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("duckdb-venv");
    let python = venv.join("bin/python3");
    if !imports(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (scripts/test.sh installs it)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "duckdb"])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install duckdb failed");
    }
    assert!(
        imports(&python),
        "duckdb does not import after installing it"
    );
    python
}

/// Totals DuckDB computes over the four exports.
const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, sys
events_csv, events_jsonl, sales_csv, sales_jsonl = sys.argv[1:5]
db = duckdb.connect()
def one(sql):
    return db.execute(sql).fetchone()
out = {}
for name, source in [("csv", f"read_csv_auto('{events_csv}')"), ("jsonl", f"read_json_auto('{events_jsonl}')")]:
    out[name] = dict(zip(["rows", "purchases", "cancels", "machines"], one(f"""
        select count(*),
               count(*) filter (where kind = 'product_purchased'),
               count(*) filter (where kind = 'purchase_cancelled'),
               count(distinct machine_id)
        from {source}""")))
accounts = [c[0] for c in db.execute(f"describe select * from read_csv_auto('{events_csv}')").fetchall()][9:]
sums = one("select " + ", ".join(f"sum({a})" for a in accounts) + f" from read_csv_auto('{events_csv}')")
out["csv"]["accounts"] = dict(zip(accounts, [int(s) for s in sums]))
out["jsonl"]["sales_revenue"] = int(one(f"""
    select sum(p.won) from (select unnest(postings) as p from read_json_auto('{events_jsonl}'))
    where p.account = 'sales_revenue'""")[0])
out["kst_matches_utc"] = one(f"""
    select count(*) filter (where time_kst::timestamp = (time_utc::timestamptz at time zone 'UTC') + interval 9 hour)
    from read_csv_auto('{events_csv}', all_varchar = true)""")[0]
for name, source in [("sales_csv", f"read_csv_auto('{sales_csv}')"), ("sales_jsonl", f"read_json_auto('{sales_jsonl}')")]:
    out[name] = dict(zip(["units", "won"], [int(v) for v in one(f"select sum(units), sum(won) from {source}")]))
print(json.dumps(out))
"#;

#[test]
fn duckdb_reads_the_csv_and_jsonl_exports_and_their_totals_are_the_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, summary) = simulated_fleet(dir.path(), 3, 2_000, 17);
    let data = data.as_str();
    let replay = json_of(&vendctl(&["replay", "--data", data, "--json"]));
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    for (format, table, file) in [
        ("csv", "events", "events.csv"),
        ("jsonl", "events", "events.jsonl"),
        ("csv", "sales", "sales.csv"),
        ("jsonl", "sales", "sales.jsonl"),
    ] {
        vendctl(&[
            "export",
            "--data",
            data,
            "--format",
            format,
            "--table",
            table,
            "--out",
            &path(file),
        ]);
    }
    let python = python_with_duckdb();
    let out = Command::new(python)
        .args(["-c", DUCKDB_SCRIPT])
        .args(["events.csv", "events.jsonl", "sales.csv", "sales.jsonl"].map(path))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: Value = serde_json::from_slice(&out.stdout).unwrap();

    let totals = &replay["totals"];
    let events = summary["events"].as_u64().unwrap();
    let (purchases, cancels) = (&totals["purchases"], &totals["cancels"]);
    let sales_won = totals["sales_won"].as_i64().unwrap();
    for name in ["csv", "jsonl"] {
        assert_eq!(duck[name]["rows"].as_u64(), Some(events), "{name}: {duck}");
        assert_eq!(&duck[name]["purchases"], purchases, "{name}: {duck}");
        assert_eq!(&duck[name]["cancels"], cancels, "{name}: {duck}");
        assert_eq!(duck[name]["machines"], 3, "{name}: {duck}");
    }
    // Revenue is a credit: the postings' column sums to minus net sales.
    assert_eq!(
        duck["csv"]["accounts"]["sales_revenue"].as_i64(),
        Some(-sales_won)
    );
    assert_eq!(duck["jsonl"]["sales_revenue"].as_i64(), Some(-sales_won));
    // Every posting balances, so the account columns sum to zero, and each
    // one equals the fleet's balance of that account.
    let accounts = duck["csv"]["accounts"].as_object().unwrap();
    assert_eq!(
        accounts.values().map(|v| v.as_i64().unwrap()).sum::<i64>(),
        0
    );
    let balances = totals["balances"]
        .as_object()
        .expect("balances in replay --json");
    for (account, column) in accounts {
        let balance = balances.get(account).and_then(Value::as_i64).unwrap_or(0);
        assert_eq!(
            column.as_i64(),
            Some(balance),
            "{account}: {accounts:?} vs {balances:?}"
        );
    }
    assert!(balances.keys().all(|name| accounts.contains_key(name)));
    assert_eq!(duck["kst_matches_utc"].as_u64(), Some(events), "{duck}");
    let net_units = purchases.as_i64().unwrap() - cancels.as_i64().unwrap();
    for name in ["sales_csv", "sales_jsonl"] {
        assert_eq!(
            duck[name]["units"].as_i64(),
            Some(net_units),
            "{name}: {duck}"
        );
        assert_eq!(
            duck[name]["won"].as_i64(),
            Some(sales_won),
            "{name}: {duck}"
        );
    }
}

/// A DEX file as this parser reads it: segments by id, in order.
struct Dex {
    segments: Vec<(String, Vec<String>)>,
}

impl Dex {
    /// Reads and checks the envelope, the CRC and the segment count.
    fn parse(text: &str) -> Dex {
        assert!(text.ends_with("\r\n"), "the last line ends in CR LF");
        assert!(
            text.bytes()
                .all(|b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b)),
            "only printable ASCII"
        );
        let lines: Vec<&str> = text.strip_suffix("\r\n").unwrap().split("\r\n").collect();
        assert!(
            lines.iter().all(|l| !l.contains(['\r', '\n'])),
            "bare CR or LF"
        );
        let segments: Vec<(String, Vec<String>)> = lines
            .iter()
            .map(|line| {
                let mut parts = line.split('*').map(str::to_owned);
                (parts.next().unwrap(), parts.collect())
            })
            .collect();
        let ids: Vec<&str> = segments.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"DXS"));
        assert_eq!(&ids[ids.len() - 4..], ["EA2", "G85", "SE", "DXE"]);
        let st = ids.iter().position(|id| *id == "ST").expect("ST");
        let g85 = ids.len() - 3;
        // CRC-16/ARC over ST through the CR LF before G85, computed bit by
        // bit here rather than by the crate the exporter uses.
        let checked: String = lines[st..g85].iter().map(|l| format!("{l}\r\n")).collect();
        let mut crc: u16 = 0;
        for byte in checked.bytes() {
            crc ^= u16::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        assert_eq!(segments[g85].1, [format!("{crc:04X}")], "G85 CRC");
        let se = &segments[g85 + 1].1;
        assert_eq!(
            se[0].parse::<usize>().unwrap(),
            g85 + 2 - st,
            "SE counts ST..SE"
        );
        assert_eq!(se[1], "0001");
        Dex { segments }
    }

    fn one(&self, id: &str) -> Vec<i64> {
        let found: Vec<_> = self.segments.iter().filter(|(s, _)| s == id).collect();
        assert_eq!(found.len(), 1, "one {id}");
        found[0].1.iter().map(|v| v.parse().unwrap()).collect()
    }

    fn all(&self, id: &str) -> Vec<&Vec<String>> {
        self.segments
            .iter()
            .filter(|(s, _)| s == id)
            .map(|(_, e)| e)
            .collect()
    }
}

#[derive(Default, Debug, PartialEq)]
struct Count {
    units: i64,
    won: i64,
}

#[test]
fn each_machines_dex_file_carries_the_ledgers_counters() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = simulated_fleet(dir.path(), 2, 3_000, 23);
    let data = data.as_str();
    let replay = json_of(&vendctl(&["replay", "--data", data, "--json"]));
    let dump = String::from_utf8(vendctl(&["dump", "--data", data]).stdout).unwrap();
    for machine in replay["machines"].as_array().unwrap() {
        let id = machine["machine_id"].as_str().unwrap();
        // The ledger's counters, from the dump: since installation, and
        // since the last cash collection, per slot.
        let mut init: BTreeMap<i64, Count> = BTreeMap::new();
        let mut reset: BTreeMap<i64, Count> = BTreeMap::new();
        let mut collections = 0;
        for line in dump.lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            if entry["machine_id"] != id {
                continue;
            }
            let event = &entry["event"];
            let (sign, body) = match entry["kind"].as_str().unwrap() {
                "product_purchased" => (1, &event["ProductPurchased"]),
                "purchase_cancelled" => (-1, &event["PurchaseCancelled"]),
                "cash_collected" => {
                    collections += 1;
                    reset.clear();
                    continue;
                }
                _ => continue,
            };
            let slot = body["slot"].as_i64().unwrap();
            for counts in [&mut init, &mut reset] {
                let count = counts.entry(slot).or_default();
                count.units += sign;
                count.won += sign * body["price"].as_i64().unwrap();
            }
        }
        assert!(
            collections > 0,
            "{id} was collected at least once, so reset differs"
        );
        let text = String::from_utf8(
            vendctl(&["export", "--data", data, "--format", "dex", "--machine", id]).stdout,
        )
        .unwrap();
        let dex = Dex::parse(&text);
        assert_eq!(dex.all("ID1")[0][0], id);
        assert_eq!(dex.all("ID4")[0], &["0", "410", "KRW"]);
        let total = |counts: &BTreeMap<i64, Count>| {
            counts
                .values()
                .fold((0, 0), |(u, w), c| (u + c.units, w + c.won))
        };
        let ((init_units, init_won), (reset_units, reset_won)) = (total(&init), total(&reset));
        assert_eq!(
            dex.one("VA1"),
            [init_won, init_units, reset_won, reset_units],
            "{id}"
        );
        assert_eq!(
            dex.one("CA2"),
            [reset_won, reset_units, init_won, init_units],
            "{id}"
        );
        assert_eq!(init_won, machine["sales_won"].as_i64().unwrap());
        // PA1 names each slot at its price; PA2 follows with its counters.
        let pa1 = dex.all("PA1");
        let pa2 = dex.all("PA2");
        assert_eq!(pa1.len(), machine["slots"].as_array().unwrap().len());
        for ((pa1, pa2), slot) in pa1
            .iter()
            .zip(&pa2)
            .zip(machine["slots"].as_array().unwrap())
        {
            let number: i64 = pa1[0].parse().unwrap();
            assert_eq!(slot["slot"].as_i64(), Some(number));
            assert_eq!(pa1[1], slot["price"].to_string());
            let values: Vec<i64> = pa2.iter().map(|v| v.parse().unwrap()).collect();
            let (i, r) = (
                init.remove(&number).unwrap_or_default(),
                reset.remove(&number).unwrap_or_default(),
            );
            assert_eq!(
                values,
                [i.units, i.won, r.units, r.won],
                "{id} slot {number}"
            );
        }
        assert!(
            init.is_empty() && reset.is_empty(),
            "sales in slots PA1 does not list"
        );
        // The tubes: CA17 per coin, CA15 their value, as the ledger has them.
        let tubes = machine["tubes"].as_array().unwrap();
        let ca17 = dex.all("CA17");
        assert_eq!(ca17.len(), tubes.len());
        let mut value = 0;
        for (segment, tube) in ca17.iter().zip(tubes) {
            assert_eq!(segment[1], tube[0].to_string());
            assert_eq!(segment[2], tube[1].to_string());
            value += tube[0].as_i64().unwrap() * tube[1].as_i64().unwrap();
        }
        assert_eq!(dex.one("CA15"), [value]);
    }
}

#[test]
fn a_window_exports_what_replay_counts_up_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = simulated_fleet(dir.path(), 2, 1_500, 5);
    let data = data.as_str();
    let until = "2026-01-03";
    let replay = json_of(&vendctl(&[
        "replay", "--data", data, "--until", until, "--json",
    ]));
    let csv = String::from_utf8(
        vendctl(&["export", "--data", data, "--format", "csv", "--to", until]).stdout,
    )
    .unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let kinds = |kind: &str| rows.iter().filter(|r| r[5] == kind).count() as u64;
    assert_eq!(
        Some(kinds("product_purchased")),
        replay["totals"]["purchases"].as_u64()
    );
    assert_eq!(
        Some(kinds("purchase_cancelled")),
        replay["totals"]["cancels"].as_u64()
    );
    assert!(
        rows.iter().all(|r| r[1] <= "2026-01-03 23:59:59.999"),
        "a row after --to"
    );
    // --from keeps the rows at or after it and the order of the log.
    let later = String::from_utf8(
        vendctl(&[
            "export",
            "--data",
            data,
            "--format",
            "csv",
            "--from",
            "2026-01-02",
            "--to",
            until,
        ])
        .stdout,
    )
    .unwrap();
    let later: Vec<&str> = later.lines().skip(1).collect();
    assert!(!later.is_empty() && later.len() < rows.len());
    assert!(
        later
            .iter()
            .all(|l| l.split(',').nth(1).unwrap() >= "2026-01-02 00:00:00.000")
    );
}

#[test]
fn bad_requests_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = simulated_fleet(dir.path(), 1, 50, 1);
    let data = data.as_str();
    for (args, expected) in [
        (vec!["--format", "dex"], "dex needs --machine"),
        (
            vec![
                "--format",
                "dex",
                "--machine",
                "VM-001",
                "--from",
                "2026-01-01",
            ],
            "--from does not apply to dex",
        ),
        (
            vec!["--format", "csv", "--from", "yesterday"],
            "--from \"yesterday\"",
        ),
        (
            vec![
                "--format",
                "csv",
                "--from",
                "2026-02-01",
                "--to",
                "2026-01-01",
            ],
            "--from is after --to",
        ),
        (
            vec!["--format", "dex", "--machine", "VM-009"],
            "VM-009 has no events",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vendctl"))
            .args(["export", "--data", data])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_vendctl"))
        .args(["export", "--data", "/nonexistent/fleet", "--format", "csv"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}
