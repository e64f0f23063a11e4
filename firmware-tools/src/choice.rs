//! Named choices of the libraries (backend, quantization method, ...) as clap value parsers.

use bevrt_runtime::choice::Choice;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// A `--flag` whose value is one of a library's named choices; `--help` lists them.
pub fn choice<T: Choice + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|c| match c.help() {
        "" => PossibleValue::new(c.name()),
        help => PossibleValue::new(c.name()).help(help),
    });
    PossibleValuesParser::new(values)
        .map(|s| bevrt_runtime::choice::parse::<T>(&s).expect("listed"))
}
