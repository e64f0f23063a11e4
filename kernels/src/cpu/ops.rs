//! The plan's other kernels on the CPU, allocation-free, each with the twin's semantics
//! (pool, resize, softmax and argmax are the twins' own `*_into` functions; binary walks the
//! broadcast shape with nested loops instead of the twin's per-element division, computing
//! the same values).

use crate::params::BinaryParams;
use crate::reference::activate;

/// `y = activate(a op b)` over the right-aligned 4-D broadcast shape of `p`.
pub fn binary(p: &BinaryParams, a: &[f32], b: &[f32], y: &mut [f32]) {
    let [d0, d1, d2, d3] = p.dims.map(|d| d as usize);
    let [a0, a1, a2, a3] = p.a_strides.map(|s| s as usize);
    let [b0, b1, b2, b3] = p.b_strides.map(|s| s as usize);
    let mut i = 0;
    for i0 in 0..d0 {
        for i1 in 0..d1 {
            for i2 in 0..d2 {
                let ia = i0 * a0 + i1 * a1 + i2 * a2;
                let ib = i0 * b0 + i1 * b1 + i2 * b2;
                let out = &mut y[i..i + d3];
                i += d3;
                match (a3, b3) {
                    (1, 1) => row(p, &a[ia..ia + d3], &b[ib..ib + d3], out),
                    (1, 0) => row_scalar_b(p, &a[ia..ia + d3], b[ib], out),
                    _ => {
                        for (k, o) in out.iter_mut().enumerate() {
                            *o = apply(p, a[ia + k * a3], b[ib + k * b3]);
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn apply(p: &BinaryParams, u: f32, v: f32) -> f32 {
    let r = match p.op {
        0 => u + v,
        1 => u - v,
        2 => u * v,
        _ => u / v,
    };
    activate(r, p.act, p.act_a, p.act_b)
}

fn row(p: &BinaryParams, a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((o, u), v) in y.iter_mut().zip(a).zip(b) {
        *o = apply(p, *u, *v);
    }
}

fn row_scalar_b(p: &BinaryParams, a: &[f32], v: f32, y: &mut [f32]) {
    for (o, u) in y.iter_mut().zip(a) {
        *o = apply(p, *u, v);
    }
}

pub fn unary(x: &[f32], y: &mut [f32], code: i32, a: f32, b: f32) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = activate(*v, code, a, b);
    }
}

pub fn quantize(x: &[f32], y: &mut [i8], s: f32, zp: i32) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = crate::reference::quantize_i8(*v, s, zp);
    }
}

pub fn dequantize(x: &[i8], y: &mut [f32], s: f32, zp: i32) {
    for (o, q) in y.iter_mut().zip(x) {
        *o = (*q as i32 - zp) as f32 * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_equals_the_twin_for_broadcasts() {
        // a: (2, 3, 4, 5), b broadcast along dims 0 and 3 (per-channel-row), and a scalar
        let a: Vec<f32> = (0..120).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..12).map(|i| 0.5 + i as f32).collect();
        for (b_strides, op) in [([0, 4, 1, 0], 3), ([0, 0, 0, 0], 1), ([0, 4, 1, 0], 2)] {
            let p = BinaryParams {
                n: 120,
                dims: [2, 3, 4, 5],
                a_strides: [60, 20, 5, 1],
                b_strides,
                op,
                act: crate::params::act::RELU,
                ..Default::default()
            };
            let want = crate::reference::binary(&p, &a, &b);
            let mut got = vec![0f32; 120];
            binary(&p, &a, &b, &mut got);
            assert_eq!(got, want);
        }
    }
}
