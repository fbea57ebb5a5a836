//! The scaling policy and the autoscaler: measured load in, the number of gateways out.
//!
//! Pure: no I/O and no clock of its own; the caller passes the time of each decision, so
//! cool-downs and hysteresis are tested without sleeping.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The scaling policy (every knob is a flag of `weir scaler` and `weir serve --gateways auto`;
/// [`Policy::default`] has the flags' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Fewest gateways.
    pub min_gateways: usize,
    /// Most gateways.
    pub max_gateways: usize,
    /// Target record bytes per second (in + out) per gateway.
    pub target_bytes_per_sec: f64,
    /// Target client connections per gateway.
    pub target_connections: u64,
    /// After a scale-out, the next one waits this long, in ms (scale out fast).
    pub scale_out_cooldown_ms: u64,
    /// A scale-in needs the load low for this long, and this long since the last scaling,
    /// in ms (scale in slowly).
    pub scale_in_cooldown_ms: u64,
    /// Hysteresis: scale in only while the load would fill one gateway fewer to at most this
    /// fraction of the targets.
    pub scale_in_ratio: f64,
    /// How often the scaler decides, in ms.
    pub interval_ms: u64,
    /// Most partition moves per rebalance step.
    pub max_moves: usize,
    /// Rebalance when the busiest gateway carries more than the least busy one by this
    /// fraction of the mean gateway load.
    pub imbalance: f64,
    /// Least time between two rebalance steps, in ms (the gateways' load reports catch up
    /// with the last moves meanwhile).
    pub rebalance_interval_ms: u64,
    /// A partition that moved stays put this long, in ms (no ping-pong).
    pub partition_move_cooldown_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_gateways: 1,
            max_gateways: 8,
            target_bytes_per_sec: 50_000_000.0,
            target_connections: 1000,
            scale_out_cooldown_ms: 5_000,
            scale_in_cooldown_ms: 300_000,
            scale_in_ratio: 0.6,
            interval_ms: 1_000,
            max_moves: 4,
            imbalance: 0.25,
            rebalance_interval_ms: 3_000,
            partition_move_cooldown_ms: 30_000,
        }
    }
}

/// What the autoscaler decided in one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Hold,
    ScaleOut { from: usize, to: usize },
    ScaleIn { from: usize, to: usize },
}

/// Decides the number of gateways: out as soon as the load needs more (after a short
/// cool-down), in one at a time once the load has stayed low for the long cool-down.
#[derive(Debug)]
pub struct Autoscaler {
    pub policy: Policy,
    last_scaled: Option<Instant>,
    last_scaled_out: Option<Instant>,
    low_since: Option<Instant>,
}

impl Autoscaler {
    pub fn new(policy: Policy) -> Self {
        Autoscaler {
            policy,
            last_scaled: None,
            last_scaled_out: None,
            low_since: None,
        }
    }

    /// The gateways the load needs, within min and max.
    pub fn needed(&self, bytes_per_sec: f64, connections: u64) -> usize {
        let p = &self.policy;
        let by_bytes = (bytes_per_sec / p.target_bytes_per_sec.max(1.0)).ceil() as usize;
        let by_connections = connections.div_ceil(p.target_connections.max(1)) as usize;
        by_bytes.max(by_connections).clamp(
            p.min_gateways.max(1),
            p.max_gateways.max(p.min_gateways).max(1),
        )
    }

    /// One step: `current` gateways carry the load; returns the action and a reason.
    pub fn decide(
        &mut self,
        now: Instant,
        current: usize,
        bytes_per_sec: f64,
        connections: u64,
    ) -> (Action, String) {
        let p = self.policy.clone();
        let needed = self.needed(bytes_per_sec, connections);
        let inputs = format!(
            "{current} gateways, {:.0} B/s (target {:.0}/gateway), {connections} connections (target {}/gateway)",
            bytes_per_sec, p.target_bytes_per_sec, p.target_connections
        );
        let since = |t: Option<Instant>| t.map(|t| now.duration_since(t));
        if needed > current {
            self.low_since = None;
            let cooldown = Duration::from_millis(p.scale_out_cooldown_ms);
            if since(self.last_scaled_out).is_some_and(|d| d < cooldown) {
                return (
                    Action::Hold,
                    format!("needs {needed}; scale-out cool-down: {inputs}"),
                );
            }
            self.last_scaled = Some(now);
            self.last_scaled_out = Some(now);
            return (
                Action::ScaleOut {
                    from: current,
                    to: needed,
                },
                format!("load needs {needed}: {inputs}"),
            );
        }
        // Hysteresis: one gateway fewer must stay well below the targets.
        let fewer = current.saturating_sub(1);
        let low = current > p.min_gateways.max(1)
            && fewer > 0
            && bytes_per_sec / fewer as f64 <= p.scale_in_ratio * p.target_bytes_per_sec
            && connections as f64 / fewer as f64 <= p.scale_in_ratio * p.target_connections as f64;
        if !low {
            self.low_since = None;
            return (Action::Hold, format!("load fits: {inputs}"));
        }
        let low_since = *self.low_since.get_or_insert(now);
        let cooldown = Duration::from_millis(p.scale_in_cooldown_ms);
        if now.duration_since(low_since) < cooldown
            || since(self.last_scaled).is_some_and(|d| d < cooldown)
        {
            return (
                Action::Hold,
                format!(
                    "load low for {:?}; scale-in waits for the cool-down: {inputs}",
                    now.duration_since(low_since)
                ),
            );
        }
        self.last_scaled = Some(now);
        self.low_since = None;
        (
            Action::ScaleIn {
                from: current,
                to: fewer,
            },
            format!("load low for {:?}: {inputs}", cooldown),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_gateways: 1,
            max_gateways: 4,
            target_bytes_per_sec: 1000.0,
            target_connections: 100,
            scale_out_cooldown_ms: 1000,
            scale_in_cooldown_ms: 10_000,
            scale_in_ratio: 0.6,
            ..Policy::default()
        }
    }

    #[test]
    fn scales_out_at_once_and_in_slowly() {
        let mut a = Autoscaler::new(policy());
        let t0 = Instant::now();
        let (action, _) = a.decide(t0, 1, 2500.0, 10);
        assert_eq!(action, Action::ScaleOut { from: 1, to: 3 });
        // Within the scale-out cool-down: hold even though more is needed.
        let (action, _) = a.decide(t0 + Duration::from_millis(500), 3, 3500.0, 10);
        assert_eq!(action, Action::Hold);
        let (action, _) = a.decide(t0 + Duration::from_millis(1500), 3, 3500.0, 10);
        assert_eq!(action, Action::ScaleOut { from: 3, to: 4 });
        // Capped at max.
        let (action, _) = a.decide(t0 + Duration::from_secs(3), 4, 99_000.0, 10);
        assert_eq!(action, Action::Hold);
        // Load drops: nothing until it stayed low for the cool-down.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(a.decide(t1, 4, 100.0, 10).0, Action::Hold);
        assert_eq!(
            a.decide(t1 + Duration::from_secs(5), 4, 100.0, 10).0,
            Action::Hold
        );
        // A burst resets the low period (hysteresis).
        assert_eq!(
            a.decide(t1 + Duration::from_secs(6), 4, 2000.0, 10).0,
            Action::Hold
        );
        assert_eq!(
            a.decide(t1 + Duration::from_secs(12), 4, 100.0, 10).0,
            Action::Hold
        );
        let (action, _) = a.decide(t1 + Duration::from_secs(23), 4, 100.0, 10);
        assert_eq!(action, Action::ScaleIn { from: 4, to: 3 });
        // One at a time: the next scale-in waits a whole cool-down again.
        assert_eq!(
            a.decide(t1 + Duration::from_secs(24), 3, 100.0, 10).0,
            Action::Hold
        );
    }

    #[test]
    fn no_scale_in_while_one_fewer_would_be_too_busy() {
        let mut a = Autoscaler::new(policy());
        let t0 = Instant::now();
        // 2 gateways, 700 B/s: one gateway would run at 70% > 60%: stay.
        for s in 0..30 {
            assert_eq!(
                a.decide(t0 + Duration::from_secs(s), 2, 700.0, 0).0,
                Action::Hold
            );
        }
        // Connections count too.
        assert_eq!(a.needed(10.0, 250), 3);
    }
}
