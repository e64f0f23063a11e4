//! [`GemmConv`]: groups = 1 convolutions (and matrix products) as a GEMM over output channels
//! x output pixels x taps, the taps read by the micro-kernels ([`super::micro`]) straight
//! from a row source (see the [`super::conv`] overview).

use super::conv::{Acc, Epilogue, InBuf, OutBuf, PaddedRows, as_f32, as_i32, is_pointwise};
use super::isa::Isa;
use super::micro::{MR, micro_f32_rows, micro_i8_rows};
use crate::params::ConvParams;

pub enum GemmWeights {
    /// `[panel][j][MR]`
    F32(Vec<f32>),
    /// `[panel][j4][MR][4]`: the row source's tap groups (4 channels at one (r, s)), lanes
    /// past the last channel 0.
    I8(Vec<i8>),
}

pub struct GemmConv {
    pub p: ConvParams,
    weights: GemmWeights,
    /// Where the micro-kernel reads its taps.
    rows: RowSource,
    epi: Epilogue,
    isa: Isa,
    /// Pixels per micro-kernel column panel.
    nr: usize,
    /// Pixels per task of a 1x1 convolution read across rows (a multiple of `nr`).
    tile: usize,
    /// Row-reading tasks also split the output channels into this many groups of panels
    /// (small planes with many channels would otherwise give a pool too few tasks).
    kgroups: usize,
    /// Visit a task's blocks panel by panel (see `GemmConv::task`).
    panel_outer: bool,
    /// Copy each block's taps into scratch before the micro-kernels read them (see
    /// `GemmConv::pack`): worth it from a few panels on.
    packs: bool,
    /// Tap j's offset in a packed block: `j * nr` pixels.
    packed_offs: Vec<u32>,
    /// Blocks a task packs at once: all of them (panels outer), one, or none.
    pack_slots: usize,
}

/// Where the row-reading GEMM finds its taps: a padded copy of the input with each row
/// split into `stride_w` phases (columns q, q + s, q + 2s, ... of phase q), so the columns
/// one tap reads for consecutive output pixels are consecutive in memory at any horizontal
/// stride. FP32: `[n][c][hp][phase][wph]`, zero borders. INT8: channels interleaved four at a
/// time, `[n][c/4][hp][phase][wph][4]` as `x + 128` bytes, borders holding the zero point (so
/// 32 pixels of one 4-channel tap group are one 128-byte `vpdpbusd` operand). Borders are
/// written at load and never again; slack at the end absorbs a partial block's over-read.
///
/// Strided convolutions whose output rows are at most half a block (the 14x14 and 7x7
/// downsampling layers of every ImageNet CNN) would run one short row per task, half the
/// lanes idle or more and all the weights read again for every row. Their taps are gathered
/// instead (`gathered`): `[n][tap][oh * ow]` (INT8: `[n][tap group][oh * ow][4]`), so blocks
/// run across the whole output plane as in a 1x1 convolution; out-of-image taps hold the
/// border value written at load.
struct RowSource {
    buf: std::cell::UnsafeCell<RowBuf>,
    /// The padded planes' rows (pixels; INT8 has 4 values per pixel).
    rows: PaddedRows,
    /// Values per pixel: 1 (FP32) or 4 interleaved channels (INT8).
    lanes: usize,
    /// Channel blocks per image: c (FP32) or c / 4 rounded up (INT8).
    blocks: usize,
    /// Element offset of tap j = (c, ry, sx) (FP32) or tap group (c / 4, ry, sx) (INT8) from
    /// the output pixel's first tap.
    offs: Vec<u32>,
    /// FP32 only: the input is read in place (1x1, unit stride, no padding: no copy).
    in_place: bool,
    /// The taps are gathered per output pixel (see above).
    gathered: bool,
    /// Output pixels per image.
    npix: usize,
}

enum RowBuf {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl RowSource {
    /// `int8_pad`: the byte the INT8 borders hold (`zp + 128`); `None` for FP32.
    fn new(p: &ConvParams, nr: usize, int8_pad: Option<u8>) -> Result<RowSource, String> {
        if p.groups != 1 {
            return Err(
                "a grouped convolution on the GEMM (the plan sends those to the direct kernel)"
                    .into(),
            );
        }
        let rows = PaddedRows::new(p);
        let (lanes, blocks) = match int8_pad {
            Some(_) => (4, (p.c as usize).div_ceil(4)),
            None => (1, p.c as usize),
        };
        let flat = is_pointwise(p) && rows.hp == p.h as usize && rows.row == p.w as usize;
        let in_place = int8_pad.is_none() && flat;
        let unit = p.stride_h == 1 && p.stride_w == 1;
        let npix = (p.oh * p.ow) as usize;
        let taps = blocks * (p.r * p.s) as usize;
        // (a unit-stride plane runs across rows in place: `RowSource::wide`)
        let gathered = !(flat || (unit && p.oh > 1))
            && (p.ow as usize) <= nr / 2
            && p.n as usize * taps * npix * lanes <= GATHER_LIMIT;
        let plane = rows.hp * rows.row * lanes;
        let mut offs = vec![];
        for cb in 0..blocks {
            for ry in 0..p.r as usize {
                for sx in 0..p.s as usize {
                    offs.push(match gathered {
                        true => (offs.len() * npix * lanes) as u32,
                        false => (cb * plane + rows.tap_start(p, 0, ry, sx) * lanes) as u32,
                    });
                }
            }
        }
        let image = match gathered {
            true => taps * npix * lanes,
            false => blocks * plane,
        };
        if p.n as usize * image > u32::MAX as usize / 2 {
            return Err(format!(
                "convolution input {}x{}x{}x{} too large for the CPU engine's 32-bit tap offsets",
                p.n, p.c, p.h, p.w
            ));
        }
        let len = p.n as usize * image + (nr + 16) * lanes;
        let buf = match int8_pad {
            Some(v) => RowBuf::U8(vec![v; len]),
            None if in_place => RowBuf::F32(vec![]),
            None => RowBuf::F32(vec![0f32; len]),
        };
        Ok(RowSource {
            buf: std::cell::UnsafeCell::new(buf),
            rows,
            lanes,
            blocks,
            offs,
            in_place,
            gathered,
            npix,
        })
    }

    /// Elements of one image in the buffer the taps are read from.
    fn image_len(&self) -> usize {
        match self.gathered {
            true => self.offs.len() * self.npix * self.lanes,
            false => self.blocks * self.rows.hp * self.rows.row * self.lanes,
        }
    }
}

impl RowSource {
    /// Output pixels map one to one onto input pixels (1x1, unit strides, no padding), so
    /// blocks may run across rows.
    fn flat(&self, p: &ConvParams) -> bool {
        !self.gathered
            && is_pointwise(p)
            && self.rows.row == p.w as usize
            && self.rows.hp == p.h as usize
    }

    /// Unit strides and output rows shorter than a block (the 7x7 and 14x14 planes of every
    /// ImageNet CNN's last stages): blocks run across rows of the padded input, pixel q =
    /// oy · row + ox, so a block of 32 holds several output rows and the padding columns
    /// between them (computed, never stored) instead of one 7-pixel row and 25 idle lanes.
    fn wide(&self, p: &ConvParams, nr: usize) -> bool {
        !self.gathered
            && !self.flat(p)
            && p.stride_h == 1
            && p.stride_w == 1
            && (p.ow as usize) < nr
            && p.oh > 1
    }

    /// Pixels the tasks tile when blocks run across rows: the output plane (flat), the
    /// padded-row space up to the last output pixel (wide); `None` when each task is one
    /// output row.
    fn tiled_len(&self, p: &ConvParams, nr: usize) -> Option<usize> {
        if self.wide(p, nr) {
            Some((p.oh as usize - 1) * self.rows.row + p.ow as usize)
        } else if self.flat(p) || self.gathered {
            Some((p.oh * p.ow) as usize)
        } else {
            None
        }
    }
}

/// Most elements a gathered tap buffer may hold (256 MB of FP32): past that, rows as usual.
const GATHER_LIMIT: usize = 64 << 20;

/// Where a block's accumulators go: `len` pixels from accumulator column `from` to output
/// element `to` (of channel 0; each channel adds its plane).
#[derive(Clone, Copy, Default)]
struct Seg {
    from: usize,
    to: usize,
    len: usize,
}

/// A block's segments: one, or in wide mode one per output row it touches (at most
/// `nr + 1`, for padded rows of one pixel; `nr` is at most 32).
type Segs = heapless::Vec<Seg, 40>;

// SAFETY: `RowSource::buf` is written only by `GemmConv::pad_task`, one (image, channel)
// plane interior per task (disjoint), in a phase that completes before any task reads it.
unsafe impl Sync for GemmConv {}

/// Pixels per micro-kernel call for an instruction set.
fn nr_for(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => 32,
        _ => 8,
    }
}

impl GemmConv {
    /// Pack float weights (`[k][kpad]` rows of the plan).
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> Result<GemmConv, String> {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let mut packed = vec![0f32; panels * kdim * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j in 0..kdim {
                packed[(panel * kdim + j) * MR + r] = w[kk * kpad + j];
            }
        }
        Self::finish(
            p,
            RowSource::new(&p, nr_for(isa), None)?,
            GemmWeights::F32(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
            isa,
        )
    }

    /// Pack int8 weights; `wsum` is each row's sum (the plan's constant).
    pub fn new_i8(
        p: ConvParams,
        w: &[i8],
        wsum: &[i32],
        mult: &[f32],
        bias: &[f32],
        isa: Isa,
    ) -> Result<GemmConv, String> {
        let (k, kpad) = (p.k as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let rows = RowSource::new(&p, nr_for(isa), Some((p.in_zp + 128) as u8))?;
        // the row source's tap groups: (c / 4, r, s), lane q = channel c % 4
        let (r, s_, c) = (p.r as usize, p.s as usize, p.c as usize);
        let taps4 = rows.offs.len();
        let tap = |j4: usize, q: usize| {
            let (cb, rest) = (j4 / (r * s_), j4 % (r * s_));
            let ch = cb * 4 + q;
            (ch < c).then_some(ch * r * s_ + rest)
        };
        let mut packed = vec![0i8; panels * taps4 * 4 * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j4 in 0..taps4 {
                for q in 0..4 {
                    if let Some(j) = tap(j4, q) {
                        packed[((panel * taps4 + j4) * MR + r) * 4 + q] = w[kk * kpad + j];
                    }
                }
            }
        }
        let corr = wsum.iter().map(|s| (128 + p.in_zp) * s).collect();
        Self::finish(
            p,
            rows,
            GemmWeights::I8(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: mult.to_vec(),
                corr,
            },
            isa,
        )
    }

    fn finish(
        p: ConvParams,
        rows: RowSource,
        weights: GemmWeights,
        epi: Epilogue,
        isa: Isa,
    ) -> Result<GemmConv, String> {
        let kdim = p.kdim as usize;
        let nr = nr_for(isa);
        let tiled = rows.tiled_len(&p, nr);
        let pixels = tiled.unwrap_or((p.oh * p.ow) as usize);
        // Weights past L2 are read panel by panel (`GemmConv::task`), once per tile, the tile's
        // packed taps staying in L2 (~512 KiB; 1.25 MiB, one tile for a 7x7 plane of 3x3 taps
        // over 512 channels, measured no faster on ResNet-50 and slower on its 14x14 layers);
        // otherwise a task's taps (kdim x tile) stay within ~128 KiB.
        let weight_bytes = match &weights {
            GemmWeights::F32(w) => w.len() * 4,
            GemmWeights::I8(w) => w.len(),
        };
        let panel_outer = weight_bytes > 512 * 1024;
        let bytes_per_pixel = kdim.max(1) * 4;
        let budget = if panel_outer { 512 } else { 128 } * 1024;
        let by_cache = (budget / bytes_per_pixel / nr).max(1) * nr;
        let tile = by_cache.min(pixels.div_ceil(nr) * nr).min(8 * nr).max(nr);
        let panels = (p.k as usize).div_ceil(MR);
        let pixel_tasks = match tiled {
            Some(len) => p.n as usize * len.div_ceil(tile),
            None => (p.n * p.oh) as usize,
        };
        let kgroups = if pixel_tasks < 8 {
            panels.min(8 / pixel_tasks.max(1)).max(1)
        } else {
            1
        };
        // FP32 packs each block's taps (one copy per block, read by every panel): the row
        // source's channel planes lie a plane apart, often a multiple of 4 KiB, and fought
        // over L1 sets (ResNet-50 -5 %, DenseNet-121 -3.5 %, the rest within noise). Not a
        // one-pixel task, not a task of few panels, nor beyond 2 MiB of packed blocks (a
        // row-by-row task of a wide image with panels outer); INT8's row source is already
        // 4 channels interleaved per pixel and measured slower packed.
        let task_pixels = if tiled.is_some() { tile } else { p.ow as usize };
        let slots = if panel_outer {
            Self::blocks_in(nr, task_pixels)
        } else {
            1
        };
        let packs = task_pixels > 1
            && matches!(weights, GemmWeights::F32(_))
            && panels.div_ceil(kgroups) >= 4
            && slots * rows.offs.len() * nr * 4 <= 2 << 20;
        let (packed_offs, pack_slots) = match packs {
            true => (
                (0..rows.offs.len()).map(|j| (j * nr) as u32).collect(),
                slots,
            ),
            false => (vec![], 0),
        };
        Ok(GemmConv {
            p,
            weights,
            rows,
            kgroups,
            panel_outer,
            packs,
            packed_offs,
            pack_slots,
            epi,
            isa,
            nr,
            tile,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, GemmWeights::I8(_))
    }

    /// Independent tasks: output rows (or, 1x1, tiles across rows) of every image, times
    /// the channel groups.
    pub fn tasks(&self) -> usize {
        let per_image = match self.rows.tiled_len(&self.p, self.nr) {
            Some(len) => len.div_ceil(self.tile),
            None => self.p.oh as usize,
        };
        self.p.n as usize * per_image * self.kgroups
    }

    /// Tasks of the padding phase that must run (all of them) before [`GemmConv::tasks`]:
    /// one per (image, input channel), or none.
    pub fn pad_tasks(&self) -> usize {
        match self.rows.in_place {
            true => 0,
            false => self.p.n as usize * self.rows.blocks,
        }
    }

    /// Copy input plane `t` (image, channel) into the interior of the padded buffer.
    ///
    /// # Safety
    /// `x` holds the whole input; no other task of the same phase has the same `t`, and no
    /// GEMM task of this step runs concurrently.
    pub unsafe fn pad_task(&self, t: usize, x: InBuf) {
        per_isa!(
            self.isa,
            pad_task_avx512,
            pad_task_avx2,
            pad_task_portable,
            (self, t, x)
        )
    }

    #[inline(always)]
    unsafe fn pad(&self, t: usize, x: InBuf) {
        let r = &self.rows;
        let g = &r.rows;
        let p = &self.p;
        let (h, w, c) = (p.h as usize, p.w as usize, p.c as usize);
        let (ph, pw, sw) = (p.pad_h as usize, p.pad_w as usize, p.stride_w as usize);
        if r.gathered {
            return unsafe { self.gather(t, x) };
        }
        let plane = g.hp * g.row * r.lanes;
        match (unsafe { &mut *r.buf.get() }, x) {
            (RowBuf::F32(buf), InBuf::F32(x)) => {
                let dst = &mut buf[t * plane..][..plane];
                let src = unsafe { std::slice::from_raw_parts(x.add(t * h * w), h * w) };
                for (iy, line) in src.chunks_exact(w).enumerate() {
                    let d = &mut dst[(iy + ph) * g.row..][..g.row];
                    g.copy_row(line, d, pw, sw, |v| v);
                }
            }
            (RowBuf::U8(buf), InBuf::I8(x)) => {
                // t = (image, block of 4 channels): interleave them as x + 128; a block past
                // the last channel repeats channel 0 there (its weights are 0)
                let (img, cb) = (t / r.blocks, t % r.blocks);
                let dst = &mut buf[t * plane..][..plane];
                let chan = |q: usize| {
                    let ch = img * c + if cb * 4 + q < c { cb * 4 + q } else { cb * 4 };
                    unsafe { std::slice::from_raw_parts(x.add(ch * h * w), h * w) }
                };
                let planes = [chan(0), chan(1), chan(2), chan(3)];
                for iy in 0..h {
                    let at = iy * w..(iy + 1) * w;
                    let lines = planes.map(|p| &p[at.clone()]);
                    let d = &mut dst[(iy + ph) * g.row * 4..][..g.row * 4];
                    match sw {
                        1 => interleave4::<1>(lines, d, pw, g.wph),
                        2 => interleave4::<2>(lines, d, pw, g.wph),
                        _ => {
                            for (q, line) in lines.iter().enumerate() {
                                for (ix, v) in line.iter().enumerate() {
                                    let pc = ix + pw;
                                    d[((pc % sw) * g.wph + pc / sw) * 4 + q] = (*v as u8) ^ 0x80;
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Pad task `t` of a gathered row source: every tap of input plane `t` (FP32) or of
    /// the 4-channel block `t` (INT8) for every output pixel; taps outside the image keep the
    /// border value the buffer was made with.
    #[inline(always)]
    unsafe fn gather(&self, t: usize, x: InBuf) {
        let (r, p) = (&self.rows, &self.p);
        let (c, h, w) = (p.c as usize, p.h as usize, p.w as usize);
        let (oh, ow, npix) = (p.oh as usize, p.ow as usize, r.npix);
        let (kr, ks) = (p.r as usize, p.s as usize);
        // input coordinate of output index o for tap offset k, if inside the image
        let at = |o: usize, stride: i32, k: usize, dil: i32, pad: i32, len: usize| {
            let v = (o * stride as usize + k * dil as usize).checked_sub(pad as usize)?;
            (v < len).then_some(v)
        };
        // the output columns tap column sx reads inside the image, and the input column of
        // the first of them
        let (sw, dw, pw) = (p.stride_w as usize, p.dil_w as usize, p.pad_w as usize);
        let columns = |sx: usize| {
            let lo = (0..ow).find(|&ox| at(ox, p.stride_w, sx, p.dil_w, p.pad_w, w).is_some());
            let hi = (0..ow).rfind(|&ox| at(ox, p.stride_w, sx, p.dil_w, p.pad_w, w).is_some());
            match (lo, hi) {
                (Some(lo), Some(hi)) => (lo..hi + 1, lo * sw + sx * dw - pw),
                _ => (0..0, 0),
            }
        };
        let taps = kr * ks;
        match (unsafe { &mut *r.buf.get() }, x) {
            (RowBuf::F32(buf), InBuf::F32(x)) => {
                let dst = &mut buf[t * taps * npix..][..taps * npix];
                let src = unsafe { std::slice::from_raw_parts(x.add(t * h * w), h * w) };
                for (tap, out) in dst.chunks_exact_mut(npix).enumerate() {
                    let (ry, sx) = (tap / ks, tap % ks);
                    let (cols, ix0) = columns(sx);
                    for oy in 0..oh {
                        let Some(iy) = at(oy, p.stride_h, ry, p.dil_h, p.pad_h, h) else {
                            continue;
                        };
                        let line = &src[iy * w + ix0..];
                        let out = &mut out[oy * ow + cols.start..oy * ow + cols.end];
                        for (m, o) in out.iter_mut().enumerate() {
                            *o = line[m * sw];
                        }
                    }
                }
            }
            (RowBuf::U8(buf), InBuf::I8(x)) => {
                let (img, cb) = (t / r.blocks, t % r.blocks);
                let dst = &mut buf[t * taps * npix * 4..][..taps * npix * 4];
                let lanes = (c - cb * 4).min(4);
                let plane = |q: usize| unsafe {
                    std::slice::from_raw_parts(x.add((img * c + cb * 4 + q) * h * w), h * w)
                };
                for (tap, out) in dst.chunks_exact_mut(npix * 4).enumerate() {
                    let (ry, sx) = (tap / ks, tap % ks);
                    let (cols, ix0) = columns(sx);
                    for oy in 0..oh {
                        let Some(iy) = at(oy, p.stride_h, ry, p.dil_h, p.pad_h, h) else {
                            continue;
                        };
                        let out = &mut out[(oy * ow + cols.start) * 4..(oy * ow + cols.end) * 4];
                        for q in 0..lanes {
                            let line = &plane(q)[iy * w + ix0..];
                            for (m, o) in out.chunks_exact_mut(4).enumerate() {
                                o[q] = (line[m * sw] as u8) ^ 0x80;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Scratch bytes one thread needs.
    pub fn scratch_bytes(&self) -> usize {
        MR * self.nr * 4 + 64 + self.pack_slots * self.rows.offs.len() * self.nr * 4
    }

    /// Run task `t` (see [`GemmConv::tasks`]).
    ///
    /// # Safety
    /// `x` and `y` hold the whole input and output tensors; tasks write disjoint outputs;
    /// `scratch` holds [`GemmConv::scratch_bytes`] bytes, 4-byte aligned.
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            gemm_task_avx512,
            gemm_task_avx2,
            gemm_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Tiles of the row-reading GEMM: one output row (padded input), or, for 1x1 unit-stride
    /// convolutions without padding, `tile` consecutive pixels across rows. Every block of
    /// up to `nr` pixels, every panel of channels, taps loaded straight from the row source
    /// (or, FP32 1x1, from the input itself).
    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let (p, rs) = (&self.p, &self.rows);
        let k = p.k as usize;
        let (oh, ow) = (p.oh as usize, p.ow as usize);
        // this task's share of the channel panels
        let (t, group) = (t / self.kgroups, t % self.kgroups);
        let panels = k.div_ceil(MR);
        let per = panels.div_ceil(self.kgroups);
        let mine = (group * per).min(panels)..((group + 1) * per).min(panels);
        let wide = rs.wide(p, self.nr);
        let (img, first, count, b0) = if let Some(len) = rs.tiled_len(p, self.nr) {
            let tiles = len.div_ceil(self.tile);
            let (img, q0) = (t / tiles, (t % tiles) * self.tile);
            (img, q0, self.tile.min(len - q0), q0)
        } else {
            let (img, oy) = (t / oh, t % oh);
            (img, oy * ow, ow, oy * p.stride_h as usize * rs.rows.row)
        };
        // element index of the tile's first pixel in the source
        let base = img * rs.image_len() + b0 * rs.lanes;
        let out_img = img * k * oh * ow + if wide { 0 } else { first };
        // where block xb's n accumulators go
        let segs = |xb: usize, n: usize| self.segs(wide, first, out_img, xb, n);
        // a partial block reads past its pixels (the next row or the slack), unused
        // The order of (channel panel, pixel block) pairs: blocks outer (each block's taps
        // stay in L1 while every panel's weights stream past) suits weights that stay in L2;
        // panels outer (each panel's weights read once per task, the task's taps from L2)
        // suits the large weights of the last stages, which would otherwise come from memory
        // once per block. Plain loops: the same nest as closures measured 20 % slower.
        let groups = if self.panel_outer { mine.len() } else { 1 };
        let group = |g: usize| match self.panel_outer {
            true => mine.start + g..mine.start + g + 1,
            false => mine.clone(),
        };
        // the accumulators, then the packed blocks (64-byte aligned; a slot per block when
        // panels are outer)
        let (acc, packed) = scratch.split_at_mut(MR * self.nr * 4);
        let packed = unsafe { packed.as_mut_ptr().add(packed.as_ptr().align_offset(64)) };
        let slot_bytes = rs.offs.len() * self.nr * 4;
        let slot =
            |i: usize| unsafe { packed.add(if self.panel_outer { i } else { 0 } * slot_bytes) };
        match (&self.weights, unsafe { &*rs.buf.get() }, x) {
            (GemmWeights::F32(w), buf, x) => {
                let src = match (rs.in_place, buf, x) {
                    (true, _, InBuf::F32(x)) => x,
                    (false, RowBuf::F32(v), _) => v.as_ptr(),
                    _ => return,
                };
                let acc = as_f32(acc);
                for g in 0..groups {
                    let (mut xb, mut i) = (0, 0);
                    while xb < count {
                        let n = self.block_len(count - xb);
                        let mut b = unsafe { src.add(base + xb) };
                        let mut offs = &rs.offs;
                        // (a single pixel is read in place: its dot product reads one tap each)
                        if self.packs && n > 1 {
                            if g == 0 {
                                unsafe { self.pack(b, slot(i) as *mut f32) };
                            }
                            (b, offs) = (slot(i) as *const f32, &self.packed_offs);
                        }
                        let segs = segs(xb, n);
                        unsafe { self.rows_block(w, b, offs, acc, y, &segs, n, group(g)) };
                        (xb, i) = (xb + n, i + 1);
                    }
                }
            }
            (GemmWeights::I8(w), RowBuf::U8(v), _) => {
                // (INT8 does not pack: see `GemmConv::packs`)
                let acc = as_i32(acc);
                for g in 0..groups {
                    let mut xb = 0;
                    while xb < count {
                        let n = self.nr.min(count - xb);
                        let b = unsafe { v.as_ptr().add(base + xb * 4) };
                        let segs = segs(xb, n);
                        unsafe { self.rows_block_i8(w, b, &rs.offs, acc, y, &segs, n, group(g)) };
                        xb += n;
                    }
                }
            }
            _ => {}
        }
    }

    /// Where the `n` accumulators of the block `xb` pixels into a task go: one run of the
    /// output plane from `out_img + xb`, or, in wide mode (pixels over padded rows from the
    /// task's `first`), one per output row the block touches, skipping padding columns.
    #[inline(always)]
    fn segs(&self, wide: bool, first: usize, out_img: usize, xb: usize, n: usize) -> Segs {
        let mut v = Segs::new();
        if !wide {
            let _ = v.push(Seg {
                from: 0,
                to: out_img + xb,
                len: n,
            });
            return v;
        }
        let (row, ow) = (self.rows.rows.row, self.p.ow as usize);
        let mut q = first + xb;
        while q < first + xb + n {
            let (oy, ox) = (q / row, q % row);
            let len = (first + xb + n - q).min(row - ox);
            if ox < ow {
                let _ = v.push(Seg {
                    from: q - first - xb,
                    to: out_img + oy * ow + ox,
                    len: len.min(ow - ox),
                });
            }
            q += len;
        }
        v
    }

    /// Copy one block's FP32 taps (`nr` pixels of each, at `src + offs[j]`) into `dst` as
    /// `[j][nr]` rows of 128 (AVX-512) or 32 bytes, so the micro-kernel reads them in order
    /// from a few pages of L2 instead of one channel plane per tap.
    ///
    /// # Safety
    /// The reads are those the micro-kernel would make; `dst` holds the block.
    #[inline(always)]
    unsafe fn pack(&self, src: *const f32, dst: *mut f32) {
        let offs = &self.rows.offs;
        unsafe {
            match self.nr {
                32 => copy_rows::<16>(src, offs, dst),
                _ => copy_rows::<4>(src, offs, dst),
            }
        }
    }

    /// Pixels of the next FP32 block when `left` remain: a full block, or, for a tail just
    /// past half a block (17 or 18 of 32: a 7x7 plane's 49 = 32 + 17), a half block and then
    /// single pixels (dot products), not a 32-wide block half idle.
    fn block_len(&self, left: usize) -> usize {
        match left {
            17..=18 if self.nr == 32 => 16,
            1..=2 if self.nr == 32 => 1,
            _ => left.min(self.nr),
        }
    }

    /// Most FP32 blocks in a task of `count` pixels (see `block_len`).
    fn blocks_in(nr: usize, count: usize) -> usize {
        count.div_ceil(nr) + 2
    }

    /// A half-width micro-kernel for short tails (AVX-512: 16 of 32 pixels).
    fn block_width(&self, n: usize) -> usize {
        if n <= self.nr / 2 && self.nr == 32 {
            16
        } else {
            self.nr
        }
    }

    /// Up to `nr` output pixels of every channel from taps at `b + offs[j]`, stored by
    /// `segs` in each channel plane.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block(
        &self,
        w: &[f32],
        b: *const f32,
        offs: &[u32],
        acc: &mut [f32],
        y: OutBuf,
        segs: &[Seg],
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, kdim) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * kdim * MR..][..kdim * MR];
            let acc = &mut acc[..MR * width];
            if n == 1 {
                unsafe { dot_panel(a, b, offs, acc, width) };
            } else {
                unsafe { micro_f32_rows(self.isa, width, kdim, a, b, offs, acc) };
            }
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                for s in segs {
                    let acc_row = Acc::F32(&acc[r * width + s.from..][..s.len]);
                    unsafe { self.epi.row(p, kk, acc_row, y, s.to + kk * plane_out) };
                }
            }
        }
    }

    /// [`GemmConv::rows_block`] for INT8: tap groups of 4 channels at `b + offs[j4]`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block_i8(
        &self,
        w: &[i8],
        b: *const u8,
        offs: &[u32],
        acc: &mut [i32],
        y: OutBuf,
        segs: &[Seg],
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, k4) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * k4 * 4 * MR..][..k4 * 4 * MR];
            let acc = &mut acc[..MR * width];
            unsafe { micro_i8_rows(self.isa, width, k4, a, b, offs, acc) };
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                for s in segs {
                    let acc_row = Acc::I32(&acc[r * width + s.from..][..s.len], self.epi.corr[kk]);
                    unsafe { self.epi.row(p, kk, acc_row, y, s.to + kk * plane_out) };
                }
            }
        }
    }
}

/// One pixel against a panel of [`MR`] channels (a classifier's fully connected layer, a
/// block's last pixel): `acc[r * width] = sum_j a[j][r] * b[offs[j]]`, the weights' rows read
/// as vectors instead of 31 idle lanes of the micro-kernel per broadcast weight (the
/// layer is a pass over its weights; ResNet-50's 2048x1000 took 1.3 ms).
///
/// # Safety
/// `b + offs[j]` is readable for every j < `offs.len()`.
#[inline(always)]
unsafe fn dot_panel(a: &[f32], b: *const f32, offs: &[u32], acc: &mut [f32], width: usize) {
    // four partial sums (taps j mod 4), so the adds do not wait on each other
    let mut sums = [[0f32; MR]; 4];
    let quads = offs.len() / 4;
    for (rows, os) in a.chunks_exact(4 * MR).zip(offs.chunks_exact(4)).take(quads) {
        for q in 0..4 {
            let x = unsafe { *b.add(os[q] as usize) };
            for r in 0..MR {
                sums[q][r] += rows[q * MR + r] * x;
            }
        }
    }
    for (row, &o) in a.chunks_exact(MR).zip(offs).skip(quads * 4) {
        let x = unsafe { *b.add(o as usize) };
        for r in 0..MR {
            sums[0][r] += row[r] * x;
        }
    }
    for r in 0..MR {
        acc[r * width] = (sums[0][r] + sums[1][r]) + (sums[2][r] + sums[3][r]);
    }
}

/// Row j of `dst` (`2 * W` floats) from `src + offs[j]`, moved as `u64` words (vector moves).
///
/// # Safety
/// As [`GemmConv::pack`].
#[inline(always)]
unsafe fn copy_rows<const W: usize>(src: *const f32, offs: &[u32], dst: *mut f32) {
    for (j, &o) in offs.iter().enumerate() {
        unsafe {
            let v = std::ptr::read_unaligned(src.add(o as usize) as *const [u64; W]);
            std::ptr::write(dst.add(j * 2 * W) as *mut [u64; W], v);
        }
    }
}

/// Four channels' input rows into one padded row's `S` phases, interleaved per pixel as
/// `x + 128` bytes (`x ^ 0x80`); constant `S`, so the loops vectorise.
#[inline(always)]
fn interleave4<const S: usize>(lines: [&[i8]; 4], dst: &mut [u8], pw: usize, wph: usize) {
    let w = lines[0].len();
    for q in 0..S {
        let ix0 = (q + S - pw % S) % S;
        if ix0 >= w {
            continue;
        }
        let first = (ix0 + pw) / S;
        let n = (w - ix0).div_ceil(S);
        let out = &mut dst[(q * wph + first) * 4..][..n * 4];
        for (m, o) in out.chunks_exact_mut(4).enumerate() {
            let ix = ix0 + m * S;
            o[0] = (lines[0][ix] as u8) ^ 0x80;
            o[1] = (lines[1][ix] as u8) ^ 0x80;
            o[2] = (lines[2][ix] as u8) ^ 0x80;
            o[3] = (lines[3][ix] as u8) ^ 0x80;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pad_task_avx512(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pad_task_avx2(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

unsafe fn pad_task_portable(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn gemm_task_avx512(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_task_avx2(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

unsafe fn gemm_task_portable(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}
