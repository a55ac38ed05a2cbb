//! Human durations for command-line flags.

use std::time::Duration;

use crate::CoreError;

/// Parses `500ms`, `3s`, `2m`, `1h30m`; a bare number means seconds.
pub fn parse_duration(input: &str) -> Result<Duration, CoreError> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s
            .parse()
            .map_err(|e: std::num::ParseIntError| CoreError::Duration {
                input: input.to_string(),
                reason: e.to_string(),
            })?;
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| CoreError::Duration {
        input: input.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
