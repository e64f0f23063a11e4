//! GFLOP/s of the CPU engine's convolution kernels on single layers, beside the measured FMA
//! peak: `cargo run --release -p bevrt-kernels --example cpu_conv_speed [threads]`.

use bevrt_kernels::cpu::{CpuPlan, isa::Isa, peak, pool};
use bevrt_kernels::params::{ConvParams, PoolParams, act, out_mode};
use bevrt_kernels::plan::{ConstData, ConvKernel, DType, KernelPlan, Op, Step, TensorDesc};
use std::time::Instant;

/// (name, c, h, w, k, r, stride, groups, int8)
type Layer = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
);
const LAYERS: &[Layer] = &[
    (
        "3x3 s1 32->32 80x80 (BEV head)",
        32,
        80,
        80,
        32,
        3,
        1,
        1,
        false,
    ),
    (
        "3x3 s2 3->16 128x384 (first layer)",
        3,
        128,
        384,
        16,
        3,
        2,
        1,
        false,
    ),
    ("1x1 128->128 40x40", 128, 40, 40, 128, 1, 1, 1, false),
    ("3x3 s1 32->32 80x80 int8", 32, 80, 80, 32, 3, 1, 1, true),
    ("1x1 128->128 40x40 int8", 128, 40, 40, 128, 1, 1, 1, true),
    ("dw 3x3 s1 64 48x48", 64, 48, 48, 64, 3, 1, 64, false),
    ("dw 3x3 s1 64 48x48 int8", 64, 48, 48, 64, 3, 1, 64, true),
    ("dw 5x5 s2 96 12x48 int8", 96, 12, 48, 96, 5, 2, 96, true),
    ("dw 5x5 s2 96 12x48", 96, 12, 48, 96, 5, 2, 96, false),
    // ResNet-50's bottleneck layers (ONNX Runtime's QDQ quantization of it runs these in INT8)
    ("res2 3x3 64->64 56x56 int8", 64, 56, 56, 64, 3, 1, 1, true),
    (
        "res2 1x1 256->64 56x56 int8",
        256,
        56,
        56,
        64,
        1,
        1,
        1,
        true,
    ),
    (
        "res2 1x1 64->256 56x56 int8",
        64,
        56,
        56,
        256,
        1,
        1,
        1,
        true,
    ),
    (
        "res4 3x3 256->256 14x14 int8",
        256,
        14,
        14,
        256,
        3,
        1,
        1,
        true,
    ),
    (
        "res4 1x1 1024->256 14x14 int8",
        1024,
        14,
        14,
        256,
        1,
        1,
        1,
        true,
    ), // the same network's FP32 layers where the weights outgrow L2 or the rows are short
    ("res2 1x1 64->256 56x56", 64, 56, 56, 256, 1, 1, 1, false),
    ("res5 3x3 512->512 7x7", 512, 7, 7, 512, 3, 1, 1, false),
    (
        "res5 3x3 s2 512->512 14x14",
        512,
        14,
        14,
        512,
        3,
        2,
        1,
        false,
    ),
    (
        "res5 1x1 s2 1024->2048 14x14",
        1024,
        14,
        14,
        2048,
        1,
        2,
        1,
        false,
    ),
    ("res5 1x1 512->2048 7x7", 512, 7, 7, 2048, 1, 1, 1, false),
    ("fc 2048->1000", 2048, 1, 1, 1000, 1, 1, 1, false),
    // ShuffleNet's depthwise layers: small planes, many channels
    ("dw 3x3 s1 240 7x7", 240, 7, 7, 240, 3, 1, 240, false),
    ("dw 3x3 s1 120 14x14", 120, 14, 14, 120, 3, 1, 120, false),
    ("dw 3x3 s2 120 28x28", 120, 28, 28, 120, 3, 2, 120, false),
    (
        "dw 3x3 s2 120 28x28 int8",
        120,
        28,
        28,
        120,
        3,
        2,
        120,
        true,
    ),
];

#[allow(clippy::too_many_arguments)]
fn plan_for(
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    st: usize,
    g: usize,
    int8: bool,
) -> KernelPlan {
    let pad = r / 2;
    let (oh, ow) = ((h + 2 * pad - r) / st + 1, (w + 2 * pad - r) / st + 1);
    let kdim = c / g * r * r;
    let kpad = kdim.div_ceil(32) * 32;
    let p = ConvParams {
        n: 1,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        k: k as i32,
        oh: oh as i32,
        ow: ow as i32,
        r: r as i32,
        s: r as i32,
        stride_h: st as i32,
        stride_w: st as i32,
        pad_h: pad as i32,
        pad_w: pad as i32,
        dil_h: 1,
        dil_w: 1,
        groups: g as i32,
        kdim: kdim as i32,
        kpad: kpad as i32,
        act: act::RELU,
        out_mode: out_mode::F32,
        ..Default::default()
    };
    // INT8 layers write INT8, as in a QDQ graph (the requantizing epilogue)
    let p = if int8 {
        ConvParams {
            out_mode: out_mode::I8,
            out_scale: 0.05,
            out_zp: -128,
            in_zp: -3,
            ..p
        }
    } else {
        p
    };
    let mut plan = KernelPlan::default();
    let desc = |shape: Vec<usize>, dtype, quant| TensorDesc {
        name: "t".into(),
        shape,
        dtype,
        quant,
        view_of: None,
        view_offset: 0,
    };
    let x = plan.add_tensor(desc(
        vec![1, c, h, w],
        if int8 { DType::I8 } else { DType::F32 },
        int8.then_some((0.1, 0)),
    ));
    let y = plan.add_tensor(if int8 {
        desc(vec![1, k, oh, ow], DType::I8, Some((0.05, -128)))
    } else {
        desc(vec![1, k, oh, ow], DType::F32, None)
    });
    let bias = plan.add_const(ConstData::F32(vec![0.1; k]));
    let op = if int8 {
        let weights = plan.add_const(ConstData::I8(vec![3; k * kpad]));
        let wsum = Some(plan.add_const(ConstData::I32(vec![3 * kdim as i32; k])));
        let mult = Some(plan.add_const(ConstData::F32(vec![0.01; k])));
        let kernel = if g > 1 {
            ConvKernel::DirectI8
        } else {
            ConvKernel::GemmI8
        };
        Op::Conv {
            kernel,
            p,
            weights,
            bias,
            wsum,
            mult,
        }
    } else {
        let weights = plan.add_const(ConstData::F32(vec![0.01; k * kpad]));
        let kernel = if g > 1 {
            ConvKernel::DirectF16
        } else {
            ConvKernel::GemmF16
        };
        Op::Conv {
            kernel,
            p,
            weights,
            bias,
            wsum: None,
            mult: None,
        }
    };
    plan.steps.push(Step {
        name: "conv".into(),
        op,
        inputs: vec![x],
        const_inputs: vec![],
        output: y,
    });
    plan.inputs = vec![x];
    plan.outputs = vec![y];
    plan.allocate();
    plan
}

/// Mean seconds per run of a one-step plan on the engine, after 5 warm-up runs.
fn seconds_per_run(plan: KernelPlan, pool: &std::sync::Arc<pool::WorkerPool>, isa: Isa) -> f64 {
    let mut e = CpuPlan::load(plan, pool.clone(), isa).expect("loads");
    for _ in 0..5 {
        e.run();
    }
    let n = 50;
    let t0 = Instant::now();
    for _ in 0..n {
        e.run();
    }
    t0.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let only = std::env::args().nth(2);
    let isa = Isa::detect();
    let pool = pool::shared(threads);
    let pk = peak::measure(isa, &pool);
    let peak = if threads > 1 {
        pk.gflops_all
    } else {
        pk.gflops_1
    };
    println!(
        "{} on {threads} thread(s): FMA peak {peak:.1} GFLOP/s",
        isa.name()
    );
    for &(name, c, h, w, k, r, st, g, int8) in LAYERS {
        if only.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let plan = plan_for(c, h, w, k, r, st, g, int8);
        let ops = match &plan.steps[0].op {
            Op::Conv { p, .. } => p.ops(),
            _ => 0.0,
        };
        let s = seconds_per_run(plan, &pool, isa);
        let g = ops / s / 1e9;
        println!(
            "{name:<40} {:>8.3} ms {g:>8.1} G{}/s {:>6.1} % of FP32 peak",
            s * 1e3,
            if int8 { "OP" } else { "FLOP" },
            100.0 * g / peak
        );
    }
    pools(&pool, only.as_deref());
}

/// Max pools (bandwidth-bound: GB/s of input read and output written), FP32 and on INT8
/// codes, through the engine as one-step plans.
fn pools(pool: &std::sync::Arc<pool::WorkerPool>, only: Option<&str>) {
    // (name, c, h, w, k, stride, pad)
    let cases = [
        ("SqueezeNet max 3x3 s2 96x109x109", 96, 109, 109, 3, 2, 0),
        ("ResNet max 3x3 s2 p1 64x112x112", 64, 112, 112, 3, 2, 1),
    ];
    for (name, c, h, w, k, st, pad) in cases {
        for int8 in [false, true] {
            let label = format!("{name}{}", if int8 { " int8" } else { "" });
            if only.is_some_and(|f| !label.contains(f)) {
                continue;
            }
            let (oh, ow) = ((h + 2 * pad - k) / st + 1, (w + 2 * pad - k) / st + 1);
            let p = PoolParams {
                n: 1,
                c: c as i32,
                h: h as i32,
                w: w as i32,
                oh: oh as i32,
                ow: ow as i32,
                kh: k as i32,
                kw: k as i32,
                stride_h: st as i32,
                stride_w: st as i32,
                pad_h: pad as i32,
                pad_w: pad as i32,
                mode: 0,
                count_include_pad: 0,
            };
            let (dtype, quant) = if int8 {
                (DType::I8, Some((0.1, 0)))
            } else {
                (DType::F32, None)
            };
            let mut plan = KernelPlan::default();
            let desc = |shape: Vec<usize>| TensorDesc {
                name: "t".into(),
                shape,
                dtype,
                quant,
                view_of: None,
                view_offset: 0,
            };
            let x = plan.add_tensor(desc(vec![1, c, h, w]));
            let y = plan.add_tensor(desc(vec![1, c, oh, ow]));
            plan.steps.push(Step {
                name: "pool".into(),
                op: Op::Pool(p),
                inputs: vec![x],
                const_inputs: vec![],
                output: y,
            });
            plan.inputs = vec![x];
            plan.outputs = vec![y];
            plan.allocate();
            let s = seconds_per_run(plan, pool, Isa::detect());
            let bytes = (c * (h * w + oh * ow) * if int8 { 1 } else { 4 }) as f64;
            println!(
                "{label:<40} {:>8.3} ms {:>8.1} GB/s",
                s * 1e3,
                bytes / s / 1e9
            );
        }
    }
}
