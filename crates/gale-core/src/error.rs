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
    /// No such endpoint in the API.
    EndpointNotFound,
    /// The endpoint exists but does not take this method (the answer's
    /// `Allow` header lists the methods it does take).
    MethodNotAllowed,
    /// The request body is of a content type the endpoint does not take.
    UnsupportedMediaType,
    /// The request body is larger than the endpoint takes.
    PayloadTooLarge,
    /// No stored artifact has that digest.
    ArtifactNotFound,
    /// No publish token has that id.
    TokenNotFound,
    /// No asynchronous invocation has that id.
    InvocationNotFound,
    /// No such bucket.
    BucketNotFound,
    /// No S3 key has that id.
    KeyNotFound,
    /// The storage engine failed.
    Storage,
    /// Something unexpected inside the node.
    Internal,
}

impl Code {
    /// Every code, in the order of the enum (the OpenAPI document lists
    /// the same set; a test keeps the two equal).
    pub const ALL: &[Code] = &[
        Code::ManifestInvalid,
        Code::RouteConflict,
        Code::ComponentInvalid,
        Code::ArtifactInvalid,
        Code::FunctionNotFound,
        Code::VersionNotFound,
        Code::FunctionOwned,
        Code::TopicNotFound,
        Code::EventInvalid,
        Code::EventTooLarge,
        Code::Conflict,
        Code::Unauthorized,
        Code::Forbidden,
        Code::BadRequest,
        Code::EndpointNotFound,
        Code::MethodNotAllowed,
        Code::UnsupportedMediaType,
        Code::PayloadTooLarge,
        Code::ArtifactNotFound,
        Code::TokenNotFound,
        Code::InvocationNotFound,
        Code::BucketNotFound,
        Code::KeyNotFound,
        Code::Storage,
        Code::Internal,
    ];

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
            Code::EndpointNotFound => "endpoint_not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::PayloadTooLarge => "payload_too_large",
            Code::ArtifactNotFound => "artifact_not_found",
            Code::TokenNotFound => "token_not_found",
            Code::InvocationNotFound => "invocation_not_found",
            Code::BucketNotFound => "bucket_not_found",
            Code::KeyNotFound => "key_not_found",
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
            Code::EventTooLarge | Code::PayloadTooLarge => 413,
            Code::MethodNotAllowed => 405,
            Code::UnsupportedMediaType => 415,
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::FunctionNotFound
            | Code::VersionNotFound
            | Code::TopicNotFound
            | Code::EndpointNotFound
            | Code::ArtifactNotFound
            | Code::TokenNotFound
            | Code::InvocationNotFound
            | Code::BucketNotFound
            | Code::KeyNotFound => 404,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The position of `code` in [`Code::ALL`]. A match without a wildcard:
    /// a new code does not compile until it is listed here, and the test
    /// below then fails until it is in `ALL` too.
    fn position(code: Code) -> usize {
        match code {
            Code::ManifestInvalid => 0,
            Code::RouteConflict => 1,
            Code::ComponentInvalid => 2,
            Code::ArtifactInvalid => 3,
            Code::FunctionNotFound => 4,
            Code::VersionNotFound => 5,
            Code::FunctionOwned => 6,
            Code::TopicNotFound => 7,
            Code::EventInvalid => 8,
            Code::EventTooLarge => 9,
            Code::Conflict => 10,
            Code::Unauthorized => 11,
            Code::Forbidden => 12,
            Code::BadRequest => 13,
            Code::EndpointNotFound => 14,
            Code::MethodNotAllowed => 15,
            Code::UnsupportedMediaType => 16,
            Code::PayloadTooLarge => 17,
            Code::ArtifactNotFound => 18,
            Code::TokenNotFound => 19,
            Code::InvocationNotFound => 20,
            Code::BucketNotFound => 21,
            Code::KeyNotFound => 22,
            Code::Storage => 23,
            Code::Internal => 24,
        }
    }

    #[test]
    fn every_code_is_listed_once_and_spelled_as_on_the_wire() {
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(position(*code), i, "{code} is out of place in Code::ALL");
            let wire = serde_json::to_string(code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
        // `Internal` stays last, so this is the number of codes.
        assert_eq!(
            Code::ALL.len(),
            position(Code::Internal) + 1,
            "a code is missing from Code::ALL"
        );
    }
}
