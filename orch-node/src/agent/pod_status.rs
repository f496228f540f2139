//! A pod's status from what its containers are doing: phase, conditions
//! and containerStatuses (state, lastState, restartCount), with the
//! kubelet's reasons (ContainerCreating, ErrImagePull, CrashLoopBackOff,
//! Completed, Error, OOMKilled...).

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::runtime::shim::protocol::{ContainerState, Status};

/// What the agent knows of one of the pod's containers.
#[derive(Clone, Debug, Default)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// The instance now (the latest attempt).
    pub current: Option<ContainerState>,
    /// The instance before it.
    pub previous: Option<ContainerState>,
    /// Why it is not running, when it is not (reason, message).
    pub waiting: Option<(String, String)>,
    /// Exited and not to be started again (restart policy).
    pub done: bool,
    pub restart_count: i32,
    /// What the readiness (and startup) probes say, when it has one.
    pub ready: Option<bool>,
}

/// Whole seconds, as a `Time` goes over the wire: a status built twice
/// from the same facts must compare equal to what the API stored, or it
/// would be written again on every pass.
pub fn time(seconds: f64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::new(seconds.floor() as i64, 0)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn terminated(state: &ContainerState) -> ContainerStateTerminated {
    let code = state.exit_code.unwrap_or(0);
    ContainerStateTerminated {
        exit_code: code,
        signal: state.signal,
        reason: Some(
            if state.oom_killed {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into(),
        ),
        started_at: state.started_at.map(time),
        finished_at: state.finished_at.map(time),
        container_id: Some(format!("orch://{}", state.id)),
        message: None,
    }
}

fn k8s_state(state: &ContainerState) -> K8sState {
    match state.status {
        Status::Running => K8sState {
            running: Some(ContainerStateRunning {
                started_at: state.started_at.map(time),
            }),
            ..K8sState::default()
        },
        Status::Exited => K8sState {
            terminated: Some(terminated(state)),
            ..K8sState::default()
        },
        Status::Created => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..K8sState::default()
        },
    }
}

pub fn container_status(record: &ContainerRecord) -> ContainerStatus {
    let state = match (&record.waiting, &record.current) {
        (Some((reason, message)), _) => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..K8sState::default()
        },
        (None, Some(current)) => k8s_state(current),
        (None, None) => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..K8sState::default()
        },
    };
    // While waiting to restart, the instance that exited is the last state.
    let last = if record.waiting.is_some()
        && record
            .current
            .as_ref()
            .is_some_and(|c| c.status == Status::Exited)
    {
        record.current.as_ref()
    } else {
        record.previous.as_ref()
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: record.name.clone(),
        image: record.image.clone(),
        image_id: record.image_id.clone(),
        container_id: record.current.as_ref().map(|c| format!("orch://{}", c.id)),
        ready: running && record.ready.unwrap_or(true),
        started: Some(running),
        restart_count: record.restart_count,
        state: Some(state),
        last_state: last
            .filter(|l| l.status == Status::Exited)
            .map(|l| K8sState {
                terminated: Some(terminated(l)),
                ..K8sState::default()
            }),
        ..ContainerStatus::default()
    }
}

fn condition(type_: &str, status: bool, previous: Option<&PodStatus>, now: &Time) -> PodCondition {
    let status = if status { "True" } else { "False" };
    let before = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: match before {
            Some(before) if before.status == status => before.last_transition_time.clone(),
            _ => Some(now.clone()),
        },
        ..PodCondition::default()
    }
}

/// The pod's status: `previous` (as stored) keeps what the agent does not
/// decide (PodScheduled, startTime once set). `init` are the init
/// containers, in order.
pub fn pod_status(
    pod: &Pod,
    init: &[ContainerRecord],
    records: &[ContainerRecord],
    host_ip: &str,
    now: Time,
) -> PodStatus {
    let previous = pod.status.as_ref();
    let init_succeeded = |r: &ContainerRecord| {
        r.current
            .as_ref()
            .is_some_and(|c| c.status == Status::Exited && c.exit_code == Some(0))
    };
    let initialized = init.iter().all(init_succeeded);
    // An init container that failed and will not be restarted fails the pod.
    let init_failed = init.iter().any(|r| r.done && !init_succeeded(r));
    let init_statuses: Vec<ContainerStatus> = init
        .iter()
        .map(|r| {
            let mut status = container_status(r);
            status.ready = init_succeeded(r);
            status
        })
        .collect();
    let statuses: Vec<ContainerStatus> = records.iter().map(container_status).collect();
    let all_done = !records.is_empty() && records.iter().all(|r| r.done);
    let any_running = statuses
        .iter()
        .any(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()));
    let any_started = records
        .iter()
        .any(|r| r.current.is_some() || r.restart_count > 0);
    let phase = if init_failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if all_done {
        let all_succeeded = records
            .iter()
            .all(|r| r.current.as_ref().and_then(|c| c.exit_code) == Some(0));
        if all_succeeded { "Succeeded" } else { "Failed" }
    } else if any_running || any_started {
        "Running"
    } else {
        "Pending"
    };
    let ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let mut conditions: Vec<PodCondition> = previous
        .and_then(|p| p.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !["Initialized", "ContainersReady", "Ready"].contains(&c.type_.as_str()))
        .collect();
    conditions.push(condition("Initialized", initialized, previous, &now));
    conditions.push(condition("ContainersReady", ready, previous, &now));
    conditions.push(condition("Ready", ready, previous, &now));
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()).filter(|ip| !ip.is_empty()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: host_ip.to_string(),
        }])
        .filter(|_| !host_ip.is_empty()),
        pod_ip: previous.and_then(|p| p.pod_ip.clone()),
        pod_ips: previous.and_then(|p| p.pod_ips.clone()),
        start_time: previous.and_then(|p| p.start_time.clone()).or(Some(now)),
        container_statuses: Some(statuses),
        init_container_statuses: Some(init_statuses).filter(|s| !s.is_empty()),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, status: Status, code: Option<i32>) -> ContainerState {
        ContainerState {
            id: id.into(),
            status,
            pid: Some(1),
            exit_code: code,
            signal: None,
            created_at: 100.0,
            started_at: Some(101.5),
            finished_at: code.map(|_| 102.5),
            oom_killed: false,
        }
    }

    fn pod() -> Pod {
        serde_yaml_ng::from_str("metadata: {name: p}\nspec: {containers: [{name: c, image: x}]}")
            .expect("pod")
    }

    #[test]
    fn running_then_crash_looping_then_done() {
        let running = ContainerRecord {
            name: "c".into(),
            current: Some(instance("c-0", Status::Running, None)),
            ..ContainerRecord::default()
        };
        let status = pod_status(&pod(), &[], &[running], "10.0.0.1", time(200.0));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        let looping = ContainerRecord {
            name: "c".into(),
            current: Some(instance("c-1", Status::Exited, Some(1))),
            previous: Some(instance("c-0", Status::Exited, Some(1))),
            waiting: Some(("CrashLoopBackOff".into(), "back-off 20s".into())),
            restart_count: 1,
            ..ContainerRecord::default()
        };
        let status = pod_status(&pod(), &[], &[looping], "10.0.0.1", time(200.0));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let c = &status.container_statuses.expect("statuses")[0];
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(c.restart_count, 1);
        let done = ContainerRecord {
            name: "c".into(),
            current: Some(instance("c-0", Status::Exited, Some(0))),
            done: true,
            ..ContainerRecord::default()
        };
        let status = pod_status(&pod(), &[], &[done], "10.0.0.1", time(200.0));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let terminated = status.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|s| s.terminated)
            .expect("terminated");
        assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn times_survive_the_round_trip_through_the_api() {
        let status = pod_status(
            &pod(),
            &[],
            &[ContainerRecord {
                name: "c".into(),
                current: Some(instance("c-0", Status::Running, None)),
                ..ContainerRecord::default()
            }],
            "10.0.0.1",
            time(200.7),
        );
        let stored: PodStatus =
            serde_json::from_value(serde_json::to_value(&status).expect("encode")).expect("decode");
        assert_eq!(
            stored, status,
            "a status that was stored must equal one built again"
        );
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let app = ContainerRecord {
            name: "c".into(),
            waiting: Some(("PodInitializing".into(), String::new())),
            ..ContainerRecord::default()
        };
        let running_init = ContainerRecord {
            name: "init".into(),
            current: Some(instance("init-0", Status::Running, None)),
            ..ContainerRecord::default()
        };
        let status = pod_status(
            &pod(),
            std::slice::from_ref(&running_init),
            std::slice::from_ref(&app),
            "",
            time(5.0),
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let initialized = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Initialized")
            .expect("Initialized");
        assert_eq!(initialized.status, "False");
        assert_eq!(
            status.init_container_statuses.as_ref().map(Vec::len),
            Some(1)
        );
        let failed_init = ContainerRecord {
            name: "init".into(),
            current: Some(instance("init-0", Status::Exited, Some(2))),
            done: true,
            ..ContainerRecord::default()
        };
        let status = pod_status(&pod(), &[failed_init], &[app], "", time(5.0));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn a_container_never_started_keeps_the_pod_pending() {
        let pulling = ContainerRecord {
            name: "c".into(),
            waiting: Some(("ErrImagePull".into(), "manifest unknown".into())),
            ..ContainerRecord::default()
        };
        let status = pod_status(&pod(), &[], &[pulling], "10.0.0.1", time(200.0));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let c = &status.container_statuses.expect("statuses")[0];
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.message.as_deref(), Some("manifest unknown"));
    }
}
