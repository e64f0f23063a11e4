//! `cargo run -p bevrt-calib --release --example detect_bench -- IMAGE...`: min time of 20 runs.
fn main() {
    let imgs: Vec<_> = std::env::args()
        .skip(1)
        .map(|f| bevrt_calib::GrayImage::load(f).expect("image"))
        .collect();
    let mut tot = 0.0;
    for img in &imgs {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let _ = bevrt_calib::find_chessboard(img, 9, 6);
            best = best.min(t.elapsed().as_secs_f64());
        }
        tot += best;
    }
    println!("sum of min detection times: {:.2} ms", tot * 1e3);
}
