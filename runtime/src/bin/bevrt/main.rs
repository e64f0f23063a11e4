//! `bevrt`: run a model bundle on a camera stream, benchmark it, inspect the machine, and run
//! the ONNX conformance cases.

mod args;
mod bench;
mod config;
mod conformance;
mod demo;
mod info;
mod manual;
mod run;

use bevrt_runtime::supervisor;
use clap::{CommandFactory, Parser, Subcommand};

#[global_allocator]
static ALLOC: bevrt_runtime::alloc_count::CountingAlloc = bevrt_runtime::alloc_count::CountingAlloc;

#[derive(Parser)]
#[command(name = "bevrt", version, about = "Edge perception runtime: camera frames to BEV maps, features and classes", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a bundle on a frame source, writing results to sinks.
    #[command(args_override_self = true)]
    Run(Box<run::RunArgs>),
    /// The main job on an embedded default (no camera, no GPU, no download): the shipped
    /// letsmap-lite BEV bundle on a freshly simulated drive; side-by-side PNGs, latency, mIoU.
    Demo(demo::BevDemoArgs),
    /// The shared text-orientation classifier on real text-line crops (needs ../shared).
    DemoClassify(demo::DemoArgs),
    /// Per-stage latency on a synthetic frame (optionally beside ONNX Runtime).
    Bench(bench::BenchArgs),
    /// CUDA driver and device, V4L2 devices, and a bundle's summary.
    Info(info::InfoArgs),
    /// Run ONNX backend node-test cases and compare outputs.
    Conformance(conformance::ConformanceArgs),
    /// This command line's reference as Markdown (the book) or man pages (the packages).
    Manual(manual::ManualArgs),
}

/// `run`'s long flags and whether each takes a value (what a `--config` file may set).
fn run_flags() -> Vec<(String, bool)> {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("run is a subcommand");
    run.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            (long != "config" && long != "help")
                .then(|| (long.to_string(), a.get_action().takes_values()))
        })
        .collect()
}

fn main() {
    supervisor::single_malloc_arena();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let argv = match config::expand(std::env::args_os().collect(), &run_flags()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let r = match cli.cmd {
        Cmd::Run(a) => run::cmd_run(*a),
        Cmd::Demo(a) => demo::cmd_bev_demo(a),
        Cmd::DemoClassify(a) => demo::cmd_demo(a),
        Cmd::Bench(a) => bench::cmd_bench(a),
        Cmd::Info(a) => info::cmd_info(a),
        Cmd::Conformance(a) => conformance::cmd_conformance(a).map(|all_passed| {
            if !all_passed {
                std::process::exit(1)
            }
        }),
        Cmd::Manual(a) => manual::write_manual(&a, Cli::command()),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
