//! Stable error codes.
//!
//! A code is part of Gale's public interface: scripts match on it, docs refer
//! to it, so once published a code keeps its meaning. The message says what
//! was wrong; the hint says how to fix it.

use serde::{Deserialize, Serialize};

/// Every error a user can see, by stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The manifest could not be read or is not valid.
    ManifestInvalid,
    /// Two routes overlap, or a route is reserved.
    RouteConflict,
    /// The component is not valid WebAssembly or not of the `wasi:http/proxy` world.
    ComponentInvalid,
    /// An artifact's content does not match its digest, or it is missing.
    ArtifactInvalid,
    /// No such function.
    FunctionNotFound,
    /// No such version of a function.
    VersionNotFound,
    /// The function belongs to another app.
    FunctionOwned,
    /// No such topic.
    TopicNotFound,
    /// A CloudEvent is malformed or lacks a required attribute.
    EventInvalid,
    /// An event (or a batch) is larger than the node accepts.
    EventTooLarge,
    /// A concurrent change won the race; retry.
    Conflict,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// The token is valid but may not do this.
    Forbidden,
    /// The request itself was malformed.
    BadRequest,
    /// The storage engine failed.
    Storage,
    /// Something unexpected inside the node.
    Internal,
}

impl Code {
    /// The code as it appears on the wire and in docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ManifestInvalid => "manifest_invalid",
            Code::RouteConflict => "route_conflict",
            Code::ComponentInvalid => "component_invalid",
            Code::ArtifactInvalid => "artifact_invalid",
            Code::FunctionNotFound => "function_not_found",
            Code::VersionNotFound => "version_not_found",
            Code::TopicNotFound => "topic_not_found",
            Code::EventInvalid => "event_invalid",
            Code::EventTooLarge => "event_too_large",
            Code::FunctionOwned => "function_owned",
            Code::Conflict => "conflict",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::BadRequest => "bad_request",
            Code::Storage => "storage",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status the admin API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::ManifestInvalid
            | Code::RouteConflict
            | Code::ComponentInvalid
            | Code::ArtifactInvalid
            | Code::EventInvalid
            | Code::BadRequest => 400,
            Code::EventTooLarge => 413,
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::FunctionNotFound | Code::VersionNotFound | Code::TopicNotFound => 404,
            Code::FunctionOwned | Code::Conflict => 409,
            Code::Storage | Code::Internal => 500,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-facing error: a stable code, what was wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Renders code, message and hint for a terminal.
    pub fn render(&self) -> String {
        match &self.hint {
            Some(hint) => format!("error[{}]: {}\n  hint: {}", self.code, self.message, hint),
            None => format!("error[{}]: {}", self.code, self.message),
        }
    }
}

/// The JSON body of every error answer of the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: Error,
}
