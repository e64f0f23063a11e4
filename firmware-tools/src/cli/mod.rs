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

#[cfg(feature = "host")]
pub mod afv;
#[cfg(feature = "host")]
pub mod ddpm;
#[cfg(feature = "host")]
pub mod letsmap;
#[cfg(feature = "host")]
pub mod ssl;

use bevrt_runtime::choice::Choice;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

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
