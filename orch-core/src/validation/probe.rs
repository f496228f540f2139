//! Probes and lifecycle handlers.

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, Probe, TCPSocketAction,
};

use super::{Errors, Path, nonnegative, q, validate_port_num, validate_port_num_or_name};

const HTTP_SCHEMES: &[&str] = &["HTTP", "HTTPS"];

pub(super) fn validate_probes(ctr: &Container, path: &Path, errs: &mut Errors) {
    let probes = [
        ("livenessProbe", &ctr.liveness_probe),
        ("readinessProbe", &ctr.readiness_probe),
        ("startupProbe", &ctr.startup_probe),
    ];
    for (field, probe) in probes {
        let Some(probe) = probe else {
            continue;
        };
        let p = path.child(field);
        validate_probe(probe, &p, errs);
        match field {
            "readinessProbe" => {
                if let Some(grace) = probe.termination_grace_period_seconds {
                    errs.invalid(
                        &p.child("terminationGracePeriodSeconds"),
                        grace,
                        "must not be set for readinessProbes",
                    );
                }
            }
            _ => {
                if let Some(threshold) = probe.success_threshold
                    && threshold != 1
                {
                    errs.invalid(&p.child("successThreshold"), threshold, "must be 1");
                }
            }
        }
    }
}

fn validate_probe(probe: &Probe, path: &Path, errs: &mut Errors) {
    let handlers = [
        ("exec", probe.exec.is_some()),
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("grpc", probe.grpc.is_some()),
    ];
    if let Some(field) = errs.one_of(path, &handlers, "handler type")
        && !validate_shared_handler(
            field,
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
            path,
            errs,
        )
        && let Some(grpc) = &probe.grpc
    {
        validate_port_num(grpc.port, &path.child("grpc").child("port"), errs);
    }
    nonnegative(
        probe.initial_delay_seconds.map(i64::from),
        &path.child("initialDelaySeconds"),
        errs,
    );
    let positive = [
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (field, value) in positive {
        if let Some(v) = value
            && v < 1
        {
            errs.invalid(&path.child(field), v, "must be greater than or equal to 1");
        }
    }
    if let Some(grace) = probe.termination_grace_period_seconds
        && grace <= 0
    {
        errs.invalid(
            &path.child("terminationGracePeriodSeconds"),
            grace,
            "must be greater than 0",
        );
    }
}

/// The handler kinds probes and lifecycle hooks share (`exec`, `httpGet`,
/// `tcpSocket`); false when `field` names another kind.
fn validate_shared_handler(
    field: &str,
    exec: Option<&ExecAction>,
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    path: &Path,
    errs: &mut Errors,
) -> bool {
    match field {
        "exec" => {
            if let Some(exec) = exec {
                validate_exec(exec, &path.child("exec"), errs);
            }
        }
        "httpGet" => {
            if let Some(http) = http_get {
                validate_http_get(http, &path.child("httpGet"), errs);
            }
        }
        "tcpSocket" => {
            if let Some(tcp) = tcp_socket {
                validate_port_num_or_name(&tcp.port, &path.child("tcpSocket").child("port"), errs);
            }
        }
        _ => return false,
    }
    true
}

fn validate_exec(exec: &ExecAction, path: &Path, errs: &mut Errors) {
    if exec.command.as_ref().is_none_or(Vec::is_empty) {
        errs.required(&path.child("command"), "");
    }
}

fn validate_http_get(http: &HTTPGetAction, path: &Path, errs: &mut Errors) {
    if http.path.as_deref() == Some("") {
        errs.required(&path.child("path"), "");
    }
    validate_port_num_or_name(&http.port, &path.child("port"), errs);
    if let Some(scheme) = http.scheme.as_deref()
        && !HTTP_SCHEMES.contains(&scheme)
    {
        errs.not_supported(&path.child("scheme"), scheme, HTTP_SCHEMES);
    }
    for header in http.http_headers.iter().flatten() {
        let valid = !header.name.is_empty()
            && header
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            errs.invalid(
                &path.child("httpHeaders"),
                q(&header.name),
                "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')",
            );
        }
    }
}

pub(super) fn validate_lifecycle(
    lifecycle: &Lifecycle,
    grace_period: Option<i64>,
    path: &Path,
    errs: &mut Errors,
) {
    let handlers = [
        ("postStart", &lifecycle.post_start),
        ("preStop", &lifecycle.pre_stop),
    ];
    for (field, handler) in handlers {
        if let Some(handler) = handler {
            validate_lifecycle_handler(handler, grace_period, &path.child(field), errs);
        }
    }
}

fn validate_lifecycle_handler(
    handler: &LifecycleHandler,
    grace_period: Option<i64>,
    path: &Path,
    errs: &mut Errors,
) {
    let set = [
        ("exec", handler.exec.is_some()),
        ("httpGet", handler.http_get.is_some()),
        ("tcpSocket", handler.tcp_socket.is_some()),
        ("sleep", handler.sleep.is_some()),
    ];
    if let Some(field) = errs.one_of(path, &set, "handler type")
        && !validate_shared_handler(
            field,
            handler.exec.as_ref(),
            handler.http_get.as_ref(),
            handler.tcp_socket.as_ref(),
            path,
            errs,
        )
        && let (Some(sleep), Some(grace)) = (&handler.sleep, grace_period)
        && (sleep.seconds < 0 || sleep.seconds > grace)
    {
        errs.invalid(
            &path.child("sleep"),
            sleep.seconds,
            &format!("must be non-negative and less than terminationGracePeriodSeconds ({grace})"),
        );
    }
}
