//! When policies fire. A small state machine per policy (the newest slot already handled) and
//! one loop for all of them: sleep until the earliest next fire, never more than 60 s at once,
//! and re-read the wall clock on every wake. So suspend, NTP steps and VM pauses neither lose
//! nor double a run, and an idle daemon wakes at most once a minute however many policies
//! it has. (tokio-cron-scheduler ticks every 500 ms and freezes a timezone's offset.)
//!
//! A slot is caught up only when it was missed: later than the newest slot recorded as handled
//! for the policy (the run log in `state_dir`) and already past. A policy seen for the first
//! time, or whose schedule changed (while stopped, or by a reload), is handled up to now and
//! waits for its next fire: a fresh install of a 03:00 `stop_server` policy started at 17:38
//! must not stop the server at 17:38.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::policy::Policy;

/// The longest single sleep: the wall clock is re-read at least this often.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A fire later than this after its slot did not come from a normal wake: the host slept,
/// the process was down, or the wall clock jumped forward.
pub const LATE_AFTER: chrono::Duration = chrono::Duration::seconds(90);

/// A recorded slot later than now by more than this was recorded by a clock that was ahead
/// (or this one is behind): taken as handled up to now, or the policy would not fire until
/// that time comes. Less is an ordinary step back of the clock, and must not run a slot twice.
pub const CLOCK_AHEAD: chrono::Duration = chrono::Duration::hours(1);

/// What a policy handled before this process started, as recorded in `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The newest slot handled on any of its servers.
    pub slot: DateTime<Utc>,
    /// The schedule expression and timezone it was handled under; `None` when the record
    /// predates them (it is then taken to be the current schedule).
    pub schedule: Option<(String, String)>,
}

impl Recorded {
    /// Whether this record was made under the policy's current schedule.
    fn same_schedule(&self, policy: &Policy) -> bool {
        self.schedule.as_ref().is_none_or(|(expr, tz)| {
            expr == policy.schedule.expr() && tz == policy.schedule.timezone().name()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireKind {
    OnTime,
    /// The slot was missed (down, asleep, clock jump); run once for the latest one.
    CatchUp,
}

#[derive(Debug, Clone)]
pub struct Fire {
    pub policy: Policy,
    pub slot: DateTime<Utc>,
    pub kind: FireKind,
}

#[derive(Debug)]
struct PolicyState {
    policy: Policy,
    /// Slots at or before this are handled (fired, or deliberately skipped).
    handled: DateTime<Utc>,
}

/// The schedule state of every policy. Pure: time comes in as an argument.
#[derive(Debug, Default)]
pub struct Scheduler {
    policies: Vec<PolicyState>,
}

impl Scheduler {
    /// Starts at `now`. A policy resumes from its recorded slot, so the loop's first
    /// [`due`](Self::due) catches up the latest slot if it was missed; a policy without a record
    /// under its current schedule starts handled up to `now`. Returns those marks (policy,
    /// handled up to) for the caller to record, so a restart does not take them for missed.
    pub fn new(
        policies: Vec<Policy>,
        now: DateTime<Utc>,
        recorded: impl Fn(&Policy) -> Option<Recorded>,
    ) -> (Self, Vec<(Policy, DateTime<Utc>)>) {
        let mut s = Self::default();
        let mut marks = Vec::new();
        for policy in policies {
            let handled = match recorded(&policy) {
                Some(r) if r.same_schedule(&policy) && r.slot > now + CLOCK_AHEAD => {
                    tracing::warn!(policy = %policy.name, recorded = %r.slot, "the newest handled slot recorded for this policy is later than now: the clock was ahead then, or is behind now; taking it as handled up to now");
                    marks.push((policy.clone(), now));
                    now
                }
                Some(r) if r.same_schedule(&policy) => r.slot,
                Some(_) => {
                    tracing::info!(policy = %policy.name, "the schedule changed since the last run; waiting for its next fire");
                    marks.push((policy.clone(), now));
                    now
                }
                None => {
                    tracing::info!(policy = %policy.name, "no run of this policy recorded; waiting for its next fire");
                    marks.push((policy.clone(), now));
                    now
                }
            };
            s.policies.push(PolicyState { policy, handled });
        }
        (s, marks)
    }

    /// Swaps in a new policy set (SIGHUP). A policy that keeps its name and schedule keeps its
    /// state, so a reload never repeats a fire; a new or changed one is handled up to `now`
    /// and waits for its next fire: a reload never fires. Returns the new marks to record.
    pub fn replace(
        &mut self,
        policies: Vec<Policy>,
        now: DateTime<Utc>,
    ) -> Vec<(Policy, DateTime<Utc>)> {
        let mut old = std::mem::take(&mut self.policies);
        let mut marks = Vec::new();
        for policy in policies {
            let kept = old.iter().position(|o| {
                o.policy.name == policy.name
                    && o.policy.schedule.expr() == policy.schedule.expr()
                    && o.policy.schedule.timezone() == policy.schedule.timezone()
            });
            let handled = match kept {
                Some(i) => old.swap_remove(i).handled,
                None => {
                    marks.push((policy.clone(), now));
                    now
                }
            };
            self.policies.push(PolicyState { policy, handled });
        }
        marks
    }

    /// What is due at `now`: at most one fire per policy, for its latest slot. A wall clock that
    /// went backwards finds its slots handled already, so nothing runs twice; one that went
    /// back by more than [`CLOCK_AHEAD`] was wrong before, and firing resumes from now.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Fire> {
        let mut fires = Vec::new();
        for state in &mut self.policies {
            if state.handled > now + CLOCK_AHEAD {
                tracing::warn!(policy = %state.policy.name, handled = %state.handled, "the clock went back by more than an hour; slots after now fire again as they come");
                state.handled = now;
            }
            let Some(slot) = state.policy.schedule.slot_at(now) else {
                continue;
            };
            if slot <= state.handled {
                continue;
            }
            state.handled = slot;
            let kind = if now - slot > LATE_AFTER {
                FireKind::CatchUp
            } else {
                FireKind::OnTime
            };
            if kind == FireKind::CatchUp && !state.policy.catch_up {
                tracing::warn!(policy = %state.policy.name, %slot, "missed a scheduled slot (host asleep or clock jumped) and catch_up = false; skipping it");
                continue;
            }
            fires.push(Fire {
                policy: state.policy.clone(),
                slot,
                kind,
            });
        }
        fires
    }

    /// The earliest next fire of any policy after `now`.
    pub fn next_fire(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, &Policy)> {
        self.policies
            .iter()
            .filter_map(|s| s.policy.schedule.next_after(now).map(|t| (t, &s.policy)))
            .min_by_key(|(t, _)| *t)
    }

    /// Each policy's next fire, for metrics and `status`.
    pub fn next_fires(&self, now: DateTime<Utc>) -> Vec<(&Policy, Option<DateTime<Utc>>)> {
        self.policies
            .iter()
            .map(|s| (&s.policy, s.policy.schedule.next_after(now)))
            .collect()
    }

    /// How long to sleep from `now`: until the next fire, but at most `cap`.
    pub fn sleep_for(&self, now: DateTime<Utc>, cap: Duration) -> Duration {
        match self.next_fire(now) {
            Some((t, _)) => (t - now).to_std().unwrap_or(Duration::ZERO).min(cap),
            None => cap,
        }
    }
}

/// What the loop needs from its owner and reports to it.
pub trait LoopEvents: Send {
    /// What `policy` handled before this process started; `None` when nothing is recorded.
    fn recorded(&self, policy: &Policy) -> Option<Recorded>;
    /// `policy` is handled up to `at` without a fire (its first start, a changed schedule):
    /// record it, so a restart does not take the slots before `at` for missed ones.
    fn handled(&mut self, policy: &Policy, at: DateTime<Utc>);
    /// A fire: record its slot as handled before its work starts.
    fn fire(&mut self, fire: Fire);
    /// A policy set took effect (start-up, reload).
    fn configured(&mut self, _policies: &[Policy]) {}
    /// Called on every wake with the next fire (for sd_notify STATUS=, WATCHDOG=1, metrics).
    fn woke(&mut self, _scheduler: &Scheduler, _now: DateTime<Utc>) {}
}

/// The scheduler loop: runs until `shutdown`. `reload` delivers new policy sets; `cap` bounds
/// one sleep (60 s, or less when the systemd watchdog needs pings more often).
pub async fn run_loop(
    policies: Vec<Policy>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    mut reload: watch::Receiver<Vec<Policy>>,
    cap: Duration,
    events: &mut dyn LoopEvents,
) {
    events.configured(&policies);
    let (mut scheduler, marks) = Scheduler::new(policies, clock.now(), |p| events.recorded(p));
    for (policy, at) in marks {
        events.handled(&policy, at);
    }
    // Once nobody can send reloads any more, stop listening (a closed channel is always ready).
    let mut reloads_open = true;
    loop {
        let now = clock.now();
        for fire in scheduler.due(now) {
            events.fire(fire);
        }
        events.woke(&scheduler, now);
        let sleep = scheduler.sleep_for(now, cap);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = shutdown.cancelled() => return,
            changed = reload.changed(), if reloads_open => {
                if changed.is_err() {
                    reloads_open = false;
                    continue;
                }
                let policies = reload.borrow_and_update().clone();
                events.configured(&policies);
                for (policy, at) in scheduler.replace(policies, clock.now()) {
                    events.handled(&policy, at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(name: &str, expr: &str, tz: &str, catch_up: bool) -> Policy {
        Policy {
            catch_up,
            ..crate::fixtures::policy_at(name, expr, tz.parse().unwrap())
        }
    }

    /// Records fires and wakes; keeps handled slots in a real run log, so a "restart" (a new
    /// loop on the same directory) sees what the one before recorded.
    struct Recorder {
        fires: Vec<(String, DateTime<Utc>, FireKind)>,
        wakes: usize,
        runlog: crate::runlog::RunLog,
    }

    impl Recorder {
        fn new(state_dir: &std::path::Path) -> Self {
            Self {
                fires: Vec::new(),
                wakes: 0,
                runlog: crate::runlog::RunLog::open(state_dir),
            }
        }
    }

    impl LoopEvents for Recorder {
        fn recorded(&self, policy: &Policy) -> Option<Recorded> {
            self.runlog.recorded(&policy.name)
        }
        fn handled(&mut self, policy: &Policy, at: DateTime<Utc>) {
            futures_util::FutureExt::now_or_never(self.runlog.mark_handled(policy, at))
                .expect("a write to state_dir does not wait")
                .unwrap();
        }
        fn fire(&mut self, f: Fire) {
            futures_util::FutureExt::now_or_never(self.runlog.mark_fired(&f.policy, f.slot))
                .expect("a write to state_dir does not wait")
                .unwrap();
            self.fires.push((f.policy.name, f.slot, f.kind));
        }
        fn woke(&mut self, _: &Scheduler, _: DateTime<Utc>) {
            self.wakes += 1;
        }
    }

    /// Runs the real loop on tokio's paused clock from `start` for `span`, with wall-clock
    /// jumps applied at the given offsets; returns what fired and how often it woke. Starts
    /// like a fresh install (nothing recorded).
    async fn simulate(
        policies: Vec<Policy>,
        start: &str,
        span: Duration,
        jumps: &[(Duration, chrono::Duration)],
    ) -> Recorder {
        let dir = tempfile::tempdir().unwrap();
        life(dir.path(), policies, start, span, jumps, None).await
    }

    /// One life of the loop on `state_dir`: from `start` for `span`, with wall-clock jumps and
    /// an optional reload (at an offset, to a policy set).
    async fn life(
        state_dir: &std::path::Path,
        policies: Vec<Policy>,
        start: &str,
        span: Duration,
        jumps: &[(Duration, chrono::Duration)],
        reload: Option<(Duration, Vec<Policy>)>,
    ) -> Recorder {
        let clock = TokioClock::starting_at(utc(start));
        let shutdown = CancellationToken::new();
        let (tx, rx) = watch::channel(Vec::new());
        let mut rec = Recorder::new(state_dir);
        let driver = {
            let clock = clock.clone();
            let shutdown = shutdown.clone();
            let jumps = jumps.to_vec();
            // Borrowed: a sender dropped when the driver ends would wake the loop once more.
            let tx = &tx;
            async move {
                let mut elapsed = Duration::ZERO;
                for (at, by) in jumps {
                    tokio::time::sleep(at - elapsed).await;
                    elapsed = at;
                    clock.jump(by);
                }
                if let Some((at, policies)) = reload {
                    tokio::time::sleep(at - elapsed).await;
                    elapsed = at;
                    tx.send(policies).unwrap();
                }
                tokio::time::sleep(span - elapsed).await;
                shutdown.cancel();
            }
        };
        let clock: Arc<dyn Clock> = clock;
        tokio::join!(
            run_loop(policies, clock, shutdown.clone(), rx, MAX_SLEEP, &mut rec),
            driver
        );
        rec
    }

    fn slots(rec: &Recorder) -> Vec<String> {
        rec.fires
            .iter()
            .map(|(p, s, k)| format!("{p} {} {k:?}", s.format("%Y-%m-%dT%H:%M:%SZ")))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn five_field_six_field_and_daily_fire_at_their_slots() {
        let rec = simulate(
            vec![
                policy("five", "*/20 * * * *", "UTC", false),
                policy("six", "30 10 * * * *", "UTC", false),
                policy("daily", "@daily", "UTC", false),
            ],
            "2025-01-14T23:30:00Z",
            Duration::from_secs(3600),
            &[],
        )
        .await;
        assert_eq!(
            slots(&rec),
            [
                "five 2025-01-14T23:40:00Z OnTime",
                "five 2025-01-15T00:00:00Z OnTime",
                "daily 2025-01-15T00:00:00Z OnTime",
                "six 2025-01-15T00:10:30Z OnTime",
                "five 2025-01-15T00:20:00Z OnTime",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timezone_schedule_fires_at_local_time() {
        let rec = simulate(
            vec![policy("berlin", "30 2 * * *", "Europe/Berlin", false)],
            "2025-01-15T00:00:00Z",
            Duration::from_secs(2 * 3600),
            &[],
        )
        .await;
        assert_eq!(slots(&rec), ["berlin 2025-01-15T01:30:00Z OnTime"]);
    }

    #[tokio::test(start_paused = true)]
    async fn daily_0230_berlin_runs_once_on_spring_forward_and_once_on_fall_back() {
        for (start, want) in [
            ("2025-03-29T12:00:00Z", "berlin 2025-03-30T01:00:00Z OnTime"),
            ("2025-10-25T12:00:00Z", "berlin 2025-10-26T00:30:00Z OnTime"),
        ] {
            let rec = simulate(
                vec![policy("berlin", "30 2 * * *", "Europe/Berlin", false)],
                start,
                Duration::from_secs(24 * 3600),
                &[],
            )
            .await;
            assert_eq!(slots(&rec), [want], "from {start}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hourly_runs_every_real_hour_across_fall_back() {
        let rec = simulate(
            vec![policy("hourly", "0 * * * *", "Europe/Berlin", false)],
            "2025-10-25T23:30:00Z",
            Duration::from_secs(4 * 3600),
            &[],
        )
        .await;
        assert_eq!(rec.fires.len(), 4, "{:?}", slots(&rec));
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_jump_forward_catches_up_once() {
        // Hourly; the wall clock leaps 5 hours (a resumed VM): one catch-up for the latest slot.
        // (The 10:00 slot before the first start is not caught up: nothing was missed yet.)
        let rec = simulate(
            vec![policy("hourly", "0 * * * *", "UTC", true)],
            "2025-01-15T10:10:00Z",
            Duration::from_secs(30 * 60),
            &[(Duration::from_secs(60), chrono::Duration::hours(5))],
        )
        .await;
        assert_eq!(slots(&rec), ["hourly 2025-01-15T15:00:00Z CatchUp"]);
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_jump_backward_does_not_run_twice() {
        // Fires at 10:30, then NTP steps the clock back 20 minutes: 10:30 must not run again.
        let rec = simulate(
            vec![policy("daily", "30 10 * * *", "UTC", false)],
            "2025-01-15T10:29:00Z",
            Duration::from_secs(60 * 60),
            &[(Duration::from_secs(5 * 60), chrono::Duration::minutes(-20))],
        )
        .await;
        assert_eq!(slots(&rec), ["daily 2025-01-15T10:30:00Z OnTime"]);
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_two_days_back_resumes_firing_at_the_next_slot() {
        // Fires at 10:30, then the clock is corrected two days back: the policy is not silent
        // for two days.
        let rec = simulate(
            vec![policy("daily", "30 10 * * *", "UTC", false)],
            "2025-01-17T10:29:00Z",
            Duration::from_secs(25 * 3600),
            &[(Duration::from_secs(5 * 60), chrono::Duration::days(-2))],
        )
        .await;
        assert_eq!(
            slots(&rec),
            [
                "daily 2025-01-17T10:30:00Z OnTime",
                "daily 2025-01-16T10:30:00Z OnTime",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_catch_up_a_missed_slot_is_skipped() {
        let rec = simulate(
            vec![policy("hourly", "0 * * * *", "UTC", false)],
            "2025-01-15T10:10:00Z",
            Duration::from_secs(30 * 60),
            &[(Duration::from_secs(60), chrono::Duration::hours(5))],
        )
        .await;
        assert!(rec.fires.is_empty(), "{:?}", slots(&rec));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_wakes_at_most_once_a_minute_with_many_policies() {
        let policies: Vec<Policy> = (0..100)
            .map(|i| policy(&format!("p{i}"), "30 2 * * *", "UTC", false))
            .collect();
        let rec = simulate(
            policies,
            "2025-01-15T10:00:00Z",
            Duration::from_secs(3600),
            &[],
        )
        .await;
        assert!(rec.fires.is_empty());
        assert!(rec.wakes <= 61, "woke {} times in an hour", rec.wakes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_reload_channel_does_not_make_the_loop_spin() {
        let clock = TokioClock::starting_at(utc("2025-01-15T10:00:00Z"));
        let shutdown = CancellationToken::new();
        let (tx, rx) = watch::channel(Vec::new());
        drop(tx);
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::new(dir.path());
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                shutdown.cancel();
            }
        };
        let clock: Arc<dyn Clock> = clock;
        let policies = vec![policy("daily", "30 2 * * *", "UTC", false)];
        tokio::join!(
            run_loop(policies, clock, shutdown.clone(), rx, MAX_SLEEP, &mut rec),
            stop
        );
        // 60 timer wakes, the start, and the one that noticed the channel closed.
        assert!(rec.wakes <= 62, "woke {} times in an hour", rec.wakes);
    }

    #[test]
    fn reload_keeps_state_of_unchanged_policies_and_starts_new_ones() {
        let now = utc("2025-01-15T10:10:00Z");
        let last = Recorded {
            slot: utc("2025-01-15T09:00:00Z"),
            schedule: Some(("0 * * * *".into(), "UTC".into())),
        };
        let (mut s, marks) =
            Scheduler::new(vec![policy("a", "0 * * * *", "UTC", true)], now, |_| {
                Some(last.clone())
            });
        assert!(
            marks.is_empty(),
            "a recorded policy resumes from its record"
        );
        assert_eq!(s.due(now).len(), 1, "10:00 was missed: caught up");
        let marks = s.replace(
            vec![
                policy("a", "0 * * * *", "UTC", true),
                policy("b", "5 * * * *", "UTC", true),
            ],
            now,
        );
        let names: Vec<_> = marks.iter().map(|(p, at)| (p.name.as_str(), *at)).collect();
        assert_eq!(names, [("b", now)], "only the new policy gets a mark");
        assert!(s.due(now).is_empty(), "a reload fires nothing");
    }

    /// One policy's record in the run log before a case starts.
    enum Before {
        Nothing,
        /// Handled up to this slot, under this schedule and timezone.
        Handled(&'static str, &'static str, &'static str, &'static str),
        /// Only a last run of this slot (a run log from before handled slots were kept).
        LastRun(&'static str, &'static str),
    }

    /// A daily 03:00 `stop_server` policy, as in the reports that led to these rules.
    fn db(name: &str, expr: &str, tz: &str) -> Policy {
        Policy {
            stop_server: true,
            ..policy(name, expr, tz, true)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_fires_only_for_a_slot_missed_after_the_policy_was_recorded() {
        use Before::*;
        const H: Duration = Duration::from_secs(3600);
        /// A life: its start, its policies, and a reload a minute in.
        type Life = (&'static str, Vec<Policy>, Option<Vec<Policy>>);
        struct Case {
            name: &'static str,
            before: Before,
            /// Each runs for `span`.
            lives: Vec<Life>,
            span: Duration,
            want: &'static [&'static str],
        }
        let daily = || vec![db("db", "0 3 * * *", "UTC")];
        let cases = vec![
            Case {
                name: "first start after the day's slot: waits for the next one",
                before: Nothing,
                lives: vec![("2025-01-15T17:38:00Z", daily(), None)],
                span: 12 * H,
                want: &["db 2025-01-16T03:00:00Z OnTime"],
            },
            Case {
                name: "first start, then a restart after a slot missed while down",
                before: Nothing,
                lives: vec![
                    ("2025-01-15T17:38:00Z", daily(), None),
                    ("2025-01-16T09:00:00Z", daily(), None),
                ],
                span: H,
                want: &["db 2025-01-16T03:00:00Z CatchUp"],
            },
            Case {
                name: "restart after a missed slot catches it up once",
                before: Handled("db", "2025-01-14T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![
                    ("2025-01-15T17:38:00Z", daily(), None),
                    ("2025-01-15T17:40:00Z", daily(), None),
                ],
                span: H,
                want: &["db 2025-01-15T03:00:00Z CatchUp"],
            },
            Case {
                name: "a failed slot is handled: three restarts run it no more",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![
                    ("2025-01-15T03:20:00Z", daily(), None),
                    ("2025-01-15T09:00:00Z", daily(), None),
                    ("2025-01-15T17:38:00Z", daily(), None),
                ],
                span: H,
                want: &[],
            },
            Case {
                name: "a last run without a schedule still counts as handled",
                before: LastRun("db", "2025-01-15T03:00:00Z"),
                lives: vec![("2025-01-15T17:38:00Z", daily(), None)],
                span: H,
                want: &[],
            },
            Case {
                // A last run says nothing of the schedule it ran under (`once`, an older
                // release, a lost handled-slots file): the policy starts like a new one.
                name: "a last run without handled slots: waits for the next fire",
                before: LastRun("db", "2025-01-14T03:00:00Z"),
                lives: vec![("2025-01-15T17:38:00Z", daily(), None)],
                span: 12 * H,
                want: &["db 2025-01-16T03:00:00Z OnTime"],
            },
            Case {
                name: "a reload moving the schedule to 04:00 waits for tomorrow's 04:00",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![(
                    "2025-01-15T17:38:00Z",
                    daily(),
                    Some(vec![db("db", "0 4 * * *", "UTC")]),
                )],
                span: 12 * H,
                want: &["db 2025-01-16T04:00:00Z OnTime"],
            },
            Case {
                name: "a restart after that reload does not take today's 04:00 for missed",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![
                    (
                        "2025-01-15T17:38:00Z",
                        daily(),
                        Some(vec![db("db", "0 4 * * *", "UTC")]),
                    ),
                    (
                        "2025-01-15T18:00:00Z",
                        vec![db("db", "0 4 * * *", "UTC")],
                        None,
                    ),
                ],
                span: H,
                want: &[],
            },
            Case {
                name: "schedule changed while stopped: not missed",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![(
                    "2025-01-15T17:38:00Z",
                    vec![db("db", "0 4 * * *", "UTC")],
                    None,
                )],
                span: H,
                want: &[],
            },
            Case {
                name: "rename: a new name starts like a new policy",
                before: Handled("db", "2025-01-14T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![(
                    "2025-01-15T17:38:00Z",
                    vec![db("database", "0 3 * * *", "UTC")],
                    None,
                )],
                span: H,
                want: &[],
            },
            Case {
                name: "timezone change while stopped (03:00 New York is 08:00 UTC): not missed",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![(
                    "2025-01-15T17:38:00Z",
                    vec![db("db", "0 3 * * *", "America/New_York")],
                    None,
                )],
                span: H,
                want: &[],
            },
            Case {
                name: "timezone change by a reload: not missed",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![(
                    "2025-01-15T17:38:00Z",
                    daily(),
                    Some(vec![db("db", "0 3 * * *", "America/New_York")]),
                )],
                span: H,
                want: &[],
            },
            Case {
                name: "a record a year ahead (the clock was wrong then): fires at the next slot",
                before: Handled("db", "2026-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![
                    ("2025-01-15T17:38:00Z", daily(), None),
                    ("2025-01-16T09:00:00Z", daily(), None),
                ],
                span: 12 * H,
                want: &["db 2025-01-16T03:00:00Z OnTime"],
            },
            Case {
                name: "a record minutes ahead (the clock stepped back): no slot twice",
                before: Handled("db", "2025-01-15T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![("2025-01-15T02:50:00Z", daily(), None)],
                span: H,
                want: &[],
            },
            Case {
                name: "missed with catch_up = false: skipped, and not on the next start either",
                before: Handled("db", "2025-01-14T03:00:00Z", "0 3 * * *", "UTC"),
                lives: vec![
                    (
                        "2025-01-15T17:38:00Z",
                        vec![policy("db", "0 3 * * *", "UTC", false)],
                        None,
                    ),
                    (
                        "2025-01-15T17:40:00Z",
                        vec![policy("db", "0 3 * * *", "UTC", false)],
                        None,
                    ),
                ],
                span: H,
                want: &[],
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().unwrap();
            let log = crate::runlog::RunLog::open(dir.path());
            match case.before {
                Nothing => {}
                Handled(name, slot, expr, tz) => log
                    .mark_fired(&db(name, expr, tz), utc(slot))
                    .await
                    .unwrap(),
                LastRun(name, slot) => {
                    log.record(crate::runlog::LastRun {
                        policy: name.into(),
                        server: 1,
                        slot: utc(slot),
                        finished_at: utc(slot),
                        result: crate::report::RunResult::Failed,
                        message: String::new(),
                        created: None,
                    });
                    log.flush().await;
                }
            }
            let mut fired = Vec::new();
            for (start, policies, reload) in case.lives {
                let reload = reload.map(|p| (Duration::from_secs(60), p));
                let rec = life(dir.path(), policies, start, case.span, &[], reload).await;
                fired.extend(slots(&rec));
            }
            assert_eq!(fired, case.want, "{}", case.name);
        }
    }
}
