//! Serde for durations written the way people say them (`"30s"`, `"2m"`, `"500ms"`), shared
//! by every module's settings so each config section reads and reports them alike.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// As humantime text.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// From humantime text, with an error that shows what to write.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}): write e.g. \"30s\", \"2m\" or \"500ms\""
        ))
    })
}
