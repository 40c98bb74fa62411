//! Retries and concurrent writers: a repeated request_id (the create's too) is
//! answered with the session unchanged and no events, a refused one is not
//! remembered, only the last 64 are; expected_version must match the
//! session's. And what a reply carries: every event its version and the
//! snapshot after it, the deleted event one version past the last.

use super::*;

// ---------------------------------------------------------------------------
// Idempotency and optimistic concurrency
// ---------------------------------------------------------------------------

fn with_rid(c: Command, r: &str) -> Request {
    Request {
        command: c,
        expected_version: None,
        request_id: Some(rid(r)),
    }
}

#[test]
fn a_repeated_request_id_returns_the_session_unchanged_without_events() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = apply(&s, &with_rid(start(), "r1"), T0).unwrap();
    assert!(a.session.has_applied("r1"));
    assert_eq!(
        a.events.last().unwrap().session,
        a.session,
        "the last event is the session stored (the store encodes it once; serde leaves the ids out)"
    );
    let s = a.session;

    // Same id again, even with another command, a stale expected_version, after the deadline.
    for (c, ev_) in [
        (start(), None),
        (Command::Pause, Some(1)),
        (switch(), Some(99)),
        (Command::Timeout, None),
    ] {
        let r = Request {
            command: c,
            expected_version: ev_,
            request_id: Some(rid("r1")),
        };
        let again = apply(&s, &r, T0 + 60 * MIN).unwrap();
        assert!(again.events.is_empty());
        assert_eq!(again.session, s);
    }
    // A terminal session replays too.
    let done = apply(&s, &with_rid(Command::Cancel, "r2"), T0 + SEC)
        .unwrap()
        .session;
    let again = apply(&done, &with_rid(Command::Cancel, "r2"), T0 + 2 * SEC).unwrap();
    assert!(again.events.is_empty());
    assert_eq!(again.session, done);
}

#[test]
fn the_create_request_id_is_remembered() {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.request_id = Some(rid("c1"));
    let s = created(n);
    let a = apply(&s, &with_rid(start(), "c1"), T0).unwrap();
    assert!(a.events.is_empty());
    assert_eq!(a.session.status, Status::Pending);
}

#[test]
fn a_refused_request_id_is_not_remembered() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert!(apply(&s, &with_rid(Command::Pause, "r1"), T0).is_err());
    let a = apply(&s, &with_rid(start(), "r1"), T0).unwrap();
    assert_eq!(kinds(&a), vec![ev(EventKind::Started, Some("a"))]);
}

#[test]
fn only_the_last_64_request_ids_are_remembered() {
    let mut s = ok(&created(new_session(&["a", "b"], FIVE_MIN_MS)), start(), T0).session;
    s = apply(&s, &with_rid(adjust("b", 1), "first"), T0)
        .unwrap()
        .session;
    for i in 0..REMEMBERED_REQUESTS {
        s = apply(&s, &with_rid(adjust("b", 1), &format!("n{i}")), T0)
            .unwrap()
            .session;
    }
    assert_eq!(s.recent_requests.len(), REMEMBERED_REQUESTS);
    assert_eq!(s.recent_requests.front().map(String::as_str), Some("n0"));
    let a = apply(&s, &with_rid(adjust("b", 1), "n0"), T0).unwrap();
    assert!(a.events.is_empty(), "n0 is the oldest still remembered");
    let a = apply(&s, &with_rid(adjust("b", 1), "first"), T0).unwrap();
    assert_eq!(
        a.events.len(),
        1,
        "\"first\" was forgotten, so it applies again"
    );
    assert_eq!(
        a.session.recent_requests.front().map(String::as_str),
        Some("n1")
    );
}

#[test]
fn expected_version_must_match() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let r = |v| Request {
        command: start(),
        expected_version: Some(v),
        request_id: None,
    };
    for wrong in [0, 2, u64::MAX] {
        let e = apply(&s, &r(wrong), T0).unwrap_err();
        assert_eq!(
            e,
            RuleError::VersionMismatch {
                expected: wrong,
                actual: 1
            }
        );
        assert!(
            e.to_string().contains(&format!("expected_version {wrong}")),
            "{e}"
        );
    }
    let s = apply(&s, &r(1), T0).unwrap().session;
    assert_eq!(s.version, 2);
    let e = apply(
        &s,
        &Request {
            command: switch(),
            expected_version: Some(1),
            request_id: None,
        },
        T0,
    )
    .unwrap_err();
    assert_eq!(
        e,
        RuleError::VersionMismatch {
            expected: 1,
            actual: 2
        }
    );
}

// ---------------------------------------------------------------------------
// Versions and snapshots
// ---------------------------------------------------------------------------

#[test]
fn every_event_carries_its_version_and_the_snapshot_after_it() {
    let s = started(on_timeout(
        new_session(&["a", "b"], FIVE_MIN_MS),
        TimeoutAction::Notify,
    ));
    let a = ok(&s, switch(), T0 + 6 * MIN);
    assert_eq!(a.events.len(), 2);
    for (k, e) in a.events.iter().enumerate() {
        assert_eq!(e.version, s.version + 1 + k as u64);
        assert_eq!(e.session.version, e.version);
        assert_eq!(e.at, T0 + 6 * MIN);
    }
    assert_eq!(
        a.events[0].session.active, s.active,
        "the first snapshot is before the switch"
    );
    assert_eq!(a.events[1].session, a.session);
}

#[test]
fn deleted_event_is_one_version_past_the_last() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let e = deleted_event(&s, T0 + SEC);
    assert_eq!(
        (e.version, e.kind, e.at, e.session.version),
        (s.version + 1, EventKind::Deleted, T0 + SEC, s.version + 1)
    );
    assert_eq!(deleted_event(&s, T0 - SEC).at, s.updated_at);
}
