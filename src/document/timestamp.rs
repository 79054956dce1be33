//! RFC 3339 timestamps as the documents hold them: one canonical text per
//! instant, so one result has one id whichever way its timestamp was written.

use std::time::{Duration, SystemTime};

use super::DocumentError;

/// Latest instant an RFC 3339 timestamp can hold, 9999-12-31T23:59:59.999Z
/// (formatting anything later would panic).
pub(super) const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// Parses an RFC 3339 UTC timestamp (`Z`, or an offset of `+00:00` /
/// `-00:00`; any number of fractional digits) and returns the instant with
/// its canonical text: `YYYY-MM-DDTHH:MM:SS.mmmZ`, truncated to the
/// millisecond. One instant has one canonical text, hence one document id.
pub fn canonical_timestamp(text: &str) -> Result<(SystemTime, String), DocumentError> {
    let bad = || DocumentError::BadTimestamp(text.to_owned());
    let utc = match text
        .strip_suffix("+00:00")
        .or_else(|| text.strip_suffix("-00:00"))
    {
        Some(head) => std::borrow::Cow::Owned(format!("{head}Z")),
        None => std::borrow::Cow::Borrowed(text),
    };
    let at = humantime::parse_rfc3339(&utc).map_err(|_| bad())?;
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis();
    if ms > u128::from(MAX_RFC3339_MS) {
        return Err(bad());
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64);
    Ok((at, humantime::format_rfc3339_millis(at).to_string()))
}
