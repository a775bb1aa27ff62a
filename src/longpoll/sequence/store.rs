//! The sequence store: per uuid, the last answer (with its unacked message), the
//! last answered sequence and message id, and the poll held now.
//!
//! Bounded by `--replay-ttl` (answers older than it are requeued and forgotten)
//! and by `--replay-capacity` (beyond it, the oldest answers are requeued).

use std::collections::VecDeque;
use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::broker::Acker;
use crate::longpoll::outcome::{Answer, MessageIds};
use crate::longpoll::request::SeenIds;
use crate::telemetry::Metrics;

/// Sent to a held poll by a newer one, or by an older poll that got the answer
/// the held one is waiting for.
#[derive(Debug)]
pub enum Signal {
    /// A newer poll for the same uuid took over: answer 409.
    Superseded,
    /// The answer for this poll's sequence arrived on another request: replay it.
    Replay(Arc<Answer>),
}

/// What to do with a poll, decided under the store's lock.
#[derive(Debug)]
pub enum Decision {
    /// Retry of an answered sequence: the same answer again.
    Replay(Arc<Answer>),
    /// Below the last answered sequence: 409 with that sequence.
    Stale { last_answered: u64 },
    /// Wait for a message.
    Wait(Waiting),
}

/// What becomes of the previous answer's message when a higher sequence comes.
#[derive(Debug)]
pub enum Previous {
    /// The client has it: ack it.
    Ack(Acker),
    /// The client shows it does not (its `seen` list lacks it: the answer was
    /// lost and another replica answered that sequence): back to the queue.
    Requeue(Acker),
}

/// A poll admitted to wait. `previous` is the last answer's message, to settle
/// before waiting.
#[derive(Debug)]
pub struct Waiting {
    pub ticket: u64,
    pub signals: oneshot::Receiver<Signal>,
    pub previous: Option<Previous>,
    /// The ids of the last answer (every one of an answer of several).
    pub last_message_ids: Option<MessageIds>,
}

#[derive(Debug)]
struct Held {
    ticket: u64,
    sequence: u64,
    signal: oneshot::Sender<Signal>,
}

#[derive(Debug)]
struct Answered {
    answer: Arc<Answer>,
    acker: Option<Acker>,
}

#[derive(Debug, Default)]
struct Slot {
    answered: Option<Answered>,
    /// Last answered (sequence, message ids); kept after the ack for the
    /// stale check and to recognise a redelivery of the same messages.
    last: Option<(u64, MessageIds)>,
    held: Option<Held>,
    /// Bumped on every new answer; an expiry entry applies only to its generation.
    generation: u64,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.answered.is_none() && self.last.is_none() && self.held.is_none()
    }
}

#[derive(Debug, Default)]
struct State {
    /// hashbrown's map for lookups by `&str` that make a key only when they
    /// insert (std's `entry` wants an owned key on every poll, and hands no key
    /// back to share with `expiries`); SipHash as std's, as the uuids come from
    /// clients.
    slots: HashMap<Arc<str>, Slot, RandomState>,
    /// (expires, uuid, generation), in answer order (all answers share one TTL).
    expiries: VecDeque<(Instant, Arc<str>, u64)>,
    answered: usize,
    next_ticket: u64,
}

/// Per-uuid sequence state for one replica.
#[derive(Debug)]
pub struct SequenceStore {
    state: Mutex<State>,
    ttl: Duration,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl SequenceStore {
    pub fn new(ttl: Duration, capacity: usize, metrics: Arc<Metrics>) -> Self {
        SequenceStore {
            state: Mutex::new(State::default()),
            ttl,
            capacity: capacity.max(1),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a poll `(uuid, sequence)`. `seen` is the client's list of the
    /// message ids it received lately, when it sends one.
    pub fn begin(&self, uuid: &str, sequence: u64, seen: Option<&SeenIds>) -> Decision {
        let mut st = self.lock();
        let st = &mut *st;
        let slot = match st.slots.entry_ref(uuid) {
            EntryRef::Occupied(slot) => slot.into_mut(),
            EntryRef::Vacant(vacant) => vacant.insert_with_key(uuid.into(), Slot::default()),
        };
        let mut previous = None;
        if let Some(answered) = &slot.answered {
            let answered_seq = answered.answer.sequence;
            if sequence == answered_seq {
                self.metrics.replays.inc();
                return Decision::Replay(answered.answer.clone());
            }
            if sequence < answered_seq && seen.is_some() {
                return Decision::Stale {
                    last_answered: answered_seq,
                };
            }
            let restart = sequence < answered_seq;
            // A higher sequence says the client has an answer for that sequence;
            // its `seen` list, when sent, says whether it is this one (another
            // replica may have answered a retry of it). A restart of the count
            // proves nothing: the answer goes back to its queue.
            let shown =
                !restart && seen.is_none_or(|ids| ids.contains(answered.answer.message_id()));
            previous = slot.answered.take().and_then(|a| a.acker).map(|acker| {
                if shown {
                    Previous::Ack(acker)
                } else {
                    Previous::Requeue(acker)
                }
            });
            st.answered -= 1;
            if restart {
                self.restart(slot);
            }
        } else if let Some((last_seq, _)) = &slot.last
            && sequence <= *last_seq
        {
            // Its answer was acked because a higher sequence came: going back is
            // stale for a client that sends `seen`, a restart for one that does not.
            if seen.is_some() {
                return Decision::Stale {
                    last_answered: *last_seq,
                };
            }
            self.restart(slot);
        }
        if let Some(previous) = slot.held.take() {
            self.metrics.supersedes.inc();
            let _ = previous.signal.send(Signal::Superseded);
        }
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        let (tx, rx) = oneshot::channel();
        slot.held = Some(Held {
            ticket,
            sequence,
            signal: tx,
        });
        let last_message_ids = slot.last.as_ref().map(|(_, ids)| ids.clone());
        self.metrics.replay_entries.set(st.answered as i64);
        Decision::Wait(Waiting {
            ticket,
            signals: rx,
            previous,
            last_message_ids,
        })
    }

    /// Legacy restart: a client without `seen` (txlongpoll's own) polls at or
    /// below the last answered sequence — a page restored from the cache, or
    /// reloaded with the same key. Those clients take any answer other than
    /// 200/408 as a failure and wait seconds to minutes before the next try, so
    /// instead of 409 the count starts again from this poll's sequence. The
    /// last answered id is forgotten too: the message it names, requeued, must
    /// reach the restarted page rather than be skipped as a redelivery.
    fn restart(&self, slot: &mut Slot) {
        slot.last = None;
        self.metrics.sequence_restarts.inc();
    }

    /// A waiting poll ended. With an answer, the answer (and its unacked
    /// message) is kept for replay — even if the poll was superseded meanwhile,
    /// since the message must not be lost. Returns messages to requeue (a
    /// leftover from a race, answers evicted over capacity), which the caller
    /// settles outside the lock.
    pub fn finish(
        &self,
        uuid: &str,
        ticket: u64,
        answer: Option<(Arc<Answer>, Option<Acker>)>,
    ) -> Vec<Acker> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some((key, slot)) = st.slots.get_key_value_mut(uuid) else {
            // Forgotten while waiting (evicted over capacity): nothing to keep
            // it in; give the message back.
            return answer.and_then(|(_, acker)| acker).into_iter().collect();
        };
        if slot.held.as_ref().is_some_and(|h| h.ticket == ticket) {
            slot.held = None;
        }
        let mut leftover = None;
        if let Some((answer, acker)) = answer {
            if let Some(old) = slot.answered.take() {
                // Only in a race between two polls of one uuid; the client never
                // confirmed it, so it goes back rather than being acked.
                leftover = old.acker;
                st.answered -= 1;
            }
            slot.generation += 1;
            slot.last = Some((answer.sequence, answer.ids.clone()));
            // A newer poll waiting for this very sequence gets it at once.
            if slot
                .held
                .as_ref()
                .is_some_and(|h| h.sequence == answer.sequence)
                && let Some(h) = slot.held.take()
            {
                let _ = h.signal.send(Signal::Replay(answer.clone()));
            }
            slot.answered = Some(Answered { answer, acker });
            st.answered += 1;
            st.expiries
                .push_back((Instant::now() + self.ttl, key.clone(), slot.generation));
        } else if slot.is_empty() {
            st.slots.remove(uuid);
        }
        let mut requeue = self.evict_over_capacity(st);
        requeue.extend(leftover);
        self.metrics.replay_entries.set(st.answered as i64);
        requeue
    }

    /// Requeues answers past their TTL; returns them for the caller to settle.
    pub fn expire(&self, now: Instant) -> Vec<Acker> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut out = Vec::new();
        while st.expiries.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, uuid, generation)) = st.expiries.pop_front() {
                out.extend(Self::forget(st, &uuid, generation));
            }
        }
        self.metrics.replay_entries.set(st.answered as i64);
        out
    }

    fn evict_over_capacity(&self, st: &mut State) -> Vec<Acker> {
        let mut out = Vec::new();
        while st.answered > self.capacity {
            let Some((_, uuid, generation)) = st.expiries.pop_front() else {
                break;
            };
            out.extend(Self::forget(st, &uuid, generation));
        }
        out
    }

    /// Drops the answer and the last-answered record of one generation.
    fn forget(st: &mut State, uuid: &str, generation: u64) -> Option<Acker> {
        let slot = st.slots.get_mut(uuid)?;
        if slot.generation != generation {
            return None;
        }
        let acker = slot.answered.take().and_then(|a| {
            st.answered -= 1;
            a.acker
        });
        slot.last = None;
        if slot.is_empty() {
            st.slots.remove(uuid);
        }
        acker
    }

    /// Takes every unacked answer (shutdown: they go back to their queues).
    pub fn drain_all(&self) -> Vec<Acker> {
        let mut st = self.lock();
        let out: Vec<Acker> = st
            .slots
            .values_mut()
            .filter_map(|s| s.answered.take().and_then(|a| a.acker))
            .collect();
        st.answered = 0;
        self.metrics.replay_entries.set(0);
        out
    }

    /// Number of answers kept now.
    pub fn answered(&self) -> usize {
        self.lock().answered
    }

    /// Is a poll of `uuid` held, or an answer kept for it with its message
    /// unacked? Only then may one of its queue's messages be unacked on this
    /// replica's account.
    pub fn holds(&self, uuid: &str) -> bool {
        self.lock().slots.get(uuid).is_some_and(|slot| {
            slot.held.is_some() || slot.answered.as_ref().is_some_and(|a| a.acker.is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn store(ttl: Duration, capacity: usize) -> SequenceStore {
        SequenceStore::new(ttl, capacity, Arc::new(Metrics::new()))
    }

    fn answer(sequence: u64, id: &str) -> Arc<Answer> {
        Arc::new(Answer {
            sequence,
            body: Bytes::from_static(b"{}"),
            ids: MessageIds::One(id.into()),
            is_error: false,
        })
    }

    fn wait(d: Decision) -> Waiting {
        match d {
            Decision::Wait(w) => w,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    /// An acker that does nothing, to follow what happens to an answer's message.
    fn acker(metrics: &Arc<Metrics>) -> Option<Acker> {
        struct Nothing;
        #[async_trait::async_trait]
        impl crate::broker::Settle for Nothing {
            async fn ack(&self) -> Result<(), crate::broker::BrokerError> {
                Ok(())
            }
            async fn requeue(&self) -> Result<(), crate::broker::BrokerError> {
                Ok(())
            }
        }
        Some(Acker::new(Box::new(Nothing), metrics.clone()))
    }

    #[tokio::test]
    async fn same_sequence_replays_and_lower_is_stale_for_a_client_that_sends_seen() {
        let s = store(Duration::from_secs(60), 10);
        let seen = SeenIds::parse("m5");
        let w = wait(s.begin("u", 5, Some(&seen)));
        s.finish("u", w.ticket, Some((answer(5, "m5"), None)));
        assert!(
            matches!(s.begin("u", 5, Some(&seen)), Decision::Replay(a) if &**a.message_id() == "m5")
        );
        assert!(matches!(
            s.begin("u", 4, Some(&seen)),
            Decision::Stale { last_answered: 5 }
        ));
        let next = wait(s.begin("u", 6, Some(&seen)));
        assert_eq!(next.last_message_ids, Some(MessageIds::One("m5".into())));
        assert!(matches!(next.previous, Some(Previous::Ack(_)) | None));
        // After the ack, going back is stale too.
        assert!(matches!(
            s.begin("u", 5, Some(&seen)),
            Decision::Stale { last_answered: 5 }
        ));
    }

    #[tokio::test]
    async fn without_seen_a_lower_sequence_restarts_the_count_and_requeues_the_held_answer() {
        let metrics = Arc::new(Metrics::new());
        let s = store(Duration::from_secs(60), 10);
        let w = wait(s.begin("u", 7, None));
        s.finish("u", w.ticket, Some((answer(7, "m7"), acker(&metrics))));
        // A reloaded page starts again at 1: it waits, and the answer it never
        // showed goes back to the queue, with nothing left to skip it.
        let restarted = wait(s.begin("u", 1, None));
        assert!(matches!(restarted.previous, Some(Previous::Requeue(_))));
        assert_eq!(restarted.last_message_ids, None);
        assert_eq!(s.answered(), 0);
        // The count goes on from 1: a retry of 1 after its answer replays it,
        // and 2 acks it.
        s.finish(
            "u",
            restarted.ticket,
            Some((answer(1, "m7"), acker(&metrics))),
        );
        assert!(matches!(s.begin("u", 1, None), Decision::Replay(a) if &**a.message_id() == "m7"));
        let next = wait(s.begin("u", 2, None));
        assert!(matches!(next.previous, Some(Previous::Ack(_))));
    }

    #[tokio::test]
    async fn without_seen_a_sequence_at_the_acked_last_one_restarts_the_count() {
        let metrics = Arc::new(Metrics::new());
        let s = store(Duration::from_secs(60), 10);
        let w = wait(s.begin("u", 3, None));
        s.finish("u", w.ticket, Some((answer(3, "m3"), acker(&metrics))));
        let next = wait(s.begin("u", 4, None));
        assert!(matches!(next.previous, Some(Previous::Ack(_))));
        s.finish("u", next.ticket, None);
        // 3 was acked; going back to it (or below) is a restart, never a 409.
        for sequence in [3, 1] {
            let restarted = wait(s.begin("u", sequence, None));
            assert!(restarted.previous.is_none());
            assert_eq!(restarted.last_message_ids, None);
            s.finish("u", restarted.ticket, None);
        }
    }

    #[tokio::test]
    async fn a_higher_sequence_acks_only_an_answer_the_client_shows() {
        let s = store(Duration::from_secs(60), 10);
        let metrics = Arc::new(Metrics::new());
        let acker = || acker(&metrics);
        let w = wait(s.begin("u", 1, Some(&SeenIds::parse(""))));
        s.finish("u", w.ticket, Some((answer(1, "m1"), acker())));
        // The client's next poll shows m1: acked.
        let next = wait(s.begin("u", 2, Some(&SeenIds::parse("m1"))));
        assert!(matches!(next.previous, Some(Previous::Ack(_))));
        s.finish("u", next.ticket, Some((answer(2, "m2"), acker())));
        // It shows another message for 2 (another replica answered a retry): requeued.
        let next = wait(s.begin("u", 3, Some(&SeenIds::parse("other,m1"))));
        assert!(matches!(next.previous, Some(Previous::Requeue(_))));
    }

    #[tokio::test]
    async fn a_uuid_is_held_while_a_poll_waits_or_an_unacked_answer_is_kept() {
        let metrics = Arc::new(Metrics::new());
        let s = store(Duration::from_secs(60), 10);
        assert!(!s.holds("u"));
        let w = wait(s.begin("u", 1, None));
        assert!(s.holds("u"), "a poll waits");
        s.finish("u", w.ticket, Some((answer(1, "m1"), acker(&metrics))));
        assert!(s.holds("u"), "its answer is kept, unacked");
        let next = wait(s.begin("u", 2, None));
        s.finish("u", next.ticket, None);
        assert!(!s.holds("u"), "the answer was handed over to be acked");
    }

    #[tokio::test]
    async fn a_newer_poll_supersedes_the_held_one() {
        let s = store(Duration::from_secs(60), 10);
        let first = wait(s.begin("u", 1, None));
        let second = wait(s.begin("u", 1, None));
        assert!(matches!(first.signals.await, Ok(Signal::Superseded)));
        // The superseded poll finishing does not disturb the new holder.
        s.finish("u", first.ticket, None);
        s.finish("u", second.ticket, Some((answer(1, "m1"), None)));
        assert!(matches!(s.begin("u", 1, None), Decision::Replay(_)));
    }

    #[tokio::test]
    async fn a_late_answer_is_handed_to_the_poll_waiting_for_the_same_sequence() {
        let s = store(Duration::from_secs(60), 10);
        let first = wait(s.begin("u", 3, None));
        let second = wait(s.begin("u", 3, None));
        s.finish("u", first.ticket, Some((answer(3, "m3"), None)));
        assert!(matches!(second.signals.await, Ok(Signal::Replay(a)) if a.sequence == 3));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_ttl_and_the_slot_is_forgotten() {
        let s = store(Duration::from_secs(300), 10);
        let w = wait(s.begin("u", 1, None));
        s.finish("u", w.ticket, Some((answer(1, "m1"), None)));
        assert!(s.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(301)).await;
        s.expire(Instant::now());
        assert_eq!(s.answered(), 0);
        assert!(s.lock().slots.is_empty());
        // The same sequence now waits again instead of replaying.
        assert!(matches!(s.begin("u", 1, None), Decision::Wait(_)));
    }

    #[tokio::test]
    async fn capacity_bounds_the_answers_kept() {
        let s = store(Duration::from_secs(300), 2);
        for u in ["a", "b", "c"] {
            let w = wait(s.begin(u, 1, None));
            s.finish(u, w.ticket, Some((answer(1, u), None)));
        }
        assert_eq!(s.answered(), 2);
        assert!(
            matches!(s.begin("a", 1, None), Decision::Wait(_)),
            "oldest evicted"
        );
        assert!(matches!(s.begin("c", 1, None), Decision::Replay(_)));
    }
}
