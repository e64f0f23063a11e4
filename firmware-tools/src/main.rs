//! `bevrt-tool`: host-side work around bevrt: bundles, calibration, and (later) simulation,
//! training, quantization and HIL.

mod bundle_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bevrt-tool", version, about = "Host-side tools for bevrt: bundles, calibration, training, quantization", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make or check a model bundle.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCmd),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Bundle(c) => bundle_cmd::run(c),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
