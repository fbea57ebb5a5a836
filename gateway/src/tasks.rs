//! The gateway's background loops as named, tracked tasks: each is spawned with a name, its
//! end (or panic) is logged with that name, and shutdown joins them all instead of leaving
//! detached tasks running past [`crate::run`].

use std::collections::HashMap;
use std::future::Future;
use tokio::task::{Id, JoinSet};

/// A group of named background tasks, joined together.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names.values()).finish()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `task` as `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
        tracing::debug!(task = name, "background task started");
    }

    /// The names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.names.values().copied().collect();
        names.sort_unstable();
        names
    }

    /// Waits for every task to end (they end on the shutdown token they were given); a task
    /// that panicked is logged with its name.
    pub async fn join_all(&mut self) {
        while let Some(done) = self.set.join_next_with_id().await {
            let (id, outcome) = match done {
                Ok((id, ())) => (id, Ok(())),
                Err(e) => (e.id(), Err(e)),
            };
            let name = self.names.remove(&id).unwrap_or("unnamed");
            match outcome {
                Ok(()) => tracing::debug!(task = name, "background task stopped"),
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "background task panicked")
                }
                Err(_) => tracing::debug!(task = name, "background task cancelled"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn joins_every_task_by_name_even_after_a_panic() {
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new();
        let s = stop.clone();
        tasks.spawn("waits", async move { s.cancelled().await });
        tasks.spawn("panics", async { panic!("boom") });
        assert_eq!(tasks.running(), vec!["panics", "waits"]);
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.join_all())
            .await
            .unwrap();
        assert!(tasks.running().is_empty());
    }
}
