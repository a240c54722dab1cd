//! `vend-vm`: one vending machine. `vend-vm --machine-id VM-002 ...` starts
//! a second machine; no code edits.

use anyhow::{Context, Result, bail};
use clap::Parser;
use iced::Task;
use ledger::admin::PasswordParams;
use ledger::ids::SlotId;
use ledger::money::MoneyKind;
use ledger::{Command, MachineId};
use std::path::PathBuf;
use std::sync::Mutex;
use vm_iced::app::{App, Message};
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

#[derive(Parser)]
#[command(
    name = "vend-vm",
    version,
    about = "A vendledger vending machine: customer and admin screens, offline-first"
)]
struct Args {
    /// A TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The machine's id, e.g. VM-002.
    #[arg(long)]
    machine_id: Option<MachineId>,
    /// Where the machine keeps its own ledger.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Key directory (store.key and machines/<id>.key), provisioned with
    /// `vendctl keys machine --dir DIR --id ID`: vend-vm creates no key.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// A replica's machine address (repeat for each replica).
    #[arg(long = "replica", value_name = "HOST:PORT")]
    replicas: Vec<String>,
    /// Install a new machine (a data directory without a ledger) with this
    /// admin password.
    #[arg(long)]
    admin_password: Option<String>,
    /// Actions to perform at start, e.g. "admin:PASSWORD,refill,tubes,logout,insert:1000,buy:2"
    /// (admin:PASSWORD, refill[:SLOT], tubes, logout, insert:VALUE, buy:SLOT, cancel, change) — for
    /// demos and screenshots. Each goes through the rules and the ledger like a button press.
    #[arg(long)]
    script: Option<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vend-vm: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn configuration(args: &Args) -> Result<MachineConfig> {
    let mut config = match (&args.config, &args.machine_id, &args.data, &args.keys) {
        (Some(path), ..) => MachineConfig::load(path)?,
        (None, Some(id), Some(data), Some(keys)) => {
            MachineConfig::new(id.clone(), data.clone(), keys.clone())
        }
        _ => bail!("give --config FILE, or --machine-id, --data and --keys"),
    };
    if let Some(id) = &args.machine_id {
        config.machine_id = id.clone();
    }
    if let Some(data) = &args.data {
        config.data_dir = data.clone();
    }
    if let Some(keys) = &args.keys {
        config.keys_dir = keys.clone();
    }
    if !args.replicas.is_empty() {
        config.replicas = args.replicas.clone();
    }
    if args.admin_password.is_some() {
        config.initial_admin_password = args.admin_password.clone();
    }
    Ok(config)
}

/// One --script step: a customer action through the screen, or an
/// operator command straight to the machine.
enum Step {
    Screen(Message),
    Operator(Command),
    /// Fill every coin tube (an operator loading change).
    FillTubes,
}

/// Parses the --script actions.
fn script_steps(script: &str) -> Result<Vec<Step>> {
    script
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|step| {
            let (verb, argument) = step.split_once(':').unwrap_or((step, ""));
            Ok(match verb {
                "insert" => {
                    let value: i64 = argument
                        .parse()
                        .with_context(|| format!("insert needs a value: {step}"))?;
                    let kind = if value >= 1_000 {
                        MoneyKind::Bill
                    } else {
                        MoneyKind::Coin
                    };
                    Step::Screen(Message::Insert(kind, value))
                }
                "buy" => {
                    let slot = argument
                        .parse()
                        .with_context(|| format!("buy needs a slot: {step}"))?;
                    Step::Screen(Message::Buy(SlotId(slot)))
                }
                "cancel" => Step::Screen(Message::CancelLast),
                "change" => Step::Screen(Message::ReturnChange),
                "admin" => Step::Operator(Command::AdminLogin {
                    password: argument.to_owned(),
                }),
                "refill" if argument.is_empty() => Step::Operator(Command::RefillAll),
                "refill" => {
                    let slot = argument
                        .parse()
                        .with_context(|| format!("refill takes a slot: {step}"))?;
                    Step::Operator(Command::Refill {
                        slot: SlotId(slot),
                        count: None,
                    })
                }
                "logout" => Step::Operator(Command::AdminLogout),
                "tubes" => Step::FillTubes,
                other => bail!("unknown script step {other:?}"),
            })
        })
        .collect()
}

/// Runs the --script steps.
fn run_script(app: &mut App, steps: Vec<Step>) -> Result<()> {
    for step in steps {
        match step {
            Step::Screen(message) => {
                let _ = app.update(message);
            }
            Step::FillTubes => {
                for coin in ledger::money::Denomination::COINS {
                    let state = app.machine.state();
                    let tube = coin.tube_index().unwrap_or(0);
                    let room = state.tube_capacity.0[tube] - state.tubes.0[tube];
                    if room > 0 {
                        app.machine.execute(Command::LoadTube {
                            denomination: coin,
                            count: room,
                        })?;
                    }
                }
            }
            Step::Operator(command) => {
                app.machine.execute(command)?;
            }
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let config = configuration(&args)?;
    let mut machine = Machine::open(&config, system_clock(), PasswordParams::Standard)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("uplink")
        .build()
        .context("starting the uplink runtime")?;
    let reports = machine.start_uplink(runtime.handle(), config.replicas.clone());
    let mut app = App::new(machine, reports.is_some());
    run_script(
        &mut app,
        script_steps(args.script.as_deref().unwrap_or(""))?,
    )?;
    // iced's boot function may be called through `Fn`; the app is handed
    // over exactly once.
    let start = Mutex::new(Some((app, reports)));
    iced::application(
        move || {
            let (app, reports) = start
                .lock()
                .ok()
                .and_then(|mut slot| slot.take())
                .expect("iced boots the application once");
            let task = match reports {
                Some(receiver) => Task::run(
                    iced::futures::stream::unfold(receiver, |mut receiver| async move {
                        receiver.recv().await.map(|report| (report, receiver))
                    }),
                    Message::Uplink,
                ),
                None => Task::none(),
            };
            (app, task)
        },
        App::update,
        App::view,
    )
    .title(App::title)
    .theme(App::theme)
    .subscription(App::subscription)
    .window_size((1180.0, 760.0))
    .run()
    .context("the window system")?;
    drop(runtime);
    Ok(())
}
