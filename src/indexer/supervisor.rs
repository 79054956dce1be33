//! Supervision: every long-lived task of the indexer (broker sessions,
//! writer, drain) is a [`Component`] run by [`Supervisor::spawn`], which
//! restarts it with backoff when it fails or panics and records the failure
//! for the log and `STATUS=`.
//!
//! Liveness: each component says when it made progress and when it is
//! honestly idle (waiting for input, or for a backoff to pass). The
//! heartbeat the daemon's watchdog watches moves only while every
//! component did one or the other since the last check, so a wedged
//! component (stuck on a lock, a full queue, a hung disk) stops the petting
//! and systemd restarts the daemon.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// How often liveness is checked (the daemon's watchdog period is far
/// longer: 30 s by default).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A component neither progressing nor idle for this long is wedged (a
/// slow fsync or a long batch is not).
pub const WEDGED_AFTER: Duration = Duration::from_secs(5);

/// What a component says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Working, with a problem it handles (e.g. retrying a write).
    Degraded(String),
    /// Ended with an error or a panic; being restarted.
    Failed(String),
}

/// One supervised part of the indexer.
#[derive(Debug)]
pub struct Component {
    pub name: String,
    progress: AtomicU64,
    idle: AtomicBool,
    /// Progress seen at the last liveness check.
    checked: AtomicU64,
    /// When the last liveness check found it live.
    last_live: Mutex<std::time::Instant>,
    health: Mutex<Health>,
    /// Restarts after a failure.
    pub restarts: AtomicU64,
    /// Set once the component ended for good.
    ended: tokio::sync::watch::Sender<bool>,
}

impl Component {
    fn new(name: String) -> Self {
        Component {
            name,
            progress: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            checked: AtomicU64::new(0),
            last_live: Mutex::new(std::time::Instant::now()),
            health: Mutex::new(Health::Ok),
            restarts: AtomicU64::new(0),
            ended: tokio::sync::watch::channel(false).0,
        }
    }

    /// Returns once the component ended for good (finished or cancelled).
    pub async fn ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    /// Did some work.
    pub fn progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Waiting for input (true) or working (false).
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }

    /// Runs `f` marked idle (a wait for input, not for our own output).
    pub async fn idle<T>(&self, f: impl Future<Output = T>) -> T {
        self.set_idle(true);
        let out = f.await;
        self.set_idle(false);
        self.progress();
        out
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    pub fn ok(&self) {
        self.set_health(Health::Ok);
    }

    pub fn degraded(&self, why: impl Into<String>) {
        self.set_health(Health::Degraded(why.into()));
    }

    /// Whether it was live (progress since the previous check, or idle
    /// now) at some check within `after`.
    fn live_within(&self, after: Duration) -> bool {
        let now = self.progress.load(Ordering::Relaxed);
        let before = self.checked.swap(now, Ordering::Relaxed);
        let mut last = self.last_live.lock().unwrap_or_else(|p| p.into_inner());
        if now != before || self.idle.load(Ordering::Relaxed) {
            *last = std::time::Instant::now();
            return true;
        }
        last.elapsed() <= after
    }
}

/// Runs and watches the components.
pub struct Supervisor {
    components: Mutex<Vec<Arc<Component>>>,
    /// Moves only while every component is live.
    pub heartbeat: Arc<AtomicU64>,
    tasks: TaskTracker,
}

impl Supervisor {
    pub fn new() -> Arc<Self> {
        let s = Arc::new(Supervisor {
            components: Mutex::new(Vec::new()),
            heartbeat: Arc::new(AtomicU64::new(0)),
            tasks: TaskTracker::new(),
        });
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            let mut wedged_before = Vec::new();
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                let wedged = s.wedged(WEDGED_AFTER);
                if wedged.is_empty() {
                    s.heartbeat.fetch_add(1, Ordering::Relaxed);
                } else if wedged != wedged_before {
                    tracing::error!(components = ?wedged, "no progress and not idle: the watchdog is no longer petted");
                }
                wedged_before = wedged;
            }
        });
        s
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Component>>> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the components that neither progressed nor idled for
    /// longer than `after`.
    pub fn wedged(&self, after: Duration) -> Vec<String> {
        self.list()
            .iter()
            .filter(|c| !c.live_within(after))
            .map(|c| c.name.clone())
            .collect()
    }

    /// `name: problem` for every component not ok.
    pub fn problems(&self) -> Vec<String> {
        self.list()
            .iter()
            .filter_map(|c| match c.health() {
                Health::Ok => None,
                Health::Degraded(why) => Some(format!("{}: {why}", c.name)),
                Health::Failed(why) => Some(format!("{} failed: {why}", c.name)),
            })
            .collect()
    }

    /// Runs `make()` as component `name` until it returns `Ok` or `cancel`
    /// fires; an error or a panic is logged, shown in `STATUS=`, and the
    /// component made again after a backoff (1 s doubling to `max_backoff`).
    pub fn spawn<F, Fut>(
        &self,
        name: String,
        max_backoff: Duration,
        cancel: CancellationToken,
        make: F,
    ) -> Arc<Component>
    where
        F: FnMut(Arc<Component>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.spawn_on(Handle::current(), name, max_backoff, cancel, make)
    }

    /// [`Supervisor::spawn`], the component's runs on runtime `rt` (the
    /// supervision itself stays on the caller's).
    pub fn spawn_on<F, Fut>(
        &self,
        rt: Handle,
        name: String,
        max_backoff: Duration,
        cancel: CancellationToken,
        mut make: F,
    ) -> Arc<Component>
    where
        F: FnMut(Arc<Component>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let comp = Arc::new(Component::new(name));
        self.list().push(comp.clone());
        let c = comp.clone();
        self.tasks.spawn(async move {
            supervise(&rt, &c, max_backoff, &cancel, &mut make).await;
            c.set_idle(true);
            c.ended.send_replace(true);
        });
        comp
    }

    /// Forgets a component that ended for good (e.g. a removed broker).
    pub fn remove(&self, comp: &Arc<Component>) {
        self.list().retain(|c| !Arc::ptr_eq(c, comp));
    }

    /// Waits for every supervised task (after cancelling them).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}

/// Runs a component until it ends well or is cancelled, restarting it with
/// backoff after an error or a panic.
async fn supervise<F, Fut>(
    rt: &Handle,
    c: &Arc<Component>,
    max_backoff: Duration,
    cancel: &CancellationToken,
    make: &mut F,
) where
    F: FnMut(Arc<Component>) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut backoff = Backoff::new(Duration::from_secs(1).min(max_backoff), max_backoff);
    loop {
        // Idle until the run says otherwise: it may not have been polled
        // yet when the next liveness check comes.
        c.set_idle(true);
        let run = rt.spawn(make(c.clone()));
        let why = match run.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                format!("panicked: {msg}")
            }
            Err(e) => e.to_string(),
        };
        if cancel.is_cancelled() {
            return;
        }
        c.restarts.fetch_add(1, Ordering::Relaxed);
        c.set_health(Health::Failed(why.clone()));
        let delay = backoff.next_delay();
        tracing::error!(component = %c.name, error = %why, retry_ms = delay.as_millis() as u64, "component failed: restarting");
        c.set_idle(true);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_component_is_restarted_and_reported() {
        let sup = Supervisor::new();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let cancel = CancellationToken::new();
        let comp = sup.spawn(
            "flaky".into(),
            Duration::from_millis(10),
            cancel.clone(),
            move |_| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("boom {n}");
                    }
                    Ok(())
                }
            },
        );
        sup.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(comp.restarts.load(Ordering::SeqCst), 2);
        assert!(sup.problems()[0].contains("boom 1"), "{:?}", sup.problems());
    }

    #[tokio::test]
    async fn a_busy_component_without_progress_is_wedged() {
        let sup = Supervisor::new();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let comp = sup.spawn(
            "stuck".into(),
            Duration::from_secs(1),
            cancel.clone(),
            move |c| {
                let stop = stop.clone();
                async move {
                    c.set_idle(false);
                    stop.cancelled().await;
                    Ok(())
                }
            },
        );
        // The task starts busy: wait for the runtime to have run it.
        while comp.idle.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        let _ = sup.wedged(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(sup.wedged(Duration::ZERO), ["stuck"]);
        assert!(sup.wedged(Duration::from_secs(60)).is_empty(), "not yet");
        // (The background check may see the progress first: either way
        // it counts as live just now.)
        comp.progress();
        assert!(sup.wedged(Duration::from_millis(100)).is_empty());
        comp.set_idle(true);
        assert!(sup.wedged(Duration::ZERO).is_empty());
        cancel.cancel();
        sup.wait().await;
    }
}
