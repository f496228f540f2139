//! API errors and how they travel: each is a gRPC status code standing for
//! one of Kubernetes' reasons, with a message naming the object and why.

use thiserror::Error;
use tonic::{Code, Status};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ApiError {
    /// 404 NotFound.
    #[error("{0}")]
    NotFound(String),
    /// 409 AlreadyExists.
    #[error("{0}")]
    AlreadyExists(String),
    /// 409 Conflict: a stale resourceVersion.
    #[error("{0}")]
    Conflict(String),
    /// 422 Invalid (field errors) or 400 BadRequest.
    #[error("{0}")]
    Invalid(String),
    /// 403 Forbidden, e.g. a create in a terminating namespace.
    #[error("{0}")]
    Forbidden(String),
    /// 410 Gone: a watch from a compacted revision; relist.
    #[error("{0}")]
    Gone(String),
    /// 401 Unauthorized.
    #[error("{0}")]
    Unauthenticated(String),
    /// 503: no replica could serve the call (no quorum, all down).
    #[error("{0}")]
    Unavailable(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn to_status(&self) -> Status {
        let (code, message) = match self {
            ApiError::NotFound(m) => (Code::NotFound, m),
            ApiError::AlreadyExists(m) => (Code::AlreadyExists, m),
            ApiError::Conflict(m) => (Code::Aborted, m),
            ApiError::Invalid(m) => (Code::InvalidArgument, m),
            ApiError::Forbidden(m) => (Code::PermissionDenied, m),
            ApiError::Gone(m) => (Code::OutOfRange, m),
            ApiError::Unauthenticated(m) => (Code::Unauthenticated, m),
            ApiError::Unavailable(m) => (Code::Unavailable, m),
            ApiError::Internal(m) => (Code::Internal, m),
        };
        Status::new(code, message.clone())
    }

    pub fn from_status(status: &Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => ApiError::NotFound(message),
            Code::AlreadyExists => ApiError::AlreadyExists(message),
            Code::Aborted => ApiError::Conflict(message),
            Code::InvalidArgument => ApiError::Invalid(message),
            Code::PermissionDenied => ApiError::Forbidden(message),
            Code::OutOfRange => ApiError::Gone(message),
            Code::Unauthenticated => ApiError::Unauthenticated(message),
            Code::Unavailable | Code::DeadlineExceeded => ApiError::Unavailable(message),
            _ => ApiError::Internal(format!("{:?}: {message}", status.code())),
        }
    }

    /// Kubernetes' reason, as `kubectl` names it.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Gone(_) => "Expired",
            ApiError::Unauthenticated(_) => "Unauthorized",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_wire() {
        for error in [
            ApiError::NotFound("a".into()),
            ApiError::AlreadyExists("b".into()),
            ApiError::Conflict("c".into()),
            ApiError::Invalid("d".into()),
            ApiError::Forbidden("e".into()),
            ApiError::Gone("f".into()),
            ApiError::Unauthenticated("g".into()),
            ApiError::Unavailable("h".into()),
        ] {
            assert_eq!(ApiError::from_status(&error.to_status()), error);
        }
    }
}
