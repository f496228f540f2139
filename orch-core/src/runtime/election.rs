//! Leader election over a Lease (client-go's leaderelection): one holder
//! at a time runs the controllers. The holder renews the lease every retry
//! period; the others take it over once it has not changed for a whole
//! lease duration, judged by their own clock from when they last saw it
//! change (no clock agreement between machines is needed). Every write is
//! guarded by the lease's resourceVersion, so two candidates never both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::api::{ApiClient, ApiError};
use crate::object::{Kind, Object};

/// Timings, with kube-controller-manager's defaults.
#[derive(Clone, Copy, Debug)]
pub struct ElectionTimings {
    /// How long a lease that stopped changing is honoured.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try and the holder renews.
    pub retry_period: Duration,
}

impl Default for ElectionTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Which lease, and who is asking.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
}

fn now() -> MicroTime {
    crate::time::now_micro()
}

/// What was last seen of the lease, and when (by this process's clock).
struct Observed {
    record: (Option<String>, Option<String>),
    at: Instant,
}

/// Competes for the lease forever; `leading` says whether this candidate
/// holds it. Losing it (a renewal failing past the deadline) sets false.
pub async fn run(
    mut client: ApiClient,
    candidate: Candidate,
    timings: ElectionTimings,
    leading: tokio::sync::watch::Sender<bool>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    loop {
        // A holder's attempt may not outlast its renew deadline (a hung
        // call must not keep it leading past the point where others may
        // take over); a candidate's is bounded by the lease duration.
        let budget = match last_renewed {
            Some(at) => timings.renew_deadline.saturating_sub(at.elapsed()),
            None => timings.lease_duration,
        };
        // A renewal counts from when it was sent, not when it was answered.
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            budget,
            try_acquire_or_renew(&mut client, &candidate, &timings, &mut observed),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(format!(
                "no answer within {budget:?}"
            )))
        });
        match attempt {
            Ok(true) => {
                if !*leading.borrow() {
                    tracing::info!(identity = %candidate.identity, lease = %candidate.lease, "became the leader");
                }
                last_renewed = Some(sent);
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(identity = %candidate.identity, "lost the lease to another candidate");
                }
                last_renewed = None;
                leading.send_replace(false);
            }
            Err(error) => {
                tracing::warn!(identity = %candidate.identity, %error, "leader election");
                if last_renewed.is_some_and(|at| at.elapsed() >= timings.renew_deadline) {
                    tracing::warn!(identity = %candidate.identity, "renewal deadline passed; stepping down");
                    last_renewed = None;
                    leading.send_replace(false);
                }
            }
        }
        // A holder wakes no later than its renew deadline, to step down on
        // time if the renewals keep failing.
        let pause = match last_renewed {
            Some(at) => timings
                .retry_period
                .min(timings.renew_deadline.saturating_sub(at.elapsed())),
            None => timings.retry_period,
        };
        tokio::time::sleep(pause).await;
    }
}

/// One round: true when this candidate holds the lease afterwards.
async fn try_acquire_or_renew(
    client: &mut ApiClient,
    candidate: &Candidate,
    timings: &ElectionTimings,
    observed: &mut Option<Observed>,
) -> Result<bool, ApiError> {
    let current = match client
        .get(Kind::Lease, Some(&candidate.namespace), &candidate.lease)
        .await
    {
        Ok(Object::Lease(lease)) => *lease,
        Ok(_) => return Err(ApiError::Internal("the server sent a non-Lease".into())),
        Err(ApiError::NotFound(_)) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(candidate.lease.clone()),
                    namespace: Some(candidate.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(candidate.identity.clone()),
                    lease_duration_seconds: Some(timings.lease_duration.as_secs() as i32),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match client.create(&Object::Lease(Box::new(lease)), false).await {
                Ok(_) => Ok(true),
                Err(ApiError::AlreadyExists(_)) => Ok(false),
                Err(error) => Err(error),
            };
        }
        Err(error) => return Err(error),
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
    );
    if observed.as_ref().is_none_or(|seen| seen.record != record) {
        *observed = Some(Observed {
            record,
            at: Instant::now(),
        });
    }
    let mine = holder.as_deref() == Some(candidate.identity.as_str());
    let expired = observed
        .as_ref()
        .is_some_and(|seen| seen.at.elapsed() > timings.lease_duration);
    if !mine && holder.is_some() && !expired {
        return Ok(false);
    }
    let mut lease = current;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if !mine {
        spec.holder_identity = Some(candidate.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(timings.lease_duration.as_secs() as i32);
    spec.renew_time = Some(now());
    // Guarded by the resourceVersion read above: a rival's write in
    // between makes this a conflict, not a second leader.
    match client.update(&Object::Lease(Box::new(lease)), false).await {
        Ok(_) => Ok(true),
        Err(ApiError::Conflict(_)) if !mine => Ok(false),
        Err(error) => Err(error),
    }
}
