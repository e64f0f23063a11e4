//! Panics caught at the pipeline's boundaries (a backend, a parser, a model update) become
//! errors that name what failed; this is how their message is read.

/// The message a caught panic carried.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
