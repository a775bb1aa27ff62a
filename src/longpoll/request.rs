//! Parsing a poll's query string into a [`PollRequest`], and the queue-name rule.
//!
//! txlongpoll's request: `GET /?uuid={queue}&sequence={n}` on any path; this
//! gateway's clients may add `seen={ids}` (the proof of receipt) and
//! `max={k}` (up to `k` waiting messages in one answer).

use std::borrow::Cow;

/// What a poll's query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollQuery {
    /// Neither `uuid` nor `sequence`: the monitoring probe.
    Probe,
    /// A long-poll.
    Poll(PollRequest),
}

/// A long-poll for the next message of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    /// The subscription key: the queue name (a bearer secret — never log it).
    pub uuid: String,
    /// The client's sequence number.
    pub sequence: u64,
    /// `seen`: the ids of the messages the client received most recently, most
    /// recent first — the proof of receipt (see the sequence layer). `None`
    /// for clients that do not send it (txlongpoll's).
    pub seen: Option<SeenIds>,
    /// `max`: most messages one answer may carry, 1 to [`MAX_MESSAGES`]; 1
    /// (the default, every txlongpoll client) answers one message, its body
    /// as it is; more answers a JSON array of the messages already waiting.
    pub max: u8,
}

/// The largest `max` a poll may ask for.
pub const MAX_MESSAGES: u8 = 100;

/// Most message ids a `seen` list may carry (the rest is ignored).
pub const MAX_SEEN_IDS: usize = 32;

/// A `seen` list: the ids kept, joined by commas in one string (an id has no
/// comma), so that a poll allocates once for it, not once per id, and a
/// lookup is one substring search, not a comparison per id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenIds(String);

impl SeenIds {
    /// `seen=id1,id2,...`: ids of printable ASCII without commas, at most
    /// [`MAX_SEEN_IDS`]; anything else in the list is ignored.
    pub fn parse(list: &str) -> Self {
        let mut joined = String::with_capacity(list.len());
        let ids = list
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= 128 && crate::config::is_printable_ascii(id))
            .take(MAX_SEEN_IDS);
        for id in ids {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(id);
        }
        SeenIds(joined)
    }

    /// Does the list name `id`? (An id with a comma cannot be in a list.) One
    /// comparison per id kept, most of them ending at the length: cheaper, for
    /// a list this short, than building a substring searcher per call.
    pub fn contains(&self, id: &str) -> bool {
        !id.is_empty() && self.0.split(',').any(|listed| listed == id)
    }

    /// The ids, in the client's order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').filter(|id| !id.is_empty())
    }
}

/// Why a query is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryRejection {
    /// One of `uuid`/`sequence` is missing or empty, or given twice.
    #[error("Invalid request")]
    InvalidRequest,
    /// `sequence` is not a non-negative integer that fits in 64 bits.
    #[error("Invalid sequence")]
    InvalidSequence,
    /// `max` is not an integer from 1 to [`MAX_MESSAGES`].
    #[error("Invalid max")]
    InvalidMax,
}

/// Parses `uuid`, `sequence`, `seen` and `max` from a raw query string
/// (percent-decoded).
pub fn parse_query(query: Option<&str>) -> Result<PollQuery, QueryRejection> {
    let mut uuid: Option<String> = None;
    let mut sequence: Option<String> = None;
    let mut seen: Option<String> = None;
    let mut max: Option<String> = None;
    for (name, value) in query_pairs(query.unwrap_or("")) {
        let slot = match name.as_ref() {
            "uuid" => &mut uuid,
            "sequence" => &mut sequence,
            "seen" => &mut seen,
            "max" => &mut max,
            _ => continue,
        };
        if slot.is_some() {
            // Ambiguous: a proxy hashing on the first and us reading another
            // would split one client across replicas.
            return Err(QueryRejection::InvalidRequest);
        }
        *slot = Some(value.into_owned());
    }
    match (uuid, sequence) {
        (None, None) => Ok(PollQuery::Probe),
        (Some(u), Some(s)) if !u.is_empty() && !s.is_empty() => {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QueryRejection::InvalidSequence);
            }
            let sequence = s.parse().map_err(|_| QueryRejection::InvalidSequence)?;
            let max = match max {
                None => 1,
                Some(m) => parse_max(&m).ok_or(QueryRejection::InvalidMax)?,
            };
            Ok(PollQuery::Poll(PollRequest {
                uuid: u,
                sequence,
                seen: seen.map(|list| SeenIds::parse(&list)),
                max,
            }))
        }
        _ => Err(QueryRejection::InvalidRequest),
    }
}

/// `max={k}`: decimal digits only, 1 to [`MAX_MESSAGES`].
fn parse_max(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 3 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u8>()
        .ok()
        .filter(|k| (1..=MAX_MESSAGES).contains(k))
}

/// The query's `name=value` pairs, decoded as `application/x-www-form-urlencoded`.
/// A pair with nothing to decode (no `%`, no `+`: a poll's keys, numbers and
/// ids) is handed out as it stands; the others go through `form_urlencoded`.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            if pair.bytes().any(|b| b == b'%' || b == b'+') {
                form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .unwrap_or_default()
            } else {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (Cow::Borrowed(name), Cow::Borrowed(value))
            }
        })
}

/// The rule that keeps browsers to their own queues: the name must carry the
/// queue prefix, be at most 255 bytes and printable ASCII. Anything else is
/// answered 404 without asking the broker.
///
/// Cloned into several layers for every request, hence the shared prefix.
#[derive(Debug, Clone)]
pub struct QueueRules {
    prefix: std::sync::Arc<str>,
}

impl QueueRules {
    pub fn new(prefix: impl Into<String>) -> Self {
        QueueRules {
            prefix: prefix.into().into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// May this queue be polled?
    pub fn accepts(&self, queue: &str) -> bool {
        queue.len() <= 255
            && queue.len() > self.prefix.len()
            && queue.starts_with(&*self.prefix)
            && crate::config::is_printable_ascii(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(uuid: &str, sequence: u64) -> Result<PollQuery, QueryRejection> {
        Ok(PollQuery::Poll(PollRequest {
            uuid: uuid.into(),
            sequence,
            seen: None,
            max: 1,
        }))
    }

    #[test]
    fn max_is_one_to_a_hundred_and_one_by_default() {
        let max = |query: &str| match parse_query(Some(query)) {
            Ok(PollQuery::Poll(p)) => Ok(p.max),
            Ok(PollQuery::Probe) => panic!("{query}: a probe"),
            Err(e) => Err(e),
        };
        assert_eq!(max("uuid=q&sequence=1"), Ok(1));
        assert_eq!(max("uuid=q&sequence=1&max=1"), Ok(1));
        assert_eq!(max("uuid=q&sequence=1&max=7"), Ok(7));
        assert_eq!(max("max=100&uuid=q&sequence=1"), Ok(100));
        assert_eq!(max("uuid=q&sequence=1&max=%31%30"), Ok(10));
        for bad in [
            "0", "101", "255", "256", "1000", "-1", "+1", "1.0", "abc", "", "%20",
        ] {
            assert_eq!(
                max(&format!("uuid=q&sequence=1&max={bad}")),
                Err(QueryRejection::InvalidMax),
                "{bad}"
            );
        }
        assert_eq!(
            max("uuid=q&sequence=1&max=2&max=3"),
            Err(QueryRejection::InvalidRequest),
            "given twice"
        );
        // The request's own faults come first; a probe ignores `max`.
        assert_eq!(max("uuid=q&max=2"), Err(QueryRejection::InvalidRequest));
        assert_eq!(
            max("uuid=q&sequence=x&max=0"),
            Err(QueryRejection::InvalidSequence)
        );
        assert_eq!(parse_query(Some("max=0")), Ok(PollQuery::Probe));
    }

    #[test]
    fn a_seen_list_names_only_its_whole_ids() {
        let seen = SeenIds::parse("m-12,m-3,abc");
        for id in ["m-12", "m-3", "abc"] {
            assert!(seen.contains(id), "{id}");
        }
        for id in ["m-1", "m-123", "-3", "m", "bc", "", "m-12,m-3", ","] {
            assert!(!seen.contains(id), "{id}");
        }
        assert!(!SeenIds::parse("").contains(""));
    }

    #[test]
    fn seen_lists_the_clients_recent_message_ids() {
        let q = parse_query(Some("uuid=q&sequence=2&seen=a%2Cb,,c%20d,")).unwrap();
        let PollQuery::Poll(p) = q else { panic!() };
        let seen = p.seen.expect("a seen list");
        assert_eq!(seen.iter().collect::<Vec<_>>(), ["a", "b"]);
        let PollQuery::Poll(p) = parse_query(Some("uuid=q&sequence=1&seen=")).unwrap() else {
            panic!()
        };
        assert_eq!(p.seen.map(|s| s.iter().count()), Some(0));
        let long = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let PollQuery::Poll(p) =
            parse_query(Some(&format!("uuid=q&sequence=1&seen={long}"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.seen.unwrap().iter().count(), MAX_SEEN_IDS);
        assert_eq!(
            parse_query(Some("uuid=q&sequence=1&seen=a&seen=b")),
            Err(QueryRejection::InvalidRequest)
        );
    }

    proptest::proptest! {
        #[test]
        fn pairs_are_decoded_as_form_urlencoded_decodes_them(
            query in "([a-z=&+%,.]|%[0-9A-Fa-f]{2}|%|é){0,40}"
        ) {
            let ours: Vec<_> = query_pairs(&query).collect();
            let reference: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn the_query_forms_of_the_contract() {
        assert_eq!(parse_query(None), Ok(PollQuery::Probe));
        assert_eq!(parse_query(Some("")), Ok(PollQuery::Probe));
        assert_eq!(parse_query(Some("other=1")), Ok(PollQuery::Probe));
        assert_eq!(parse_query(Some("uuid=q&sequence=1")), poll("q", 1));
        assert_eq!(parse_query(Some("sequence=0&uuid=a%2Eb")), poll("a.b", 0));
        assert_eq!(
            parse_query(Some("uuid=q&sequence=18446744073709551615")),
            poll("q", u64::MAX)
        );
        for bad in [
            "uuid=q",
            "sequence=1",
            "uuid=&sequence=1",
            "uuid=q&sequence=",
            "uuid=a&uuid=b&sequence=1",
        ] {
            assert_eq!(
                parse_query(Some(bad)),
                Err(QueryRejection::InvalidRequest),
                "{bad}"
            );
        }
        for bad in ["-1", "+1", "1.0", "abc", "18446744073709551616", "1%20"] {
            let q = format!("uuid=q&sequence={bad}");
            assert_eq!(
                parse_query(Some(&q)),
                Err(QueryRejection::InvalidSequence),
                "{bad}"
            );
        }
    }

    #[test]
    fn queue_rules_keep_browsers_to_prefixed_printable_names() {
        let rules = QueueRules::new("longpoll.subscribe.");
        assert!(rules.accepts("longpoll.subscribe.abc"));
        assert!(!rules.accepts("longpoll.subscribe."));
        assert!(!rules.accepts("other.queue"));
        assert!(!rules.accepts("longpoll.subscribe.a b"));
        assert!(!rules.accepts("longpoll.subscribe.é"));
        assert!(!rules.accepts(&format!("longpoll.subscribe.{}", "x".repeat(237))));
        assert!(rules.accepts(&format!("longpoll.subscribe.{}", "x".repeat(236))));
    }
}
