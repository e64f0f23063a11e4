#![allow(dead_code)]
use std::path::PathBuf;

/// `$BEVRT_SHARED` or `<workspace>/../shared`; `None` (test prints SKIP) when absent.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("BEVRT_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    if p.join("data/calib/opencv_left").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: shared data not found at {} (set BEVRT_SHARED)",
            p.display()
        );
        None
    }
}

/// Small deterministic RNG (xorshift64*) so the property tests need no extra crates.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform(1e-12, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
