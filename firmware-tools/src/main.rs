//! `bevrt-tool`: host-side work around bevrt: bundles, calibration, simulation, letsmap-lite
//! training and evaluation, INT8 quantization and HIL. Training and quantization are the
//! `host` feature (default); without it the tool is the vehicle's (the arm64 package).

mod bundle_cmd;
mod calib_cmd;
mod cli;
mod hil_cmd;
mod kernels_cmd;
// One renderer for both binaries' references (clap stays out of the libraries).
#[path = "../../runtime/src/bin/bevrt/manual.rs"]
mod manual;
#[cfg(feature = "host")]
mod quantize_cmd;
mod sim_cmd;
mod soak;
mod trust_cmd;

#[cfg(feature = "host")]
use bevrt_train::{afv, letsmap};
use clap::{CommandFactory, Parser, Subcommand};

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
    /// Calibrate a camera from chessboard images (pinhole or fisheye).
    Calibrate(calib_cmd::CalibrateArgs),
    /// Inverse perspective mapping of an image onto the ground plane.
    Birdseye(calib_cmd::BirdseyeArgs),
    /// Undistort images with a calibration.
    Undistort(calib_cmd::UndistortArgs),
    /// Time detection + calibration on a set of views (optionally beside OpenCV).
    CalibBench(calib_cmd::CalibBenchArgs),
    /// Join a camera YAML and an extrinsics TOML into the calibration TOML `bevrt run` reads.
    CalibMerge(calib_cmd::CalibMergeArgs),
    /// Compile every CUDA kernel for one SM ahead of time (NVRTC; no GPU needed).
    CompileKernels(kernels_cmd::CompileKernelsArgs),
    /// Hardware-in-the-loop: run the real bevrt on simulator recordings with injected faults.
    Hil(hil_cmd::HilArgs),
    #[cfg(feature = "host")]
    /// Unsupervised pretraining of the letsmap-lite encoder (temporal masked autoencoding).
    Pretrain(cli::letsmap::PretrainArgs),
    #[cfg(feature = "host")]
    /// letsmap-lite's geometry pathway without labels: the depth distribution the lift uses,
    /// learned by re-synthesising each frame from its neighbours with the recorded ego-motion.
    PretrainGeometry(cli::letsmap::GeometryArgs),
    #[cfg(feature = "host")]
    /// Depth of a geometry-pretrained encoder (or a bundle) against the simulator's depth maps:
    /// AbsRel, SqRel, RMSE, δ<1.25.
    DepthEval(cli::letsmap::DepthEvalArgs),
    #[cfg(feature = "host")]
    /// Fine-tune letsmap-lite's BEV head on a fraction of the labels; writes a bundle.
    Finetune(cli::letsmap::FinetuneArgs),
    #[cfg(feature = "host")]
    /// Per-class IoU / mIoU of a BEV bundle on held-out recordings (deployment path).
    Eval(cli::letsmap::EvalArgs),
    #[cfg(feature = "host")]
    /// INT8 post-training quantization of a bundle into explicit Q/DQ ONNX (calibrated on frames).
    Quantize(quantize_cmd::QuantizeArgs),
    #[cfg(feature = "host")]
    /// GAN for Adversarial Fisher Vectors.
    #[command(subcommand)]
    Gan(GanCmd),
    #[cfg(feature = "host")]
    /// Adversarial Fisher Vectors: Fisher statistics and distances.
    #[command(subcommand)]
    Afv(AfvCmd),
    #[cfg(feature = "host")]
    /// A features bundle's vector for every image of a dataset (npy).
    Embed(cli::afv::EmbedArgs),
    #[cfg(feature = "host")]
    /// Linear or k-NN probe on frozen features, with few or all labels.
    Probe(cli::afv::ProbeArgs),
    #[cfg(feature = "host")]
    /// Self-supervised feature encoders (BAM, Invariance Propagation, MAE, StructMAE, PDAE).
    #[command(subcommand)]
    Ssl(cli::ssl::SslCmd),
    #[cfg(feature = "host")]
    /// The digit DDPM PDAE builds on: train, sample, reconstruct and interpolate through z,
    /// the DDPM's own features.
    #[command(subcommand)]
    Ddpm(cli::ddpm::DdpmCmd),
    /// The synthetic driving world: record sequences with ground truth.
    #[command(subcommand)]
    Sim(sim_cmd::SimCmd),
    /// Make a minisign key pair for signing bundles (PREFIX.pub, PREFIX.key).
    Keygen(trust_cmd::KeygenArgs),
    /// Install a bundle into an A/B store: copy to the inactive slot, verify, switch atomically.
    Deploy(trust_cmd::DeployArgs),
    /// Inspect an A/B bundle store.
    #[command(subcommand)]
    Store(trust_cmd::StoreCmd),
    /// Signed trust sets: root keys, signing keys with expiry, revocation (rotate keys
    /// without a new store).
    #[command(subcommand)]
    Trust(trust_cmd::TrustCmd),
    /// This command line's reference as Markdown (the book) or man pages (the packages).
    Manual(manual::ManualArgs),
}

#[cfg(feature = "host")]
#[derive(Subcommand)]
enum GanCmd {
    /// Train the GAN on a dataset's training split; writes an AFV features bundle.
    Train(cli::afv::GanTrainArgs),
}

#[cfg(feature = "host")]
#[derive(Subcommand)]
enum AfvCmd {
    /// Mean and diagonal Fisher information from generator samples, stored in the bundle.
    Fit(cli::afv::FitArgs),
    /// Distance between examples or sets (means of their Fisher vectors).
    Distance(cli::afv::DistanceArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    #[cfg(feature = "host")]
    bevrt_train::keep_freed_memory();
    let r = match &cli.cmd {
        Cmd::Bundle(c) => bundle_cmd::run(c),
        Cmd::Calibrate(a) => calib_cmd::calibrate(a),
        Cmd::Birdseye(a) => calib_cmd::birdseye(a),
        Cmd::Undistort(a) => calib_cmd::undistort(a),
        Cmd::CalibBench(a) => calib_cmd::bench_calib(a),
        Cmd::CalibMerge(a) => calib_cmd::calib_merge(a),
        Cmd::CompileKernels(a) => kernels_cmd::compile_kernels(a),
        Cmd::Sim(c) => sim_cmd::run(c),
        #[cfg(feature = "host")]
        Cmd::Ssl(c) => cli::ssl::run(c),
        #[cfg(feature = "host")]
        Cmd::Ddpm(c) => cli::ddpm::run(c),
        Cmd::Hil(a) => hil_cmd::hil(a),
        #[cfg(feature = "host")]
        Cmd::Pretrain(a) => letsmap::semantic::pretrain(&a.config()),
        #[cfg(feature = "host")]
        Cmd::PretrainGeometry(a) => letsmap::geometry::pretrain_geometry(&a.config()),
        #[cfg(feature = "host")]
        Cmd::DepthEval(a) => letsmap::geometry::depth_eval_cmd(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Finetune(a) => letsmap::train::finetune(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Eval(a) => match &a.sub {
            Some(cli::letsmap::EvalSub::Merge { parts, json }) => {
                letsmap::eval::merge_cmd(parts, *json)
            }
            None if a.oracle_depth => letsmap::oracle::oracle_cmd(&a.config()),
            None => letsmap::eval::eval_cmd(&a.config()),
        },
        #[cfg(feature = "host")]
        Cmd::Quantize(a) => quantize_cmd::quantize(a),
        #[cfg(feature = "host")]
        Cmd::Gan(GanCmd::Train(a)) => afv::train::gan_train(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Afv(AfvCmd::Fit(a)) => afv::fisher::fit(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Afv(AfvCmd::Distance(a)) => afv::fisher::distance(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Embed(a) => afv::fisher::embed(&a.config()),
        #[cfg(feature = "host")]
        Cmd::Probe(a) => afv::probe::probe(&a.config()),
        Cmd::Keygen(a) => trust_cmd::keygen(a),
        Cmd::Deploy(a) => trust_cmd::deploy(a),
        Cmd::Store(c) => trust_cmd::store(c),
        Cmd::Trust(c) => trust_cmd::trust(c),
        Cmd::Manual(a) => manual::write_manual(a, Cli::command()),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
