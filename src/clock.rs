//! Wall-clock time as a parameter. Timers are monotonic (tokio); the wall clock can jump
//! (suspend, NTP, VM pause), so anything that names a slot asks a `Clock`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that moves with tokio's clock (so a paused test clock moves both), plus an offset
/// tests can change to simulate a wall-clock jump.
#[derive(Debug)]
pub struct TokioClock {
    origin_wall: DateTime<Utc>,
    origin: tokio::time::Instant,
    jump: std::sync::Mutex<chrono::Duration>,
}

impl TokioClock {
    pub fn starting_at(origin_wall: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            origin_wall,
            origin: tokio::time::Instant::now(),
            jump: std::sync::Mutex::new(chrono::Duration::zero()),
        })
    }

    /// Moves the wall clock without moving the monotonic one (an NTP step or a resume).
    pub fn jump(&self, by: chrono::Duration) {
        *self.jump.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.origin.elapsed()).unwrap_or_default();
        self.origin_wall + elapsed + *self.jump.lock().unwrap_or_else(|e| e.into_inner())
    }
}
