//! The pipeline's decisions, without any I/O: which stage starts next, and when a subscription's
//! run is over. Ingest's loop (`super::pipeline`) starts what this says, and tells it how each
//! stage ended.
//!
//! Three stages, one batch in each at a time: pulling (and parsing) a batch, committing one, and
//! finishing one (fan-out to the changelog, then the acks and the cache). A batch moves from each
//! stage to the next only when the next one is free, so batches are committed in the order they
//! were pulled and acked in the order they were committed, each only after its own commit and
//! fan-out; at most three batches are in flight. Once the pull stops (a stop, or the pull stream
//! failed), what is in flight drains. Once a stage hands its batch back (a stop that could not
//! wait), nothing new starts, and whatever else is in flight is handed back too.
//!
//! Generic over the batch types, so the tests below drive it with plain numbers.

/// A stage to start.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start<P, C> {
    /// Pull and parse the next batch.
    Pull,
    /// Commit this parsed batch.
    Commit(P),
    /// Fan out, ack and cache this committed batch.
    Finish(C),
}

/// How a stage ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<P, C, S> {
    /// A batch was pulled and parsed.
    Pulled(P),
    /// The subscription gives no more batches, for this reason.
    PullStopped(S),
    /// A batch was committed.
    Committed(C),
    /// A batch was fanned out and acked: it is done.
    Finished,
    /// The commit gave its batch back for redelivery (a stop that could not wait).
    CommitHandedBack,
    /// The finish gave its batch back for redelivery (a stop that could not wait).
    FinishHandedBack,
}

/// How a subscription's run ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End<P, C, S> {
    /// Every batch is finished; the pull stopped for this reason.
    Drained(S),
    /// A batch was handed back: hand back these too (none is being worked on any more).
    HandBack {
        prepared: Option<P>,
        committed: Option<C>,
    },
}

/// Where every batch of one subscription is.
#[derive(Debug)]
pub(super) struct Schedule<P, C, S> {
    pulling: bool,
    /// Parsed, waiting for the commit stage.
    prepared: Option<P>,
    committing: bool,
    /// Committed, waiting for the finish stage.
    committed: Option<C>,
    finishing: bool,
    /// Why the pull stopped, once it has: no pull starts again.
    stopped: Option<S>,
    /// A batch was handed back: nothing starts any more.
    handing_back: bool,
}

impl<P, C, S> Schedule<P, C, S> {
    /// Nothing in flight; the first thing to start is a pull.
    pub(super) fn new() -> Self {
        Schedule {
            pulling: false,
            prepared: None,
            committing: false,
            committed: None,
            finishing: false,
            stopped: None,
            handing_back: false,
        }
    }

    /// The stages to start now, each moving its batch out of the schedule. The finish is
    /// decided first, so that a committed batch frees its place before the next commit starts.
    pub(super) fn next(&mut self) -> Vec<Start<P, C>> {
        let mut start = Vec::new();
        if self.handing_back {
            return start;
        }
        if !self.finishing {
            if let Some(batch) = self.committed.take() {
                self.finishing = true;
                start.push(Start::Finish(batch));
            }
        }
        if !self.committing && self.committed.is_none() {
            if let Some(batch) = self.prepared.take() {
                self.committing = true;
                start.push(Start::Commit(batch));
            }
        }
        if !self.pulling && self.prepared.is_none() && self.stopped.is_none() {
            self.pulling = true;
            start.push(Start::Pull);
        }
        start
    }

    /// Takes in how a stage ended.
    pub(super) fn on(&mut self, event: Event<P, C, S>) {
        match event {
            Event::Pulled(batch) => {
                self.pulling = false;
                self.prepared = Some(batch);
            }
            Event::PullStopped(why) => {
                self.pulling = false;
                self.stopped = Some(why);
            }
            Event::Committed(batch) => {
                self.committing = false;
                self.committed = Some(batch);
            }
            Event::Finished => self.finishing = false,
            // The stage still running beside it ends on the same stop and is waited for.
            Event::CommitHandedBack => {
                self.committing = false;
                self.handing_back = true;
            }
            Event::FinishHandedBack => {
                self.finishing = false;
                self.handing_back = true;
            }
        }
    }

    /// The end of this subscription's run, once nothing is running: every batch finished after
    /// the pull stopped, or a batch handed back.
    pub(super) fn end(&mut self) -> Option<End<P, C, S>> {
        if self.pulling || self.committing || self.finishing {
            return None;
        }
        if self.handing_back {
            return Some(End::HandBack {
                prepared: self.prepared.take(),
                committed: self.committed.take(),
            });
        }
        if self.prepared.is_none() && self.committed.is_none() {
            return self.stopped.take().map(End::Drained);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Plan = Schedule<u32, u32, &'static str>;

    /// The pipeline full: 1 is being finished, 2 committed, 3 pulled.
    fn three_in_flight() -> Plan {
        let mut plan = Plan::new();
        assert_eq!(plan.next(), [Start::Pull]);
        plan.on(Event::Pulled(1));
        assert_eq!(plan.next(), [Start::Commit(1), Start::Pull]);
        plan.on(Event::Committed(1));
        plan.on(Event::Pulled(2));
        assert_eq!(
            plan.next(),
            [Start::Finish(1), Start::Commit(2), Start::Pull]
        );
        plan
    }

    #[test]
    fn the_first_thing_to_start_is_a_pull_and_only_one() {
        let mut plan = Plan::new();
        assert_eq!(plan.next(), [Start::Pull]);
        assert_eq!(plan.next(), [], "one pull at a time");
        assert_eq!(plan.end(), None);
    }

    #[test]
    fn a_batch_pulled_while_the_one_ahead_commits_waits_for_the_commit_stage() {
        let mut plan = Plan::new();
        plan.next();
        plan.on(Event::Pulled(1));
        assert_eq!(plan.next(), [Start::Commit(1), Start::Pull]);
        plan.on(Event::Pulled(2));
        assert_eq!(plan.next(), [], "2 waits for the commit stage");
        plan.on(Event::Committed(1));
        assert_eq!(
            plan.next(),
            [Start::Finish(1), Start::Commit(2), Start::Pull]
        );
    }

    #[test]
    fn a_batch_committed_before_the_one_ahead_of_it_is_finished_waits_to_be_acked_after_it() {
        // Batches finishing out of order: 2's commit ends while 1 is still being fanned out.
        let mut plan = three_in_flight();
        plan.on(Event::Committed(2));
        plan.on(Event::Pulled(3));
        // 2 may not be fanned out or acked while 1 is, and 3 may not commit while 2 waits.
        assert_eq!(plan.next(), []);
        plan.on(Event::Finished);
        assert_eq!(
            plan.next(),
            [Start::Finish(2), Start::Commit(3), Start::Pull]
        );
    }

    #[test]
    fn a_commit_that_keeps_failing_holds_the_next_parsed_batch_and_pulls_no_further() {
        // A failed commit is retried inside the commit stage; meanwhile the batch behind it is
        // parsed and waits, and nothing more is pulled.
        let mut plan = Plan::new();
        plan.next();
        plan.on(Event::Pulled(1));
        plan.next();
        plan.on(Event::Pulled(2));
        for _ in 0..3 {
            assert_eq!(plan.next(), [], "nothing starts while 1 is not committed");
        }
        assert_eq!(plan.end(), None);
        plan.on(Event::Committed(1));
        assert_eq!(
            plan.next(),
            [Start::Finish(1), Start::Commit(2), Start::Pull]
        );
    }

    #[test]
    fn after_the_pull_stops_every_batch_in_flight_is_finished_before_the_end() {
        let mut plan = Plan::new();
        plan.next();
        plan.on(Event::Pulled(1));
        plan.next();
        plan.on(Event::PullStopped("stream failed"));
        assert_eq!(plan.end(), None, "1 is still committing");
        plan.on(Event::Committed(1));
        assert_eq!(plan.next(), [Start::Finish(1)], "and no new pull");
        assert_eq!(plan.end(), None, "1 is still finishing");
        plan.on(Event::Finished);
        assert_eq!(plan.next(), []);
        assert_eq!(plan.end(), Some(End::Drained("stream failed")));
    }

    #[test]
    fn a_stop_with_two_batches_in_flight_that_cannot_wait_hands_back_both_and_the_parsed_one() {
        // Arrange: 1 is being finished, 2 is committed and waits for it, 3 is parsed.
        let mut plan = three_in_flight();
        plan.on(Event::Committed(2));
        plan.on(Event::Pulled(3));
        assert_eq!(plan.next(), []);

        // Act: the stop; 1's fan-out cannot finish within the grace period and is handed back.
        plan.on(Event::FinishHandedBack);

        // Assert: nothing starts any more, and the two others are to be handed back.
        assert_eq!(plan.next(), []);
        assert_eq!(
            plan.end(),
            Some(End::HandBack {
                prepared: Some(3),
                committed: Some(2)
            })
        );
    }

    #[test]
    fn a_stop_that_hands_back_a_commit_waits_for_the_finish_running_beside_it() {
        let mut plan = three_in_flight();
        plan.on(Event::Pulled(3));
        // 2's commit is handed back; 1's finish is still running.
        plan.on(Event::CommitHandedBack);
        assert_eq!(plan.end(), None, "the other stage is still running");
        plan.on(Event::Finished);
        assert_eq!(
            plan.end(),
            Some(End::HandBack {
                prepared: Some(3),
                committed: None
            })
        );
    }
}
