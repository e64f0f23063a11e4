//! Debug helper: `cargo run -p bevrt-calib --release --example detect -- COLS ROWS IMAGES...`
//! prints `{file: [[x, y], ...]}` JSON of the detected corners (or the rejection reason).
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let cols: usize = a[1].parse().expect("cols");
    let rows: usize = a[2].parse().expect("rows");
    let mut out = Vec::new();
    for f in &a[3..] {
        let img = bevrt_calib::GrayImage::load(f).expect("image");
        let t = std::time::Instant::now();
        let r = bevrt_calib::find_chessboard(&img, cols, rows);
        eprintln!(
            "{f}: {:?} {}",
            t.elapsed(),
            r.as_ref()
                .map(|_| "ok".to_string())
                .unwrap_or_else(|e| e.to_string())
        );
        let name = std::path::Path::new(f)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        if let Ok(c) = r {
            let pts: Vec<String> = c.iter().map(|p| format!("[{},{}]", p.x, p.y)).collect();
            out.push(format!("\"{name}\": [{}]", pts.join(",")));
        }
    }
    println!("{{{}}}", out.join(","));
}
