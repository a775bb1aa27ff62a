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

fn has_wildcard(binding: &str) -> bool {
    binding.split('.').any(|w| w == "*" || w == "#")
}

/// The bindings of the embedded exchange: exact keys in a hash map (the common
/// case, `longpoll.event.{table}.{id}`), wildcard patterns in a list.
#[derive(Debug)]
pub struct Bindings {
    exchange_type: ExchangeType,
    exact: HashMap<String, HashSet<Arc<str>>>,
    patterns: HashMap<String, HashSet<Arc<str>>>,
}

impl Bindings {
    pub fn new(exchange_type: ExchangeType) -> Self {
        Bindings {
            exchange_type,
            exact: HashMap::new(),
            patterns: HashMap::new(),
        }
    }

    fn table(&mut self, binding: &str) -> &mut HashMap<String, HashSet<Arc<str>>> {
        if self.exchange_type == ExchangeType::Topic && has_wildcard(binding) {
            &mut self.patterns
        } else {
            &mut self.exact
        }
    }

    pub fn bind(&mut self, queue: &Arc<str>, binding: &str) {
        self.table(binding)
            .entry(binding.to_owned())
            .or_default()
            .insert(queue.clone());
    }

    pub fn unbind(&mut self, queue: &str, binding: &str) {
        let table = self.table(binding);
        if let Some(set) = table.get_mut(binding) {
            set.remove(queue);
            if set.is_empty() {
                table.remove(binding);
            }
        }
    }

    /// Every queue a message with this routing key goes to (each once).
    pub fn route(&self, routing_key: &str) -> HashSet<Arc<str>> {
        let mut out: HashSet<Arc<str>> = self
            .exact
            .get(routing_key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for (pattern, queues) in &self.patterns {
            if topic_matches(pattern, routing_key) {
                out.extend(queues.iter().cloned());
            }
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
    fn direct_exchange_treats_wildcards_literally() {
        let mut b = Bindings::new(ExchangeType::Direct);
        let q: Arc<str> = "q".into();
        b.bind(&q, "a.*");
        assert!(b.route("a.b").is_empty());
        assert_eq!(b.route("a.*").len(), 1);
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
