//! The memory budget for request frames, shared by every connection of a gateway.
//!
//! A connection that has read a frame's length reserves that many bytes here before it
//! reads the body, and holds them until the request is answered (a produce request's record
//! bytes stay alive until they are durable). When the budget is spent the connection stops
//! reading (as a Kafka broker mutes channels when `queued.max.request.bytes` is reached), so
//! clients that announce huge frames and trickle them wait for budget instead of growing
//! memory, whatever their number.
//!
//! Waiters are not served in order: a freed byte goes to whichever waiting frame fits, so a
//! client waiting for a 100 MiB reservation never holds up small requests behind it.

use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Request bytes the gateway may hold across all connections.
#[derive(Debug)]
pub struct RequestBudget {
    capacity: usize,
    used: Mutex<usize>,
    freed: Notify,
}

/// Bytes of the budget held by one request; returned when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: Arc<RequestBudget>,
    bytes: usize,
}

impl RequestBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(RequestBudget {
            capacity,
            used: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` now if they are free.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<BudgetPermit> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if bytes > self.capacity.saturating_sub(*used) {
            return None;
        }
        *used += bytes;
        Some(BudgetPermit {
            budget: self.clone(),
            bytes,
        })
    }

    /// Waits until `bytes` are free and takes them. `None` if `bytes` exceeds the whole
    /// budget (such a frame could never be admitted).
    pub async fn acquire(self: &Arc<Self>, bytes: usize) -> Option<BudgetPermit> {
        if bytes > self.capacity {
            return None;
        }
        loop {
            // Register for the wake-up before looking, so a release in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire(bytes) {
                return Some(permit);
            }
            freed.await;
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        {
            let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
            *used = used.saturating_sub(self.bytes);
        }
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_frame_waits_for_budget_and_small_ones_pass_a_large_waiter() {
        let budget = RequestBudget::new(100);
        let a = budget.try_acquire(60);
        assert!(a.is_some());
        assert!(budget.acquire(101).await.is_none(), "over the whole budget");
        // A 70-byte frame must wait; a 30-byte one behind it is served at once.
        let big = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(70).await.map(|p| p.bytes) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!big.is_finished());
        let small = budget.acquire(30).await;
        assert!(small.is_some());
        assert_eq!(budget.used(), 90);
        drop(a);
        drop(small);
        let got = tokio::time::timeout(Duration::from_secs(1), big).await;
        assert!(matches!(got, Ok(Ok(Some(70)))));
        assert_eq!(budget.used(), 0, "the big permit was dropped with its task");
    }
}
