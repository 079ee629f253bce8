//! One retry schedule for every loop that waits out an outage (PostgreSQL, NATS, the changelog):
//! a delay that doubles after each failure up to a cap, and a wait that a stop cuts short, so
//! that no backoff ever holds up a shutdown.

use std::ops::ControlFlow;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Exponential backoff between `min` and `max`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// The delay the next wait takes.
    next: Duration,
}

impl Backoff {
    /// Starts at `min` and doubles up to `max`.
    pub(crate) const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Back to `min`: the outage is over.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now; the one after it is twice as long, up to `max`. For a caller that
    /// waits in its own way (against a deadline of its own).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Waits `next_delay()`, unless a stop is requested first: `Break` when a stop was requested
    /// (before or during the wait), `Continue` when it is time to try again.
    pub(crate) async fn wait(&mut self, shutdown: &Shutdown) -> ControlFlow<()> {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.requested() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        if shutdown.is_requested() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    #[test]
    fn the_delay_doubles_up_to_its_cap_and_a_reset_starts_again() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_after_its_delay_and_says_to_go_on() {
        let (_trigger, shutdown) = shutdown::channel();
        let mut backoff = Backoff::new(Duration::from_secs(3), Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        assert_eq!(backoff.wait(&shutdown).await, ControlFlow::Continue(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_cuts_a_wait_short_and_says_to_stop() {
        let (trigger, shutdown) = shutdown::channel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let stopping = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.trigger();
        });
        assert_eq!(backoff.wait(&shutdown).await, ControlFlow::Break(()));
        assert!(started.elapsed() < Duration::from_secs(60));
        stopping.await.expect("the trigger task ends");
        // Already requested: no wait at all.
        assert_eq!(backoff.wait(&shutdown).await, ControlFlow::Break(()));
    }
}
