//! Message ids for messages whose publisher set none.
//!
//! The contract: `X-Longpoll-Message-Id` is the AMQP `message_id` when set,
//! otherwise an id derived from the message's content and properties, so that a
//! redelivery of the same message carries the same id on every replica.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// A fresh message id: a UUIDv7, hyphenated, lower case. Time-ordered, so
/// that a resume can start reading the history near the time it names
/// ([`uuid_v7_time`]) instead of at its beginning; 74 random bits keep ids
/// made in the same millisecond apart.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// When a UUIDv7 message id was made (millisecond precision); `None` for any
/// other id (another publisher's, a derived `sha256-…` one, a UUIDv4).
pub fn uuid_v7_time(id: &str) -> Option<SystemTime> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Derives a stable id from the body and the properties that identify a message
/// (timestamp, correlation id, type, content type). Prefixed `sha256-`.
pub fn derive_message_id(body: &[u8], identifying_properties: &[Option<&str>]) -> String {
    let mut h = Sha256::new();
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    for p in identifying_properties {
        match p {
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    let digest = h.finalize();
    format!("sha256-{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_message_same_id_and_different_properties_differ() {
        let a = derive_message_id(b"{\"a\":1}", &[Some("1700000000"), None]);
        let b = derive_message_id(b"{\"a\":1}", &[Some("1700000000"), None]);
        let c = derive_message_id(b"{\"a\":1}", &[Some("1700000001"), None]);
        let d = derive_message_id(b"{\"a\":2}", &[Some("1700000000"), None]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.starts_with("sha256-") && a.len() == 7 + 32);
    }

    #[test]
    fn new_ids_are_uuid_v7_and_carry_their_time() {
        let before = SystemTime::now() - Duration::from_millis(1);
        let id = new_message_id();
        let after = SystemTime::now();
        assert_eq!(id.len(), 36);
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
        let made = uuid_v7_time(&id).expect("a v7 time");
        assert!(made >= before && made <= after, "{made:?}");
        std::thread::sleep(Duration::from_millis(2));
        assert!(new_message_id() > id, "later ids sort after");
        assert_eq!(uuid_v7_time(&uuid::Uuid::new_v4().to_string()), None);
        assert_eq!(
            uuid_v7_time("sha256-00112233445566778899aabbccddeeff"),
            None
        );
        assert_eq!(uuid_v7_time("not an id"), None);
    }

    #[test]
    fn property_boundaries_matter() {
        let a = derive_message_id(b"", &[Some("ab"), Some("c")]);
        let b = derive_message_id(b"", &[Some("a"), Some("bc")]);
        assert_ne!(a, b);
    }
}
