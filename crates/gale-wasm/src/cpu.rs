//! CPU time of guests: where a busy guest runs, what each invocation
//! used, and its `cpu` limit.
//!
//! A guest starts on the thread that called it (a gateway worker or a
//! dispatcher): most invocations end within their first slice (one to two
//! epoch ticks) and never change threads. A guest still computing when
//! its first slice ends is moved to the *lane*, threads of its own at a
//! lower priority than the gateway's, so that accepting, parsing and
//! answering other requests never wait behind it. On the lane guests
//! compute in turns of a slice each, and a free turn goes to the function
//! that has had the fewest: eight busy instances of one function share one
//! function's part of the lane, as one instance of another function gets
//! one part.
//!
//! Each invocation is metered per poll (the guest's code and the host's
//! work on its behalf), and its limit is checked at every tick while it
//! computes. On the lane a poll counts the thread's CPU clock; before, the
//! poll's wall time, which is its CPU time but for what the kernel gave to
//! another thread within at most one tick: reading a thread's CPU clock is
//! a system call that takes the scheduler's lock, a few percent of a short
//! request's cost, which a guest on the lane spreads over whole slices.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wasmtime::UpdateDeadline;

/// Ticks a guest computes on the thread that called it before it moves to
/// the lane: two, so that it computes one tick at least (a deadline of one
/// would come at the next tick, however soon) and a short request never
/// moves.
pub(crate) const FIRST_SLICE_TICKS: u64 = 2;
/// Ticks a guest computes on the lane before it yields its turn.
const LANE_SLICE_TICKS: u64 = 10;
/// Nice value of the lane's threads: a gateway thread that wakes to take a
/// request gets the CPU ahead of them.
const LANE_NICE: i32 = 3;

/// The invocation used more CPU time than its function's `cpu` allows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuLimit(pub Duration);

impl std::fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "used its CPU limit of {}", crate::humantime_ms(self.0))
    }
}

impl std::error::Error for CpuLimit {}

/// The lane: its threads and the turns on them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Lane {
    handle: tokio::runtime::Handle,
    gate: Arc<Gate>,
    _threads: Arc<Threads>,
}

/// Stops the lane's threads when the last clone of the runtime goes.
struct Threads(Option<tokio::runtime::Runtime>);

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Lane {
    pub(crate) fn start() -> std::io::Result<Lane> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gale-guest")
            // A guest moved here arrives through the runtime's shared
            // queue, which a busy worker looks at only every so many
            // tasks (61 by default, 61 slices here): look at every one,
            // so a guest asks for its turn at once.
            .global_queue_interval(1)
            .on_thread_start(|| {
                // SAFETY: plain syscall; on Linux `who = 0` is the calling thread.
                #[cfg(target_os = "linux")]
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, LANE_NICE);
                }
            })
            .enable_all()
            .build()?;
        Ok(Lane {
            handle: runtime.handle().clone(),
            gate: Arc::new(Gate::new(threads)),
            _threads: Arc::new(Threads(Some(runtime))),
        })
    }

    /// Runs `work`, an invocation metered by `meter`, here until its first
    /// tick, then on the lane.
    pub(crate) async fn run<F>(&self, meter: Arc<Meter>, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut work = Metered::new(meter.clone(), work);
        let here = std::future::poll_fn(|cx| match Pin::new(&mut work).poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if meter.moving.load(Relaxed) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match here {
            Some(out) => out,
            None => self.spawn(work).await,
        }
    }

    /// Runs a metered invocation on the lane to its end; dropping the
    /// returned task cancels it.
    pub(crate) fn spawn<F>(&self, work: Metered<F>) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        work.meter.on_lane.store(true, Relaxed);
        Task(Some(self.handle.spawn(work)))
    }
}

/// An invocation running on the lane; aborted if dropped before its end.
pub(crate) struct Task<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Task<T> {
    /// Lets it run on unawaited; the handle still cancels it.
    pub(crate) fn detach(mut self) -> tokio::task::AbortHandle {
        self.0.take().expect("a task is detached once").abort_handle()
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let task = self.0.as_mut().expect("a detached task is not awaited");
        Pin::new(task).poll(cx).map(|joined| match joined {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only the lane's shutdown (the node is stopping) cancels a task
            // that is still awaited.
            Err(_) => panic!("the guest lane stopped while an invocation was running"),
        })
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// What one invocation used, as its log record tells.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// CPU time of the guest and the host's work for it.
    pub cpu: Duration,
    /// Time it was ready to compute but waited: for a turn on the lane, or
    /// for the core while the kernel ran something else.
    pub waited: Duration,
}

/// One invocation's meter, shared by its store's epoch callback and the
/// future that polls it.
pub(crate) struct Meter {
    function: Arc<str>,
    limit: Option<Duration>,
    gate: Arc<Gate>,
    cpu_ns: AtomicU64,
    waited_ns: AtomicU64,
    /// What the meter's clocks read when the current poll began (0: no
    /// poll under way): wall time since `created`, plus one, and the
    /// thread's CPU clock (on the lane).
    poll_wall: AtomicU64,
    poll_cpu: AtomicU64,
    created: Instant,
    /// Its first slice ended: the poller moves it to the lane.
    moving: AtomicBool,
    on_lane: AtomicBool,
    /// The turn it computes in, while it computes on the lane.
    turn: Mutex<Option<Turn>>,
}

impl Meter {
    pub(crate) fn new(lane: &Lane, function: Arc<str>, limit: Option<Duration>) -> Arc<Meter> {
        Arc::new(Meter {
            function,
            limit,
            gate: lane.gate.clone(),
            cpu_ns: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            poll_wall: AtomicU64::new(0),
            poll_cpu: AtomicU64::new(0),
            created: Instant::now(),
            moving: AtomicBool::new(false),
            on_lane: AtomicBool::new(false),
            turn: Mutex::new(None),
        })
    }

    /// Whether its first slice has ended (the poller then moves it to the lane).
    pub(crate) fn moved(&self) -> bool {
        self.moving.load(Relaxed)
    }

    /// Wall time since the meter was made, plus one (never 0).
    fn wall_ns(&self) -> u64 {
        self.created.elapsed().as_nanos() as u64 + 1
    }

    /// CPU time used so far, including the poll under way on this thread.
    fn cpu_now(&self) -> u64 {
        let began = self.poll_wall.load(Relaxed);
        let current = if began == 0 {
            0
        } else if self.on_lane.load(Relaxed) {
            thread_cpu_ns().saturating_sub(self.poll_cpu.load(Relaxed))
        } else {
            self.wall_ns().saturating_sub(began)
        };
        self.cpu_ns.load(Relaxed) + current
    }

    /// What the invocation used so far (called from inside its poll, or
    /// after it).
    pub(crate) fn used_now(&self) -> CpuUse {
        CpuUse {
            cpu: Duration::from_nanos(self.cpu_now()),
            waited: Duration::from_nanos(self.waited_ns.load(Relaxed)),
        }
    }

    /// What the store does when its epoch deadline comes (called on the
    /// thread polling the guest, inside a poll).
    pub(crate) fn on_deadline(self: &Arc<Self>) -> wasmtime::Result<UpdateDeadline> {
        if let Some(limit) = self.limit
            && self.cpu_now() > limit.as_nanos() as u64
        {
            return Err(wasmtime::Error::new(CpuLimit(limit)));
        }
        let meter = self.clone();
        let first = !self.moving.swap(true, Relaxed);
        Ok(UpdateDeadline::YieldCustom(
            LANE_SLICE_TICKS,
            Box::pin(async move {
                if first {
                    // Pending once: the poller sees it and moves the guest
                    // to the lane, where the next poll asks for a turn.
                    yield_once().await;
                }
                // The turn of the slice that just ended goes back to the
                // gate, which hands it to the function that has had the
                // fewest turns: this one again if it is behind. Waiting
                // happens in the gate, not in the lane's run queue: only
                // guests holding a turn are runnable there.
                let ended = crate::lock(&meter.turn).take();
                let asked = Instant::now();
                let (turn, waited) = meter.gate.turn(meter.function.clone(), ended).await;
                if !waited {
                    // Pending at least once a slice: the invocation's
                    // timeout is looked at only when it is.
                    yield_once().await;
                }
                meter
                    .waited_ns
                    .fetch_add(asked.elapsed().as_nanos() as u64, Relaxed);
                *crate::lock(&meter.turn) = Some(turn);
            }),
        ))
    }
}

/// A guest's future, metered poll by poll.
pub(crate) struct Metered<F> {
    meter: Arc<Meter>,
    work: Pin<Box<F>>,
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(meter: Arc<Meter>, work: F) -> Metered<F> {
        Metered {
            meter,
            work: Box::pin(work),
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let on_lane = self.meter.on_lane.load(Relaxed);
        let wall_began = self.meter.wall_ns();
        let cpu_began = if on_lane { thread_cpu_ns() } else { 0 };
        self.meter.poll_cpu.store(cpu_began, Relaxed);
        self.meter.poll_wall.store(wall_began, Relaxed);
        let out = self.work.as_mut().poll(cx);
        let meter = &self.meter;
        let wall = meter.wall_ns().saturating_sub(wall_began);
        let cpu = if on_lane {
            thread_cpu_ns().saturating_sub(cpu_began)
        } else {
            wall
        };
        meter.poll_wall.store(0, Relaxed);
        meter.cpu_ns.fetch_add(cpu, Relaxed);
        if on_lane {
            // Time in the poll not spent computing: the kernel ran another
            // thread on this core.
            meter.waited_ns.fetch_add(wall.saturating_sub(cpu), Relaxed);
            // Pending (on I/O) or ended, it no longer computes: the turn
            // it computed in goes to the next guest.
            crate::lock(&meter.turn).take();
        }
        out
    }
}

/// Pending once, with the task woken at once: it goes to the back of its
/// runtime's queue. (`tokio::task::yield_now` defers the wake-up until the
/// worker runs out of other tasks, which on a busy lane is never.)
fn yield_once() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Turns on the lane: at most `slots` guests compute at once, and a turn
/// that comes free goes to the waiting function that has had the fewest
/// turns (of two with as many, the one waiting longer), then to that
/// function's longest-waiting guest. A function that starts
/// waiting after a pause counts from the fewest turns of those already
/// waiting, so it neither starves them nor is starved.
struct Gate {
    slots: usize,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    running: usize,
    /// The functions with guests computing or waiting.
    functions: HashMap<Arc<str>, Account>,
    arrivals: u64,
    /// The turns of the function served last: where a newcomer starts.
    clock: u64,
}

#[derive(Default)]
struct Account {
    /// Turns it has had: its virtual time.
    turns: u64,
    running: usize,
    /// Since when it waits (an arrival number), while it does.
    since: u64,
    waiting: VecDeque<oneshot::Sender<Turn>>,
}

/// A turn to compute on the lane; the next guest gets it when this drops.
pub(crate) struct Turn(Option<(Arc<Gate>, Arc<str>)>);

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((gate, function)) = self.0.take() {
            let mut state = crate::lock(&gate.state);
            state.release(&function);
            if state
                .functions
                .get(&function)
                .is_some_and(|a| a.running == 0 && a.waiting.is_empty())
            {
                state.functions.remove(&function);
            }
            gate.dispatch(&mut state);
        }
    }
}

impl GateState {
    fn release(&mut self, function: &str) {
        self.running -= 1;
        if let Some(account) = self.functions.get_mut(function) {
            account.running -= 1;
        }
    }
}

impl Gate {
    fn new(slots: usize) -> Gate {
        Gate {
            slots,
            state: Mutex::default(),
        }
    }

    /// Gives back `ended` (the turn of the slice that just ended, if any)
    /// and waits for the function's next turn; whether it had to wait.
    async fn turn(self: &Arc<Self>, function: Arc<str>, ended: Option<Turn>) -> (Turn, bool) {
        let (tx, mut rx) = oneshot::channel();
        {
            let mut state = crate::lock(&self.state);
            if let Some((_, f)) = ended.and_then(|mut e| e.0.take()) {
                state.release(&f);
            }
            let (clock, arrival) = (state.clock, state.arrivals);
            state.arrivals += 1;
            let account = state.functions.entry(function).or_default();
            if account.waiting.is_empty() {
                if account.running == 0 {
                    account.turns = account.turns.max(clock);
                }
                account.since = arrival;
            }
            account.waiting.push_back(tx);
            self.dispatch(&mut state);
        }
        if let Ok(turn) = rx.try_recv() {
            return (turn, false);
        }
        // A sender is only dropped unsent when the lane is going away.
        (rx.await.unwrap_or(Turn(None)), true)
    }

    /// Hands free slots to waiting guests.
    fn dispatch(self: &Arc<Self>, state: &mut GateState) {
        while state.running < self.slots {
            let next = state
                .functions
                .iter_mut()
                .filter(|(_, a)| !a.waiting.is_empty())
                .min_by_key(|(_, a)| (a.turns, a.since));
            let Some((function, account)) = next else { return };
            let tx = account
                .waiting
                .pop_front()
                .expect("a waiting function has a guest waiting");
            // A guest that stopped waiting (cut by its timeout) is skipped.
            if let Err(mut unused) = tx.send(Turn(Some((self.clone(), function.clone())))) {
                unused.0 = None;
                continue;
            }
            account.running += 1;
            account.turns += 1;
            state.clock = account.turns;
            state.running += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guests of `function` that each ask for one turn and report it.
    fn waiters(
        gate: &Arc<Gate>,
        function: &str,
        n: usize,
        tx: &tokio::sync::mpsc::UnboundedSender<(String, Turn)>,
    ) {
        for _ in 0..n {
            let (gate, name, tx) = (gate.clone(), Arc::<str>::from(function), tx.clone());
            tokio::spawn(async move {
                let (turn, waited) = gate.turn(name.clone(), None).await;
                assert!(waited);
                tx.send((name.to_string(), turn)).unwrap();
            });
        }
    }

    #[tokio::test]
    async fn turns_alternate_between_functions_however_many_guests_each_has() {
        let gate = Arc::new(Gate::new(1));
        let (first, waited) = gate.turn("busy".into(), None).await;
        assert!(!waited);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        waiters(&gate, "busy", 4, &tx);
        tokio::task::yield_now().await;
        waiters(&gate, "other", 2, &tx);
        tokio::task::yield_now().await;
        // `other` starts level with `busy`, which waited first; then they
        // alternate until `other` has no guest left.
        drop(first);
        let mut order = Vec::new();
        for _ in 0..6 {
            let (name, turn) = rx.recv().await.unwrap();
            order.push(name);
            drop(turn);
        }
        assert_eq!(order, ["busy", "other", "busy", "other", "busy", "busy"]);
        assert_eq!(crate::lock(&gate.state).running, 0);
    }

    #[tokio::test]
    async fn a_guest_behind_keeps_computing_when_its_slice_ends() {
        let gate = Arc::new(Gate::new(1));
        let lone: Arc<str> = "lone".into();
        let (turn, _) = gate.turn(lone.clone(), None).await;
        // Nobody else waits: the next turn is its own at once.
        let (turn, waited) = gate.turn(lone.clone(), Some(turn)).await;
        assert!(!waited);
        // Two guests of `busy` wait; `lone` has had 2 turns, `busy` starts
        // from there, so they alternate.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        waiters(&gate, "busy", 2, &tx);
        tokio::task::yield_now().await;
        let again = tokio::spawn({
            let gate = gate.clone();
            async move { gate.turn(lone, Some(turn)).await }
        });
        let (name, busy_turn) = rx.recv().await.unwrap();
        assert_eq!(name, "busy");
        drop(busy_turn);
        let (turn, waited) = again.await.unwrap();
        assert!(waited);
        drop(turn);
        assert_eq!(rx.recv().await.unwrap().0, "busy");
    }

    #[tokio::test]
    async fn a_guest_that_stopped_waiting_does_not_keep_its_turn() {
        let gate = Arc::new(Gate::new(1));
        let f: Arc<str> = Arc::from("f");
        let (first, _) = gate.turn(f.clone(), None).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), gate.turn(f.clone(), None)).await;
        assert!(gave_up.is_err());
        drop(first);
        // The slot is free again, not held by the guest that left.
        let again = tokio::time::timeout(Duration::from_secs(1), gate.turn(f.clone(), None)).await;
        assert!(again.is_ok());
    }
}
