//! The training commands' command lines. The training library ([`bevrt_train`]) takes plain
//! config structs and knows nothing of clap; here each command's clap arguments (flags,
//! defaults, help text) are declared and turned into the library's config.
//!
//! | module | commands |
//! |---|---|
//! | [`letsmap`] | `pretrain`, `pretrain-geometry`, `depth-eval`, `finetune`, `eval` |
//! | [`afv`] | `gan train`, `afv fit`, `afv distance`, `embed`, `probe` |
//! | [`ssl`] | `ssl train`, `ssl drive` |
//! | [`ddpm`] | `ddpm train`, `sample`, `reconstruct`, `interpolate`, `features` |

pub mod afv;
pub mod ddpm;
pub mod letsmap;
pub mod ssl;

use std::str::FromStr;

use bevrt_runtime::choice::Choice;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// The value parser of a library enum: `names` (the enum's `NAMES`) are the values `--help`
/// lists, each with the help at the same place in `helps` (`""` or a short `helps`: none), and
/// the value given is parsed by the enum's [`FromStr`].
pub fn one_of<T>(
    names: &'static [&'static str],
    helps: &'static [&'static str],
) -> impl TypedValueParser<Value = T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    let values = names.iter().enumerate().map(|(i, &name)| {
        let value = PossibleValue::new(name);
        match helps.get(i) {
            Some(&help) if !help.is_empty() => value.help(help),
            _ => value,
        }
    });
    PossibleValuesParser::new(values).try_map(|s| s.parse::<T>())
}

/// The value parser of a runtime or quantizer choice ([`Choice`]: backend, quantization
/// method, activation type); `--help` lists the names with their help.
pub fn choice<T: Choice + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|c| match c.help() {
        "" => PossibleValue::new(c.name()),
        help => PossibleValue::new(c.name()).help(help),
    });
    PossibleValuesParser::new(values)
        .map(|s| bevrt_runtime::choice::parse::<T>(&s).expect("listed"))
}
