//! Enumerations a user picks by name (on a command line, in a config file): the names, one
//! line of help each, and parsing. The binaries turn these into their argument parsers, so the
//! library knows no command-line crate.

/// A closed set of named choices.
pub trait Choice: Copy + PartialEq + 'static {
    /// Every choice, in the order help lists them.
    const ALL: &'static [Self];
    /// The name a user types.
    fn name(self) -> &'static str;
    /// One line for `--help` (empty: none).
    fn help(self) -> &'static str {
        ""
    }
}

/// The choice named `s`, or an error listing the names.
pub fn parse<T: Choice>(s: &str) -> Result<T, String> {
    T::ALL
        .iter()
        .copied()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = T::ALL.iter().map(|c| c.name()).collect();
            format!("'{s}' is not one of: {}", names.join(", "))
        })
}

/// `FromStr` and `Display` by the choice's name.
#[macro_export]
macro_rules! named_choice {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $crate::choice::parse(s)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for &k in BackendKind::ALL {
            assert_eq!(parse::<BackendKind>(k.name()), Ok(k));
        }
        let e = parse::<BackendKind>("gpu").unwrap_err();
        assert!(e.contains("auto, cpu, cpu-plan, cuda"), "{e}");
    }
}
