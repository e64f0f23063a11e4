//! The progress bar every long command shows: elapsed, bar, count, a message (loss), ETA.

pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}} ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    pb
}

/// [`progress`] when `show`, else a hidden bar (tests, library callers).
pub fn progress_if(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if show {
        progress(len, what)
    } else {
        indicatif::ProgressBar::hidden()
    }
}
