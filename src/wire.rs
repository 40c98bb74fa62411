//! The event wire format, spelled once: the bytes of a session's stored
//! state, of an event in a session's log and in a bucket's audit stream, and
//! of a Pub/Sub batch (a JSON array of events). The Redis store writes them
//! and reads states and log entries back; the fan-out decodes the batches
//! and the audit source the stream entries. All of it is the JSON of the
//! engine's serde types; what is read back is checked to be a session the
//! rules can run on (`Stored`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{self, Event, Session};

/// A log entry's field holding the event.
pub const LOG_FIELD_EVENT: &str = "e";
/// An audit stream entry's field holding the session's tenant.
pub const AUDIT_FIELD_TENANT: &str = "tenant";
/// An audit stream entry's field holding the event.
pub const AUDIT_FIELD_EVENT: &str = "e";

/// The JSON of a state or an event.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// What the wire decodes: a state, an event, a batch of events. Each is
/// checked once serde has read it (`engine::check_stored`): stored bytes
/// may be corrupt or hostile, and the rules index and add up what they hold.
pub trait Stored: DeserializeOwned {
    fn check(&self) -> Result<(), String>;
}

impl Stored for Session {
    fn check(&self) -> Result<(), String> {
        engine::check_stored(self)
    }
}

impl Stored for Event {
    fn check(&self) -> Result<(), String> {
        engine::check_stored_event(self)
    }
}

impl Stored for Vec<Event> {
    fn check(&self) -> Result<(), String> {
        self.iter().try_for_each(engine::check_stored_event)
    }
}

/// A state or an event from its JSON; one the rules cannot run on is an
/// error like bad JSON is (the stored_session fuzz target found values
/// that made the service panic: fuzz/regressions/stored_session/).
pub fn decode<T: Stored>(raw: &[u8]) -> Result<T, serde_json::Error> {
    let value: T = serde_json::from_slice(raw)?;
    value
        .check()
        .map_err(<serde_json::Error as serde::de::Error>::custom)?;
    Ok(value)
}

/// `encode(e)`, reusing `state` (already encoded for the state key) when
/// the event carries that same session rather than encoding it again.
pub fn encode_event(e: &Event, session: &Session, state: &[u8]) -> Vec<u8> {
    if e.session != *session {
        return encode(e);
    }
    let mut out = Vec::with_capacity(state.len() + 128);
    // The same fields, in the same order, as `#[derive(Serialize)] Event`
    // writes them (the tests compare the two for every kind of event).
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(e.version.to_string().as_bytes());
    out.extend_from_slice(b",\"kind\":");
    out.extend_from_slice(&encode(&e.kind));
    out.extend_from_slice(b",\"participant\":");
    out.extend_from_slice(&encode(&e.participant));
    out.extend_from_slice(b",\"at\":");
    out.extend_from_slice(e.at.to_string().as_bytes());
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(state);
    out.push(b'}');
    out
}

/// A Pub/Sub batch: encoded events joined into one JSON array without
/// encoding them again.
pub fn join_batch(batch: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, b) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b);
    }
    out.push(b']');
    out
}

/// The events of a Pub/Sub batch.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<Event>, serde_json::Error> {
    decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        self, EventKind, Mode, NewParticipant, NewSession, ParticipantId, SessionId,
    };

    #[test]
    fn an_event_encoded_around_its_stored_state_is_byte_for_byte_the_derived_encoding() {
        let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
        let mut new = NewSession::new(
            SessionId::parse("id", "s-1").unwrap(),
            Mode::PerParticipant,
            vec![p("a"), p("b")],
        );
        new.initial_time_ms = 60_000;
        new.metadata
            .insert("note".into(), "quote \" backslash \\ unicode é".into());
        let (session, _) = engine::create(new, 1_700_000_000_000_000).unwrap();
        let state = encode(&session);
        for kind in EventKind::ALL {
            for participant in [None, Some(ParticipantId::parse("p", "b").unwrap())] {
                let e = Event {
                    version: 7,
                    kind,
                    participant,
                    at: -3,
                    session: session.clone(),
                };
                assert_eq!(encode_event(&e, &session, &state), encode(&e), "{kind:?}");
                let _: Event = decode(&encode_event(&e, &session, &state)).unwrap();
            }
        }
        // An event that carries another state is encoded whole.
        let mut earlier = session.clone();
        earlier.version -= 1;
        let e = Event {
            version: 6,
            kind: EventKind::Switched,
            participant: None,
            at: 1,
            session: earlier,
        };
        assert_eq!(encode_event(&e, &session, &state), encode(&e));
    }

    #[test]
    fn a_batch_is_a_json_array_of_its_events() {
        assert_eq!(join_batch(&[]), b"[]");
        assert_eq!(join_batch(&[b"1".to_vec(), b"{}".to_vec()]), b"[1,{}]");
    }
}
