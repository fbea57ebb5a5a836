//! This gateway's load, measured at each heartbeat from the counters of its requests and
//! of the partitions it leads, and reported in its registration for the scaler.

use super::{Cluster, Load, PartitionLoad};
use crate::Gateway;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use weir_common::TopicPartition;

/// Counters the heartbeat turns into rates.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub request_micros: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Sample {
    at: Instant,
    requests: u64,
    request_micros: u64,
    cpu_ticks: Option<u64>,
    partitions: HashMap<TopicPartition, (u64, u64)>,
}

impl Cluster {
    /// The load measured at the last heartbeat.
    pub fn load(&self) -> Load {
        self.last_load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn measure(&self, gw: &Gateway) -> Load {
        let now = Instant::now();
        let mut partitions = HashMap::new();
        let mut led = 0u32;
        for topic in gw.registry.all() {
            for p in 0..topic.partition_count() {
                if let Some(log) = topic.partition(p) {
                    if log.lock().led {
                        led += 1;
                        partitions.insert(
                            log.tp,
                            (
                                log.bytes_in.load(Ordering::Relaxed),
                                log.bytes_out.load(Ordering::Relaxed),
                            ),
                        );
                    }
                }
            }
        }
        let current = Sample {
            at: now,
            requests: self.stats.requests.load(Ordering::Relaxed),
            request_micros: self.stats.request_micros.load(Ordering::Relaxed),
            cpu_ticks: cpu_ticks(),
            partitions,
        };
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let mut load = Load {
            connections: gw.limits.open() as u64,
            partitions_led: led,
            ..Load::default()
        };
        if let Some(prev) = sample.as_ref() {
            let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let requests = current.requests.saturating_sub(prev.requests);
            load.requests_per_sec = requests as f64 / secs;
            if requests > 0 {
                load.request_latency_ms = current.request_micros.saturating_sub(prev.request_micros)
                    as f64
                    / requests as f64
                    / 1000.0;
            }
            if let (Some(a), Some(b)) = (current.cpu_ticks, prev.cpu_ticks) {
                // Linux reports CPU time in clock ticks of 1/100 s.
                load.cpu_percent = a.saturating_sub(b) as f64 / secs;
            }
            for (tp, (bytes_in, bytes_out)) in &current.partitions {
                let (in0, out0) = prev
                    .partitions
                    .get(tp)
                    .copied()
                    .unwrap_or((*bytes_in, *bytes_out));
                let (i, o) = (rate(*bytes_in, in0), rate(*bytes_out, out0));
                load.bytes_in_per_sec += i;
                load.bytes_out_per_sec += o;
                if i > 0.0 || o > 0.0 {
                    load.partitions.push(PartitionLoad {
                        topic: tp.topic_id.0,
                        partition: tp.partition,
                        bytes_in_per_sec: i,
                        bytes_out_per_sec: o,
                    });
                }
            }
        }
        *sample = Some(current);
        load
    }
}

/// CPU time of this process in clock ticks (Linux), None elsewhere.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_ticks().is_some());
        }
    }
}
