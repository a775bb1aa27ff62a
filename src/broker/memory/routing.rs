//! Exchange routing as RabbitMQ does it, for the embedded broker.
//!
//! Direct: the binding key equals the routing key. Topic: keys are words
//! separated by `.`; in a binding key `*` stands for exactly one word and `#`
//! for zero or more words.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::ExchangeType;

/// Does a topic binding pattern match a routing key? Dynamic programming over
/// words, so a pattern full of `#` stays linear-ish instead of exponential.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    // m[j] == pattern[..i] matches key[..j]
    let mut m = vec![false; k.len() + 1];
    m[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        match *word {
            "#" => {
                // zero or more words: reachable from any earlier match
                let mut seen = false;
                for j in 0..=k.len() {
                    seen |= m[j];
                    next[j] = seen;
                }
            }
            "*" => next[1..].copy_from_slice(&m[..k.len()]),
            w => {
                for j in 1..=k.len() {
                    next[j] = m[j - 1] && k[j - 1] == w;
                }
            }
        }
        m = next;
    }
    m[k.len()]
}

/// Does a message with `routing_key` reach a queue bound with `binding`, on an
/// exchange of this type? (What a resume asks of each event in the history.)
pub fn binding_matches(exchange_type: ExchangeType, binding: &str, routing_key: &str) -> bool {
    match exchange_type {
        ExchangeType::Direct => binding == routing_key,
        ExchangeType::Topic => binding == routing_key || topic_matches(binding, routing_key),
    }
}

fn has_wildcard(binding: &str) -> bool {
    binding.split('.').any(|w| w == "*" || w == "#")
}

/// The queues bound with one binding key. Nearly every key has one queue (a
/// subscription's own event key), so that case costs no set of its own.
#[derive(Debug)]
enum BoundQueues {
    One(Arc<str>),
    Many(HashSet<Arc<str>>),
}

impl BoundQueues {
    fn insert(&mut self, queue: &Arc<str>) {
        match self {
            BoundQueues::One(q) if q == queue => {}
            BoundQueues::One(q) => {
                *self = BoundQueues::Many(HashSet::from([q.clone(), queue.clone()]));
            }
            BoundQueues::Many(set) => {
                set.insert(queue.clone());
            }
        }
    }

    /// Removes `queue`; true when none is left.
    fn remove(&mut self, queue: &str) -> bool {
        match self {
            BoundQueues::One(q) => &**q == queue,
            BoundQueues::Many(set) => {
                set.remove(queue);
                set.is_empty()
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<str>)) {
        match self {
            BoundQueues::One(q) => f(q),
            BoundQueues::Many(set) => set.iter().for_each(f),
        }
    }
}

/// The bindings of the embedded exchange: exact keys in a hash map (the common
/// case, `longpoll.event.{table}.{id}`), wildcard patterns in a list. A key is
/// stored once and shared with the queue's own list of its bindings.
#[derive(Debug)]
pub struct Bindings {
    exchange_type: ExchangeType,
    exact: HashMap<Arc<str>, BoundQueues>,
    patterns: HashMap<Arc<str>, BoundQueues>,
}

impl Bindings {
    pub fn new(exchange_type: ExchangeType) -> Self {
        Bindings {
            exchange_type,
            exact: HashMap::new(),
            patterns: HashMap::new(),
        }
    }

    fn table(&mut self, binding: &str) -> &mut HashMap<Arc<str>, BoundQueues> {
        if self.exchange_type == ExchangeType::Topic && has_wildcard(binding) {
            &mut self.patterns
        } else {
            &mut self.exact
        }
    }

    /// Binds `queue` with `binding`; returns the stored key, for the queue to keep.
    pub fn bind(&mut self, queue: &Arc<str>, binding: &str) -> Arc<str> {
        let table = self.table(binding);
        if let Some((key, _)) = table.get_key_value(binding) {
            let key = key.clone();
            if let Some(queues) = table.get_mut(binding) {
                queues.insert(queue);
            }
            return key;
        }
        let key: Arc<str> = binding.into();
        table.insert(key.clone(), BoundQueues::One(queue.clone()));
        key
    }

    pub fn unbind(&mut self, queue: &str, binding: &str) {
        let table = self.table(binding);
        if let Some(queues) = table.get_mut(binding)
            && queues.remove(queue)
        {
            table.remove(binding);
        }
    }

    /// Every queue a message with this routing key goes to (each once).
    pub fn route(&self, routing_key: &str) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        if let Some(queues) = self.exact.get(routing_key) {
            queues.for_each(|q| out.push(q.clone()));
        }
        let exact = out.len();
        for (pattern, queues) in &self.patterns {
            if topic_matches(pattern, routing_key) {
                queues.for_each(|q| out.push(q.clone()));
            }
        }
        // A queue bound by a key and a pattern (or two patterns) gets one copy.
        if out.len() > exact && out.len() > 1 {
            let mut seen = HashSet::with_capacity(out.len());
            out.retain(|q| seen.insert(q.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_wildcards_match_as_rabbitmq_does() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "anything.at.all", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("longpoll.event.*.1234", "longpoll.event.bug.1234", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    #[test]
    fn a_binding_matches_as_the_exchange_routes() {
        assert!(binding_matches(ExchangeType::Topic, "a.*", "a.b"));
        assert!(!binding_matches(ExchangeType::Topic, "a.*", "a.b.c"));
        assert!(binding_matches(ExchangeType::Direct, "a.b", "a.b"));
        assert!(!binding_matches(ExchangeType::Direct, "a.*", "a.b"));
        assert!(binding_matches(ExchangeType::Direct, "a.*", "a.*"));
    }

    #[test]
    fn direct_exchange_treats_wildcards_literally() {
        let mut b = Bindings::new(ExchangeType::Direct);
        let q: Arc<str> = "q".into();
        b.bind(&q, "a.*");
        assert!(b.route("a.b").is_empty());
        assert_eq!(b.route("a.*").len(), 1);
    }

    #[test]
    fn a_key_shared_by_queues_routes_to_each_until_unbound() {
        let mut b = Bindings::new(ExchangeType::Direct);
        let (q1, q2): (Arc<str>, Arc<str>) = ("q1".into(), "q2".into());
        let k1 = b.bind(&q1, "k");
        let k2 = b.bind(&q2, "k");
        assert!(Arc::ptr_eq(&k1, &k2), "one stored key, shared");
        b.bind(&q2, "k");
        let mut routed = b.route("k");
        routed.sort();
        assert_eq!(routed, vec![q1.clone(), q2.clone()]);
        b.unbind("q1", "k");
        assert_eq!(b.route("k"), vec![q2]);
        b.unbind("q2", "k");
        assert!(b.route("k").is_empty());
        assert!(b.exact.is_empty(), "an unused key is dropped");
    }

    #[test]
    fn a_queue_bound_twice_gets_one_copy_and_unbind_removes_it() {
        let mut b = Bindings::new(ExchangeType::Topic);
        let q: Arc<str> = "q".into();
        b.bind(&q, "a.b");
        b.bind(&q, "a.*");
        assert_eq!(b.route("a.b").len(), 1);
        b.unbind("q", "a.b");
        b.unbind("q", "a.*");
        assert!(b.route("a.b").is_empty());
    }
}
