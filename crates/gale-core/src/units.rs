//! Human durations ("250ms", "5s", "1m") and sizes ("64MiB", "6MB") in the
//! manifest, with error messages that show an example of the right form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A duration written the human way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"500ms\", \"5s\" or \"2m\""))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written the human way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanSize(pub u64);

impl std::str::FromStr for HumanSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| HumanSize(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?} ({e}); write it like \"64MiB\" or \"512KiB\""))
    }
}

impl std::fmt::Display for HumanSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// Serialised as the exact number of bytes (the display form rounds);
/// read from either a number or a human string.
impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(HumanSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("2m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(120));
        let err = "5 parsecs".parse::<HumanDuration>().unwrap_err();
        assert!(err.contains("\"5s\""), "{err}");
    }

    #[test]
    fn sizes_parse_and_reject() {
        assert_eq!("64MiB".parse::<HumanSize>().unwrap().0, 64 << 20);
        assert_eq!("1KB".parse::<HumanSize>().unwrap().0, 1000);
        assert!("lots".parse::<HumanSize>().is_err());
        assert_eq!(HumanSize(64 << 20).to_string(), "64.0 MiB");
    }

    #[test]
    fn sizes_round_trip_exactly() {
        let size: HumanSize = "6MB".parse().unwrap();
        let json = serde_json::to_string(&size).unwrap();
        assert_eq!(json, "6000000");
        assert_eq!(serde_json::from_str::<HumanSize>(&json).unwrap(), size);
        assert_eq!(serde_json::from_str::<HumanSize>("\"1KiB\"").unwrap().0, 1024);
    }
}
