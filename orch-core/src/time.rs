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
