//! The per-instance host state: what a guest can reach.

use crate::pipe::LogPipe;
use gale_core::FunctionSpec;
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    pub limits: StoreLimits,
    stdout: LogPipe,
    stderr: LogPipe,
    /// Publishing and key-value, for event invocations only.
    pub(crate) events: Option<crate::events::EventHost>,
    /// The CPU meter of the invocation under way.
    pub(crate) meter: Option<Arc<crate::cpu::Meter>>,
}

impl Host {
    pub fn new(spec: &Arc<FunctionSpec>, env: &[(String, String)], stdout: LogPipe, stderr: LogPipe) -> Host {
        // No preopened directories, no inherited environment or arguments, no
        // sockets (the builder denies them unless asked): only what is listed.
        let wasi = WasiCtx::builder()
            .envs(env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        Host {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound { spec: spec.clone() },
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(spec.memory.0 as usize)
                .trap_on_grow_failure(true)
                .build(),
            stdout,
            stderr,
            events: None,
            meter: None,
        }
    }

    /// Appends to the captured stderr (wasi:logging records).
    pub(crate) fn log_line(&self, line: &[u8]) {
        self.stderr.push(line);
    }

    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The manifest of the function this instance runs.
    pub(crate) fn spec(&self) -> &FunctionSpec {
        &self.hooks.spec
    }

    /// The pipes capturing this instance's stdout and stderr.
    pub fn logs(&self) -> (LogPipe, LogPipe) {
        (self.stdout.clone(), self.stderr.clone())
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP behind the function's allow-list.
struct Outbound {
    spec: Arc<FunctionSpec>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<HyperOutgoingBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
)>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<HyperOutgoingBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if !self.spec.allows_outbound(&authority) {
            tracing::debug!(authority, "outbound request denied by allow_outbound");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
