//! The event wire format, spelled once: the bytes of a session's stored
//! state, of an event in a session's log and in a bucket's audit stream, and
//! of a Pub/Sub batch (a JSON array of events). The Redis store writes them
//! and reads states and log entries back; the fan-out decodes the batches
//! and the audit source the stream entries. All of it is the JSON of the
//! engine's serde types; what is read back is checked to be a session the
//! rules can run on (`Stored`).
//!
//! A session's JSON (its snapshot, in every event) leaves out the request
//! ids it remembers and its undo point; only the stored state carries them,
//! as more fields at its end: `{<the snapshot's fields>,"recent_requests":
//! [...],"undo":{...}}` ([`encode_state`]). That is byte for byte the state the release before
//! wrote (it had the field last, left out when empty), so replicas of either
//! release read each other's states during a rolling deploy. The snapshot
//! is encoded once and its bytes shared by the state and the events.

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

/// The name of the state's field holding the remembered request ids: the
/// name of `Session::recent_requests`, which serde reads back into it.
const RECENT_REQUESTS_FIELD: &[u8] = b",\"recent_requests\":";
/// Likewise `Session::undo`.
const UNDO_FIELD: &[u8] = b",\"undo\":";

/// A session's stored state, encoded: the state key's bytes, whose first
/// `snapshot_end` bytes and a closing brace are the session's snapshot.
pub struct EncodedState {
    bytes: Vec<u8>,
    snapshot_end: usize,
}

impl EncodedState {
    /// The state key's bytes: the snapshot with the remembered request ids.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The state key's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The snapshot's bytes but its closing brace.
    fn snapshot_open(&self) -> &[u8] {
        &self.bytes[..self.snapshot_end]
    }
}

/// The state of `session`: its snapshot (`encode(session)`, without the
/// request ids and the undo point) with `"recent_requests"` and `"undo"`
/// added before the closing brace when it has them. Decoding it
/// (`decode::<Session>`) gives the session back, ids, undo and all.
pub fn encode_state(session: &Session) -> EncodedState {
    let mut bytes = encode(session);
    // A session is a JSON object: the last byte is its closing brace.
    let snapshot_end = bytes.len().saturating_sub(1);
    let has_ids = !session.recent_requests.is_empty();
    if (has_ids || session.undo.is_some()) && bytes.last() == Some(&b'}') {
        bytes.truncate(snapshot_end);
        if has_ids {
            bytes.extend_from_slice(RECENT_REQUESTS_FIELD);
            bytes.extend_from_slice(&encode(&session.recent_requests));
        }
        if let Some(undo) = &session.undo {
            bytes.extend_from_slice(UNDO_FIELD);
            bytes.extend_from_slice(&encode(undo));
        }
        bytes.push(b'}');
    }
    EncodedState {
        bytes,
        snapshot_end,
    }
}

/// `encode(e)`, reusing the snapshot already encoded for the state key when
/// the event carries that same session rather than encoding it again.
pub fn encode_event(e: &Event, session: &Session, state: &EncodedState) -> Vec<u8> {
    if e.session != *session {
        return encode(e);
    }
    let snapshot = state.snapshot_open();
    let mut out = Vec::with_capacity(snapshot.len() + 128);
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
    out.extend_from_slice(snapshot);
    out.push(b'}');
    if let Some(lag) = &e.lag {
        out.extend_from_slice(b",\"lag\":");
        out.extend_from_slice(&encode(lag));
    }
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

    /// A two-player session "s-1" ("a", "b", a minute each) to be created.
    fn two_players() -> NewSession {
        let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
        let mut new = NewSession::new(
            SessionId::parse("id", "s-1").unwrap(),
            Mode::PerParticipant,
            vec![p("a"), p("b")],
        );
        new.initial_time_ms = 60_000;
        new
    }

    #[test]
    fn an_event_encoded_around_its_stored_state_is_byte_for_byte_the_derived_encoding() {
        let mut new = two_players();
        new.metadata
            .insert("note".into(), "quote \" backslash \\ unicode é".into());
        let (mut session, _) = engine::create(new, 1_700_000_000_000_000).unwrap();
        session.recent_requests = ["r-1", "r-2"].map(String::from).into();
        let state = encode_state(&session);
        for kind in EventKind::ALL {
            for participant in [None, Some(ParticipantId::parse("p", "b").unwrap())] {
                for lag in [None, Some(engine::LagCredit { asked: 5, given: 3 })] {
                    let e = Event {
                        version: 7,
                        kind,
                        participant: participant.clone(),
                        at: -3,
                        session: session.clone(),
                        lag,
                    };
                    let bytes = encode_event(&e, &session, &state);
                    assert_eq!(bytes, encode(&e), "{kind:?}");
                    let back: Event = decode(&bytes).unwrap();
                    assert!(back.session.recent_requests.is_empty(), "{kind:?}");
                    assert_eq!(back.lag, lag);
                }
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
            lag: None,
        };
        assert_eq!(encode_event(&e, &session, &state), encode(&e));
    }

    #[test]
    fn a_state_keeps_the_undo_point_that_its_snapshot_and_events_leave_out() {
        use crate::engine::{Command, Request};
        let (s, _) = engine::create(two_players(), 1_000).unwrap();
        let s = engine::apply(&s, &Request::new(Command::Start { first: None }), 2_000)
            .unwrap()
            .session;
        let switch = Command::Switch {
            from: None,
            next: None,
            lag_ms: None,
        };
        let applied = engine::apply(&s, &Request::new(switch), 3_000).unwrap();
        let session = applied.session;
        assert!(session.undo.is_some());
        let snapshot = encode(&session);
        assert!(!String::from_utf8_lossy(&snapshot).contains("\"undo\""));
        let state = encode_state(&session);
        let back: Session = decode(state.bytes()).unwrap();
        assert_eq!(back, session, "the state decodes with its undo point");
        let e = encode_event(&applied.events[0], &session, &state);
        assert!(!String::from_utf8_lossy(&e).contains("\"undo\""));
        let back: Event = decode(&e).unwrap();
        assert!(back.session.undo.is_none());
    }

    #[test]
    fn a_state_keeps_the_request_ids_that_its_snapshot_leaves_out() {
        let (mut session, _) = engine::create(two_players(), 1_000).unwrap();
        // None remembered: the state is the snapshot.
        let state = encode_state(&session);
        assert_eq!(state.bytes(), encode(&session));
        session.recent_requests = ["rid-1", "rid-2"].map(String::from).into();
        let state = encode_state(&session);
        let snapshot = encode(&session);
        assert!(!String::from_utf8_lossy(&snapshot).contains("rid-"));
        assert!(
            state
                .bytes()
                .ends_with(b",\"recent_requests\":[\"rid-1\",\"rid-2\"]}")
        );
        assert_eq!(
            state.bytes()[..snapshot.len() - 1],
            snapshot[..snapshot.len() - 1]
        );
        let back: Session = decode(state.bytes()).unwrap();
        assert_eq!(back, session, "the state decodes with its ids");
    }

    #[test]
    fn a_state_written_by_the_release_before_decodes_with_its_ids() {
        // As the release before wrote it: the ids inline, as the last field.
        let old = br#"{"id":"s-1","epoch":"e","mode":"PerParticipant","status":"Running","version":3,"participants":[{"id":"a","index":0,"clock":{"initial":60000000,"remaining":60000000}},{"id":"b","index":1,"clock":{"initial":60000000,"remaining":60000000}}],"active":1,"cycle_count":1,"cycle_started_at":2000,"time_control":{},"timeout_action":"EndSession","created_at":1000,"started_at":1000,"updated_at":2000,"recent_requests":["old-1","old-2"]}"#;
        let s: Session = decode(old).unwrap();
        assert!(s.has_applied("old-1") && s.has_applied("old-2"));
        assert_eq!(s.version, 3);
        // And written again in this release's state, the same bytes.
        assert_eq!(encode_state(&s).bytes(), old);
    }

    #[test]
    fn a_batch_is_a_json_array_of_its_events() {
        assert_eq!(join_batch(&[]), b"[]");
        assert_eq!(join_batch(&[b"1".to_vec(), b"{}".to_vec()]), b"[1,{}]");
    }
}
