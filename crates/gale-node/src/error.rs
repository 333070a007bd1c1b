//! The node's error type. Every variant maps to a stable user-facing code.

use gale_core::{Code, Error};
use gale_store::StoreError;
use gale_wasm::WasmError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A user-facing error with its code, produced by validation.
    #[error(transparent)]
    User(#[from] Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("function `{function}`: {source}")]
    Component {
        function: String,
        #[source]
        source: WasmError,
    },
    #[error(transparent)]
    Wasm(#[from] WasmError),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory: {0}")]
    DataDir(String),
    #[error("could not start the event delivery threads: {0}")]
    Threads(#[source] std::io::Error),
    /// A source could not read what it follows; the message says what is
    /// wrong and how to fix it.
    #[error("{0}")]
    Source(String),
    /// A sink could not send to its broker; the message says why and how
    /// to fix it.
    #[error("{0}")]
    Sink(String),
}

impl NodeError {
    /// The user-facing form: code, message, hint.
    pub fn to_user(&self) -> Error {
        match self {
            NodeError::User(e) => e.clone(),
            NodeError::Store(StoreError::Conflict { .. }) => Error::new(Code::Conflict, self.to_string())
                .with_hint("another change landed at the same time; run the command again"),
            NodeError::Store(StoreError::UnknownTopic(topic)) => {
                Error::new(Code::TopicNotFound, format!("no topic named `{topic}`")).with_hint(
                    "declare it under [topics] in the manifest, or create it with `gale topics create`",
                )
            }
            NodeError::Store(StoreError::UnknownBucket(bucket)) => {
                Error::new(Code::BucketNotFound, format!("no bucket named `{bucket}`"))
                    .with_hint("`gale buckets` lists them; `gale buckets create NAME` makes one")
            }
            NodeError::Store(StoreError::BucketNotEmpty(bucket)) => {
                Error::new(Code::Conflict, format!("bucket `{bucket}` is not empty")).with_hint(format!(
                    "delete its objects first, e.g. `aws s3 rm --recursive s3://{bucket}`"
                ))
            }
            NodeError::Store(StoreError::BadDigest(_) | StoreError::DigestMismatch { .. }) => {
                Error::new(Code::ArtifactInvalid, self.to_string())
            }
            NodeError::Store(_) | NodeError::DataDir(_) => Error::new(Code::Storage, self.to_string()),
            NodeError::Component { source, .. } => {
                let hint = match source {
                    WasmError::WrongWorld(_) => {
                        "Gale runs components that export wasi:http/incoming-handler (the wasi:http/proxy world), \
                         built e.g. with `cargo build --target wasm32-wasip2` and the wstd crate"
                    }
                    _ => "build a WebAssembly component, e.g. with `cargo build --target wasm32-wasip2`",
                };
                Error::new(Code::ComponentInvalid, self.to_string()).with_hint(hint)
            }
            NodeError::Wasm(_)
            | NodeError::Listen { .. }
            | NodeError::Threads(_)
            | NodeError::Source(_)
            | NodeError::Sink(_) => Error::new(Code::Internal, self.to_string()),
        }
    }
}

impl NodeError {
    /// No function of that name is deployed.
    pub fn function_not_found(function: &str) -> NodeError {
        Error::new(Code::FunctionNotFound, format!("no function named `{function}`"))
            .with_hint("`gale ls` lists the deployed functions")
            .into()
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
