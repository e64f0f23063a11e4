//! BEV sampling table: contract, correctness against direct projection, view transform, speed.
mod common;
use bevrt_calib::bev::{FLAG_BEHIND, FLAG_OUTSIDE, FLAG_VALID};
use bevrt_calib::remap::ipm_map;
use bevrt_calib::{
    BevGrid, CameraModel, DepthBins, DepthSpacing, Extrinsics, LiftScratch, SampleTap,
    SamplingTable, lift, view_transform,
};
use nalgebra::Point3;

fn setup() -> (BevGrid, CameraModel, Extrinsics) {
    let grid = BevGrid {
        x_min: -50.0,
        x_max: 50.0,
        y_min: -50.0,
        y_max: 50.0,
        cell: 0.25,
        z_levels: vec![-0.5, 0.0, 1.0, 2.0],
        depth: None,
    };
    let cam = common::wide_angle();
    let ext = Extrinsics::from_angles(1.5, 0.0, 1.6, 6.0, 0.5, 2.0);
    (grid, cam, ext)
}

#[test]
fn layout_contract() {
    assert_eq!(std::mem::size_of::<SampleTap>(), 32);
    assert_eq!(std::mem::align_of::<SampleTap>(), 4);
    let (grid, cam, ext) = setup();
    assert_eq!((grid.width(), grid.height()), (400, 400));
    // row 0 = farthest x, column 0 = leftmost (largest) y
    let (x, y) = grid.cell_center(0, 0);
    assert!((x - 49.875).abs() < 1e-9 && (y - 49.875).abs() < 1e-9);
    let t = SamplingTable::build(&grid, &cam, &ext, 80, 45, 16);
    assert_eq!(t.taps.len(), 4 * 400 * 400);
    assert_eq!(t.taps_as_bytes().len(), 32 * 4 * 400 * 400);
    // behind the camera: a cell at x = -40 on the ground
    let row = ((50.0 - (-40.0)) / 0.25) as usize;
    let e = (400 + row) * 400 + 200;
    assert_eq!(t.flags[e], FLAG_BEHIND);
    assert_eq!(t.taps[e], SampleTap::default());
    // ahead but far to the side: outside the image
    let e = (400 + 100) * 400; // x = 24.875, y = 49.875
    assert_eq!(t.flags[e], FLAG_OUTSIDE);
    let valid = t.flags.iter().filter(|&&f| f == FLAG_VALID).count();
    assert!(valid > 1000, "valid entries {valid}");
    for (tap, &f) in t.taps.iter().zip(&t.flags) {
        let s: f32 = tap.w.iter().sum();
        if f == FLAG_VALID {
            assert!((s - 1.0).abs() < 1e-5);
            assert!(tap.idx.iter().all(|&i| (i as usize) < 80 * 45));
        } else {
            assert_eq!(s, 0.0);
        }
    }
}

#[test]
fn table_matches_direct_projection_and_view_transform_is_bilinear() {
    let (grid, cam, ext) = setup();
    let (fw, fh, stride) = (80usize, 45usize, 16usize);
    let t = SamplingTable::build(&grid, &cam, &ext, fw, fh, stride);
    // features: channel 0 = feature x coordinate, channel 1 = feature y coordinate
    let mut feat = vec![0.0f32; 2 * fw * fh];
    for y in 0..fh {
        for x in 0..fw {
            feat[y * fw + x] = x as f32;
            feat[fw * fh + y * fw + x] = y as f32;
        }
    }
    let (gw, gh, nz) = (t.grid_w, t.grid_h, t.levels);
    let mut out = vec![0.0f32; 2 * nz * gh * gw];
    view_transform(&t, &feat, &mut out).unwrap();
    let v2c = ext.vehicle_to_cam();
    let mut checked = 0;
    for l in 0..nz {
        for row in (0..gh).step_by(7) {
            for col in (0..gw).step_by(7) {
                let e = (l * gh + row) * gw + col;
                if t.flags[e] != FLAG_VALID {
                    continue;
                }
                let (x, y) = grid.cell_center(row, col);
                let p = cam
                    .project((v2c * Point3::new(x, y, grid.z_levels[l] as f64)).coords)
                    .unwrap();
                let fx = ((p.x + 0.5) / stride as f64 - 0.5).clamp(0.0, fw as f64 - 1.0);
                let fy = ((p.y + 0.5) / stride as f64 - 0.5).clamp(0.0, fh as f64 - 1.0);
                let ox = out[l * gh * gw + row * gw + col] as f64;
                let oy = out[(nz + l) * gh * gw + row * gw + col] as f64;
                assert!(
                    (ox - fx).abs() < 1e-3 && (oy - fy).abs() < 1e-3,
                    "entry {e}: ({ox},{oy}) vs ({fx},{fy})"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
    // wrong buffer sizes are errors, not panics
    assert!(view_transform(&t, &feat[1..], &mut out).is_err());
    assert!(view_transform(&t, &feat, &mut out[1..]).is_err());
}

#[test]
fn rebuild_100m_grid_under_20ms() {
    let (grid, cam, ext) = setup();
    let mut t = SamplingTable::build(&grid, &cam, &ext, 80, 45, 16);
    let ext2 = Extrinsics::from_angles(1.5, 0.0, 1.62, 6.3, 0.4, 2.1);
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t0 = std::time::Instant::now();
        t.rebuild(&grid, &cam, &ext2).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    eprintln!(
        "sampling table rebuild 400x400x4: {:.2} ms (best of 7, one core)",
        best * 1e3
    );
    if cfg!(debug_assertions) {
        eprintln!("debug build: timing not asserted");
    } else {
        assert!(best < 0.020, "rebuild took {:.1} ms", best * 1e3);
    }
}

#[test]
fn bev_grid_serde_and_validation() {
    let (grid, _, _) = setup();
    let s = serde_json::to_string(&grid).unwrap();
    let back: BevGrid = serde_json::from_str(&s).unwrap();
    assert_eq!(back, grid);
    let bad = BevGrid {
        cell: 0.0,
        ..grid.clone()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn ipm_maps_ground_points_to_their_pixels() {
    let (_, cam, ext) = setup();
    let grid = BevGrid {
        x_min: 2.0,
        x_max: 30.0,
        y_min: -10.0,
        y_max: 10.0,
        cell: 0.1,
        z_levels: vec![0.0],
        depth: None,
    };
    let m = ipm_map(&grid, 0.0, &cam, &ext);
    assert_eq!((m.width, m.height), (200, 280));
    let v2c = ext.vehicle_to_cam();
    let (x, y) = grid.cell_center(100, 50);
    let p = cam.project((v2c * Point3::new(x, y, 0.0)).coords).unwrap();
    let q = m.map[100 * 200 + 50];
    assert!((q[0] as f64 - p.x).abs() < 1e-3 && (q[1] as f64 - p.y).abs() < 1e-3);
}

fn depth_grid() -> (BevGrid, CameraModel, Extrinsics) {
    let (mut grid, cam, ext) = setup();
    grid.x_min = 0.0;
    grid.x_max = 40.0;
    grid.y_min = -20.0;
    grid.y_max = 20.0;
    grid.cell = 0.5;
    grid.z_levels = vec![0.0, 1.0];
    grid.depth = Some(DepthBins {
        min: 2.0,
        max: 50.0,
        bins: 16,
        spacing: DepthSpacing::Log,
    });
    (grid, cam, ext)
}

#[test]
fn depth_bins_edges_centres_and_lookup() {
    for spacing in [DepthSpacing::Linear, DepthSpacing::Log] {
        let d = DepthBins {
            min: 2.0,
            max: 50.0,
            bins: 16,
            spacing,
        };
        d.validate().unwrap();
        assert!((d.edge(0) - 2.0).abs() < 1e-5 && (d.edge(16) - 50.0).abs() < 1e-4);
        for k in 0..16 {
            let (a, b, c) = (d.edge(k), d.edge(k + 1), d.centre(k));
            assert!(a < c && c < b, "{spacing:?} bin {k}: {a} {c} {b}");
            assert_eq!(d.bin_of(c as f64), k as u32);
            assert_eq!(d.bin_of(a as f64 + 1e-4), k as u32);
        }
        // out of range clamps, never panics
        assert_eq!(d.bin_of(0.5), 0);
        assert_eq!(d.bin_of(-3.0), 0);
        assert_eq!(d.bin_of(1e9), 15);
        assert_eq!(d.bin_of(f64::NAN), 0);
    }
    let bad = DepthBins {
        min: 0.0,
        max: 50.0,
        bins: 16,
        spacing: DepthSpacing::Log,
    };
    assert!(bad.validate().is_err());
    let (mut grid, _, _) = depth_grid();
    grid.depth.as_mut().unwrap().bins = 1;
    assert!(grid.validate().is_err(), "one bin is no distribution");
    // [grid.depth] round-trips through TOML, and grids without it stay as they were
    let (grid, _, _) = depth_grid();
    let text = toml::to_string(&grid).unwrap();
    assert!(text.contains("[depth]") && text.contains("spacing = \"log\""));
    assert_eq!(toml::from_str::<BevGrid>(&text).unwrap(), grid);
    let (plain, _, _) = setup();
    assert!(!toml::to_string(&plain).unwrap().contains("depth"));
}

#[test]
fn table_bins_are_the_camera_depth_of_each_entry() {
    let (grid, cam, ext) = depth_grid();
    let t = SamplingTable::build(&grid, &cam, &ext, 80, 45, 16);
    assert_eq!(t.depth_bins, 16);
    assert_eq!(t.bins.len(), t.len());
    let d = grid.depth.as_ref().unwrap();
    let v2c = ext.vehicle_to_cam();
    let (gh, gw) = (t.grid_h, t.grid_w);
    let mut checked = 0;
    for l in 0..t.levels {
        for row in 0..gh {
            for col in (0..gw).step_by(5) {
                let e = (l * gh + row) * gw + col;
                if t.flags[e] != FLAG_VALID {
                    assert_eq!(t.bins[e], 0);
                    continue;
                }
                let (x, y) = grid.cell_center(row, col);
                let z = (v2c * Point3::new(x, y, grid.z_levels[l] as f64)).z;
                assert_eq!(t.bins[e], d.bin_of(z), "entry {e} at depth {z}");
                checked += 1;
            }
        }
    }
    assert!(checked > 500);
    // nearer rows (larger row index) never get a farther bin on the centre column
    let col = gw / 2;
    let bins: Vec<u32> = (0..gh)
        .filter(|&r| t.flags[r * gw + col] == FLAG_VALID)
        .map(|r| t.bins[r * gw + col])
        .collect();
    assert!(bins.windows(2).all(|w| w[0] >= w[1]), "{bins:?}");
    assert!(bins.first() > bins.last());
    // the plain table has no bins
    let (plain, _, _) = setup();
    let p = SamplingTable::build(&plain, &cam, &ext, 80, 45, 16);
    assert_eq!((p.depth_bins, p.bins.len()), (0, 0));
}

#[test]
fn lift_with_uniform_depth_is_the_view_transform_and_a_peak_keeps_its_bin() {
    let (grid, cam, ext) = depth_grid();
    let (fw, fh) = (80usize, 45usize);
    let t = SamplingTable::build(&grid, &cam, &ext, fw, fh, 16);
    let plane = fw * fh;
    let (c, d) = (3usize, 16usize);
    let cells = t.grid_w * t.grid_h;
    let mut feat: Vec<f32> = (0..(c + d) * plane)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    // equal logits (any constant): the lift equals the plain transform of the context channels
    feat[c * plane..].fill(0.7);
    let mut want = vec![0f32; c * t.levels * cells];
    let mut plain = t.clone();
    plain.depth_bins = 0;
    plain.bins.clear();
    view_transform(&plain, &feat[..c * plane], &mut want).unwrap();
    let mut scratch = LiftScratch::new(&t);
    let mut got = vec![0f32; want.len()];
    lift(&t, &feat, &mut scratch, &mut got).unwrap();
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 1e-5,
        "uniform depth differs from the view transform by {err}"
    );
    // every pixel sure of bin 5: only entries of bin 5 keep their feature (times D)
    for k in 0..d {
        feat[(c + k) * plane..(c + k + 1) * plane].fill(if k == 5 { 30.0 } else { 0.0 });
    }
    lift(&t, &feat, &mut scratch, &mut got).unwrap();
    let (mut kept, mut dropped) = (0, 0);
    for (e, &b) in t.bins.iter().enumerate() {
        if t.flags[e] != FLAG_VALID {
            continue;
        }
        let (l, cell) = (e / cells, e % cells);
        let (g, w) = (
            got[l * cells + cell],
            want[l * cells + cell] * if b == 5 { d as f32 } else { 0.0 },
        );
        assert!(
            (g - w).abs() < 1e-3 * (1.0 + w.abs()),
            "entry {e} bin {b}: {g} vs {w}"
        );
        if b == 5 { kept += 1 } else { dropped += 1 }
    }
    assert!(
        kept > 100 && dropped > 1000,
        "kept {kept} dropped {dropped}"
    );
    // sizes that do not fit are errors naming the problem, not panics
    assert!(lift(&t, &feat[..d * plane], &mut scratch, &mut got).is_err());
    assert!(lift(&t, &feat, &mut scratch, &mut got[1..]).is_err());
}

#[test]
fn exp_nonpositive_is_within_two_ulp_of_exp() {
    let mut worst = 0f64;
    let mut x = 0.0f32;
    while x > -87.0 {
        let (a, b) = (bevrt_calib::bev::exp_nonpositive(x) as f64, x.exp() as f64);
        worst = worst.max((a - b).abs() / b);
        x -= 0.000_731;
    }
    assert!(worst < 2.5e-7, "relative error {worst}");
    assert_eq!(bevrt_calib::bev::exp_nonpositive(0.0), 1.0);
    assert_eq!(bevrt_calib::bev::exp_nonpositive(-200.0), 0.0);
    assert_eq!(bevrt_calib::bev::exp_nonpositive(f32::NAN), 0.0);
    assert_eq!(bevrt_calib::bev::exp_nonpositive(f32::NEG_INFINITY), 0.0);
}
