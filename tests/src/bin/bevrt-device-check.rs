//! GPU-against-reference checks for every CUDA kernel, plus kernel timings, written as JSON.
//! Runs on a GPU machine from a prebuilt binary (tests/device/run.sh); without a driver it
//! exits with a clear message.
//!
//! usage: bevrt-device-check [--kernels DIR] [--out FILE.json] [--model FILE.onnx[:N,C,H,W]]...
//!                           [--fail-check GROUP]
//!
//! Checks run in groups, cheapest first (f16 conversions, argmax/colourise, BEV pool, AFV,
//! preprocess, then each model's plan). A group that errors or panics is recorded as failed
//! and the next one runs; after each group the stream is synchronised and cudarc's recorded
//! errors are checked, so a fault lands on the group that caused it; the JSON is rewritten
//! after every group (`bevrt_tests::device_report`). `--fail-check GROUP` fails one group on
//! purpose, to see that isolation on a GPU.
//!
//! Each `--model` is lowered to a kernel plan (FP16 activations; INT8 where it has Q/DQ) and
//! run step by step on the GPU against the CPU twins (`bevrt_kernels::reference`) on the same
//! arena: int8 outputs bit-exact, FP16 outputs within 1e-3 of the tensor's largest value;
//! INT8 GEMMs are checked with both the IMMA and the dp4a kernel. Then the whole plan is
//! timed as a CUDA graph replay and every convolution alone (TOPS).

use bevrt_calib::{BevGrid, CameraModel, Extrinsics, SamplingTable, view_transform};
use bevrt_kernels::launch::{Gpu, PreprocessParams};
use bevrt_runtime::frame::{Frame, PixelFormat};
use bevrt_runtime::postprocess::{bev_argmax, colourise};
use bevrt_runtime::preprocess::PreprocessPlan;
use bevrt_tests::device_report::{CheckResult, Recorder};
use bevrt_tests::preprocess_cases::{self, PreprocessCase};
use bevrt_tests::splitmix_bytes as bytes;
use serde_json::json;
use std::time::Instant;

/// One thread per element over `n` values: `kernel(x, y, n)` (the cast kernels).
fn launch_elementwise<A: cudarc::driver::DeviceRepr, B: cudarc::driver::DeviceRepr>(
    gpu: &Gpu,
    kernel: &str,
    x: &cudarc::driver::CudaSlice<A>,
    y: &mut cudarc::driver::CudaSlice<B>,
    n: usize,
) -> CheckResult {
    use cudarc::driver::PushKernelArg;
    let n32 = n as i32;
    let mut b = gpu.stream.launch_builder(gpu.function(kernel)?);
    b.arg(x).arg(y).arg(&n32);
    // SAFETY: cast_*(x, y, n) with n elements in both buffers.
    unsafe { b.launch(bevrt_kernels::launch::elementwise_config(n)) }?;
    Ok(())
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y).abs() as f64) / (y.abs() as f64).max(1e-3))
        .fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = arg("--out").unwrap_or_else(|| "device_check.json".into());
    let kernels = arg("--kernels").map(std::path::PathBuf::from);
    let models: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--model")
        .map(|w| w[1].clone())
        .collect();
    let mut rec = Recorder::new(out.clone().into(), arg("--fail-check"));
    let code = match Gpu::open(kernels.as_deref()) {
        Ok(gpu) => {
            run(&gpu, &models, &mut rec);
            if rec.all_passed() { 0 } else { 1 }
        }
        Err(e) => {
            rec.header.insert("open_error".into(), json!(e.to_string()));
            rec.group("open", |_| Err(e.to_string().into()), || Ok(()));
            2
        }
    };
    rec.flush();
    println!(
        "{}",
        serde_json::to_string_pretty(&rec.report()).unwrap_or_default()
    );
    println!(
        "device check: {}; report in {out}",
        if code == 0 {
            "all kernels match"
        } else {
            "FAILURES (see groups)"
        }
    );
    std::process::exit(code);
}

fn run(gpu: &Gpu, models: &[String], rec: &mut Recorder) {
    record_device(gpu, rec);
    let sync = || -> CheckResult { Ok(gpu.synchronize()?) };
    rec.group(
        "f16_conversions",
        |checks| check_f16_conversions(gpu, checks),
        sync,
    );
    rec.group(
        "argmax_colourise",
        |checks| check_argmax_colourise(gpu, checks),
        sync,
    );
    rec.group("bev_pool", |checks| check_bev_pool(gpu, checks), sync);
    rec.group("afv", |checks| check_afv(gpu, checks), sync);
    rec.group(
        "preprocess",
        |checks| {
            check_preprocess_matrix(gpu, checks)?;
            check_preprocess_source_map(gpu, checks)
        },
        sync,
    );
    rec.group(
        "preprocess_timing",
        |checks| time_preprocess(gpu, checks),
        sync,
    );
    for m in models {
        rec.group(
            &format!("plan {m}"),
            |checks| {
                checks.push(check_plan(gpu, m)?);
                Ok(())
            },
            sync,
        );
    }
}

/// The device, driver, SM, kernel image and NVRTC version in the report's header.
fn record_device(gpu: &Gpu, rec: &mut Recorder) {
    if let Ok(Some(info)) = bevrt_kernels::device::probe() {
        rec.header.insert("device".into(), json!(info.name));
        rec.header
            .insert("driver_version".into(), json!(info.driver_version));
    }
    rec.header.insert("sm".into(), json!(gpu.sm));
    rec.header
        .insert("kernel_image".into(), json!(format!("{:?}", gpu.image)));
    if let Ok((a, b)) = bevrt_kernels::nvrtc::version() {
        rec.header.insert("nvrtc".into(), json!(format!("{a}.{b}")));
    }
}

type Checks = Vec<serde_json::Value>;

/// f16 conversions first: the PTX rounding and NaN rules every FP16 kernel relies on.
fn check_f16_conversions(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    let mut x: Vec<f32> = bytes(4 << 16, 5)
        .chunks_exact(4)
        .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    x.extend([
        f32::NAN,
        -f32::NAN,
        65519.0,
        65520.0,
        6.0e-8,
        2.9802322e-8,
        -0.0,
    ]);
    let n = x.len();
    let dx = st.clone_htod(&x)?;
    let mut dh = st.alloc_zeros::<u16>(n)?;
    launch_elementwise(gpu, "cast_f32_f16", &dx, &mut dh, n)?;
    let h = st.clone_dtoh(&dh)?;
    let want: Vec<u16> = x
        .iter()
        .map(|v| bevrt_kernels::reference::f2h(*v))
        .collect();
    let bad = h.iter().zip(&want).filter(|(a, b)| a != b).count();
    checks.push(json!({"kernel": "cast_f32_f16", "case": format!("{n} values incl. NaN, subnormal, overflow"), "mismatches": bad, "pass": bad == 0}));
    let all_h: Vec<u16> = (0..=u16::MAX).collect();
    let dall = st.clone_htod(&all_h)?;
    let mut dall_f = st.alloc_zeros::<f32>(all_h.len())?;
    launch_elementwise(gpu, "cast_f16_f32", &dall, &mut dall_f, all_h.len())?;
    let f = st.clone_dtoh(&dall_f)?;
    let bad = f
        .iter()
        .zip(&all_h)
        .filter(|(g, h)| g.to_bits() != bevrt_kernels::reference::h2f(**h).to_bits())
        .count();
    checks.push(json!({"kernel": "cast_f16_f32", "case": "all 65536 f16 values", "mismatches": bad, "pass": bad == 0}));
    Ok(())
}

/// Argmax and colourise, bit-exact.
fn check_argmax_colourise(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    // ---- argmax + colourise, bit-exact
    let (ncls, side) = (8usize, 200usize);
    let n = side * side;
    let logits: Vec<f32> = bytes(ncls * n, 13)
        .iter()
        .map(|b| (*b % 32) as f32)
        .collect(); // ties on purpose
    let mut want_map = vec![0u8; n];
    bev_argmax(&logits, ncls, side, side, &mut want_map);
    let dl = st.clone_htod(&logits)?;
    let mut dmap = st.alloc_zeros::<u8>(n)?;
    gpu.bev_argmax(&dl, &mut dmap, ncls as i32, n as i32)?;
    let got_map = st.clone_dtoh(&dmap)?;
    let pass = got_map == want_map;
    checks.push(json!({"kernel": "bev_argmax", "case": format!("{ncls} classes, {side}x{side}, with ties"), "bit_exact": pass, "pass": pass}));
    let classes: Vec<bevrt_models::ClassSpec> = (0..ncls)
        .map(|i| bevrt_models::ClassSpec {
            name: format!("c{i}"),
            color: [i as u8 * 30, 255 - i as u8 * 20, i as u8 * 7],
        })
        .collect();
    let mut map = want_map.clone();
    map[0] = 255; // unknown -> black
    let mut want_rgb = vec![0u8; n * 3];
    colourise(&map, &classes, &mut want_rgb);
    let palette: Vec<u8> = classes.iter().flat_map(|c| c.color).collect();
    let dmap2 = st.clone_htod(&map)?;
    let dpal = st.clone_htod(&palette)?;
    let mut drgb = st.alloc_zeros::<u8>(n * 3)?;
    gpu.colourise(&dmap2, &dpal, ncls as i32, &mut drgb, n as i32)?;
    let pass = st.clone_dtoh(&drgb)? == want_rgb;
    checks.push(json!({"kernel": "colourise", "case": format!("{side}x{side} with unknown cells"), "bit_exact": pass, "pass": pass}));

    Ok(())
}

/// The camera, mounting and BEV grid of the BEV pool and lift checks.
fn bev_scene() -> Result<(CameraModel, Extrinsics, BevGrid), Box<dyn std::error::Error>> {
    let cam = CameraModel::pinhole(
        768,
        256,
        300.0,
        300.0,
        384.0,
        128.0,
        [-0.05, 0.0, 0.0, 0.0, 0.0],
    )?;
    let ext = Extrinsics::from_height_pitch_roll_yaw(1.5, 4.0, 0.0, 0.0);
    let grid = BevGrid {
        x_min: 0.0,
        x_max: 50.0,
        y_min: -25.0,
        y_max: 25.0,
        cell: 0.25,
        z_levels: vec![0.0, 0.5, 1.0, 1.5],
        depth: None,
    };
    Ok((cam, ext, grid))
}

/// BEV pool against bevrt_calib::view_transform on a real sampling table, then the
/// depth-weighted lift against bevrt_calib::lift; timings of both.
fn check_bev_pool(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    let (cam, ext, grid) = bev_scene()?;
    let (fw, fh, ch) = (96usize, 32usize, 64usize);
    let table = SamplingTable::try_build(&grid, &cam, &ext, fw, fh, 8)?;
    let feat: Vec<f32> = bytes(ch * fw * fh, 11)
        .iter()
        .map(|b| *b as f32 / 17.0 - 7.0)
        .collect();
    let cells = table.grid_w * table.grid_h;
    let mut want = vec![0f32; ch * table.levels * cells];
    view_transform(&table, &feat, &mut want)?;
    let taps = st.clone_htod(table.taps_as_bytes())?;
    let dfeat = st.clone_htod(&feat)?;
    let mut dout = st.alloc_zeros::<f32>(want.len())?;
    let launch = |dout: &mut cudarc::driver::CudaSlice<f32>| {
        gpu.bev_pool_f32(
            &taps,
            &dfeat,
            dout,
            ch as i32,
            table.levels as i32,
            cells as i32,
            (fw * fh) as i32,
        )
    };
    launch(&mut dout)?;
    let got = st.clone_dtoh(&dout)?;
    let err = max_rel(&got, &want);
    let pass = err <= 1e-5;
    checks.push(json!({"kernel": "bev_pool_f32", "case": format!("{}x{}x{} levels, C={ch}", table.grid_h, table.grid_w, table.levels),
                           "max_rel_err": err, "tolerance": 1e-5, "pass": pass}));
    st.synchronize()?;
    let t = Instant::now();
    for _ in 0..200 {
        launch(&mut dout)?;
    }
    st.synchronize()?;
    let bev_ms = t.elapsed().as_secs_f64() * 1e3 / 200.0;
    checks.push(json!({"timing": "bev_pool_200x200x4_c64", "ms": bev_ms, "pass": true}));

    let pool = BevPoolCase {
        cam: &cam,
        ext: &ext,
        grid: &grid,
        feat: &feat,
        fw,
        fh,
        ch,
        cells,
        bev_ms,
    };
    check_bev_lift(gpu, checks, &pool)
}

/// What the lift check shares with the BEV pool check: the scene, the C feature planes
/// (fw x fh), the grid's cell count and the pool's time per launch.
struct BevPoolCase<'a> {
    cam: &'a CameraModel,
    ext: &'a Extrinsics,
    grid: &'a BevGrid,
    feat: &'a [f32],
    fw: usize,
    fh: usize,
    ch: usize,
    cells: usize,
    bev_ms: f64,
}

/// The depth-weighted lift (depth_softmax_f32 + bev_lift_f32) against bevrt_calib::lift.
fn check_bev_lift(gpu: &Gpu, checks: &mut Checks, pool: &BevPoolCase) -> CheckResult {
    let st = gpu.stream.clone();
    let BevPoolCase {
        cam,
        ext,
        grid,
        feat,
        fw,
        fh,
        ch,
        cells,
        bev_ms,
    } = *pool;
    let bins = 32usize;
    let dgrid = BevGrid {
        depth: Some(bevrt_calib::DepthBins {
            min: 3.0,
            max: 60.0,
            bins,
            spacing: bevrt_calib::DepthSpacing::Log,
        }),
        ..grid.clone()
    };
    let dtable = SamplingTable::try_build(&dgrid, cam, ext, fw, fh, 8)?;
    let plane = fw * fh;
    let mut dfeat_host = feat.to_vec();
    dfeat_host.extend(
        bytes(bins * plane, 12)
            .iter()
            .map(|b| *b as f32 / 32.0 - 4.0),
    );
    let mut scratch = bevrt_calib::LiftScratch::new(&dtable);
    let mut dwant = vec![0f32; ch * dtable.levels * cells];
    bevrt_calib::lift(&dtable, &dfeat_host, &mut scratch, &mut dwant)?;
    let dtaps = st.clone_htod(dtable.taps_as_bytes())?;
    let dbins = st.clone_htod(&dtable.bins)?;
    let dlfeat = st.clone_htod(&dfeat_host)?;
    let dw = st.alloc_zeros::<f32>(bins * plane)?;
    let mut dlout = st.alloc_zeros::<f32>(dwant.len())?;
    let lift_launch = |dlout: &mut cudarc::driver::CudaSlice<f32>| {
        use cudarc::driver::DevicePtr;
        let (f, _f) = dlfeat.device_ptr(&st);
        let (w, _w) = dw.device_ptr(&st);
        let (t, _t) = dtaps.device_ptr(&st);
        let (b, _b) = dbins.device_ptr(&st);
        let (o, _o) = dlout.device_ptr(&st);
        gpu.depth_softmax_f32_at(f + (ch * plane * 4) as u64, w, bins as i32, plane as i32)?;
        gpu.bev_lift_f32_at(
            t,
            b,
            w,
            f,
            o,
            ch as i32,
            dtable.levels as i32,
            cells as i32,
            plane as i32,
        )
    };
    lift_launch(&mut dlout)?;
    let got = st.clone_dtoh(&dlout)?;
    let err = max_rel(&got, &dwant);
    checks.push(json!({"kernel": "bev_lift_f32", "case": format!("{}x{}x{} levels, C={ch}, D={bins}", dtable.grid_h, dtable.grid_w, dtable.levels),
                           "max_rel_err": err, "tolerance": 1e-5, "pass": err <= 1e-5}));
    st.synchronize()?;
    let t = Instant::now();
    for _ in 0..200 {
        lift_launch(&mut dlout)?;
    }
    st.synchronize()?;
    let lift_ms = t.elapsed().as_secs_f64() * 1e3 / 200.0;
    checks.push(
        json!({"timing": "bev_lift_200x200x4_c64_d32", "ms": lift_ms,
                           "vs_bev_pool": lift_ms / bev_ms, "pass": true}),
    );

    Ok(())
}

/// AFV score + Fisher normalisation against bevrt_runtime::afv.
fn check_afv(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    // ---- AFV score + Fisher normalisation against bevrt_runtime::afv, the shapes of the
    // MNIST discriminator's tail (32x14x14 -> conv 4/2 -> 64x7x7)
    {
        use bevrt_kernels::launch::AfvDims;
        use bevrt_runtime::afv::{AfvGeometry, afv_score, fisher_normalise};
        let g = AfvGeometry::k4s2(32, (14, 14), 64, 0.2, 1);
        let d = AfvDims::from(&g);
        let vals = |n: usize, seed: u64, lo: f32, hi: f32| -> Vec<f32> {
            bytes(n, seed)
                .iter()
                .map(|b| lo + (hi - lo) * (*b as f32 / 255.0))
                .collect()
        };
        let a1 = vals(g.a1_len(), 21, -0.2, 1.0);
        let z2 = vals(g.z2_len(), 22, -1.0, 1.0);
        let w3 = vals(g.z2_len(), 23, -0.1, 0.1);
        let mean = vals(g.dim(), 24, -0.05, 0.05);
        let diag = vals(g.dim(), 25, 0.01, 0.5);
        let mut delta = vec![0f32; g.z2_len()];
        let mut want = vec![0f32; g.dim()];
        afv_score(&g, &a1, &z2, &w3, &mut delta, &mut want);
        let (da1, dz2, dw3) = (
            st.clone_htod(&a1)?,
            st.clone_htod(&z2)?,
            st.clone_htod(&w3)?,
        );
        let (dmean, ddiag) = (st.clone_htod(&mean)?, st.clone_htod(&diag)?);
        let ddelta = st.alloc_zeros::<f32>(g.z2_len())?;
        let du = st.alloc_zeros::<f32>(g.dim())?;
        let ptr = |s: &cudarc::driver::CudaSlice<f32>| {
            use cudarc::driver::DevicePtr;
            s.device_ptr(&st).0
        };
        gpu.afv_score_at(&d, ptr(&da1), ptr(&dz2), ptr(&dw3), ptr(&ddelta), ptr(&du))?;
        let got = st.clone_dtoh(&du)?;
        let err = max_rel(&got, &want);
        let pass = err <= 1e-4;
        checks.push(json!({"kernel": "afv_delta + afv_conv_grad", "case": "32x14x14 -> 64x7x7, k4 s2 p1", "max_rel": err, "pass": pass}));
        // the same activations with the 2x2 spatial cells the AFV recipe uses
        {
            let g2 = AfvGeometry { regions: 2, ..g };
            let mut want2 = vec![0f32; g2.dim()];
            afv_score(&g2, &a1, &z2, &w3, &mut delta, &mut want2);
            let du2 = st.alloc_zeros::<f32>(g2.dim())?;
            let d2 = AfvDims::from(&g2);
            gpu.afv_score_at(
                &d2,
                ptr(&da1),
                ptr(&dz2),
                ptr(&dw3),
                ptr(&ddelta),
                ptr(&du2),
            )?;
            let err = max_rel(&st.clone_dtoh(&du2)?, &want2);
            let pass = err <= 1e-4;
            checks.push(json!({"kernel": "afv_delta + afv_conv_grad", "case": "32x14x14 -> 64x7x7, k4 s2 p1, 2x2 cells", "max_rel": err, "pass": pass}));
        }
        for (power, l2) in [(false, false), (true, true)] {
            let mut want_v = want.clone();
            fisher_normalise(&mut want_v, &mean, &diag, 1e-6, power, l2);
            let dv = st.clone_htod(&want)?;
            gpu.fisher_normalise_at(
                ptr(&dv),
                ptr(&dmean),
                ptr(&ddiag),
                1e-6,
                power,
                l2,
                g.dim() as i32,
            )?;
            let got = st.clone_dtoh(&dv)?;
            let err = max_rel(&got, &want_v);
            let pass = err <= 1e-4;
            checks.push(json!({"kernel": "fisher_normalise", "case": format!("{} values, power {power}, l2 {l2}", g.dim()), "max_rel": err, "pass": pass}));
        }
    }

    Ok(())
}

/// Preprocess: every pixel format x channel order x layout, 641x361 -> 384x128.
fn check_preprocess_matrix(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    let (iw, ih) = (641u32, 361u32);
    for case in preprocess_cases::matrix() {
        let PreprocessCase {
            fmt_i,
            fmt,
            order_i: ord_i,
            order,
            layout_i: lay_i,
            layout,
        } = case;
        let c = order.channels();
        let spec = case.spec(384, 128);
        let mut frame = Frame::with_capacity(fmt.frame_bytes(iw, ih));
        frame.reset(fmt, iw, ih);
        let n = frame.data.len();
        frame.data.copy_from_slice(&bytes(n, 7 + fmt_i as u64));
        let plan = PreprocessPlan::new(&spec, iw, ih);
        let mut want = vec![0f32; plan.output_len()];
        plan.run(&frame, &mut want);
        let mut p = PreprocessParams {
            q_scale: 1.0,
            in_w: iw as i32,
            in_h: ih as i32,
            out_w: 384,
            out_h: 128,
            fmt: fmt_i as i32,
            order: ord_i as i32,
            layout: lay_i as i32,
            ..Default::default()
        };
        for k in 0..c {
            p.scale[k] = 1.0 / (255.0 * spec.std[k]);
            p.bias[k] = -spec.mean[k] / spec.std[k];
        }
        let src = st.clone_htod(&frame.data)?;
        let case = format!("{fmt} {order:?} {layout:?}");
        // f32: bit-exact (no FMA contraction on either side)
        let mut dst = st.alloc_zeros::<f32>(want.len())?;
        gpu.preprocess(&src, &mut dst, None, &p)?;
        let got = st.clone_dtoh(&dst)?;
        let err = max_rel(&got, &want);
        let exact = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        checks.push(json!({"kernel": "preprocess_f32", "case": case, "max_rel_err": err, "bit_exact": exact, "pass": exact}));
        // f16 bits
        let mut want16 = vec![0u16; want.len()];
        plan.run_f16(&frame, &mut want16);
        let mut d16 = st.alloc_zeros::<u16>(want.len())?;
        gpu.preprocess(&src, &mut d16, None, &p)?;
        let exact = st.clone_dtoh(&d16)? == want16;
        checks.push(
            json!({"kernel": "preprocess_f16", "case": case, "bit_exact": exact, "pass": exact}),
        );
        // int8
        let q = preprocess_cases::INT8_QUANTS[0];
        p.q_scale = q.scale;
        p.q_zp = q.zero_point;
        let mut want8 = vec![0i8; want.len()];
        plan.run_i8(&frame, &mut want8, q);
        let mut d8 = st.alloc_zeros::<i8>(want.len())?;
        gpu.preprocess(&src, &mut d8, None, &p)?;
        let exact = st.clone_dtoh(&d8)? == want8;
        checks.push(
            json!({"kernel": "preprocess_i8", "case": case, "bit_exact": exact, "pass": exact}),
        );
    }
    Ok(())
}

/// Preprocess through a source map.
fn check_preprocess_source_map(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    let (iw, ih) = (641u32, 361u32);
    // ---- preprocess through a source map (a real undistortion: a barrel-distorted 641x361
    // camera resampled to a 384x128 pinhole view)
    {
        let cam = CameraModel::pinhole(
            iw,
            ih,
            330.0,
            330.0,
            320.0,
            180.0,
            [-0.3, 0.08, 0.0, 0.0, 0.0],
        )?;
        let mut map = Vec::with_capacity(384 * 128);
        for y in 0..128 {
            for x in 0..384 {
                // output pixel -> ray of an ideal pinhole 384x128 camera -> distorted pixel
                let ray = nalgebra::Vector3::new(
                    (x as f64 + 0.5 - 192.0) / 200.0,
                    (y as f64 + 0.5 - 64.0) / 200.0,
                    1.0,
                );
                let p = cam
                    .project(ray)
                    .map(|p| [p.x as f32, p.y as f32])
                    .unwrap_or([-1.0, -1.0]);
                map.push(p);
            }
        }
        let spec = preprocess_cases::source_map_spec(384, 128);
        let mut frame = Frame::with_capacity(PixelFormat::Yuyv.frame_bytes(iw, ih));
        frame.reset(PixelFormat::Yuyv, iw, ih);
        let n = frame.data.len();
        frame.data.copy_from_slice(&bytes(n, 21));
        let plan = PreprocessPlan::new(&spec, iw, ih).with_source_map(map.clone());
        let mut want = vec![0f32; plan.output_len()];
        plan.run(&frame, &mut want);
        let flat: Vec<f32> = map.iter().flatten().copied().collect();
        let dmap = st.clone_htod(&flat)?;
        let src = st.clone_htod(&frame.data)?;
        let mut dst = st.alloc_zeros::<f32>(want.len())?;
        let p = PreprocessParams {
            in_w: iw as i32,
            in_h: ih as i32,
            out_w: 384,
            out_h: 128,
            fmt: 3,
            order: 1,
            layout: 0,
            scale: [1.0 / 127.5; 3],
            bias: [-1.0; 3],
            ..Default::default()
        };
        gpu.preprocess(&src, &mut dst, Some(&dmap), &p)?;
        let got = st.clone_dtoh(&dst)?;
        let exact = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        checks.push(json!({"kernel": "preprocess_f32", "case": "yuyv through undistortion map", "max_rel_err": max_rel(&got, &want), "bit_exact": exact, "pass": exact}));
    }

    Ok(())
}

/// Preprocess throughput.
fn time_preprocess(gpu: &Gpu, checks: &mut Checks) -> CheckResult {
    let st = gpu.stream.clone();
    // ---- preprocess throughput: 1920x1080 YUYV camera frame -> 384x128 NCHW
    let (cw, chh) = (1920u32, 1080u32);
    let frame = bytes(PixelFormat::Yuyv.frame_bytes(cw, chh), 3);
    let src = st.clone_htod(&frame)?;
    let mut dst = st.alloc_zeros::<f32>(3 * 384 * 128)?;
    let p = PreprocessParams {
        in_w: cw as i32,
        in_h: chh as i32,
        out_w: 384,
        out_h: 128,
        fmt: 3,
        order: 1,
        layout: 0,
        scale: [1.0 / 63.75; 3],
        bias: [-1.8; 3],
        ..Default::default()
    };
    for _ in 0..20 {
        gpu.preprocess(&src, &mut dst, None, &p)?;
    }
    st.synchronize()?;
    let t = Instant::now();
    for _ in 0..500 {
        gpu.preprocess(&src, &mut dst, None, &p)?;
    }
    st.synchronize()?;
    let pre_ms = t.elapsed().as_secs_f64() * 1e3 / 500.0;
    checks.push(
        json!({"timing": "preprocess_1920x1080_yuyv_to_384x128", "ms": pre_ms, "pass": true,
            "note": "includes launch overhead (host loop, one stream)"}),
    );
    Ok(())
}

/// Lower `spec` (`FILE.onnx` or `FILE.onnx:N,C,H,W`), check every step against its CPU twin,
/// and time the plan and its convolutions.
fn check_plan(gpu: &Gpu, spec: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use bevrt_kernels::exec::{Int8Gemm, PlanRunner};
    use bevrt_kernels::plan::{DType, Op};
    use bevrt_kernels::reference;
    let (path, shape) = match spec.rsplit_once(':') {
        Some((p, s)) if s.chars().all(|c| c.is_ascii_digit() || c == ',') => (
            p.to_string(),
            s.split(',')
                .map(|v| v.parse::<usize>())
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => (spec.to_string(), vec![]),
    };
    let path = std::path::PathBuf::from(path);
    let summary = bevrt_models::inspect(&path)?;
    let in_name = summary.inputs.first().ok_or("no input")?.name.clone();
    let shapes: Vec<(&str, Vec<usize>)> = if shape.is_empty() {
        vec![]
    } else {
        vec![(in_name.as_str(), shape)]
    };
    let plan = bevrt_runtime::lower::lower_onnx(
        &path,
        &shapes,
        &bevrt_runtime::lower::LowerOptions { float: DType::F16 },
    )?;
    let input_len = plan.tensors[plan.inputs[0]].elems();
    let x: Vec<f32> = bytes(input_len, 21)
        .iter()
        .map(|b| *b as f32 / 64.0 - 2.0)
        .collect();
    let has_int8 = plan
        .steps
        .iter()
        .any(|s| matches!(&s.op, Op::Conv { wsum: Some(_), .. }));
    let variants: Vec<Int8Gemm> = if has_int8 && gpu.sm >= 80 {
        vec![Int8Gemm::Imma, Int8Gemm::Dp4a]
    } else if has_int8 {
        vec![Int8Gemm::Dp4a]
    } else {
        vec![Int8Gemm::Imma]
    };
    let mut pass = true;
    let mut out = json!({"model": path.display().to_string(), "steps": plan.steps.len(),
        "arena_bytes": plan.arena_bytes, "arena_bytes_without_reuse": plan.bytes_without_reuse(),
        "const_bytes": plan.const_bytes(), "kernels": format!("{:?}", plan.kernel_counts())});
    for v in variants {
        let mut r = PlanRunner::load(gpu, plan.clone(), v)?;
        r.set_input(gpu, 0, &x)?;
        let mut worst = vec![];
        for (i, step) in plan.steps.iter().enumerate() {
            let mut host = r.download_arena(gpu)?;
            r.launch_step(gpu, i)?;
            let dev = r.download_arena(gpu)?;
            reference::run_step(&plan, step, &mut host);
            let t = step.output;
            let c = reference::compare_step(&plan, step, &host, &dev);
            let (ok, err, exact) = (c.pass, c.err, c.bit_exact);
            if !ok {
                pass = false;
            }
            if !ok || worst.len() < 3 || err > 0.0 {
                worst.push(json!({"step": i, "name": step.name, "dtype": format!("{:?}", plan.tensors[t].dtype), "bit_exact": exact, "err": err, "pass": ok}));
            }
        }
        // timings: the whole plan as a graph, then each convolution alone
        r.set_input(gpu, 0, &x)?;
        r.capture(gpu)?;
        for _ in 0..10 {
            r.run(gpu)?;
        }
        gpu.stream.synchronize()?;
        let iters = 200;
        let t0 = Instant::now();
        for _ in 0..iters {
            r.run(gpu)?;
        }
        gpu.stream.synchronize()?;
        let plan_ms = t0.elapsed().as_secs_f64() * 1e3 / iters as f64;
        let mut convs = vec![];
        for (i, step) in plan.steps.iter().enumerate() {
            if let Op::Conv { p, .. } = &step.op {
                let t0 = Instant::now();
                for _ in 0..50 {
                    r.launch_step(gpu, i)?;
                }
                gpu.stream.synchronize()?;
                let s = t0.elapsed().as_secs_f64() / 50.0;
                convs.push(json!({"step": i, "name": step.name, "m": p.n * p.oh * p.ow, "n": p.k, "k": p.kdim,
                    "groups": p.groups, "us": s * 1e6, "tops": p.ops() / s / 1e12}));
            }
        }
        out[format!("{v:?}")] = json!({"pass": worst.iter().all(|w| w["pass"].as_bool().unwrap_or(false)),
            "steps_reported": worst, "graph_replay_ms": plan_ms, "convolutions": convs});
    }
    out["pass"] = json!(pass);
    Ok(out)
}
