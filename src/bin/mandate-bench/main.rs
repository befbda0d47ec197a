//! `mandate-bench`: Mandate's figures beside the physical limit, from one run.
//!
//! Each scenario measures Mandate and its raw NATS baseline in the same run,
//! against a nats-server it starts itself (or the one `--nats` names), and
//! prints one row per figure: the value, the baseline, their ratio and the
//! target the figure must meet. The machine it runs on may be shared and
//! noisy, which is why ratios against a same-run baseline are what count.
//! BENCHMARKS.md gives the method and the figures.

/// The allocator of Mandate's binaries (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cascade;
mod check;
mod commands;
mod gen;
mod growth;
mod harness;
mod idle;
mod mcp;
mod rebuild;
mod report;
mod sets;
mod tokens;

use std::time::Instant;

use clap::{Parser, ValueEnum};

use harness::{BenchResult, Env};
use report::Printer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Growth,
    Cascade,
    CheckRemote,
    CheckLocal,
    Commands,
    Rebuild,
    Memory,
    IdleGuards,
    McpCancel,
    Tokens,
    Sets,
}

impl Scenario {
    const EACH: [Scenario; 11] = [
        Scenario::Growth,
        Scenario::Cascade,
        Scenario::CheckRemote,
        Scenario::CheckLocal,
        Scenario::Commands,
        Scenario::Rebuild,
        Scenario::Memory,
        Scenario::IdleGuards,
        Scenario::McpCancel,
        Scenario::Tokens,
        Scenario::Sets,
    ];

    /// The scenarios `--cluster` runs.
    const CLUSTERED: [Scenario; 2] = [Scenario::Commands, Scenario::Cascade];

    fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Growth => "growth",
            Scenario::Cascade => "cascade",
            Scenario::CheckRemote => "check-remote",
            Scenario::CheckLocal => "check-local",
            Scenario::Commands => "commands",
            Scenario::Rebuild => "rebuild",
            Scenario::Memory => "memory",
            Scenario::IdleGuards => "idle-guards",
            Scenario::McpCancel => "mcp-cancel",
            Scenario::Tokens => "tokens",
            Scenario::Sets => "sets",
        }
    }
}

/// Mandate's benchmarks, each against its raw NATS baseline in the same run.
#[derive(Parser, Debug)]
#[command(name = "mandate-bench")]
struct Args {
    /// The scenario to run, or `all`.
    #[arg(value_enum)]
    scenario: Scenario,
    /// One JSON line per measured row on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Use this NATS server (JetStream on) instead of starting one per scenario.
    #[arg(long, env = "MANDATE_BENCH_NATS", conflicts_with = "cluster")]
    nats: Option<String>,
    /// The nats-server binary the scenarios start (else `NATS_SERVER_BIN`,
    /// `nats-server` on `PATH`, `/usr/sbin/nats-server`).
    #[arg(long, value_name = "PATH")]
    nats_server: Option<std::path::PathBuf>,
    /// commands, cascade: run on a fresh three-node cluster (routes on
    /// loopback, a store per node), every stream on three replicas and the
    /// engines, guards and callers spread over the nodes. Needs
    /// nats-server 2.10 or later.
    #[arg(long)]
    cluster: bool,
    /// Every scenario once at a tiny size (for CI: proves it runs, times nothing).
    #[arg(long, env = "MANDATE_BENCH_TINY")]
    tiny: bool,
    /// growth: tree sizes, smallest first (the smallest is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// growth: delegations and checks timed at each size.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// growth: trees of each size whose root is revoked (one timed revoke each).
    #[arg(long, default_value_t = 5)]
    revokes: usize,
    /// growth: agents of the swarm delegating under one root at once.
    #[arg(long, default_value_t = 32)]
    swarm: usize,
    /// growth: delegations each swarm agent makes.
    #[arg(long, default_value_t = 10)]
    swarm_each: usize,
    /// cascade: live guards under the revoked root (default: 10000 in one
    /// process, 2000 spread over 100 connections; 2000 with --cluster or
    /// --connections); idle-guards: guards idling in one process (default
    /// 1000,10000). Several counts, comma-separated, run one after the other.
    #[arg(long, value_delimiter = ',')]
    guards: Vec<usize>,
    /// cascade: rounds (each a fresh tree and its guards; default 20 for
    /// the default 10000 guards in one process, 10 otherwise).
    #[arg(long)]
    rounds: Option<usize>,
    /// cascade: connection layouts the guards are spread over (default
    /// 1,100; 3,99 with --cluster, a third of the connections on each node).
    #[arg(long, value_delimiter = ',')]
    connections: Vec<usize>,
    /// cascade: time every baseline round before the first revoke (the
    /// order of earlier runs) instead of one baseline round before each.
    #[arg(long)]
    baseline_first: bool,
    /// check-remote: requests per level for the latencies (four times that for throughput).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// check-remote, commands, memory: concurrent callers.
    #[arg(long, default_value_t = 32)]
    callers: usize,
    /// check-local: guard checks timed.
    #[arg(long, default_value_t = 200_000)]
    calls: usize,
    /// commands: trees (one issue, one delegate and one revoke each).
    #[arg(long, default_value_t = 2000)]
    trees: usize,
    /// commands: engine instances serving at once, one run each (default
    /// 1,2; 1,2,4 with --cluster, each instance on the next node).
    #[arg(long, value_delimiter = ',')]
    instances: Vec<usize>,
    /// rebuild: commits in the log rebuilt.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// memory: live mandates the engine holds.
    #[arg(long, default_value_t = 100_000)]
    mandates: usize,
    /// memory: seconds of check load while memory is read.
    #[arg(long, default_value_t = 5)]
    load_seconds: u64,
    /// idle-guards: seconds of the idle window measured.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// idle-guards: seconds the guards run before the window opens.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// mcp-cancel: tool calls cancelled by a revoke, one after another,
    /// each under a fresh mandate and its own gateway.
    #[arg(long, default_value_t = 20)]
    mcp_calls: usize,
    /// sets: roots revoked one at a time, one SET each.
    #[arg(long, default_value_t = 200)]
    set_revokes: usize,
    /// Internal (memory, idle-guards): serve one engine with its projection here, on the
    /// server `--nats` names, until stdin closes.
    #[arg(long, hide = true, requires = "nats")]
    engine_process: Option<std::path::PathBuf>,
}

impl Args {
    /// The sizes `--tiny` runs at, whatever else was given.
    fn tiny(mut self) -> Self {
        self.sizes = vec![5, 20];
        self.ops = 5;
        self.revokes = 1;
        self.swarm = 4;
        self.swarm_each = 2;
        self.guards = vec![10];
        self.rounds = Some(1);
        self.connections = if self.cluster { vec![3] } else { vec![1, 2] };
        self.instances = vec![1, 2];
        self.requests = 20;
        self.callers = 4;
        self.calls = 10_000;
        self.trees = 10;
        self.events = 50;
        self.mandates = 50;
        self.load_seconds = 1;
        self.window = 2;
        self.settle = 1;
        self.mcp_calls = 2;
        self.set_revokes = 2;
        self
    }
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.tiny {
        args = args.tiny();
    }
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mandate-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mandate-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> BenchResult<()> {
    if let (Some(dir), Some(url)) = (&args.engine_process, &args.nats) {
        return rebuild::engine_process(url, dir).await;
    }
    if args.sizes.is_empty() || args.callers == 0 {
        return Err("--sizes and --callers need at least one".into());
    }
    if args.connections.contains(&0) || args.instances.contains(&0) {
        return Err("--connections and --instances take counts of at least 1".into());
    }
    if args.guards.contains(&0) {
        return Err("--guards takes counts of at least 1".into());
    }
    if args.mcp_calls == 0 {
        return Err("--mcp-calls needs at least 1".into());
    }
    if args.window == 0 {
        return Err("--window needs at least 1 second".into());
    }
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All if args.cluster => Scenario::CLUSTERED.to_vec(),
        Scenario::All => Scenario::EACH.to_vec(),
        one if args.cluster && !Scenario::CLUSTERED.contains(&one) => {
            return Err(format!(
                "--cluster runs only commands and cascade (or all, meaning those two), not {}",
                one.name()
            )
            .into())
        }
        one => vec![one],
    };
    let bin = match (&args.nats, &args.nats_server) {
        (Some(url), _) => {
            eprintln!("mandate-bench: against {url}");
            None
        }
        (None, Some(bin)) if !bin.is_file() => {
            return Err(format!("--nats-server {}: no such file", bin.display()).into())
        }
        (None, given) => {
            let bin = match given {
                Some(bin) => bin.clone(),
                None => harness::server_binary()?,
            };
            if args.cluster {
                harness::check_cluster_server(&bin)?;
            }
            eprintln!(
                "mandate-bench: nats-server {} ({}){}",
                bin.display(),
                harness::server_version(&bin),
                if args.cluster {
                    format!(
                        ", a cluster of {} nodes, streams on {} replicas",
                        harness::CLUSTER_NODES,
                        harness::CLUSTER_REPLICAS
                    )
                } else {
                    String::new()
                }
            );
            Some(bin)
        }
    };
    let out = Printer::new(args.json);
    for scenario in scenarios {
        eprintln!("== {}", scenario.name());
        let t = Instant::now();
        let env = match &bin {
            Some(bin) if args.cluster => Env::cluster(bin).await?,
            _ => Env::new(args.nats.as_deref(), bin.as_deref())?,
        };
        one(scenario, args, &env, &out)
            .await
            .map_err(|e| format!("{}: {e}", scenario.name()))?;
        eprintln!(
            "   {} took {:.1} s",
            scenario.name(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn one(scenario: Scenario, args: &Args, env: &Env, out: &Printer) -> BenchResult<()> {
    match scenario {
        Scenario::All => Ok(()),
        Scenario::Growth => {
            let sizes = growth::Sizes {
                sizes: args.sizes.clone(),
                ops: args.ops,
                revokes: args.revokes,
                swarm_agents: args.swarm,
                swarm_each: args.swarm_each,
            };
            growth::run(env, &sizes, out).await
        }
        Scenario::Cascade => {
            let sizes = cascade::Sizes {
                layouts: cascade_layouts(args),
                baseline_first: args.baseline_first,
            };
            cascade::run(env, &sizes, out).await
        }
        Scenario::CheckRemote => {
            let sizes = check::Sizes {
                requests: args.requests,
                callers: args.callers,
            };
            check::remote(env, &sizes, out).await
        }
        Scenario::CheckLocal => check::local(env, args.calls, out).await,
        Scenario::Commands => {
            let sizes = commands::Sizes {
                trees: args.trees,
                callers: args.callers,
                instances: or_default(&args.instances, &commands_instances(args.cluster)),
            };
            commands::run(env, &sizes, out).await
        }
        Scenario::Rebuild => rebuild::rebuild(env, args.events, out).await,
        Scenario::Memory => {
            rebuild::memory(env, args.mandates, args.callers, args.load_seconds, out).await
        }
        Scenario::IdleGuards => {
            let sizes = idle::Sizes {
                guards: or_default(&args.guards, &[1000, 10_000]),
                window: std::time::Duration::from_secs(args.window),
                settle: std::time::Duration::from_secs(args.settle),
            };
            idle::run(env, &sizes, out).await
        }
        Scenario::McpCancel => {
            let sizes = mcp::Sizes {
                calls: args.mcp_calls,
            };
            mcp::run(env, &sizes, out).await
        }
        Scenario::Tokens => {
            let sizes = tokens::Sizes {
                requests: args.requests,
                calls: (args.calls / 10).max(1),
            };
            tokens::run(env, &sizes, out).await
        }
        Scenario::Sets => {
            let sizes = sets::Sizes {
                revokes: args.set_revokes,
            };
            sets::run(env, &sizes, out).await
        }
    }
}

/// `--connections`' default: with `--cluster`, three (one per node) and
/// 99 (a third on each).
fn cascade_connections(cluster: bool) -> Vec<usize> {
    if cluster {
        vec![3, 99]
    } else {
        vec![1, 100]
    }
}

/// What `cascade` runs: by default, on one node, the size (10,000
/// guards, 20 rounds) in one process, where its gate is, and 2,000 guards
/// over 100 connections, where 10,000 would take six minutes of the run;
/// otherwise every guard count given (default 2,000) on every connection
/// layout, 10 rounds unless `--rounds` says.
fn cascade_layouts(args: &Args) -> Vec<cascade::Layout> {
    if args.guards.is_empty() && args.connections.is_empty() && !args.cluster {
        return vec![
            cascade::Layout {
                guards: 10_000,
                connections: 1,
                rounds: args.rounds.unwrap_or(20),
            },
            cascade::Layout {
                guards: 2_000,
                connections: 100,
                rounds: args.rounds.unwrap_or(10),
            },
        ];
    }
    let conns = or_default(&args.connections, &cascade_connections(args.cluster));
    or_default(&args.guards, &[2000])
        .into_iter()
        .flat_map(|guards| {
            conns.iter().map(move |&connections| cascade::Layout {
                guards,
                connections,
                rounds: args.rounds.unwrap_or(10),
            })
        })
        .collect()
}

/// `--instances`' default.
fn commands_instances(cluster: bool) -> Vec<usize> {
    if cluster {
        vec![1, 2, 4]
    } else {
        vec![1, 2]
    }
}

/// The counts given with a flag, or the scenario's own.
fn or_default(given: &[usize], default: &[usize]) -> Vec<usize> {
    if given.is_empty() {
        default.to_vec()
    } else {
        given.to_vec()
    }
}

/// What the engine logs by default here: warnings, but not the reminder that
/// open tenants are served (the bench serves them on purpose).
const QUIET: &str = "warn,mandate::engine::service=error";

/// Warnings and errors to stderr (`RUST_LOG` to change).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET)),
        )
        .try_init();
}
