//! Event filters on CloudEvents attributes, in the dialects of the CNCF
//! Subscriptions API that Knative also uses: `exact`, `prefix`, `suffix`,
//! `all`, `any` and `not`. A filter is pure data, checked when the manifest
//! is, and evaluated against any event by an attribute lookup, so the same
//! code judges events in every backend.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One filter expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Every named attribute equals its value.
    Exact(BTreeMap<String, String>),
    /// Every named attribute starts with its value.
    Prefix(BTreeMap<String, String>),
    /// Every named attribute ends with its value.
    Suffix(BTreeMap<String, String>),
    /// Every nested filter matches.
    All(Vec<Filter>),
    /// At least one nested filter matches.
    Any(Vec<Filter>),
    /// The nested filter does not match.
    Not(Box<Filter>),
}

impl Filter {
    /// Whether an event matches; `attribute` looks an attribute (or
    /// extension) up by name. A missing attribute matches no comparison.
    pub fn matches(&self, attribute: &dyn Fn(&str) -> Option<String>) -> bool {
        let each = |map: &BTreeMap<String, String>, test: fn(&str, &str) -> bool| {
            map.iter()
                .all(|(name, want)| attribute(name).is_some_and(|have| test(&have, want)))
        };
        match self {
            Filter::Exact(map) => each(map, |have, want| have == want),
            Filter::Prefix(map) => each(map, |have, want| have.starts_with(want)),
            Filter::Suffix(map) => each(map, |have, want| have.ends_with(want)),
            Filter::All(list) => list.iter().all(|f| f.matches(attribute)),
            Filter::Any(list) => list.iter().any(|f| f.matches(attribute)),
            Filter::Not(inner) => !inner.matches(attribute),
        }
    }

    /// Checks the filter's shape; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let names = |dialect: &str, map: &BTreeMap<String, String>, values_nonempty: bool| {
            if map.is_empty() {
                return Err(format!("`{dialect}` needs at least one attribute"));
            }
            for (name, value) in map {
                if !valid_attribute(name) {
                    return Err(format!(
                        "{name:?} is not a CloudEvents attribute name (lowercase letters and digits, at most 20)"
                    ));
                }
                if values_nonempty && value.is_empty() {
                    return Err(format!("`{dialect}` on {name:?} needs a non-empty value"));
                }
            }
            Ok(())
        };
        match self {
            Filter::Exact(map) => names("exact", map, false),
            Filter::Prefix(map) => names("prefix", map, true),
            Filter::Suffix(map) => names("suffix", map, true),
            Filter::All(list) | Filter::Any(list) if list.is_empty() => {
                Err("`all` and `any` need at least one filter".into())
            }
            Filter::All(list) | Filter::Any(list) => list.iter().try_for_each(Filter::validate),
            Filter::Not(inner) => inner.validate(),
        }
    }
}

/// A CloudEvents attribute name: lowercase ASCII letters and digits.
pub fn valid_attribute(name: &str) -> bool {
    !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> Option<String> {
        match name {
            "type" => Some("com.shop.order_placed".into()),
            "source" => Some("/orders".into()),
            "region" => Some("eu".into()),
            _ => None,
        }
    }

    fn parse(toml_text: &str) -> Filter {
        #[derive(Deserialize)]
        struct W {
            f: Filter,
        }
        toml::from_str::<W>(toml_text).unwrap().f
    }

    #[test]
    fn dialects_match_as_specified() {
        let cases = [
            (r#"f = { exact = { type = "com.shop.order_placed" } }"#, true),
            (r#"f = { exact = { type = "order_placed" } }"#, false),
            (r#"f = { prefix = { type = "com.shop." } }"#, true),
            (
                r#"f = { suffix = { type = "_placed", source = "/orders" } }"#,
                true,
            ),
            (
                r#"f = { suffix = { type = "_placed", source = "/users" } }"#,
                false,
            ),
            (r#"f = { exact = { missing = "" } }"#, false),
            (r#"f = { not = { exact = { region = "us" } } }"#, true),
            (
                r#"f = { any = [{ exact = { region = "us" } }, { prefix = { source = "/ord" } }] }"#,
                true,
            ),
            (
                r#"f = { all = [{ exact = { region = "us" } }, { prefix = { source = "/ord" } }] }"#,
                false,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).matches(&event), want, "{text}");
        }
    }

    #[test]
    fn malformed_filters_are_explained() {
        for (text, says) in [
            (r#"f = { exact = {} }"#, "at least one attribute"),
            (r#"f = { prefix = { type = "" } }"#, "non-empty value"),
            (r#"f = { exact = { Type = "x" } }"#, "not a CloudEvents attribute"),
            (r#"f = { any = [] }"#, "at least one filter"),
        ] {
            let err = parse(text).validate().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
