//! Authority tiers, ordered from least to most: `none < read_only < operator < admin`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How much a caller may do. The order of the variants is the order of authority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// May only greet the daemon and ask its health and version.
    #[default]
    None,
    /// May read state.
    ReadOnly,
    /// May run operator actions.
    Operator,
    /// May do everything, including changing the daemon's own state.
    Admin,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::None, Tier::ReadOnly, Tier::Operator, Tier::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::None => "none",
            Tier::ReadOnly => "read_only",
            Tier::Operator => "operator",
            Tier::Admin => "admin",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown tier `{s}`: expected none, read_only, operator or admin")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_order_by_authority_and_round_trip_their_names() {
        assert!(Tier::None < Tier::ReadOnly && Tier::ReadOnly < Tier::Operator);
        assert!(Tier::Operator < Tier::Admin);
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert!("root".parse::<Tier>().is_err());
    }
}
