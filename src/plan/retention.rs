//! The keep rules: a union over the policy's own completed snapshots, newest first, with the
//! reason each kept one is kept.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::order::Point;
use crate::policy::Retention;

/// The calendar rules, each with its period in the policy's timezone.
#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    const ALL: [Self; 4] = [Self::Hour, Self::Day, Self::Week, Self::Month];

    fn count(self, rules: &Retention) -> u32 {
        match self {
            Self::Hour => rules.hourly,
            Self::Day => rules.daily,
            Self::Week => rules.weekly,
            Self::Month => rules.monthly,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Hour => "keep_hourly",
            Self::Day => "keep_daily",
            Self::Week => "keep_weekly",
            Self::Month => "keep_monthly",
        }
    }

    /// The period a slot falls in, as printed. The hour carries the UTC offset so the hour a
    /// fall-back repeats is two hours, not one.
    fn label(self, slot: DateTime<Utc>, tz: Tz) -> String {
        let local = slot.with_timezone(&tz);
        match self {
            Self::Hour => format!("hour {}", local.format("%Y-%m-%d %H:00%:z")),
            Self::Day => format!("day {}", local.format("%Y-%m-%d")),
            Self::Week => format!("week {}", local.format("%G-W%V")),
            Self::Month => format!("month {}", local.format("%Y-%m")),
        }
    }
}

/// Why each point is kept (empty: no rule keeps it). `points` must be newest first.
/// Calendar rules follow restic: the newest snapshot in each of the last N periods that have
/// one, so a gap of idle days does not shorten what is kept.
fn retain(rules: &Retention, tz: Tz, points: &[Point]) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); points.len()];
    for r in reasons.iter_mut().take(rules.keep as usize) {
        r.push(format!("newest completed (keep={})", rules.keep));
    }
    for period in Period::ALL {
        let count = period.count(rules);
        let mut left = count;
        let mut last: Option<String> = None;
        for (point, r) in points.iter().zip(reasons.iter_mut()) {
            if left == 0 {
                break;
            }
            let label = period.label(point.bucket, tz);
            if last.as_deref() != Some(label.as_str()) {
                r.push(format!("newest of {label} ({}={count})", period.key()));
                last = Some(label);
                left -= 1;
            }
        }
    }
    reasons
}

/// Retention over the given own completed snapshots plus, if planned, the new one (which will
/// be the newest completed snapshot of its slot). Returns the reasons per listing index.
pub(super) fn retain_own(
    rules: &Retention,
    tz: Tz,
    own: &[(usize, Point)],
    planned: Option<Point>,
) -> HashMap<usize, Vec<String>> {
    let mut items: Vec<(Option<usize>, Point)> = own
        .iter()
        .map(|&(i, p)| (Some(i), p))
        .chain(planned.map(|p| (None, p)))
        .collect();
    items.sort_by_key(|&(_, p)| std::cmp::Reverse(p));
    let points: Vec<Point> = items.iter().map(|(_, p)| *p).collect();
    items
        .iter()
        .zip(retain(rules, tz, &points))
        .filter_map(|((i, _), r)| i.map(|i| (i, r)))
        .collect()
}
