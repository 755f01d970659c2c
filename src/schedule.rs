//! When a policy fires: a cron expression evaluated in the policy's own timezone, so a daily
//! 02:30 Europe/Berlin stays at 02:30 local time across DST changes (croner resolves the gap
//! and the repeated hour; the offset is looked up per fire, never frozen).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

#[derive(Clone)]
pub struct Schedule {
    expr: String,
    /// Shared: a parsed pattern is kilobytes, and a fleet's work items each carry the policy.
    cron: Arc<Cron>,
    tz: Tz,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expr, self.tz)
    }
}

impl Schedule {
    /// Accepts 5-field cron, 6-field cron with seconds, and `@hourly`/`@daily`/`@weekly`/
    /// `@monthly`/`@yearly`.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, String> {
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{fields} fields; allowed: 5-field cron (\"30 2 * * *\"), 6-field with seconds \
                 (\"0 30 2 * * *\"), or @hourly, @daily, @weekly, @monthly"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| {
                format!(
                    "{e}; allowed: 5-field cron (\"30 2 * * *\"), 6-field with seconds \
                     (\"0 30 2 * * *\"), or @hourly, @daily, @weekly, @monthly"
                )
            })?;
        let schedule = Self {
            expr: trimmed.to_owned(),
            cron: Arc::new(cron),
            tz,
        };
        // A pattern that parses but never fires (e.g. 30 February) is an error too.
        if schedule.next_after(Utc::now()).is_none() {
            return Err("this schedule never fires".into());
        }
        Ok(schedule)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest fire at or before `t`: the slot a run at `t` belongs to.
    pub fn slot_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` fires after `t`, in the policy's timezone (for `check` and `status`).
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = t;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next.with_timezone(&self.tz));
                    cursor = next;
                }
                None => break,
            }
        }
        out
    }

    /// The typical gap between fires, used for freshness alarms: the smallest gap among the
    /// next few fires after `t`.
    pub fn period(&self, t: DateTime<Utc>) -> chrono::Duration {
        let fires = self.upcoming(t, 8);
        fires
            .windows(2)
            .map(|w| w[1].clone().with_timezone(&Utc) - w[0].clone().with_timezone(&Utc))
            .min()
            .unwrap_or_else(|| chrono::Duration::days(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn five_six_field_and_nicknames() {
        let t = utc("2025-01-15T10:00:00Z");
        let cases = [
            ("30 2 * * *", "UTC", "2025-01-16T02:30:00Z"),
            ("15 30 2 * * *", "UTC", "2025-01-16T02:30:15Z"),
            ("@daily", "UTC", "2025-01-16T00:00:00Z"),
            ("@hourly", "UTC", "2025-01-15T11:00:00Z"),
            ("30 2 * * *", "Europe/Berlin", "2025-01-16T01:30:00Z"),
        ];
        for (expr, tz, want) in cases {
            let s = Schedule::parse(expr, tz.parse().unwrap()).unwrap();
            assert_eq!(s.next_after(t), Some(utc(want)), "{expr} in {tz}");
        }
    }

    #[test]
    fn daily_0230_berlin_runs_once_on_both_dst_days() {
        let s = Schedule::parse("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        // Spring forward 2025-03-30: 02:30 does not exist; the fire is at 03:00 local (01:00Z).
        let fires = s.upcoming(utc("2025-03-29T12:00:00Z"), 2);
        let fires: Vec<_> = fires.iter().map(|f| f.with_timezone(&Utc)).collect();
        assert_eq!(
            fires,
            [utc("2025-03-30T01:00:00Z"), utc("2025-03-31T00:30:00Z")]
        );
        // Fall back 2025-10-26: 02:30 happens twice; the fire is once.
        let fires = s.upcoming(utc("2025-10-25T12:00:00Z"), 2);
        let fires: Vec<_> = fires.iter().map(|f| f.with_timezone(&Utc)).collect();
        assert_eq!(
            fires,
            [utc("2025-10-26T00:30:00Z"), utc("2025-10-27T01:30:00Z")]
        );
    }

    #[test]
    fn hourly_runs_every_real_hour_across_fall_back() {
        let s = Schedule::parse("0 * * * *", chrono_tz::Europe::Berlin).unwrap();
        let start = chrono::Utc
            .with_ymd_and_hms(2025, 10, 25, 23, 30, 0)
            .unwrap();
        let fires = s.upcoming(start, 4);
        let gaps: Vec<_> = fires
            .windows(2)
            .map(|w| (w[1].with_timezone(&Utc) - w[0].with_timezone(&Utc)).num_minutes())
            .collect();
        assert_eq!(gaps, [60, 60, 60]);
    }

    #[test]
    fn slot_at_is_the_latest_fire_not_after_now() {
        let s = Schedule::parse("30 2 * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.slot_at(utc("2025-01-15T02:30:00Z")),
            Some(utc("2025-01-15T02:30:00Z"))
        );
        assert_eq!(
            s.slot_at(utc("2025-01-15T10:00:00Z")),
            Some(utc("2025-01-15T02:30:00Z"))
        );
    }

    #[test]
    fn rejects_bad_cron_with_what_is_allowed() {
        for bad in ["61 * * * *", "* * *", "every day", "0 0 30 2 *"] {
            let err = Schedule::parse(bad, Tz::UTC).unwrap_err();
            assert!(
                err.contains("allowed") || err.contains("never"),
                "{bad}: {err}"
            );
        }
    }
}
