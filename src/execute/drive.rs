//! A fleet's runs driven from one loop: a server's run starts when a turn is free (and its
//! server's lock is), a run that waits for its snapshot is a small record in the shared poll,
//! and a finished run is a summary row. So memory follows `max_concurrent`, not the fleet:
//! what each server costs until the end is its row.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::model::ServerId;
use crate::provider::Provider;
use crate::report::{Row, ServerReport};

use super::poll::Waited;
use super::{Begun, Detached, Executor, Listed};

pub use crate::policy::Work;

/// What one task of [`Executor::run_all`] came to.
enum Step {
    Begun(Begun),
    Finished(ServerReport),
}

/// Texts repeated on many rows (a slot's snapshot name, the same message), kept once.
#[derive(Default)]
struct Texts(HashSet<Arc<str>>);

impl Texts {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(t) = self.0.get(text) {
            return t.clone();
        }
        let t: Arc<str> = text.into();
        self.0.insert(t.clone());
        t
    }

    fn row(&mut self, r: &ServerReport) -> Row {
        Row {
            policy: self.get(&r.policy),
            server: r.server,
            result: r.result,
            created: r.created.as_deref().map(|c| self.get(c)),
            deleted: r.deleted.iter().map(|d| self.get(d)).collect(),
            message: self.get(&r.message),
        }
    }
}

impl<P: Provider> Executor<P> {
    /// Runs each (policy, server, slot) once: at most `max_concurrent` servers worked on at a
    /// time (a server only waiting for its snapshot gives its turn to the next, unless it is
    /// stopped for it), one operation per server at a time, everything listed with one
    /// paginated call (each server's part taken out as its run starts), every snapshot in
    /// flight waited for by the shared poll. Runs whose snapshot settled are finished before
    /// new ones start, at most `max_concurrent` at a time. The rows come sorted by server and
    /// policy.
    pub async fn run_all(self: &Arc<Self>, mut work: Vec<Work>) -> Vec<Row> {
        work.sort_by(|a, b| (a.1, &a.0.name).cmp(&(b.1, &b.0.name)));
        let servers: Vec<ServerId> = {
            let mut s: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
            s.dedup();
            s
        };
        let mut listing = match self.list(&servers).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "could not list snapshots up front; each server lists its own");
                None
            }
        };
        drop(servers);
        let limit = self.settings.max_concurrent.max(1);
        let (tx, mut answers) = mpsc::unbounded_channel::<(Box<Detached>, Waited)>();
        let mut texts = Texts::default();
        let mut rows = Vec::with_capacity(work.len());
        let mut queue = work.into_iter().peekable();
        let mut next: Option<(Work, Option<Listed>)> = None;
        let mut tasks: JoinSet<Step> = JoinSet::new();
        let mut finishing = 0usize;
        let mut waiting = 0usize;
        loop {
            if next.is_none() {
                if let Some(item) = queue.next() {
                    let server = item.1;
                    // The server's part goes with its last run here; another run of it
                    // gets a copy (the lock tells it whether the first changed the server).
                    let last = queue.peek().is_none_or(|n| n.1 != server);
                    let listed = listing.as_mut().map(|l| Listed {
                        taken_at: l.taken_at,
                        snapshots: if last { l.take(server) } else { l.part(server) }.snapshots(),
                    });
                    next = Some((item, listed));
                }
            }
            if self.shutdown.is_stopping() {
                // Start nothing new.
                for ((policy, server, slot), _) in next
                    .take()
                    .into_iter()
                    .chain(queue.by_ref().map(|w| (w, None)))
                {
                    rows.push(texts.row(&self.not_started(&policy, server, slot)));
                }
                listing = None;
            }
            if next.is_none() && tasks.is_empty() && waiting == 0 {
                break;
            }
            tokio::select! {
                biased;
                Some((run, waited)) = answers.recv(), if waiting > 0 && finishing < limit => {
                    waiting -= 1;
                    finishing += 1;
                    let this = self.clone();
                    tasks.spawn(async move { Step::Finished(this.finish(run, waited).await) });
                }
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Step::Finished(report)) => {
                        finishing -= 1;
                        rows.push(texts.row(&report));
                    }
                    Ok(Step::Begun(Begun::Done(report))) => rows.push(texts.row(&report)),
                    Ok(Step::Begun(Begun::Waiting(run))) => {
                        waiting += 1;
                        self.wait_detached(run, tx.clone());
                    }
                    Err(e) => {
                        // Should not happen; still a failure the summary and exit code must show.
                        tracing::error!(error = %e, "a server task ended abnormally");
                        rows.push(Row::abnormal(&e));
                        finishing = finishing.min(tasks.len());
                    }
                },
                turn = self.turns.take(), if next.is_some() => {
                    let Some(((policy, server, slot), listed)) = next.take() else {
                        continue;
                    };
                    let this = self.clone();
                    let lock = self.locks.entry(server);
                    match lock.clone().try_lock_owned() {
                        Ok(guard) => {
                            tasks.spawn(async move {
                                Step::Begun(Box::pin(this.begin(policy, server, slot, listed, guard, turn)).await)
                            });
                        }
                        Err(_) => {
                            // Its server is busy (another policy's run on it): wait for the
                            // lock holding no turn, then for a turn.
                            drop(turn);
                            tasks.spawn(async move {
                                let guard = lock.lock_owned().await;
                                let turn = this.turns.take().await;
                                Step::Begun(Box::pin(this.begin(policy, server, slot, listed, guard, turn)).await)
                            });
                        }
                    }
                }
            }
        }
        rows.sort_by(|a, b| (a.server, &a.policy).cmp(&(b.server, &b.policy)));
        self.flush().await;
        rows
    }
}
