//! The process phase, shown on `/ready` and as the `meshgate_phase` gauge.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    /// Receiving the previous process's state and sockets.
    TakingOver = 1,
    Serving = 2,
    /// Handing state and sockets to the next process.
    HandingOver = 3,
    Draining = 4,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::TakingOver => "taking_over",
            Phase::Serving => "serving",
            Phase::HandingOver => "handing_over",
            Phase::Draining => "draining",
        }
    }

    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::TakingOver,
            2 => Phase::Serving,
            3 => Phase::HandingOver,
            4 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
}

/// The current phase, read without a lock by `/ready`.
#[derive(Debug, Default)]
pub struct ProcessPhase {
    current: AtomicU8,
    /// Serializes changes so the gauge and the log follow the order of the changes.
    changing: Mutex<()>,
}

impl ProcessPhase {
    pub fn get(&self) -> Phase {
        Phase::from_u8(self.current.load(Ordering::Acquire))
    }

    /// Moves to `new`, with its metric and a log line.
    pub fn set(&self, new: Phase) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.get();
        if previous == new {
            return;
        }
        if previous != Phase::Starting {
            metrics::gauge!("meshgate_phase", "phase" => previous.as_str()).set(0.0);
        }
        metrics::gauge!("meshgate_phase", "phase" => new.as_str()).set(1.0);
        tracing::info!(
            phase = new.as_str(),
            previous = previous.as_str(),
            "phase changed"
        );
        self.current.store(new as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_start_as_starting() {
        let phase = ProcessPhase::default();
        assert_eq!(phase.get(), Phase::Starting);
        for p in [
            Phase::TakingOver,
            Phase::Serving,
            Phase::HandingOver,
            Phase::Draining,
        ] {
            phase.set(p);
            assert_eq!(phase.get(), p);
        }
        assert_eq!(Phase::HandingOver.as_str(), "handing_over");
    }
}
