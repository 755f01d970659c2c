//! When policies fire. A small state machine per policy (the newest slot already handled) and
//! one loop for all of them: sleep until the earliest next fire, never more than 60 s at once,
//! and re-read the wall clock on every wake. So suspend, NTP steps and VM pauses neither lose
//! nor double a run, and an idle daemon wakes at most once a minute however many policies
//! it has. (tokio-cron-scheduler ticks every 500 ms and freezes a timezone's offset.)

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
    /// Starts at `now`. With `catch_up`, a policy's latest slot before now is due at once (the
    /// executor makes that a no-op if the slot's snapshot exists); without, it is skipped.
    pub fn new(policies: Vec<Policy>, now: DateTime<Utc>) -> (Self, Vec<Fire>) {
        let mut s = Self::default();
        let fires = s.replace(policies, now);
        (s, fires)
    }

    /// Swaps in a new policy set (SIGHUP). A policy that keeps its name and schedule keeps its
    /// state, so a reload never repeats a fire; new or changed ones start like at start-up.
    pub fn replace(&mut self, policies: Vec<Policy>, now: DateTime<Utc>) -> Vec<Fire> {
        let mut old = std::mem::take(&mut self.policies);
        let mut fires = Vec::new();
        for policy in policies {
            let kept = old.iter().position(|o| {
                o.policy.name == policy.name
                    && o.policy.schedule.expr() == policy.schedule.expr()
                    && o.policy.schedule.timezone() == policy.schedule.timezone()
            });
            let handled = match kept {
                Some(i) => old.swap_remove(i).handled,
                None => {
                    let latest = policy.schedule.slot_at(now);
                    if let (true, Some(slot)) = (policy.catch_up, latest) {
                        fires.push(Fire {
                            policy: policy.clone(),
                            slot,
                            kind: FireKind::CatchUp,
                        });
                    }
                    latest.unwrap_or(now)
                }
            };
            self.policies.push(PolicyState { policy, handled });
        }
        fires
    }

    /// What is due at `now`: at most one fire per policy, for its latest slot. A wall clock that
    /// went backwards finds its slots handled already, so nothing runs twice.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Fire> {
        let mut fires = Vec::new();
        for state in &mut self.policies {
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

/// What the loop reports to its owner besides fires.
pub trait LoopEvents: Send {
    fn fire(&mut self, fire: Fire);
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
    let (mut scheduler, startup) = Scheduler::new(policies, clock.now());
    for fire in startup {
        events.fire(fire);
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
                for fire in scheduler.replace(policies, clock.now()) {
                    events.fire(fire);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::policy::Retention;
    use crate::schedule::Schedule;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(name: &str, expr: &str, tz: &str, catch_up: bool) -> Policy {
        Policy {
            name: name.into(),
            schedule: Schedule::parse(expr, tz.parse().unwrap()).unwrap(),
            servers: vec![1],
            retention: Retention {
                keep: 2,
                ..Default::default()
            },
            stop_server: false,
            description: String::new(),
            catch_up,
            prune_unmanaged: false,
            jitter: None,
            hooks: Default::default(),
            monitoring: Default::default(),
            on_journal_failure: Default::default(),
        }
    }

    #[derive(Default)]
    struct Recorder {
        fires: Vec<(String, DateTime<Utc>, FireKind)>,
        wakes: usize,
    }

    impl LoopEvents for Recorder {
        fn fire(&mut self, f: Fire) {
            self.fires.push((f.policy.name, f.slot, f.kind));
        }
        fn woke(&mut self, _: &Scheduler, _: DateTime<Utc>) {
            self.wakes += 1;
        }
    }

    /// Runs the real loop on tokio's paused clock from `start` for `span`, with wall-clock
    /// jumps applied at the given offsets; returns what fired and how often it woke.
    async fn simulate(
        policies: Vec<Policy>,
        start: &str,
        span: Duration,
        jumps: &[(Duration, chrono::Duration)],
    ) -> Recorder {
        let clock = TokioClock::starting_at(utc(start));
        let shutdown = CancellationToken::new();
        let (_tx, rx) = watch::channel(Vec::new());
        let mut rec = Recorder::default();
        let driver = {
            let clock = clock.clone();
            let shutdown = shutdown.clone();
            let jumps = jumps.to_vec();
            async move {
                let mut elapsed = Duration::ZERO;
                for (at, by) in jumps {
                    tokio::time::sleep(at - elapsed).await;
                    elapsed = at;
                    clock.jump(by);
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
        let rec = simulate(
            vec![policy("hourly", "0 * * * *", "UTC", true)],
            "2025-01-15T10:10:00Z",
            Duration::from_secs(30 * 60),
            &[(Duration::from_secs(60), chrono::Duration::hours(5))],
        )
        .await;
        assert_eq!(
            slots(&rec),
            [
                "hourly 2025-01-15T10:00:00Z CatchUp",
                "hourly 2025-01-15T15:00:00Z CatchUp",
            ]
        );
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
        let mut rec = Recorder::default();
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
        let (mut s, startup) = Scheduler::new(vec![policy("a", "0 * * * *", "UTC", true)], now);
        assert_eq!(startup.len(), 1);
        let fires = s.replace(
            vec![
                policy("a", "0 * * * *", "UTC", true),
                policy("b", "5 * * * *", "UTC", true),
            ],
            now,
        );
        let names: Vec<_> = fires.iter().map(|f| f.policy.name.as_str()).collect();
        assert_eq!(
            names,
            ["b"],
            "an unchanged policy does not fire again on reload"
        );
    }
}
