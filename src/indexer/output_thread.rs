//! The Elasticsearch output's thread: a single-threaded runtime of its own
//! for the drain (spool reads, bulk bodies, gzip, HTTP, responses).
//!
//! Why: the indexer is a pipeline. Intake (broker sessions, validation,
//! the durable writer, acks) runs on the daemon's single-threaded runtime,
//! the drain here, and disk I/O (appends, fsyncs) on the blocking pool. So
//! when one core is not enough the stages run on two, while each stage's
//! tasks wake each other on their own thread. A work-stealing runtime also
//! spreads the load, but it moves the hot tasks between cores at every
//! wake-up: measured, that cost about a tenth more CPU per result
//! (`packaging/bench/indexer-vs-broker.sh`).

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A thread running a single-threaded runtime until this is dropped (then
/// its tasks are dropped too: stop them first).
pub struct OutputThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl OutputThread {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> io::Result<OutputThread> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Ends when the sender is dropped.
                let _ = rt.block_on(stopped);
            })?;
        Ok(OutputThread {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn the output's tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_thread_until_it_is_dropped() {
        let out = OutputThread::start("test-output").unwrap();
        let name = out
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-output"));
        let (_tx, rx) = oneshot::channel::<()>();
        let pending = out.handle().spawn(rx);
        drop(out);
        // Its runtime is gone: the task was dropped, not left hanging.
        assert!(pending.await.unwrap_err().is_cancelled());
    }
}
