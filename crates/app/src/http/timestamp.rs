//! RFC 3339 timestamps in response bodies, written as `time::serde::rfc3339` writes them but formatted into a
//! stack buffer: `time`'s serializer formats each into a new `String`, and every user in an answer has two.

use serde::Serializer;
use serde::ser::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The longest RFC 3339 text `time` writes (`9999-12-31T23:59:59.999999999-23:59`), with room to spare.
const MAX_LEN: usize = 64;

/// Serializes `at` as RFC 3339; for `#[serde(serialize_with = "…")]`.
pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0_u8; MAX_LEN];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    at.format_into(&mut cursor, &Rfc3339).map_err(S::Error::custom)?;
    let written = usize::try_from(cursor.position()).map_err(S::Error::custom)?;
    let text = std::str::from_utf8(&buffer[..written]).map_err(S::Error::custom)?;
    serializer.serialize_str(text)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use time::macros::datetime;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "super::serialize")] time::OffsetDateTime);

    #[derive(Serialize)]
    struct Times(#[serde(with = "time::serde::rfc3339")] time::OffsetDateTime);

    #[test]
    fn the_text_is_times_own() {
        for at in [
            datetime!(2026-12-01 21:42:08 UTC),
            datetime!(2026-12-01 21:42:08.123456789 UTC),
            datetime!(2024-02-29 00:00:00.1 +05:30),
            datetime!(9999-12-31 23:59:59.999999999 -23:59),
            datetime!(0000-01-01 00:00:00 UTC),
        ] {
            let ours = serde_json::to_string(&Ours(at)).expect("ours");
            assert_eq!(ours, serde_json::to_string(&Times(at)).expect("time's"), "{at}");
        }
    }
}
