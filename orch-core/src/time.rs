//! The current time as Kubernetes' timestamp types hold it. jiff is built
//! without its own clock here, so the time comes from std.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

/// Now, to the nanosecond.
pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::new(
        since_epoch.as_secs() as i64,
        since_epoch.subsec_nanos() as i32,
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, to the microsecond (a `MicroTime`'s precision: Leases' times).
pub fn now_micro() -> MicroTime {
    let now = now();
    MicroTime(
        Timestamp::new(now.as_second(), now.subsec_nanosecond() / 1_000 * 1_000)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// A duration as kubectl's flags take it (Go's durations, in whole
/// seconds): `30s`, `5m`, `1h30m`; a unit is required except for `0`.
/// `flag` names it in the error.
pub fn parse_duration(flag: &str, text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{flag} {text:?}: expected a duration like 30s, 5m or 1h30m");
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_like_kubectls() {
        assert_eq!(
            parse_duration("--since", "1h30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("--timeout", "0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("--timeout", "0"), Ok(Duration::ZERO));
        assert!(
            parse_duration("--since", "90").is_err(),
            "a unit is required"
        );
        let error = parse_duration("--since", "5d").expect_err("days");
        assert!(error.starts_with("--since \"5d\""), "{error}");
        assert!(parse_duration("--since", "m5").is_err());
        assert!(parse_duration("--since", "").is_err());
    }
}
