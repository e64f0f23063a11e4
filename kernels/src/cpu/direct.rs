//! [`DirectConv`]: grouped and depthwise convolutions, one output channel per task, every
//! tap one contiguous pass over a padded, phase-split copy of its input channels (see the
//! [`super::conv`] overview).

use super::conv::{Acc, Epilogue, InBuf, OutBuf, PaddedRows, as_f32, as_i32};
use super::isa::Isa;
use crate::params::ConvParams;

/// The weights as the accumulation reads them, `[k][kdim]`, chosen at load.
enum Taps {
    F32(Vec<f32>),
    /// INT8 whose sums are exact in f32 (see [`DirectConv::new_i8`]): the float pipeline,
    /// which vectorises better than i32 multiplies.
    IntF32(Vec<f32>),
    I32(Vec<i32>),
}

pub struct DirectConv {
    pub p: ConvParams,
    taps: Taps,
    epi: Epilogue,
    isa: Isa,
    /// The task's input channels, padded and phase-split: every tap of every output row is
    /// then one contiguous run.
    rows: PaddedRows,
    /// Where each tap's run for output row 0 starts in the padded channels, in the weights'
    /// (the twin's) order.
    tap_at: Vec<usize>,
}

/// Outputs summed at once, held in registers across every tap: one AVX-512 vector of f32 or i32
/// (two AVX2 vectors).
const LANES: usize = 16;

/// What a tap sum is kept in (f32 or i32): scratch view and the epilogue's input.
trait TapSum: Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn view(scratch: &mut [u8]) -> &mut [Self];
    /// `int8`: the f32 sums are INT8 integer sums.
    fn acc(row: &[Self], int8: bool) -> Acc<'_>;
}

impl TapSum for f32 {
    fn view(scratch: &mut [u8]) -> &mut [f32] {
        as_f32(scratch)
    }
    #[inline(always)]
    fn acc(row: &[f32], int8: bool) -> Acc<'_> {
        if int8 {
            Acc::IntF32(row)
        } else {
            Acc::F32(row)
        }
    }
}

impl TapSum for i32 {
    fn view(scratch: &mut [u8]) -> &mut [i32] {
        as_i32(scratch)
    }
    #[inline(always)]
    fn acc(row: &[i32], _: bool) -> Acc<'_> {
        Acc::I32(row, 0)
    }
}

impl DirectConv {
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        let taps = Taps::F32(Self::rows_of(&p, w, |v| v));
        Self::with(p, taps, bias, vec![], isa)
    }

    /// INT8 sums with few taps (|x - zp| <= 255, |w| <= 128, at most 2^24 / 32640 taps per
    /// output) are exact in f32 and run there; larger ones in i32.
    pub fn new_i8(p: ConvParams, w: &[i8], mult: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        let taps = if p.kdim as usize <= (1 << 24) / (255 * 128) {
            Taps::IntF32(Self::rows_of(&p, w, |v| v as f32))
        } else {
            Taps::I32(Self::rows_of(&p, w, |v| v as i32))
        };
        Self::with(p, taps, bias, mult.to_vec(), isa)
    }

    /// The plan's `[k][kpad]` weight rows as `[k][kdim]`, converted.
    fn rows_of<T: Copy, U>(p: &ConvParams, w: &[T], conv: impl Fn(T) -> U) -> Vec<U> {
        let (kdim, kpad) = (p.kdim as usize, p.kpad as usize);
        (0..p.k as usize)
            .flat_map(|k| w[k * kpad..k * kpad + kdim].iter().map(|v| conv(*v)))
            .collect()
    }

    fn with(p: ConvParams, taps: Taps, bias: &[f32], mult: Vec<f32>, isa: Isa) -> DirectConv {
        let rows = PaddedRows::new(&p);
        let (r, s) = (p.r as usize, p.s as usize);
        let plane = rows.hp * rows.row;
        let tap_at = (0..p.kdim as usize)
            .map(|wi| (wi / (r * s)) * plane + rows.tap_start(&p, 0, (wi / s) % r, wi % s))
            .collect();
        DirectConv {
            rows,
            tap_at,
            p,
            taps,
            epi: Epilogue {
                bias: bias.to_vec(),
                mult,
                corr: vec![],
            },
            isa,
        }
    }

    pub fn is_int8(&self) -> bool {
        !matches!(self.taps, Taps::F32(_))
    }

    /// One task per (image, output channel).
    pub fn tasks(&self) -> usize {
        (self.p.n * self.p.k) as usize
    }

    fn cpg(&self) -> usize {
        (self.p.c / self.p.groups) as usize
    }

    fn plane_len(&self) -> usize {
        self.rows.hp * self.rows.row
    }

    /// Values of the padded input channels: their planes plus one accumulator row and one
    /// vector of slack (a pass's last row, rounded up to whole vectors, reads past the plane
    /// into lanes it discards).
    fn padded_len(&self) -> usize {
        self.cpg() * self.plane_len() + self.acc_stride() + LANES
    }

    pub fn scratch_bytes(&self) -> usize {
        // padded input channels (4 bytes per value, int8 widened) and the accumulators
        let acc = (self.p.oh as usize * self.acc_stride()).max(self.p.ow as usize);
        (self.padded_len() + acc) * 4 + 64
    }

    /// # Safety
    /// As [`GemmConv::run_task`](super::gemm::GemmConv::run_task).
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            direct_task_avx512,
            direct_task_avx2,
            direct_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Accumulator row stride: output row oy's taps start `stride_h` padded rows after row
    /// oy - 1's (a vertical stride of 2 computes every other row in vain, still cheaper than
    /// short row-by-row passes).
    fn acc_stride(&self) -> usize {
        if self.row_by_row() {
            self.p.ow as usize
        } else {
            self.p.stride_h as usize * self.rows.row
        }
    }

    /// Strided convolutions sum each output row on its own: a pass over the whole plane
    /// would compute every phase of every padded row (4x the work at stride 2, which kept
    /// ShuffleNet's and MobileNet's stride-2 depthwise layers at 4 GFLOP/s). So do rows of at
    /// most one vector (7x7 and 14x14 planes): each row is one register-held sum, and the
    /// accumulators come out contiguous, so the epilogue finishes the plane in one call
    /// instead of one per row.
    fn row_by_row(&self) -> bool {
        self.p.stride_h > 1 || self.p.stride_w > 1 || self.p.ow as usize <= LANES
    }

    /// Sum every tap of one output channel from the padded planes `pad` (weights `w`, in
    /// the twin's tap order) into `acc`: output row oy is `acc[oy * acc_stride()..][..ow]`.
    /// Strided convolutions sum row by row; stride 1 sums the whole plane as one run (rows at
    /// the accumulator stride, columns past `ow` discarded).
    #[inline(always)]
    fn accumulate<T: TapSum>(&self, pad: &[T], w: &[T], acc: &mut [T]) {
        let p = &self.p;
        if self.row_by_row() {
            let (ow, down) = (p.ow as usize, p.stride_h as usize * self.rows.row);
            let rows = acc[..p.oh as usize * ow].chunks_exact_mut(ow);
            for (oy, out) in rows.enumerate() {
                sum_taps(&pad[oy * down..], &self.tap_at, w, out);
            }
            return;
        }
        // Stride 1: the plane is one long run, and a pass per tap over it streams through L1
        // at full vector width (faster here than the register-held sums, measured: 0.077 against
        // 0.098 ms for a 3x3 depthwise layer of 64 x 48x48 on a Zen 5).
        let span = p.oh as usize * self.acc_stride();
        let acc = &mut acc[..span];
        acc.fill(T::default());
        for (&at, &wv) in self.tap_at.iter().zip(w) {
            for (a, v) in acc.iter_mut().zip(&pad[at..][..span]) {
                *a = *a + *v * wv;
            }
        }
    }

    /// One output channel: its input channels `x` padded (each value through `conv`;
    /// taps outside the image read `T::default()`, which adds nothing: +0.0, or
    /// (x - zp) = 0 for INT8), the taps summed, the rows finished by the epilogue.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn channel<X: Copy, T: TapSum>(
        &self,
        x: &[X],
        w: &[T],
        conv: impl Fn(X) -> T + Copy,
        scratch: &mut [u8],
        kk: usize,
        y: OutBuf,
        out_base: usize,
    ) {
        let p = &self.p;
        let (plane, hw) = ((p.h * p.w) as usize, self.plane_len());
        let (w_in, ph, pw, sw) = (
            p.w as usize,
            p.pad_h as usize,
            p.pad_w as usize,
            p.stride_w as usize,
        );
        let (pad, acc) = T::view(scratch).split_at_mut(self.padded_len());
        pad[self.cpg() * hw..].fill(T::default());
        for ci in 0..self.cpg() {
            let dst = &mut pad[ci * hw..][..hw];
            dst.fill(T::default());
            for (iy, line) in x[ci * plane..][..plane].chunks_exact(w_in).enumerate() {
                let d = &mut dst[(iy + ph) * self.rows.row..][..self.rows.row];
                self.rows.copy_row(line, d, pw, sw, conv);
            }
        }
        self.accumulate(pad, w, acc);
        let (ow, stride) = (p.ow as usize, self.acc_stride());
        if stride == ow {
            let plane = T::acc(&acc[..p.oh as usize * ow], self.is_int8());
            unsafe { self.epi.row(p, kk, plane, y, out_base) };
            return;
        }
        for oy in 0..p.oh as usize {
            let row = T::acc(&acc[oy * stride..][..ow], self.is_int8());
            unsafe { self.epi.row(p, kk, row, y, out_base + oy * ow) };
        }
    }

    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let (k, c, kdim) = (p.k as usize, p.c as usize, p.kdim as usize);
        let (img, kk) = (t / k, t % k);
        let (cpg, kpg) = (self.cpg(), k / p.groups as usize);
        let plane = (p.h * p.w) as usize;
        let out_base = (img * k + kk) * (p.oh * p.ow) as usize;
        let x_base = (img * c + (kk / kpg) * cpg) * plane;
        let zp = p.in_zp;
        unsafe {
            match (x, &self.taps) {
                (InBuf::F32(x), Taps::F32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * kdim..][..kdim];
                    self.channel(x, w, |v| v, scratch, kk, y, out_base)
                }
                (InBuf::I8(x), Taps::IntF32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * kdim..][..kdim];
                    let conv = move |v: i8| (v as i32 - zp) as f32;
                    self.channel(x, w, conv, scratch, kk, y, out_base)
                }
                (InBuf::I8(x), Taps::I32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * kdim..][..kdim];
                    let conv = move |v: i8| v as i32 - zp;
                    self.channel(x, w, conv, scratch, kk, y, out_base)
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }
}

/// `out[i] = sum over taps t of pad[at[t] + i] * w[t]`, the taps added in order from zero (as
/// the twin adds them), `LANES` outputs at a time kept in registers across all taps: per tap
/// and vector one load, one multiply and one add, and one store per vector at the end (a pass
/// per tap over memory cost two loads and a store per tap). The last vector reads up to
/// `LANES - 1` values past the run (the scratch's slack) into lanes it discards. (No closures:
/// their bodies would be compiled without the caller's target features.)
#[inline(always)]
fn sum_taps<T: TapSum>(pad: &[T], at: &[usize], w: &[T], out: &mut [T]) {
    const N: usize = LANES;
    for (x0, chunk) in (0..).step_by(N).zip(out.chunks_mut(N)) {
        let mut a = [T::default(); N];
        for (&o, &wv) in at.iter().zip(w) {
            let v: &[T; N] = pad[o + x0..][..N].try_into().expect("N values");
            for l in 0..N {
                a[l] = a[l] + v[l] * wv;
            }
        }
        match <&mut [T; N]>::try_from(&mut *chunk) {
            Ok(whole) => *whole = a, // a fixed-size store, not a call to memcpy
            Err(_) => {
                let n = chunk.len();
                chunk.copy_from_slice(&a[..n]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn direct_task_avx512(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_task_avx2(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

unsafe fn direct_task_portable(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}
