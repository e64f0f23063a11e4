//! letsmap-lite, reduced: simulated data, MAE pretraining (deterministic, resumable),
//! fine-tuning on a label fraction, evaluation through the runtime; and the exported ONNX
//! files load and run in ONNX Runtime.

use bevrt_tests::*;
use std::path::Path;

fn tool(args: &[&str]) -> String {
    let (ok, so, se) = run(&bin("bevrt-tool"), args);
    assert!(ok, "bevrt-tool {args:?} failed:\n{so}\n{se}");
    so
}

fn record(dir: &Path, seed: u64, frames: u64) {
    sim_record(seed, frames, dir);
}

fn miou(eval_json: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(eval_json).expect("eval --json output");
    v["miou"].as_f64().expect("miou")
}

#[test]
fn pretrain_finetune_eval_learns_and_resume_is_exact() {
    let w = scratch("letsmap");
    let s = |p: &str| w.join(p).to_str().unwrap().to_string();
    record(&w.join("train/a"), 11, 24);
    record(&w.join("train/b"), 12, 24);
    record(&w.join("test"), 13, 10);

    // Pretraining: 2 epochs straight, and 1 epoch + resume to 2: the same bytes.
    let train = s("train");
    let pt = |out: &str, epochs: &str, resume: bool| {
        let mut a = vec![
            "pretrain", "--data", &train, "--out", out, "--epochs", epochs, "--frames", "24",
            "--seed", "3",
        ];
        if resume {
            a.push("--resume");
        }
        tool(&a)
    };
    let first = pt(&s("pt_a"), "2", false);
    assert!(first.contains("masked-patch MSE per epoch"), "{first}");
    pt(&s("pt_b"), "1", false);
    let resumed = pt(&s("pt_b"), "2", true);
    assert!(resumed.contains("resuming after epoch 1"), "{resumed}");
    let a = std::fs::read(w.join("pt_a/pretrain.safetensors")).unwrap();
    let b = std::fs::read(w.join("pt_b/pretrain.safetensors")).unwrap();
    assert!(
        a == b,
        "a resumed run must reach the same weights as an uninterrupted one"
    );
    // A different resume (changed arguments) is refused.
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "pretrain",
            "--data",
            &s("train"),
            "--out",
            &s("pt_b"),
            "--epochs",
            "3",
            "--frames",
            "24",
            "--seed",
            "4",
            "--resume",
        ],
    );
    assert!(!ok && se.contains("same arguments"), "{se}");

    // Fine-tune (pretrained encoder, all layers) and an untrained export (lr 0) as the floor.
    let ft = |out: &str, lr: &str, iters: &str| {
        tool(&[
            "finetune",
            "--data",
            &s("train"),
            "--encoder",
            &s("pt_a/pretrain.safetensors"),
            "--label-fraction",
            "0.5",
            "--unfreeze-last",
            "5",
            "--iters",
            iters,
            "--lr",
            lr,
            "--out",
            out,
        ])
    };
    ft(&s("trained"), "0.004", "150");
    ft(&s("untrained"), "0", "1");
    let ev = |b: &str| tool(&["eval", "--bundle", b, "--data", &s("test"), "--json"]);
    let trained = miou(&ev(&s("trained")));
    let untrained = miou(&ev(&s("untrained")));
    // 8 classes; an untrained net or a constant "road" map scores well under 10 % mIoU.
    assert!(
        trained > 20.0 && trained > untrained + 10.0,
        "fine-tuned mIoU {trained:.1} vs untrained {untrained:.1}"
    );
    // Fine-tuning is deterministic for a seed: two runs give byte-identical ONNX files.
    ft(&s("again_a"), "0.004", "8");
    ft(&s("again_b"), "0.004", "8");
    // The files differ in their doc string (it records the training time): compare weights.
    for f in ["encoder.onnx", "bev_head.onnx"] {
        let weights = |d: &str| {
            let p = bevrt_models::read_proto(&w.join(d).join(f)).unwrap();
            p.graph.unwrap().initializer
        };
        assert!(
            weights("again_a") == weights("again_b"),
            "{f}: same seed, same data: same weights"
        );
    }
    // The bundle runs in `bevrt run` too.
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            &s("trained"),
            "--source",
            &format!("replay:{}", s("test")),
            "--backend",
            "cpu",
            "--out",
            &s("run_out"),
        ],
    );
    assert!(ok, "{so}{se}");
    assert_eq!(
        std::fs::read_dir(w.join("run_out/maps")).unwrap().count(),
        10
    );
}

/// The exported encoder and head give the same outputs in ONNX Runtime as in tract.
#[test]
fn exported_onnx_runs_in_onnxruntime() {
    if !onnxruntime_available() {
        return;
    }
    let w = scratch("letsmap-ort");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "demo",
            "--frames",
            "1",
            "--backend",
            "cpu",
            "--out",
            w.to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}{se}");
    let bdir = w.join("bundle");
    for (file, shape) in [
        ("encoder.onnx", vec![1, 3, 128, 384]),
        ("bev_head.onnx", vec![1, 64, 80, 80]),
    ] {
        let n: usize = shape.iter().product();
        let input: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
            .collect();
        let inp = w.join(format!("{file}.in.npy"));
        let outp = w.join(format!("{file}.ort.npy"));
        let mut buf = vec![];
        bevrt_runtime::npy::write_f32(&mut buf, &shape, &input).unwrap();
        std::fs::write(&inp, buf).unwrap();
        let script = format!(
            "import numpy as np, onnxruntime as ort\n\
             s = ort.InferenceSession('{}', providers=['CPUExecutionProvider'])\n\
             x = np.load('{}')\n\
             y = s.run(None, {{s.get_inputs()[0].name: x}})[0]\n\
             np.save('{}', y.astype(np.float32))\n",
            bdir.join(file).display(),
            inp.display(),
            outp.display()
        );
        let st = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "onnxruntime on {file}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let (oshape, ort) = bevrt_runtime::npy::read_f32(&outp).unwrap();
        let mut net =
            bevrt_runtime::backend::cpu::CpuNetwork::load(&bdir.join(file), &shape).unwrap();
        let mut outs = net.output_buffers();
        net.run(&input, &mut outs).unwrap();
        assert_eq!(oshape, outs[0].shape, "{file}");
        let max = ort
            .iter()
            .zip(&outs[0].data)
            .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
            .fold(0f32, f32::max);
        assert!(
            max < 1e-4,
            "{file}: tract vs onnxruntime max rel diff {max}"
        );
    }
}

#[test]
fn training_reader_keeps_ego_motion_and_names_bad_poses() {
    let w = scratch("letsmap-poses");
    let rec = w.join("r");
    record(&rec, 21, 4);
    let ds = bevrt_train::letsmap::data::load(&rec, None, &|_, _| {}).unwrap();
    let poses = ds.poses.as_ref().expect("sim recordings carry poses.csv");
    assert_eq!(poses.len(), 4);
    // The simulated car drives forward: each frame is ahead of the last, barely sideways.
    let (fwd, left, _) = poses[0].motion_to(&poses[3]);
    assert!(fwd > 0.5 && left.abs() < 0.5 * fwd, "{fwd} {left}");

    // Unsorted rows and a frame without a pose are errors naming the file.
    let load_error = || {
        let r = bevrt_train::letsmap::data::load(&rec, None, &|_, _| {});
        format!("{:#}", r.err().expect("bad poses.csv must be refused"))
    };
    let path = rec.join("poses.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&path, lines.join("\n")).unwrap();
    let e = load_error();
    assert!(e.contains("poses.csv") && e.contains("sorted"), "{e}");
    lines.swap(1, 2);
    lines.pop();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let e = load_error();
    assert!(e.contains("poses.csv") && e.contains("has no pose"), "{e}");
    // Without the file, the data loads without ego-motion.
    std::fs::remove_file(&path).unwrap();
    let ds = bevrt_train::letsmap::data::load(&rec, None, &|_, _| {}).unwrap();
    assert!(ds.poses.is_none());
}

fn record_at(dir: &Path, seed: u64, frames: u64, fps: &str, extras: bool) {
    let (s, f) = (seed.to_string(), frames.to_string());
    let mut a = vec![
        "sim", "record", "--seed", &s, "--frames", &f, "--fps", fps, "--cell", "0.5", "--out",
    ];
    let d = dir.to_str().unwrap();
    a.push(d);
    if extras {
        a.push("--extras");
    }
    tool(&a);
}

/// The geometry pathway learns depth from video alone (the depth maps only score it), resumes
/// exactly, and its depth head reaches a bundle whose depth-weighted lift runs the same on
/// tract and on bevrt's CPU engine.
#[test]
fn geometry_pathway_learns_depth_without_labels_and_ships_in_the_lift() {
    let w = scratch("letsmap-geometry");
    let s = |p: &str| w.join(p).to_str().unwrap().to_string();
    record_at(&w.join("unlabelled/a"), 21, 30, "10", false);
    record_at(&w.join("unlabelled/b"), 22, 30, "10", false);
    record_at(&w.join("test"), 23, 12, "10", true);
    let geo = |out: &str, epochs: &str, resume: bool| {
        let mut a = vec![
            "pretrain-geometry",
            "--data",
            "",
            "--out",
            out,
            "--epochs",
            epochs,
            "--seed",
            "3",
            "--no-ground-prior",
            "--eval-depth",
        ];
        let (data, test) = (s("unlabelled"), s("test"));
        a[2] = &data;
        a.push(&test);
        if resume {
            a.push("--resume");
        }
        tool(&a)
    };
    geo(&s("g_a"), "2", false);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("g_a/geometry.json")).unwrap())
            .unwrap();
    let abs_rel: Vec<f64> = state["depth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["abs_rel"].as_f64().unwrap())
        .collect();
    let photo: Vec<f64> = state["epoch_photometric_error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // from a uniform depth distribution (AbsRel about 1.5) to well under it in 2 short epochs
    assert!(
        abs_rel.len() == 3 && abs_rel[2] < 0.8 * abs_rel[0],
        "AbsRel before and after each epoch: {abs_rel:?}"
    );
    assert!(photo[1] < photo[0], "photometric error per epoch {photo:?}");
    // resume: 1 epoch, then on to 2, reaches the same weights
    geo(&s("g_b"), "1", false);
    let resumed = geo(&s("g_b"), "2", true);
    assert!(resumed.contains("resuming after epoch 1"), "{resumed}");
    let a = std::fs::read(w.join("g_a/geometry.safetensors")).unwrap();
    let b = std::fs::read(w.join("g_b/geometry.safetensors")).unwrap();
    assert!(a == b, "a resumed geometry run must reach the same weights");
    // no poses: a clear error naming what is missing
    let nodir = w.join("noposes");
    record_at(&nodir, 24, 6, "10", false);
    std::fs::remove_file(nodir.join("poses.csv")).unwrap();
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "pretrain-geometry",
            "--data",
            &s("noposes"),
            "--out",
            &s("g_c"),
        ],
    );
    assert!(!ok && se.contains("poses.csv"), "{se}");

    // Fine-tune from the geometry checkpoint: the bundle carries the bins and the depth head.
    record(&w.join("labelled"), 25, 12);
    tool(&[
        "finetune",
        "--data",
        &s("labelled"),
        "--encoder",
        &s("g_a/geometry.safetensors"),
        "--label-fraction",
        "0.5",
        "--unfreeze-last",
        "6",
        "--iters",
        "20",
        "--out",
        &s("bundle"),
    ]);
    let manifest = std::fs::read_to_string(w.join("bundle/bundle.toml")).unwrap();
    assert!(
        manifest.contains("[grid.depth]") && manifest.contains("bins = 32"),
        "{manifest}"
    );
    let m = tool(&[
        "depth-eval",
        "--bundle",
        &s("bundle"),
        "--data",
        &s("test"),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert!(v["abs_rel"].as_f64().unwrap() < abs_rel[0], "{m}");
    // The test drive carries the amodal BEV (--extras): eval scores the hidden cells too.
    let ev = tool(&[
        "eval",
        "--bundle",
        &s("bundle"),
        "--data",
        &s("test"),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let o = &v["occlusion"];
    assert!(o["hidden_cells"].as_u64().unwrap_or(0) > 100, "{ev}");
    let acc = o["accuracy"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&acc), "{ev}");
    // The lift runs on tract and on the CPU engine (threaded) with the same maps.
    let maps = |backend: &str, threads: &str| -> Vec<Vec<u8>> {
        let out = w.join(format!("run-{backend}-{threads}"));
        let (ok, so, se) = run(
            &bin("bevrt"),
            &[
                "run",
                "--bundle",
                &s("bundle"),
                "--source",
                &format!("replay:{}", s("test")),
                "--backend",
                backend,
                "--threads",
                threads,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(ok, "{so}{se}");
        let mut files: Vec<_> = std::fs::read_dir(out.join("maps"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| image::open(p).unwrap().to_rgb8().into_raw())
            .collect()
    };
    let tract = maps("cpu", "1");
    let plan = maps("cpu-plan", "2");
    assert_eq!(tract.len(), 12);
    let (same, total) = tract
        .iter()
        .zip(&plan)
        .flat_map(|(a, b)| a.iter().zip(b))
        .fold((0usize, 0usize), |(s, t), (a, b)| {
            (s + (a == b) as usize, t + 1)
        });
    assert!(
        same as f64 >= 0.999 * total as f64,
        "tract and the CPU engine disagree on {} of {total} map bytes",
        total - same
    );
}

fn json_floats(path: &Path, key: &str) -> Vec<f64> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no {key}", path.display()))
        .iter()
        .map(|x| x.as_f64().or_else(|| x["abs_rel"].as_f64()).unwrap())
        .collect()
}

/// The semantic pathway (temporal MAE with SparK masking and normalised targets) learns under
/// both structure-guided scorings, and "both pathways" (geometry started from the semantic
/// encoder) fine-tunes into a bundle that says how it was made.
#[test]
fn semantic_pathway_learns_with_structured_masking_and_feeds_both_pathways() {
    let w = scratch("letsmap-semantic");
    let s = |p: &str| w.join(p).to_str().unwrap().to_string();
    record_at(&w.join("unlabelled/a"), 31, 24, "10", false);
    record_at(&w.join("unlabelled/b"), 32, 24, "10", false);
    let mae = |out: &str, masking: &str, epochs: &str| {
        tool(&[
            "pretrain",
            "--data",
            &s("unlabelled"),
            "--out",
            out,
            "--epochs",
            epochs,
            "--masking",
            masking,
            "--seed",
            "5",
        ])
    };
    let said = mae(&s("edges"), "edges", "2");
    assert!(said.contains("Edges masking"), "{said}");
    // the probe loss (fixed frames, fixed masks) falls: the encoder and decoder learn
    let probe = json_floats(&w.join("edges/pretrain.json"), "probe_loss");
    assert!(
        probe.len() == 3
            && probe[1] < probe[0]
            && probe[2] < probe[1]
            && probe[2] < 0.95 * probe[0],
        "probe loss before and after each epoch: {probe:?}"
    );
    mae(&s("motion"), "motion", "1");
    let probe = json_floats(&w.join("motion/pretrain.json"), "probe_loss");
    assert!(probe[1] < probe[0], "motion-scored masking: {probe:?}");
    // a bad mask ratio is refused with the flag's name
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "pretrain",
            "--data",
            &s("unlabelled"),
            "--out",
            &s("bad"),
            "--mask-ratio",
            "1.5",
        ],
    );
    assert!(!ok && se.contains("--mask-ratio"), "{se}");

    // both pathways: the geometry pathway starts from the semantic encoder
    tool(&[
        "pretrain-geometry",
        "--data",
        &s("unlabelled"),
        "--out",
        &s("both"),
        "--epochs",
        "1",
        "--encoder",
        &s("edges/pretrain.safetensors"),
    ]);
    // disjoint pathways: with --train-last 2 the geometry pathway trains only the last
    // encoder conv and the depth head; the trunk stays exactly the semantic pathway's
    tool(&[
        "pretrain-geometry",
        "--data",
        &s("unlabelled"),
        "--out",
        &s("disjoint"),
        "--epochs",
        "1",
        "--encoder",
        &s("edges/pretrain.safetensors"),
        "--train-last",
        "2",
    ]);
    let values = |ckpt: &str, layer: &str| -> Vec<f32> {
        let map = bevrt_train::optim::load_checkpoint(&w.join(ckpt)).unwrap();
        map[&format!("param.{layer}.weight")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (mae, disjoint) = (
        "edges/pretrain.safetensors",
        "disjoint/geometry.safetensors",
    );
    let arch = bevrt_models::LetsMapLite::default();
    let deployed = arch.deployed_encoder();
    let (trunk, trained) = deployed.split_at(deployed.len() - 2);
    for l in trunk {
        assert_eq!(
            values(mae, l.name),
            values(disjoint, l.name),
            "{} moved",
            l.name
        );
    }
    assert_ne!(
        values(mae, trained[0].name),
        values(disjoint, trained[0].name)
    );
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "pretrain-geometry",
            "--data",
            &s("unlabelled"),
            "--out",
            &s("bad-n"),
            "--train-last",
            "0",
        ],
    );
    assert!(!ok && se.contains("--train-last"), "{se}");

    record(&w.join("labelled"), 33, 8);
    tool(&[
        "finetune",
        "--data",
        &s("labelled"),
        "--encoder",
        &s("both/geometry.safetensors"),
        "--label-fraction",
        "0.5",
        "--unfreeze-last",
        "6",
        "--probe-iters",
        "4",
        "--iters",
        "8",
        "--out",
        &s("bundle"),
    ]);
    let manifest = std::fs::read_to_string(w.join("bundle/bundle.toml")).unwrap();
    assert!(
        manifest.contains("mae+geometry-pretrained")
            && manifest.contains("edges masking")
            && manifest.contains("geometry pathway"),
        "{manifest}"
    );
}

/// A stereo recording's right camera is a view-synthesis source of the geometry pathway
/// (`--mono` leaves it out), and depth still learns from it.
#[test]
fn geometry_pathway_uses_the_stereo_pair() {
    let w = scratch("letsmap-stereo");
    let s = |p: &str| w.join(p).to_str().unwrap().to_string();
    // the monocular geometry test's drives, now with a right camera
    for (d, seed) in [("unlabelled/a", "21"), ("unlabelled/b", "22")] {
        tool(&[
            "sim",
            "record",
            "--seed",
            seed,
            "--frames",
            "30",
            "--cell",
            "0.5",
            "--stereo",
            "0.5",
            "--out",
            &s(d),
        ]);
    }
    record_at(&w.join("test"), 23, 12, "10", true);
    let geo = |out: &str, mono: bool| {
        let (data, test) = (s("unlabelled"), s("test"));
        let mut a = vec![
            "pretrain-geometry",
            "--data",
            &data,
            "--out",
            out,
            "--epochs",
            "2",
            "--seed",
            "3",
            "--no-ground-prior",
            "--eval-depth",
            &test,
        ];
        if mono {
            a.push("--mono");
        }
        tool(&a)
    };
    let said = geo(&s("stereo"), false);
    assert!(said.contains("right camera (0.50 m over)"), "{said}");
    let abs_rel = json_floats(&w.join("stereo/geometry.json"), "depth");
    assert!(
        abs_rel[2] < 0.8 * abs_rel[0],
        "AbsRel before and after each epoch: {abs_rel:?}"
    );
    let said = geo(&s("mono"), true);
    assert!(!said.contains("right camera"), "{said}");
}

/// `scripts/letsmap-recipe.sh --quick` runs every step and row of the recipe, and each pathway
/// learns: the geometry pathway's depth improves, both MAE variants' probe losses fall, and
/// quick fine-tunes beat an untrained export.
#[test]
fn recipe_quick_runs_every_row_and_each_pathway_learns() {
    let w = scratch("letsmap-recipe");
    let out = std::process::Command::new("bash")
        .arg(workspace_root().join("scripts/letsmap-recipe.sh"))
        .args(["--quick", "--work", w.to_str().unwrap()])
        .env("BEVRT_TOOL", bin("bevrt-tool"))
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(w.join("table.md")).unwrap();
    // header, rule and the fifteen rows: the eight of issue 19 and the disjoint pathways; the
    // unlabelled drives' four (issue 39) and the two oracle rows
    assert_eq!(table.lines().count(), 2 + 15, "{table}");
    // what --ship would copy: a 1 % row's subset-0 bundle, picked on the validation drive
    let ship = std::fs::read_to_string(w.join("ship.txt")).unwrap();
    assert!(
        ship.trim().ends_with("-1-s0") && w.join("bundles").join(ship.trim()).is_dir(),
        "{ship}"
    );
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("learned.json")).unwrap()).unwrap();
    let v = |k: &str| -> Vec<f64> {
        match &l[k] {
            serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
            x => vec![x.as_f64().unwrap()],
        }
    };
    let first_last = |k: &str| {
        let x = v(k);
        (x[0], *x.last().unwrap())
    };
    let (a0, a1) = first_last("abs_rel");
    assert!(a1 < a0, "geometry pathway depth AbsRel {:?}", v("abs_rel"));
    for k in ["mae_edges_probe_loss", "mae_random_probe_loss"] {
        let (p0, p1) = first_last(k);
        assert!(p1 < p0, "{k}: {:?}", v(k));
    }
    let untrained = v("untrained_miou")[0];
    let scratch = v("scratch_1_miou");
    let mean = scratch.iter().sum::<f64>() / scratch.len() as f64;
    assert!(
        mean > untrained + 2.0 && v("both_100_miou")[0] > untrained + 2.0,
        "untrained {untrained:.1}, scratch 1 % {scratch:?}, both 100 % {:?}\n{table}",
        v("both_100_miou")
    );
    check_unlabelled_terms(&l["semi"]);
}

/// Each unlabelled term lowers its own objective (mean of its last tenth of steps against its
/// first), and the pseudo-labels have not collapsed: no class takes over 80 % of them, every
/// class with 5 % of the labelled cells gets some, and their class histogram is within a
/// total variation distance of 0.4 of the labelled cells' (a teacher that says one class
/// everywhere is at least 0.59 away here, road being 41 % of the labels).
fn check_unlabelled_terms(semi: &serde_json::Value) {
    let floats = |k: &str| -> Vec<f64> {
        semi[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} missing: {semi}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for k in ["consistency_loss", "pseudo_loss"] {
        let l = floats(k);
        assert!(l.len() == 2 && l[1] < l[0], "{k} [first, last tenth] {l:?}");
    }
    let (pseudo, labelled) = (floats("pseudo_histogram"), floats("labelled_histogram"));
    let share = |h: &[f64]| -> Vec<f64> {
        let n: f64 = h.iter().sum();
        h.iter().map(|c| c / n.max(1.0)).collect()
    };
    let (ps, ls) = (share(&pseudo), share(&labelled));
    let tv: f64 = ps.iter().zip(&ls).map(|(p, l)| (p - l).abs()).sum::<f64>() / 2.0;
    assert!(
        tv <= 0.4,
        "pseudo-labels {ps:?} against labels {ls:?}: distance {tv:.2}"
    );
    for (c, (p, l)) in ps.iter().zip(&ls).enumerate() {
        assert!(
            *l < 0.05 || *p > 0.0,
            "class {c}: {:.1} % of the labels, no pseudo-label",
            l * 100.0
        );
        assert!(
            *p <= 0.8,
            "class {c} takes {:.1} % of the pseudo-labels: {semi}",
            p * 100.0
        );
    }
}
