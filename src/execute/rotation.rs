//! One rotation on one server: prepare (every read) → plan → apply (free a slot, create,
//! wait, prune), with the hooks around it; a dry run stops before apply.

use chrono::{DateTime, Utc};

use crate::ledger::{Answer, Record};
use crate::model::{CreateSnapshot, PowerState, ServerId, Snapshot, SnapshotStatus};
use crate::plan::{plan, Create, Plan, SlotOutcome, Target};
use crate::policy::Policy;
use crate::provider::{ApiError, Provider};
use crate::report::{RunResult, ServerReport};

use super::poll::Waited;
use super::turns::Turn;
use super::{wall_after, Executor};

/// A snapshot requested for a run that does not stop its server: the run waits for it as a
/// small record in the shared poll, not as a suspended task.
#[derive(Debug)]
pub(super) struct Requested {
    /// For a post hook's `SERVER_NAME`.
    pub server_name: String,
}

/// The environment of a hook around `name` on `server`.
pub(super) fn hook_env(
    policy: &Policy,
    server: ServerId,
    server_name: &str,
    name: &str,
) -> Vec<(&'static str, String)> {
    if policy.hooks.pre.is_none() && policy.hooks.post.is_none() {
        return Vec::new();
    }
    vec![
        ("SNAPSHOT_POLICY", policy.name.clone()),
        ("SERVER_ID", server.to_string()),
        ("SERVER_NAME", server_name.to_owned()),
        ("SNAPSHOT_NAME", name.to_owned()),
    ]
}

/// What [`Executor::prepare`] read about one server: all a plan for it decides on.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The server, with its power state when the policy stops it.
    pub target: Target,
    /// Everything on the server: any policy, hand-made, any status.
    pub snapshots: Vec<Snapshot>,
    /// For the hooks' `SERVER_NAME` (empty when no hook runs, or the provider would not say).
    pub server_name: String,
}

impl<P: Provider> Executor<P> {
    /// Prepare (every read the decision needs) → plan → apply. A dry run stops before apply;
    /// the `plan` command is the first two steps. `Some`: the snapshot was requested and is
    /// to be waited for (a run that does not stop its server).
    pub(super) async fn rotate(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        listed: Option<Vec<Snapshot>>,
        report: &mut ServerReport,
        turn: &mut Turn,
    ) -> anyhow::Result<Option<Requested>> {
        let prepared = self.prepare(policy, server, slot, listed).await?;
        self.note_listing(policy, server, &prepared.snapshots);
        let first = self.plan(policy, slot, &prepared);
        for note in &first.notes {
            tracing::info!("{note}");
        }
        for warning in &first.warnings {
            tracing::warn!("{warning}");
        }
        report.wrote = !first.is_noop();
        // What can do nothing fails before a dry run stops, so both say the same.
        match &first.outcome {
            SlotOutcome::CapBlocked(b) | SlotOutcome::OtherServers(b) => {
                report.blocked = matches!(first.outcome, SlotOutcome::CapBlocked(_));
                anyhow::bail!("{}", b.reason);
            }
            SlotOutcome::SnapshotStuck { reason, .. }
            | SlotOutcome::CreateUnconfirmed { reason, .. } => anyhow::bail!("{reason}"),
            _ => {}
        }
        if self.settings.dry_run {
            // A skip is a skip in both, and a failure a failure (a dry run exits as the run
            // would); anything else is told as what would happen.
            (report.result, report.message) = if first.outcome.is_skip() {
                (RunResult::Skipped, first.outcome_line().to_owned())
            } else if first.outcome.failure().is_some() {
                (RunResult::Failed, dry_run_summary(policy, &first))
            } else {
                (RunResult::DryRun, dry_run_summary(policy, &first))
            };
            return Ok(None);
        }
        self.apply(policy, &prepared, &first, report, turn).await
    }

    /// Every read a decision about `server` needs, before anything changes: its listing (from
    /// `listed`, its part of a listing, when there is one), its power state when the policy stops it (a server in
    /// transition is skipped before a slot is freed, or a good snapshot would go for
    /// nothing), and its name when a hook will be told it.
    ///
    /// When a create of the slot's snapshot was sent before and `listed` does not show it,
    /// the server's own listing is read: an account listing read page by page while others
    /// changed can miss a record, and a snapshot missed there would be made twice.
    pub async fn prepare(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        listed: Option<Vec<Snapshot>>,
    ) -> Result<Prepared, ApiError> {
        let snapshots = match listed {
            Some(shared) => {
                let name = policy.snapshot_name(slot);
                let sent = self
                    .journal
                    .creates()
                    .sent(server, &policy.name, &name)
                    .is_some();
                if sent && !shared.iter().any(|s| s.name == name) {
                    tracing::info!(snapshot = %name, "a create of this slot was sent before and the account listing does not show it; reading the server's own listing");
                    self.provider.list_snapshots(Some(server)).await?
                } else {
                    shared
                }
            }
            None => self.provider.list_snapshots(Some(server)).await?,
        };
        let hooked = policy.hooks.pre.is_some() || policy.hooks.post.is_some();
        let (power, server_name) = if policy.stop_server {
            let s = self.provider.get_server(server).await?;
            (Some(s.status), s.name)
        } else if !hooked {
            (None, String::new())
        } else if let Some(s) = snapshots.first() {
            (None, s.server.name.clone())
        } else {
            // Only a hook's environment needs it: a server that will not say has no name.
            let name = self.provider.get_server(server).await.map(|s| s.name);
            (None, name.unwrap_or_default())
        };
        Ok(Prepared {
            target: Target { id: server, power },
            snapshots,
            server_name,
        })
    }

    /// The plan for what [`prepare`](Self::prepare) read, as of now. A snapshot in progress
    /// past `snapshot_timeout` is marked stuck here (the planner does not know the timeout),
    /// so `plan` says the failure the run reports.
    pub fn plan(&self, policy: &Policy, slot: DateTime<Utc>, prepared: &Prepared) -> Plan {
        let mut planned = plan(
            policy,
            &prepared.target,
            &prepared.snapshots,
            slot,
            self.clock.now(),
        );
        match &planned.outcome {
            SlotOutcome::SnapshotInProgress { .. } => {
                if let Some((snapshots, reason)) = self.stuck(&prepared.snapshots) {
                    planned.outcome = SlotOutcome::SnapshotStuck { snapshots, reason };
                }
            }
            SlotOutcome::Create(create) => {
                if let Some(reason) = self.unconfirmed(policy, prepared.target.id, &create.name) {
                    planned.outcome = SlotOutcome::CreateUnconfirmed {
                        snapshot: create.name.clone(),
                        reason,
                    };
                }
            }
            _ => {}
        }
        planned
    }

    /// Why `name` is not created on `server` again, when a create of it was sent before and
    /// its answer was lost (the plan read the server's own listing, which does not show it).
    fn unconfirmed(&self, policy: &Policy, server: ServerId, name: &str) -> Option<String> {
        let sent = self.journal.creates().sent(server, &policy.name, name)?;
        (sent.answer == Answer::Unknown).then(|| {
            format!(
                "a create of snapshot {name} was sent at {} and its answer was lost; the \
                 server's listing does not show it. It is not sent again, since the provider \
                 may list it later and a second create could make a duplicate; the next \
                 scheduled slot takes a new name (ledger: {})",
                sent.at.format("%Y-%m-%d %H:%M:%S UTC"),
                self.journal.creates().path().display()
            )
        })
    }

    /// Does what `first` says. The run's result follows the slot's outcome, never the words
    /// of its reason.
    pub(super) async fn apply(
        &self,
        policy: &Policy,
        prepared: &Prepared,
        first: &Plan,
        report: &mut ServerReport,
        turn: &mut Turn,
    ) -> anyhow::Result<Option<Requested>> {
        let result = match &first.outcome {
            SlotOutcome::Create(create) => {
                return self
                    .create_with_hooks(policy, prepared, first, create, report, turn)
                    .await
            }
            SlotOutcome::SlotTaken {
                completed: true, ..
            } => RunResult::Unchanged,
            // Its failed snapshot still goes (the planned deletes), then the run fails.
            SlotOutcome::SlotTaken {
                completed: false, ..
            } => RunResult::Failed,
            SlotOutcome::SnapshotInProgress { .. } | SlotOutcome::ServerInTransition { .. } => {
                RunResult::Skipped
            }
            SlotOutcome::SnapshotStuck { reason, .. }
            | SlotOutcome::CreateUnconfirmed { reason, .. } => anyhow::bail!("{reason}"),
            SlotOutcome::CapBlocked(b) | SlotOutcome::OtherServers(b) => {
                anyhow::bail!("{}", b.reason)
            }
        };
        self.delete_planned(policy, first, report).await?;
        if result.is_failure() {
            anyhow::bail!("{}", first.outcome_line());
        }
        report.result = result;
        report.message = first.outcome_line().to_owned();
        Ok(None)
    }

    /// The hooks around free a slot → (stop) → create → wait → (start) → prune. A run that
    /// does not stop its server ends at the create: its post hook runs once the snapshot is
    /// waited for ([`Executor::finish`]).
    async fn create_with_hooks(
        &self,
        policy: &Policy,
        prepared: &Prepared,
        first: &Plan,
        create: &Create,
        report: &mut ServerReport,
        turn: &mut Turn,
    ) -> anyhow::Result<Option<Requested>> {
        let server = prepared.target.id;
        // Hooks wrap everything that changes the server, the slot-freeing delete included.
        let hooks = &policy.hooks;
        let env = hook_env(policy, server, &prepared.server_name, &create.name);
        if let Some(pre) = &hooks.pre {
            let mut pre_env = env.clone();
            pre_env.push(("PHASE", "pre".into()));
            let outcome = crate::hooks::run("pre", pre, &pre_env, hooks.timeout).await;
            if !outcome.success {
                if hooks.continue_on_pre_failure {
                    tracing::warn!(detail = %outcome.detail, "pre hook failed; taking the snapshot anyway (on_pre_hook_failure = \"continue\")");
                } else {
                    self.post_hook(policy, &env, false, None).await;
                    anyhow::bail!(
                        "pre hook failed ({}); snapshot skipped (on_pre_hook_failure = \"skip\")",
                        outcome.detail
                    );
                }
            }
        }
        let power = prepared.target.power.clone();
        let result = self
            .create_and_prune(policy, first, power, report, turn)
            .await;
        if let Ok(true) = result {
            return Ok(Some(Requested {
                server_name: prepared.server_name.clone(),
            }));
        }
        if hooks.post.is_some() {
            let completed = report.result == RunResult::Created && result.is_ok();
            let id = report.created_id;
            self.post_hook(policy, &env, completed, id).await;
        }
        result.map(|_| None)
    }

    /// A snapshot in progress blocks the server (nothing is created or deleted beside it).
    /// Within `snapshot_timeout` that is a skip; past it, the snapshot is stuck, and a run
    /// that can never create anything is a failure that names it (it is still not deleted):
    /// the stuck snapshots' names, and that failure's words.
    fn stuck(&self, snapshots: &[Snapshot]) -> Option<(Vec<String>, String)> {
        let now = self.clock.now();
        let stuck: Vec<&Snapshot> = snapshots
            .iter()
            .filter(|s| !s.status.is_settled())
            .filter(|s| wall_after(s.created_at, self.settings.snapshot_timeout) <= now)
            .collect();
        if stuck.is_empty() {
            return None;
        }
        let names = stuck.iter().map(|s| s.name.clone()).collect();
        let stuck: Vec<String> = stuck
            .iter()
            .map(|s| {
                let age = (now - s.created_at).to_std().unwrap_or_default();
                format!(
                    "{} (id {}, {} for {})",
                    s.name,
                    s.id,
                    s.status,
                    crate::plan::rough_age(age)
                )
            })
            .collect();
        let shown = 10;
        let stuck = if stuck.len() > shown {
            format!(
                "{} and {} more",
                stuck[..shown].join(", "),
                stuck.len() - shown
            )
        } else {
            stuck.join(", ")
        };
        let reason = format!(
            "snapshot stuck longer than snapshot_timeout {}: {}; it blocks every snapshot of \
             this server and is not deleted; ask the provider about it or delete it by hand",
            humantime::format_duration(self.settings.snapshot_timeout),
            stuck
        );
        Some((names, reason))
    }

    /// Runs the post hook with `RESULT` and, when a snapshot exists, `SNAPSHOT_ID`.
    pub(super) async fn post_hook(
        &self,
        policy: &Policy,
        env: &[(&'static str, String)],
        success: bool,
        snapshot_id: Option<u64>,
    ) {
        let Some(post) = &policy.hooks.post else {
            return;
        };
        let mut env = env.to_vec();
        env.push(("PHASE", "post".into()));
        env.push(("RESULT", if success { "success" } else { "failure" }.into()));
        if let Some(id) = snapshot_id {
            env.push(("SNAPSHOT_ID", id.to_string()));
        }
        let outcome = crate::hooks::run("post", post, &env, policy.hooks.timeout).await;
        if !outcome.success {
            tracing::error!(detail = %outcome.detail, "post hook failed");
        }
    }

    /// Deletes what the plan says must go now or before the create.
    async fn delete_planned(
        &self,
        policy: &Policy,
        plan: &Plan,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        for d in plan.deletes_now().chain(plan.deletes_before_create()) {
            tracing::info!(delete = %d.name, "{}", d.reason);
            self.journal.fence().await?;
            self.provider.delete_snapshot(d.snapshot_id).await?;
            metrics::counter!(crate::series::SNAPSHOTS_DELETED, "policy" => policy.name.clone())
                .increment(1);
            report.deleted.push(d.name.clone());
        }
        Ok(())
    }

    /// Free a slot → (stop) → create → wait → (start) → prune by a second plan. Without a
    /// stop, it ends once the snapshot is requested: `true`, it is to be waited for.
    async fn create_and_prune(
        &self,
        policy: &Policy,
        first: &Plan,
        power: Option<PowerState>,
        report: &mut ServerReport,
        turn: &mut Turn,
    ) -> anyhow::Result<bool> {
        let (server, slot) = (first.server, first.slot);
        let name = &first
            .create()
            .map_or_else(|| policy.snapshot_name(slot), |c| c.name.clone());
        if self.shutdown.is_stopping() {
            anyhow::bail!("shutting down; no snapshot taken");
        }
        // A pre hook may have taken a while (or changed the server): look again after one.
        let power = match power {
            Some(_) if policy.hooks.pre.is_some() => match self.power_state(server).await? {
                Ok(state) => Some(state),
                Err(busy) => {
                    report.result = RunResult::Skipped;
                    report.message = busy;
                    return Ok(false);
                }
            },
            known => known,
        };
        self.delete_planned(policy, first, report).await?;
        if power.is_none() {
            self.request(policy, server, name).await?;
            // Waiting costs only a place in the shared poll, so the turn goes to the next
            // server now. What is left after the wait (a prune) is a request or two.
            turn.give_back();
            return Ok(true);
        }
        let outcome = self.snapshot(policy, server, name, power).await;
        let (settled, listing_after) = match outcome {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                report.result = RunResult::Skipped;
                report.message =
                    "server is busy (neither running nor stopped); not snapshotted".into();
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.after_wait(policy, server, slot, &settled, &listing_after, report)
            .await
            .map(|()| false)
    }

    /// After the wait: prune by a second plan on what the provider says now, and say how the
    /// snapshot ended.
    pub(super) async fn after_wait(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        settled: &Snapshot,
        listing_after: &[Snapshot],
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        report.created = Some(settled.name.clone());
        report.created_id = Some(settled.id);

        // Prune with what the provider says now: the second plan deletes what is beyond the
        // rules only because a newer snapshot has completed (or cleans up our failed one).
        self.note_listing(policy, server, listing_after);
        let second = plan(
            policy,
            &server.into(),
            listing_after,
            slot,
            self.clock.now(),
        );
        for d in second.deletes_now() {
            tracing::info!(delete = %d.name, "{}", d.reason);
            let deleted = match self.journal.fence().await {
                Ok(()) => self.provider.delete_snapshot(d.snapshot_id).await,
                Err(e) => {
                    tracing::warn!(error = %e, snapshot = %d.name, "could not prune; the next run tries again");
                    continue;
                }
            };
            match deleted {
                Ok(()) => {
                    metrics::counter!(crate::series::SNAPSHOTS_DELETED, "policy" => policy.name.clone()).increment(1);
                    report.deleted.push(d.name.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, snapshot = %d.name, "could not prune; the next run tries again")
                }
            }
        }
        match &settled.status {
            SnapshotStatus::Completed => {
                metrics::counter!(crate::series::SNAPSHOTS_CREATED, "policy" => policy.name.clone()).increment(1);
                metrics::gauge!(crate::series::LAST_SUCCESS, "policy" => policy.name.clone(), "server" => server.to_string())
                    .set(self.clock.now().timestamp() as f64);
                report.result = RunResult::Created;
                report.message = format!(
                    "created {} ({}); deleted {}",
                    settled.name,
                    crate::format::format_size(settled.size_mb),
                    if report.deleted.is_empty() {
                        "nothing".to_owned()
                    } else {
                        report.deleted.join(", ")
                    }
                );
            }
            status => {
                metrics::counter!(crate::series::SNAPSHOTS_FAILED, "policy" => policy.name.clone())
                    .increment(1);
                anyhow::bail!(
                    "snapshot {} ended {status}{}",
                    settled.name,
                    if report.deleted.contains(&settled.name) {
                        "; deleted it"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }

    /// Sends the create of `name` (recorded first).
    async fn request(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
    ) -> anyhow::Result<Snapshot> {
        let request = CreateSnapshot {
            server_id: server,
            name: name.to_owned(),
            description: Some(policy.description.clone()),
        };
        let created = self.create_recorded(policy, &request).await?;
        tracing::info!(
            id = created.id,
            "snapshot requested; waiting for it to finish"
        );
        Ok(created)
    }

    /// Creates `name` on a server stopped for it (or a `stop_server` policy's server found
    /// stopped) and waits for it, holding the turn: at most `max_concurrent` servers are down
    /// at once.
    pub(super) async fn create_and_wait(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
    ) -> anyhow::Result<(Snapshot, Vec<Snapshot>)> {
        self.request(policy, server, name).await?;
        match self.wait_for(server, name, true).await {
            Waited::Settled(s, listing) => Ok((s, listing.snapshots())),
            Waited::TimedOut(unsettled) => anyhow::bail!("{unsettled}"),
            Waited::Cancelled => {
                anyhow::bail!("stopped waiting for snapshot {name}: shutting down")
            }
        }
    }

    /// Records the create in the ledger (durably) before it is sent, and its answer after:
    /// a later run in this slot then never sends the name again while its answer is unknown.
    /// A create that cannot be recorded is not sent. Once the shutdown hurries, a create whose
    /// answer was lost is no longer looked for (a stopped server waits for it).
    async fn create_recorded(
        &self,
        policy: &Policy,
        request: &CreateSnapshot,
    ) -> anyhow::Result<Snapshot> {
        let ledger = self.journal.creates();
        let record = |answer| Record {
            server: request.server_id,
            policy: policy.name.clone(),
            name: request.name.clone(),
            at: self.clock.now(),
            answer,
        };
        ledger.record(record(Answer::Unknown)).await.map_err(|e| {
            anyhow::anyhow!("refusing to create snapshot {}: the create cannot be recorded ({e}); no snapshot taken", request.name)
        })?;
        let answer = self
            .provider
            .create_snapshot_unless(request, self.shutdown.hurried())
            .await;
        let outcome = match &answer {
            Ok(_) => Some(Answer::Created),
            Err(e) if e.not_carried_out() => Some(Answer::Refused),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            // Lost in a crash, the record stays "unknown": the next run only looks harder.
            if let Err(e) = ledger.record(record(outcome)).await {
                tracing::warn!(error = %e, "could not record the create's answer");
            }
        }
        Ok(answer?)
    }
}

fn dry_run_summary(policy: &Policy, p: &Plan) -> String {
    let mut parts = Vec::new();
    if let (Some(pre), Some(_)) = (&policy.hooks.pre, p.create()) {
        parts.push(format!("would run pre hook {pre:?}"));
    }
    for d in p.deletes_now().chain(p.deletes_before_create()) {
        parts.push(format!("would delete {} ({})", d.name, d.reason));
    }
    match p.create() {
        Some(c) => parts.push(format!("would create {} ({})", c.name, c.reason)),
        None => parts.push(p.outcome_line().to_owned()),
    }
    if let (Some(post), Some(_)) = (&policy.hooks.post, p.create()) {
        parts.push(format!("would run post hook {post:?}"));
    }
    for d in p.deferred() {
        parts.push(format!("then would delete {} ({})", d.name, d.reason));
    }
    parts.join("; ")
}
