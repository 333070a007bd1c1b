//! Requests served over `wasi:http`: the guest's `incoming-handler` is
//! called with the request and sets its response through an outparam,
//! possibly before it has finished (a streamed body, work after the
//! answer). [`serve`] polls the guest on the caller's task until it
//! answers, ends, or moves to the lane ([`crate::cpu`]); components that
//! export `gale:http/handler` are served whole instead ([`crate::whole`]).

use crate::{
    AbortOnDrop, Answer, Completion, CpuUse, Elapsed, Failure, Finish, Kind, Prepared, Warm, cpu, lock,
    outcome_of, trap_failure, whole, within,
};
use bytes::Bytes;
use gale_core::api::Outcome;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

type GuestResponse = Result<hyper::Response<HyperOutgoingBody>, ErrorCode>;

/// What the guest answered, put here by its `response-outparam.set`. That
/// call happens inside the guest, which `serve` polls itself until the
/// guest answers or moves to the lane; only then does `serve` wait to be
/// woken.
#[derive(Default)]
pub(crate) struct AnswerSlot {
    /// The status of the response the guest set (0: none yet).
    pub(crate) status: AtomicU16,
    /// Why the guest answered with an error instead of a response.
    pub(crate) error: Mutex<Option<String>>,
    /// The answer until `serve` takes it, and who waits for it.
    response: Mutex<(Option<GuestResponse>, Option<std::task::Waker>)>,
}

impl AnswerSlot {
    fn set(&self, response: GuestResponse) {
        match &response {
            Ok(r) => self.status.store(r.status().as_u16(), Relaxed),
            Err(code) => *lock(&self.error) = Some(format!("the guest answered with an error: {code:?}")),
        }
        let mut slot = lock(&self.response);
        slot.0 = Some(response);
        if let Some(waker) = slot.1.take() {
            waker.wake();
        }
    }

    fn take(&self) -> Option<GuestResponse> {
        lock(&self.response).0.take()
    }

    /// The answer, or a wake-up once it is set.
    fn poll_take(&self, cx: &mut std::task::Context<'_>) -> Poll<GuestResponse> {
        let mut slot = lock(&self.response);
        match slot.0.take() {
            Some(response) => Poll::Ready(response),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
/// Serves one HTTP request with an instance of `prepared`, cut after
/// `timeout` (the function's, or an event trigger's shorter ack timeout).
///
/// Returns as soon as the guest has set its response (the body may still be
/// streaming). `done` is called exactly once when the invocation is over.
/// Dropping the returned future, or the [`Answer`]'s guard before the body
/// ends, cancels the guest and frees its instance.
pub async fn serve<B>(
    prepared: Arc<Prepared>,
    request: hyper::Request<B>,
    timeout: Duration,
    done: impl FnOnce(Completion) + Send + 'static,
) -> Result<Answer, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    let Kind::Http { proxy: pre, whole } = &prepared.kind else {
        done(Completion {
            outcome: Outcome::Error,
            status: None,
            error: Some("an event handler got an HTTP request".into()),
            stdout: String::new(),
            stderr: String::new(),
            duration: started.elapsed(),
            cpu: CpuUse::default(),
            outbox: Vec::new(),
        });
        return Err(Failure::Guest(
            "the function is an event handler (gale:events/event-handler): it takes events, not HTTP requests".into(),
        ));
    };
    let meter = prepared.meter();
    if let Some(whole) = whole {
        let whole = whole::serve(
            prepared.clone(),
            whole.clone(),
            request,
            timeout,
            started,
            Box::new(done),
            meter.clone(),
        );
        return prepared.lane.run(meter, whole).await;
    }
    let pre = pre.clone();
    let (mut store, warm, uses, stdout, stderr) = prepared.next_store(&meter);
    let proxy = match warm {
        Some(Warm::Http(proxy)) => Some(proxy),
        _ => None,
    };
    let mut finish = Finish {
        done: Some(Box::new(done)),
        started,
        meter: meter.clone(),
        stdout,
        stderr,
        answer: Arc::default(),
    };

    let answer = finish.answer.clone();
    let setup = (|| -> wasmtime::Result<_> {
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let answer = answer.clone();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam_from_callback(move |response| answer.set(response))?;
        Ok((req, out))
    })();
    let (req, out) = match setup {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("the request could not be handed to the guest: {e:#}");
            finish.finish(Outcome::Error, Some(msg.clone()), Vec::new());
            return Err(Failure::Guest(msg));
        }
    };

    let published = store.data().events.as_ref().map(|h| h.published.clone());
    let task_prepared = prepared.clone();
    let guest = async move {
        let run = async {
            let proxy = match proxy {
                Some(p) => p,
                None => pre.instantiate_async(&mut store).await?,
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await?;
            wasmtime::Result::Ok(proxy)
        };
        let mut outbox = Vec::new();
        let failure = match within(started + timeout, run).await {
            Ok(Ok(proxy)) if finish.answer.status.load(Relaxed) != 0 => {
                if let Some(host) = store.data_mut().events.as_mut() {
                    outbox = host.take_outbox();
                }
                task_prepared.keep_idle(store, Warm::Http(proxy), uses + 1);
                None
            }
            Ok(Ok(_)) => {
                Some(Failure::Guest(lock(&finish.answer.error).take().unwrap_or_else(
                    || "the guest returned without setting a response".into(),
                )))
            }
            Ok(Err(e)) => Some(trap_failure(&e, &task_prepared.spec)),
            Err(Elapsed) => Some(Failure::Timeout),
        };
        let (outcome, error) = outcome_of(failure.as_ref(), timeout);
        finish.finish(outcome, error, outbox);
        failure
    };

    // Run the guest right here, on the caller's task, until it answers or
    // ends (ends, if it published anything before answering), or until its
    // first slice ends and it moves to the lane. A typical handler writes
    // its whole body into the buffered channel and returns before we look
    // at the response, so no task is spawned and no other thread is woken. A
    // guest still running once it has answered (streaming a body, working
    // after the response) goes on on the lane, so its timeout holds even if
    // the client stops reading; dropping the answer's guard cancels it.
    let mut guest = cpu::Metered::new(meter.clone(), guest);
    let here = std::future::poll_fn(|cx| {
        if let Poll::Ready(end) = Pin::new(&mut guest).poll(cx) {
            return Poll::Ready(Here::Ended(end));
        }
        // A guest that published before answering runs to its end first:
        // what it published must be committed before its answer leaves.
        let publishing = published.as_ref().is_some_and(|p| p.load(Relaxed) > 0);
        if !publishing && let Some(response) = answer.take() {
            return Poll::Ready(Here::Answered(response));
        }
        if meter.moved() {
            return Poll::Ready(Here::Moving);
        }
        Poll::Pending
    })
    .await;
    let answered = match here {
        Here::Ended(end) => Err(end),
        Here::Answered(response) => Ok((response, prepared.lane.spawn(guest))),
        Here::Moving => {
            let mut task = prepared.lane.spawn(guest);
            let answered = std::future::poll_fn(|cx| {
                if let Poll::Ready(end) = Pin::new(&mut task).poll(cx) {
                    return Poll::Ready(Err(end));
                }
                if published.as_ref().is_some_and(|p| p.load(Relaxed) > 0) {
                    return Poll::Pending;
                }
                answer.poll_take(cx).map(Ok)
            })
            .await;
            answered.map(|response| (response, task))
        }
    };
    match answered {
        // The guest ended; a response it set on the way is in the slot.
        Err(end) => {
            match answer.take() {
                Some(Ok(response)) => Ok(Answer {
                    response,
                    guard: AbortOnDrop(None),
                }),
                Some(Err(code)) => Err(answered_with(code)),
                None => Err(end.unwrap_or_else(|| {
                    Failure::Guest("the guest returned without setting a response".into())
                })),
            }
        }
        Ok((Ok(response), task)) => Ok(Answer {
            response,
            guard: AbortOnDrop(Some(task.detach())),
        }),
        // No response to stream: let the guest wind down on its own.
        Ok((Err(code), task)) => {
            drop(task.detach());
            Err(answered_with(code))
        }
    }
}

/// Where a guest stands after its first poll on the caller's task.
enum Here {
    Ended(Option<Failure>),
    Answered(GuestResponse),
    Moving,
}

fn answered_with(code: ErrorCode) -> Failure {
    Failure::Guest(format!("the guest answered with an error: {code:?}"))
}
