//! Replays the kept fuzz corpora (`tests/fuzz/corpus/TARGET/`) through the same target bodies
//! libFuzzer drives (`bevrt_tests::fuzz_targets`), on stable: a regression run, not a fuzz.
//! Every input a fuzzing run found interesting (crashes once fixed included) stays here.

use bevrt_tests::fuzz_targets::{TARGETS, replay_dir};
use bevrt_tests::workspace_root;

#[test]
fn every_fuzz_corpus_replays_without_a_crash() {
    let root = workspace_root().join("tests/fuzz/corpus");
    for (name, f) in TARGETS {
        let n = replay_dir(&root.join(name), *f);
        assert!(n > 0, "tests/fuzz/corpus/{name} holds no inputs");
        eprintln!("{name}: {n} inputs replayed");
    }
}

/// Inputs the fuzz targets must survive, written here so they stay readable: each once took a
/// parser to a panic or an unbounded allocation before it was fixed.
#[test]
fn known_hostile_inputs_return_errors() {
    use bevrt_tests::fuzz_targets::*;
    // npy: a version-2 header cut after 10 bytes; a shape whose byte count overflows.
    npy(b"\x93NUMPY\x02\x00\x10\x00");
    npy(b"\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }\n");
    assert!(bevrt_runtime::npy::parse_f32(b"\x93NUMPY\x02\x00\x10\x00").is_err());
    // A PNG declaring 100000 x 100000 pixels (valid chunks, a few bytes of data).
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [
        &100_000u32.to_be_bytes()[..],
        &100_000u32.to_be_bytes()[..],
        &[8, 2, 0, 0, 0],
    ]
    .concat();
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    let mut frame = bevrt_runtime::Frame::with_capacity(0);
    let e = bevrt_runtime::source::decode_into(
        &png,
        &mut frame,
        &mut vec![],
        std::path::Path::new("big.png"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("megapixel frame limit"), "{e}");
    // A recording header of 100000 x 100000 raw pixels.
    recording_header(b"format = 1\nwidth = 100000\nheight = 100000\npixel_format = \"rgb8\"\nencoding = \"raw\"\nfps = 1.0\n");
    // frames.csv pointing ground truth outside the recording.
    let e = bevrt_runtime::source::replay::Recording::parse_index(
        "seq,timestamp_ns,file,gt\n0,0,f.png,/etc/passwd\n",
        std::path::Path::new("rec"),
        std::path::Path::new("rec/frames.csv"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("gt must be a relative path"), "{e}");
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut c = 0xFFFF_FFFFu32;
    for &b in kind.iter().chain(data) {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!c).to_be_bytes());
}
