//! Chessboard detection in grayscale images.
//!
//! Pipeline (generic, no per-dataset tuning):
//! 1. **Saddle response**: Gaussian blur, Hessian, response `sqrt(max(0, Ixy^2 - Ixx*Iyy))`
//!    (large only at X-junctions), non-maximum suppression.
//! 2. **Ring test**: intensities on a circle around each candidate must split into exactly
//!    four alternating sectors with point symmetry (an X-junction); the four transition
//!    angles give the two local grid-line directions (no orthogonality assumed, so it works
//!    under perspective and distortion).
//! 3. **Lattice growing**: from a seed, its neighbours along both line directions and the
//!    diagonal form a 2x2 cell; the lattice then grows by predicting each next corner with
//!    quadratic / linear extrapolation along rows and columns (follows lens curvature) and
//!    accepting the nearest candidate within 30 % of the local spacing.
//! 4. **Validation**: the grown lattice must be a complete rectangle of exactly the board's
//!    inner-corner count (otherwise the view is rejected with a reason: partially visible,
//!    larger grid, ...) and the cell colours must alternate like a chessboard.
//! 5. **Order**: rows run along the board dimension with `cols` corners (9 for a 9x6 board),
//!    the first corner is the extreme corner nearest the image's top-left (smallest x + y).
//! 6. **Subpixel**: [`corner_subpix`], the gradient-orthogonality iteration of OpenCV's
//!    `cornerSubPix`.

use std::collections::HashMap;

use nalgebra::{Point2, Vector2};

use crate::imgproc::GrayImage;

/// Gaussian pre-smoothing before subpixel refinement: removes the pixel-locking bias of the
/// gradient-orthogonality iteration on very sharp edges (X-junctions are point symmetric, so a
/// symmetric blur does not move them).
const REFINE_SIGMA: f32 = 1.5;
/// Minimum cell width (px) for refining on the pre-smoothed image.
const SMOOTH_MIN_WIDTH: f64 = 14.0;

/// Why a view was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectError {
    #[error("no chessboard corners found")]
    NoCorners,
    #[error(
        "board not fully visible: found a {rows}x{cols} lattice with {found} corners, need {need_cols}x{need_rows}"
    )]
    Partial {
        rows: usize,
        cols: usize,
        found: usize,
        need_cols: usize,
        need_rows: usize,
    },
    #[error("found a larger lattice ({rows}x{cols}) than the {need_cols}x{need_rows} board")]
    TooLarge {
        rows: usize,
        cols: usize,
        need_cols: usize,
        need_rows: usize,
    },
    #[error("lattice colours do not alternate like a chessboard")]
    NotChessboard,
    #[error("image too small")]
    TooSmall,
}

/// Detection options.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Half size of the cornerSubPix window; `None` = min(5, spacing/2 - 1) (11x11 for
    /// typical boards, like OpenCV's common choice).
    pub subpix_half_window: Option<usize>,
    pub subpix_max_iter: usize,
    pub subpix_eps: f64,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            subpix_half_window: None,
            subpix_max_iter: 30,
            subpix_eps: 1e-3,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    p: Vector2<f64>,
    contrast: f32,

    dirs: [Vector2<f64>; 2],
}

/// Finds the `cols` x `rows` inner corners of a chessboard (e.g. 9 x 6). Corners are returned
/// row by row, `cols` per row, refined to subpixel accuracy.
pub fn find_chessboard(
    img: &GrayImage,
    cols: usize,
    rows: usize,
) -> Result<Vec<Point2<f64>>, DetectError> {
    find_chessboard_with(img, cols, rows, &DetectOptions::default())
}

pub fn find_chessboard_with(
    img: &GrayImage,
    cols: usize,
    rows: usize,
    opt: &DetectOptions,
) -> Result<Vec<Point2<f64>>, DetectError> {
    if img.width < 16 || img.height < 16 || cols < 2 || rows < 2 {
        return Err(DetectError::TooSmall);
    }
    let scale = (img.width.min(img.height) as f32 / 600.0).max(1.0);
    let mut best_err = DetectError::NoCorners;
    for sig in [1.5 * scale, 2.5 * scale, 1.0] {
        match detect_at_scale(img, cols, rows, sig) {
            Ok((mut grid, blur)) => {
                // Pre-smoothing removes the pixel-locking bias of the gradient iteration on
                // sharp edges, but would merge edges of narrow (strongly foreshortened or
                // acute) cells: smooth only where the local cell width allows it.
                let sm = if sig == REFINE_SIGMA {
                    blur
                } else {
                    img.gaussian_blur(REFINE_SIGMA)
                };
                let width = local_width(&grid, cols, rows);
                for (k, c) in grid.iter_mut().enumerate() {
                    // window at most 11x11 (OpenCV's usual), smaller for narrow cells
                    let half = opt
                        .subpix_half_window
                        .unwrap_or(((width[k] * 0.5 - 1.0).floor() as usize).clamp(2, 5));
                    let src = if width[k] >= SMOOTH_MIN_WIDTH {
                        &sm
                    } else {
                        img
                    };
                    corner_subpix(
                        src,
                        std::slice::from_mut(c),
                        half,
                        opt.subpix_max_iter,
                        opt.subpix_eps,
                    );
                }
                crate::imgproc::give_buf(sm.data);
                return Ok(grid);
            }
            Err(e) => {
                if rank(&e) > rank(&best_err) {
                    best_err = e;
                }
            }
        }
    }
    Err(best_err)
}

fn rank(e: &DetectError) -> usize {
    match e {
        DetectError::NoCorners | DetectError::TooSmall => 0,
        DetectError::NotChessboard => 1,
        DetectError::TooLarge { .. } => 2,
        DetectError::Partial { found, .. } => 3 + found,
    }
}

/// Per corner: the smaller cell width around it = spacing * |sin(angle between grid lines)|.
fn local_width(g: &[Point2<f64>], cols: usize, rows: usize) -> Vec<f64> {
    let mut out = vec![0.0; g.len()];
    for r in 0..rows {
        for c in 0..cols {
            let k = r * cols + c;
            let rv = if c + 1 < cols {
                g[k + 1] - g[k]
            } else {
                g[k] - g[k - 1]
            };
            let cv = if r + 1 < rows {
                g[k + cols] - g[k]
            } else {
                g[k] - g[k - cols]
            };
            let rv2 = if c > 0 { g[k] - g[k - 1] } else { rv };
            let cv2 = if r > 0 { g[k] - g[k - cols] } else { cv };
            let mut w = f64::MAX;
            for a in [rv, rv2] {
                for b in [cv, cv2] {
                    let cross = (a.x * b.y - a.y * b.x).abs();
                    // heights of the parallelogram spanned by a and b
                    w = w
                        .min(cross / a.norm().max(1e-9))
                        .min(cross / b.norm().max(1e-9));
                }
            }
            out[k] = w;
        }
    }
    out
}

/// max without NaN handling (inputs are finite), vectorizes to a single instruction
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

fn saddle_candidates(blur: &GrayImage) -> Vec<(usize, usize, f32)> {
    let (w, h) = (blur.width, blur.height);
    let d = &blur.data;
    // squared saddle strength (monotonic in the response); equal-length shifted slices so
    // the loop vectorizes
    let mut resp = crate::imgproc::take_buf(w * h);
    let n = w - 2;
    for y in 1..h - 1 {
        let up = &d[(y - 1) * w..y * w];
        let mid = &d[y * w..(y + 1) * w];
        let dn = &d[(y + 1) * w..(y + 2) * w];
        let (u0, u1, u2) = (&up[0..n], &up[1..n + 1], &up[2..n + 2]);
        let (m0, m1, m2) = (&mid[0..n], &mid[1..n + 1], &mid[2..n + 2]);
        let (d0, d1, d2) = (&dn[0..n], &dn[1..n + 1], &dn[2..n + 2]);
        let o = &mut resp[y * w + 1..y * w + 1 + n];
        for x in 0..n {
            let c = m1[x];
            let ixx = m2[x] + m0[x] - 2.0 * c;
            let iyy = d1[x] + u1[x] - 2.0 * c;
            let ixy = 0.25 * (d2[x] - d0[x] - u2[x] + u0[x]);
            o[x] = (ixy * ixy - ixx * iyy).max(0.0);
        }
    }
    let maxr = resp.iter().fold(0.0f32, |a, &b| a.max(b)).sqrt();
    let thr = (maxr * 0.04).max(0.05).powi(2);
    // 5x5 non-maximum suppression with a separable running max
    let rad = 2usize;
    let mut rowmax = crate::imgproc::take_buf(w * h);
    for y in 0..h {
        let r = &resp[y * w..(y + 1) * w];
        let o = &mut rowmax[y * w..(y + 1) * w];
        let m = w - 4;
        let (a, b, c, d4, e) = (
            &r[0..m],
            &r[1..m + 1],
            &r[2..m + 2],
            &r[3..m + 3],
            &r[4..m + 4],
        );
        let o = &mut o[2..2 + m];
        for x in 0..m {
            o[x] = fmax(fmax(fmax(a[x], b[x]), fmax(c[x], d4[x])), e[x]);
        }
    }
    let mut out = Vec::new();
    for y in rad + 1..h.saturating_sub(rad + 1) {
        for x in rad + 1..w.saturating_sub(rad + 1) {
            let i = y * w + x;
            let r = resp[i];
            if r < thr {
                continue;
            }
            let m = fmax(
                fmax(
                    fmax(rowmax[i - 2 * w], rowmax[i - w]),
                    fmax(rowmax[i], rowmax[i + w]),
                ),
                rowmax[i + 2 * w],
            );
            if r >= m {
                out.push((x, y, r.sqrt()));
            }
        }
    }
    crate::imgproc::give_buf(resp);
    crate::imgproc::give_buf(rowmax);
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    if std::env::var_os("BEVRT_CALIB_DEBUG").is_some() {
        eprintln!(
            "maxr {maxr} n {} n10% {}",
            out.len(),
            out.iter().filter(|x| x.2 > 0.1 * maxr).count()
        );
    }
    out.truncate(4000);
    out
}

/// Precomputed circle of integer pixel offsets for the ring test.
struct Ring {
    offs: Vec<isize>,
    angles: Vec<f64>,
    r: isize,
}

impl Ring {
    fn new(radius: f64, width: usize) -> Self {
        const N: usize = 16;
        let mut offs = Vec::with_capacity(N);
        let mut angles = Vec::with_capacity(N);
        for k in 0..N {
            let a = k as f64 * std::f64::consts::TAU / N as f64;
            let dx = (radius * a.cos()).round() as isize;
            let dy = (radius * a.sin()).round() as isize;
            offs.push(dy * width as isize + dx);
            angles.push(
                (dy as f64)
                    .atan2(dx as f64)
                    .rem_euclid(std::f64::consts::TAU),
            );
        }
        Ring {
            offs,
            angles,
            r: radius.ceil() as isize + 1,
        }
    }
}

/// Ring test; returns the two line directions and the ring contrast if the neighbourhood is an
/// X-junction (exactly four alternating, point-symmetric sectors).
fn ring_test(img: &GrayImage, x: usize, y: usize, ring: &Ring) -> Option<([Vector2<f64>; 2], f32)> {
    const N: usize = 16;
    let (xi, yi) = (x as isize, y as isize);
    if xi < ring.r
        || yi < ring.r
        || xi + ring.r >= img.width as isize
        || yi + ring.r >= img.height as isize
    {
        return None;
    }
    let c = (y * img.width + x) as isize;
    let mut v = [0.0f32; N];
    let (mut mn, mut mx) = (f32::MAX, f32::MIN);
    for (vk, o) in v.iter_mut().zip(&ring.offs) {
        let s = img.data[(c + o) as usize];
        *vk = s;
        mn = mn.min(s);
        mx = mx.max(s);
    }
    if mx - mn < 6.0 {
        return None;
    }
    let mid = 0.5 * (mx + mn);
    let b: [bool; N] = std::array::from_fn(|k| v[k] > mid);
    let sym = (0..N).filter(|&k| b[k] == b[(k + N / 2) % N]).count();
    if sym < N * 3 / 4 {
        return None;
    }
    let mut trans = [0.0f64; 4];
    let mut nt = 0;
    for k in 0..N {
        let k1 = (k + 1) % N;
        if b[k] != b[k1] {
            if nt == 4 {
                return None;
            }
            let t = ((mid - v[k]) / (v[k1] - v[k])).clamp(0.0, 1.0) as f64;
            let (a0, mut a1) = (ring.angles[k], ring.angles[k1]);
            if a1 < a0 {
                a1 += std::f64::consts::TAU;
            }
            trans[nt] = a0 + t * (a1 - a0);
            nt += 1;
        }
    }
    if nt != 4 {
        return None;
    }
    for i in 0..4 {
        let d = (trans[(i + 1) % 4] - trans[i]).rem_euclid(std::f64::consts::TAU);
        if d < 0.35 {
            return None;
        }
    }
    let line = |a: f64, b: f64| {
        let v = Vector2::new(
            (2.0 * a).cos() + (2.0 * b).cos(),
            (2.0 * a).sin() + (2.0 * b).sin(),
        );
        let ang = v.y.atan2(v.x) * 0.5;
        Vector2::new(ang.cos(), ang.sin())
    };
    Some((
        [line(trans[0], trans[2]), line(trans[1], trans[3])],
        mx - mn,
    ))
}

struct Index {
    cell: f64,
    gw: usize,
    gh: usize,
    buckets: Vec<Vec<usize>>,
}

impl Index {
    fn new(c: &[Cand], w: usize, h: usize, cell: f64) -> Self {
        let gw = (w as f64 / cell).ceil() as usize + 1;
        let gh = (h as f64 / cell).ceil() as usize + 1;
        let mut buckets = vec![Vec::new(); gw * gh];
        for (i, q) in c.iter().enumerate() {
            let bx = ((q.p.x / cell).max(0.0) as usize).min(gw - 1);
            let by = ((q.p.y / cell).max(0.0) as usize).min(gh - 1);
            buckets[by * gw + bx].push(i);
        }
        Index {
            cell,
            gw,
            gh,
            buckets,
        }
    }
    fn nearest(&self, c: &[Cand], p: Vector2<f64>, r: f64, used: &[bool]) -> Option<usize> {
        let x0 = (((p.x - r) / self.cell).floor().max(0.0)) as usize;
        let y0 = (((p.y - r) / self.cell).floor().max(0.0)) as usize;
        let x1 = (((p.x + r) / self.cell).floor().max(0.0) as usize).min(self.gw - 1);
        let y1 = (((p.y + r) / self.cell).floor().max(0.0) as usize).min(self.gh - 1);
        let mut best = None;
        let mut bd = r * r;
        for by in y0..=y1 {
            for bx in x0..=x1 {
                for &i in &self.buckets[by * self.gw + bx] {
                    if used[i] {
                        continue;
                    }
                    let d = (c[i].p - p).norm_squared();
                    if d < bd {
                        bd = d;
                        best = Some(i);
                    }
                }
            }
        }
        best
    }
}

fn detect_at_scale(
    img: &GrayImage,
    cols: usize,
    rows: usize,
    sigma: f32,
) -> Result<(Vec<Point2<f64>>, GrayImage), DetectError> {
    let dbg = std::env::var_os("BEVRT_CALIB_DEBUG").is_some();
    let t0 = std::time::Instant::now();
    let blur = img.gaussian_blur(sigma);
    if dbg {
        eprintln!("blur {:?}", t0.elapsed());
    }
    let cands = corner_candidates(img, &blur, sigma, dbg, t0);
    if cands.len() < 4 {
        return Err(DetectError::NoCorners);
    }
    let index = Index::new(&cands, img.width, img.height, 16.0);
    let mut tried = vec![false; cands.len()];
    let mut best: Option<DetectError> = None;
    let max_seeds = 60.min(cands.len());
    let mut seeds_done = 0;
    for s in 0..cands.len() {
        if seeds_done >= max_seeds {
            break;
        }
        if tried[s] {
            continue;
        }
        seeds_done += 1;
        let Some(grid) = grow(&blur, &cands, &index, s, cols.max(rows) + 2) else {
            continue;
        };
        for &i in grid.values() {
            tried[i] = true;
        }
        if std::env::var_os("BEVRT_CALIB_DEBUG").is_some() {
            print_lattice(&cands, &grid, sigma, s);
        }
        let err = match judge_lattice(&blur, &cands, &grid, cols, rows) {
            Ok(points) => return Ok((points, blur)),
            Err(err) => err,
        };
        if grid.len() >= 4 && best.as_ref().is_none_or(|b| rank(&err) > rank(b)) {
            best = Some(err);
        }
    }
    Err(best.unwrap_or(DetectError::NoCorners))
}

/// Saddle points of the blurred image that pass a ring test (two dark and two bright
/// sectors) on the smaller or, failing that, the larger ring.
fn corner_candidates(
    img: &GrayImage,
    blur: &GrayImage,
    sigma: f32,
    dbg: bool,
    t0: std::time::Instant,
) -> Vec<Cand> {
    let raw = saddle_candidates(blur);
    if dbg {
        eprintln!("blur+saddle {:?} raw {}", t0.elapsed(), raw.len());
    }
    let rings = [
        Ring::new((2.0 * sigma as f64).max(3.0), img.width),
        Ring::new((3.5 * sigma as f64).max(5.0), img.width),
    ];
    let mut cands: Vec<Cand> = Vec::new();
    for (x, y, _r) in raw {
        let p = Vector2::new(x as f64, y as f64);
        let dirs = rings.iter().find_map(|ring| ring_test(blur, x, y, ring));
        if let Some((dirs, contrast)) = dirs {
            cands.push(Cand { p, contrast, dirs });
        }
    }
    if dbg {
        eprintln!("ring {:?} cands {}", t0.elapsed(), cands.len());
    }
    cands
}

/// `BEVRT_CALIB_DEBUG`: the lattice grown from seed `s`, sorted by grid index.
fn print_lattice(cands: &[Cand], grid: &HashMap<(i32, i32), usize>, sigma: f32, s: usize) {
    let mut v: Vec<_> = grid
        .iter()
        .map(|(k, &i)| (*k, cands[i].p.x as i32, cands[i].p.y as i32))
        .collect();
    v.sort();
    eprintln!(
        "sigma {sigma} seed {s} ncand {} lattice {:?}",
        cands.len(),
        v
    );
}

/// A grown lattice as the board's corners in order, or why it is not the board.
fn judge_lattice(
    blur: &GrayImage,
    cands: &[Cand],
    grid: &HashMap<(i32, i32), usize>,
    cols: usize,
    rows: usize,
) -> Result<Vec<Point2<f64>>, DetectError> {
    let need = cols * rows;
    let imin = grid.keys().map(|k| k.0).min().unwrap_or(0);
    let imax = grid.keys().map(|k| k.0).max().unwrap_or(0);
    let jmin = grid.keys().map(|k| k.1).min().unwrap_or(0);
    let jmax = grid.keys().map(|k| k.1).max().unwrap_or(0);
    let r = (imax - imin + 1) as usize;
    let c = (jmax - jmin + 1) as usize;
    let complete = grid.len() == r * c;
    if complete && r * c > need && r >= rows.min(cols) && c >= rows.min(cols) {
        return Err(DetectError::TooLarge {
            rows: r.min(c),
            cols: r.max(c),
            need_cols: cols,
            need_rows: rows,
        });
    }
    let bounds = (imin, imax, jmin, jmax);
    if let Some(g) = best_window(blur, cands, grid, bounds, cols, rows) {
        return Ok(order(g, cols, rows));
    }
    Err(
        if complete && ((r == rows && c == cols) || (r == cols && c == rows)) {
            DetectError::NotChessboard
        } else {
            DetectError::Partial {
                rows: r.min(c),
                cols: r.max(c),
                found: grid.len(),
                need_cols: cols,
                need_rows: rows,
            }
        },
    )
}

/// Of all fully populated board-sized windows of the lattice (spurious corners beyond the
/// board's edge can make the lattice ragged), the one with the best contrast whose squares
/// alternate.
fn best_window(
    blur: &GrayImage,
    cands: &[Cand],
    grid: &HashMap<(i32, i32), usize>,
    (imin, imax, jmin, jmax): (i32, i32, i32, i32),
    cols: usize,
    rows: usize,
) -> Option<Vec<Vec<Vector2<f64>>>> {
    let r = (imax - imin + 1) as usize;
    let c = (jmax - jmin + 1) as usize;
    let mut best_win: Option<(f32, Vec<Vec<Vector2<f64>>>)> = None;
    for (wr, wc) in [(rows, cols), (cols, rows)] {
        if wr > r || wc > c {
            continue;
        }
        for i0 in imin..=imax - wr as i32 + 1 {
            for j0 in jmin..=jmax - wc as i32 + 1 {
                let mut g = vec![vec![Vector2::zeros(); wc]; wr];
                let mut score = 0.0f32;
                let mut full = true;
                'w: for (di, row) in g.iter_mut().enumerate() {
                    for (dj, v) in row.iter_mut().enumerate() {
                        match grid.get(&(i0 + di as i32, j0 + dj as i32)) {
                            Some(&k) => {
                                *v = cands[k].p;
                                score += cands[k].contrast;
                            }
                            None => {
                                full = false;
                                break 'w;
                            }
                        }
                    }
                }
                if full && alternates(blur, &g) && best_win.as_ref().is_none_or(|b| score > b.0) {
                    best_win = Some((score, g));
                }
            }
        }
    }
    best_win.map(|(_, g)| g)
}

fn angle_ok(v: Vector2<f64>, d: Vector2<f64>, cos_tol: f64) -> bool {
    let n = v.norm();
    n > 1e-9 && (v.dot(&d) / n).abs() > cos_tol
}

/// Neighbour of candidate `s` along direction `d` (sign `sg`).
fn neighbour(c: &[Cand], s: usize, d: Vector2<f64>, sg: f64) -> Option<usize> {
    let cos_tol = (20f64).to_radians().cos();
    let p = c[s].p;
    let mut best = None;
    let mut bd = f64::MAX;
    for (i, q) in c.iter().enumerate() {
        if i == s {
            continue;
        }
        let v = q.p - p;
        let n = v.norm();
        if !(3.0..bd).contains(&n) {
            continue;
        }
        if v.dot(&d) * sg <= 0.0 || !angle_ok(v, d, cos_tol) {
            continue;
        }
        // the neighbour sits on the same grid line
        if !(angle_ok(v, q.dirs[0], cos_tol) || angle_ok(v, q.dirs[1], cos_tol)) {
            continue;
        }
        bd = n;
        best = Some(i);
    }
    best
}

fn grow(
    img: &GrayImage,
    c: &[Cand],
    index: &Index,
    s: usize,
    max_extent: usize,
) -> Option<HashMap<(i32, i32), usize>> {
    let (mut g, mut used) = seed_square(img, c, index, s)?;
    let (mut imin, mut imax, mut jmin, mut jmax) = (0i32, 1i32, 0i32, 1i32);
    loop {
        let mut added = false;
        for (i, j) in frontier(&g, (imin, imax, jmin, jmax)) {
            if g.contains_key(&(i, j)) {
                continue;
            }
            let Some((pred, step)) = predict_corner(&g, c, i, j) else {
                continue;
            };
            if pred.x < -step || pred.y < -step {
                continue;
            }
            if let Some(k) = index.nearest(c, pred, 0.3 * step, &used) {
                // every existing 4-neighbour must be linked to k by a grid line: aligned with
                // one of k's line directions, and an edge (dark/bright sides) between them.
                let ok = [(1, 0), (-1, 0), (0, 1), (0, -1)].iter().all(|&(di, dj)| {
                    match g.get(&(i + di, j + dj)) {
                        Some(&n) => linked(img, &c[n], &c[k]),
                        None => true,
                    }
                });
                if !ok {
                    continue;
                }
                used[k] = true;
                g.insert((i, j), k);
                imin = imin.min(i);
                imax = imax.max(i);
                jmin = jmin.min(j);
                jmax = jmax.max(j);
                added = true;
            }
        }
        if !added
            || (imax - imin + 1) as usize > max_extent
            || (jmax - jmin + 1) as usize > max_extent
        {
            break;
        }
    }
    Some(g)
}

/// The first square of a lattice: seed `s`, its neighbours `a` and `b` along its two line
/// directions and the fourth corner `d`, all linked by grid lines. Returns the lattice
/// (indices (0,0), (1,0), (0,1), (1,1)) and which candidates it used.
#[allow(clippy::type_complexity)]
fn seed_square(
    img: &GrayImage,
    c: &[Cand],
    index: &Index,
    s: usize,
) -> Option<(HashMap<(i32, i32), usize>, Vec<bool>)> {
    let [d1, d2] = c[s].dirs;
    let a = neighbour(c, s, d1, 1.0).or_else(|| neighbour(c, s, d1, -1.0))?;
    let b = neighbour(c, s, d2, 1.0).or_else(|| neighbour(c, s, d2, -1.0))?;
    let p0 = c[s].p;
    let (va, vb) = (c[a].p - p0, c[b].p - p0);
    let (la, lb) = (va.norm(), vb.norm());
    if la / lb > 3.0 || lb / la > 3.0 {
        return None;
    }
    // not collinear
    if (va.perp(&vb) / (la * lb)).abs() < 0.3 {
        return None;
    }
    let mut used = vec![false; c.len()];
    used[s] = true;
    used[a] = true;
    used[b] = true;
    let d = index.nearest(c, c[a].p + vb, 0.3 * la.min(lb), &used)?;
    if !(linked(img, &c[s], &c[a])
        && linked(img, &c[s], &c[b])
        && linked(img, &c[a], &c[d])
        && linked(img, &c[b], &c[d]))
    {
        return None;
    }
    used[d] = true;
    let mut g: HashMap<(i32, i32), usize> = HashMap::new();
    g.insert((0, 0), s);
    g.insert((1, 0), a);
    g.insert((0, 1), b);
    g.insert((1, 1), d);
    Some((g, used))
}

/// Empty lattice places within one step of the bounds that touch a filled 4-neighbour.
fn frontier(
    g: &HashMap<(i32, i32), usize>,
    (imin, imax, jmin, jmax): (i32, i32, i32, i32),
) -> Vec<(i32, i32)> {
    let mut frontier: Vec<(i32, i32)> = Vec::new();
    for i in imin - 1..=imax + 1 {
        for j in jmin - 1..=jmax + 1 {
            if g.contains_key(&(i, j)) {
                continue;
            }
            let adj = [(1, 0), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .any(|&(di, dj)| g.contains_key(&(i + di, j + dj)));
            if adj {
                frontier.push((i, j));
            }
        }
    }
    frontier
}

/// Where corner (i, j) should be, and the local grid step: the mean of the straight-line
/// extrapolations along each filled row / column (quadratic from three points), or failing
/// those, of the parallelogram completions from the diagonal neighbours.
fn predict_corner(
    g: &HashMap<(i32, i32), usize>,
    c: &[Cand],
    i: i32,
    j: i32,
) -> Option<(Vector2<f64>, f64)> {
    let get = |ii: i32, jj: i32| g.get(&(ii, jj)).map(|&k| c[k].p);
    let mut preds: Vec<(Vector2<f64>, f64)> = Vec::new();
    for (di, dj) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
        if let (Some(p1), Some(p2)) = (get(i - di, j - dj), get(i - 2 * di, j - 2 * dj)) {
            let step = (p1 - p2).norm();
            let pred = match get(i - 3 * di, j - 3 * dj) {
                Some(p3) => p1 * 3.0 - p2 * 3.0 + p3,
                None => p1 * 2.0 - p2,
            };
            preds.push((pred, step));
        }
    }
    if preds.is_empty() {
        for (di, dj) in [(1, 1), (1, -1), (-1, 1), (-1, -1)] {
            if let (Some(pa), Some(pb), Some(pc)) =
                (get(i - di, j), get(i, j - dj), get(i - di, j - dj))
            {
                let step = (pa - pc).norm().min((pb - pc).norm());
                preds.push((pa + pb - pc, step));
            }
        }
    }
    if preds.is_empty() {
        return None;
    }
    let n = preds.len() as f64;
    let pred = preds.iter().fold(Vector2::zeros(), |acc, x| acc + x.0) / n;
    let step = preds.iter().map(|x| x.1).sum::<f64>() / n;
    Some((pred, step))
}

/// Whether two candidates are joined by a chessboard grid line.
fn linked(img: &GrayImage, a: &Cand, b: &Cand) -> bool {
    let cos_tol = (25f64).to_radians().cos();
    let v = b.p - a.p;
    let len = v.norm();
    if len < 2.0 {
        return false;
    }
    if !(angle_ok(v, a.dirs[0], cos_tol) || angle_ok(v, a.dirs[1], cos_tol)) {
        return false;
    }
    if !(angle_ok(v, b.dirs[0], cos_tol) || angle_ok(v, b.dirs[1], cos_tol)) {
        return false;
    }
    let n = Vector2::new(-v.y, v.x) / len;
    let off = (0.2 * len).clamp(1.5, 6.0);
    let thr = 0.25 * a.contrast.min(b.contrast);
    // sample at 1/3 and 2/3 along the segment, both sides
    let mut good = 0;
    for t in [0.33, 0.5, 0.67] {
        let m = a.p + v * t;
        let s1 = img.bilinear(m.x + n.x * off, m.y + n.y * off);
        let s2 = img.bilinear(m.x - n.x * off, m.y - n.y * off);
        if (s1 - s2).abs() > thr {
            good += 1;
        }
    }
    good >= 2
}

/// Cell centre intensities must alternate (checked pairwise, robust to uneven lighting).
fn alternates(img: &GrayImage, g: &[Vec<Vector2<f64>>]) -> bool {
    let r = g.len();
    let c = g[0].len();
    let mut val = vec![vec![0.0f32; c - 1]; r - 1];
    for i in 0..r - 1 {
        for j in 0..c - 1 {
            let m = (g[i][j] + g[i + 1][j] + g[i][j + 1] + g[i + 1][j + 1]) * 0.25;
            val[i][j] = img.bilinear(m.x, m.y);
        }
    }
    let (mut good, mut total) = (0, 0);
    for i in 0..r - 1 {
        for j in 0..c - 1 {
            let sign = if (i + j) % 2 == 0 { 1.0 } else { -1.0 };
            if j + 1 < c - 1 {
                total += 1;
                if (val[i][j] - val[i][j + 1]) * sign > 0.0 {
                    good += 1;
                }
            }
            if i + 1 < r - 1 {
                total += 1;
                if (val[i][j] - val[i + 1][j]) * sign > 0.0 {
                    good += 1;
                }
            }
        }
    }
    // all positive or all negative
    total == 0 || good * 10 >= total * 9 || good * 10 <= total
}

fn order(mut g: Vec<Vec<Vector2<f64>>>, cols: usize, rows: usize) -> Vec<Point2<f64>> {
    let transpose = |g: &Vec<Vec<Vector2<f64>>>| -> Vec<Vec<Vector2<f64>>> {
        (0..g[0].len())
            .map(|j| (0..g.len()).map(|i| g[i][j]).collect())
            .collect()
    };
    if g[0].len() != cols {
        g = transpose(&g);
    }
    let mut variants = Vec::new();
    let base = [g.clone()];
    let mut all: Vec<Vec<Vec<Vector2<f64>>>> = base.to_vec();
    if rows == cols {
        all.push(transpose(&g));
    }
    for v in all {
        for (fr, fc) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut h = v.clone();
            if fr {
                h.reverse();
            }
            if fc {
                h.iter_mut().for_each(|row| row.reverse());
            }
            variants.push(h);
        }
    }
    let score = |h: &Vec<Vec<Vector2<f64>>>| {
        let p0 = h[0][0];
        let along_row = h[0][1] - p0;
        let along_col = h[1][0] - p0;
        // primary: top-left corner first; secondary (square boards): rows run rightwards
        (p0.x + p0.y) * 1000.0 + if along_row.x >= along_col.x { 0.0 } else { 1.0 }
    };
    let best = variants
        .into_iter()
        .min_by(|a, b| score(a).total_cmp(&score(b)))
        .unwrap_or(g);
    best.into_iter()
        .flatten()
        .map(|v| Point2::new(v.x, v.y))
        .collect()
}

/// Subpixel corner refinement like OpenCV's `cornerSubPix` (no zero zone): iterates
/// `q = (sum w G G^T)^-1 sum w G G^T p` over a (2*half+1)^2 window of bilinearly resampled
/// gradients with OpenCV's Gaussian window weights, until the update is below `eps` px or
/// `max_iter` iterations.
pub fn corner_subpix(
    img: &GrayImage,
    corners: &mut [Point2<f64>],
    half: usize,
    max_iter: usize,
    eps: f64,
) {
    let win = half as isize;
    let ww = 2 * half + 1;
    let sw = ww + 2;
    let mut mask = vec![0.0f64; ww * ww];
    for i in 0..ww {
        let y = (i as f64 - half as f64) / half as f64;
        for j in 0..ww {
            let x = (j as f64 - half as f64) / half as f64;
            mask[i * ww + j] = (-x * x).exp() * (-y * y).exp();
        }
    }
    let mut sub = vec![0.0f64; sw * sw];
    for c in corners.iter_mut() {
        let c0 = *c;
        let mut ci = c0;
        for _ in 0..max_iter {
            // sample (ww+2)^2 subimage centred at ci
            for i in 0..sw {
                for j in 0..sw {
                    let x = ci.x + (j as f64 - (half + 1) as f64);
                    let y = ci.y + (i as f64 - (half + 1) as f64);
                    sub[i * sw + j] = img.bilinear(x, y) as f64;
                }
            }
            let (mut a, mut b, mut cc, mut bb1, mut bb2) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for i in 0..ww {
                let py = i as f64 - win as f64;
                for j in 0..ww {
                    let px = j as f64 - win as f64;
                    let si = (i + 1) * sw + (j + 1);
                    let tgx = sub[si + 1] - sub[si - 1];
                    let tgy = sub[si + sw] - sub[si - sw];
                    let m = mask[i * ww + j];
                    let gxx = tgx * tgx * m;
                    let gxy = tgx * tgy * m;
                    let gyy = tgy * tgy * m;
                    a += gxx;
                    b += gxy;
                    cc += gyy;
                    bb1 += gxx * px + gxy * py;
                    bb2 += gxy * px + gyy * py;
                }
            }
            let det = a * cc - b * b;
            if det.abs() <= f64::EPSILON * f64::EPSILON {
                break;
            }
            let scale = 1.0 / det;
            let nx = ci.x + cc * scale * bb1 - b * scale * bb2;
            let ny = ci.y - b * scale * bb1 + a * scale * bb2;
            let err = (nx - ci.x).powi(2) + (ny - ci.y).powi(2);
            ci = Point2::new(nx, ny);
            if ci.x < 0.0 || ci.x >= img.width as f64 || ci.y < 0.0 || ci.y >= img.height as f64 {
                break;
            }
            if err <= eps * eps {
                break;
            }
        }
        // OpenCV: if the corner moved too far, keep the original
        if (ci.x - c0.x).abs() > half as f64 || (ci.y - c0.y).abs() > half as f64 {
            ci = c0;
        }
        *c = ci;
    }
}
