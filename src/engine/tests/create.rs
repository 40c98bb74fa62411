//! CreateSession in MODE_PER_PARTICIPANT: version 1, PENDING, with a CREATED
//! event; participants ordered by index; their own or the session's initial
//! time; the timeout action, metadata and request id kept. And every input
//! limit, each refusal naming its field: 1–1000 participants, unique ids and
//! indexes, the id syntax, durations of 1 ms to 30 days, no fields of other
//! modes, metadata of at most 32 entries and 4 KiB, the Fischer increment and
//! its cap.
//!
//! Combinations across modes and time controls: `spec::combinations`; random
//! inputs: `property::create`.

use std::collections::BTreeMap;

use super::*;

fn create_err(n: NewSession) -> RuleError {
    create(n, T0).expect_err("create must refuse this input")
}

#[test]
fn create_builds_version_1_pending_with_a_created_event() {
    let (s, e) = create(new_session(&["alice", "bob"], FIVE_MIN_MS), T0).unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.status, Status::Pending);
    assert_eq!(s.mode, Mode::PerParticipant);
    assert_eq!(
        s.timeout_action,
        TimeoutAction::EndSession,
        "END_SESSION is the per-participant default"
    );
    assert_eq!((s.created_at, s.updated_at), (T0, T0));
    assert_eq!(
        (s.active, s.cycle_started_at, s.started_at, s.ended_at),
        (None, None, None, None)
    );
    assert_eq!(s.cycle_count, 0);
    assert_eq!(deadline(&s), None, "no clock runs while PENDING");
    for p in &s.participants {
        assert_eq!(
            (
                p.clock.initial,
                p.clock.remaining,
                p.clock.used,
                p.clock.credits,
                p.clock.adjustments
            ),
            (5 * MIN, 5 * MIN, 0, 0, 0)
        );
        assert_eq!(
            (p.cycle_count, p.expired, p.group.clone()),
            (0, false, None)
        );
    }
    assert_eq!(
        (e.version, e.kind, e.participant.clone(), e.at),
        (1, EventKind::Created, None, T0)
    );
    assert_eq!(e.session, s);
}

#[test]
fn create_orders_participants_by_index_which_defaults_to_the_position() {
    let mut n = new_session(&["x", "y", "z"], 1000);
    n.participants[0].index = Some(20);
    n.participants[1].index = Some(5);
    n.participants[2].index = Some(11);
    let s = created(n);
    let order: Vec<(&str, u32)> = s
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p.index))
        .collect();
    assert_eq!(order, vec![("y", 5), ("z", 11), ("x", 20)]);

    let s = created(new_session(&["c", "a", "b"], 1000));
    let order: Vec<(&str, u32)> = s
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p.index))
        .collect();
    assert_eq!(order, vec![("c", 0), ("a", 1), ("b", 2)]);
}

#[test]
fn create_uses_the_session_initial_time_for_participants_without_their_own() {
    let mut n = new_session(&["a", "b"], 1000);
    n.initial_time_ms = 90_000;
    n.participants[0].initial_time_ms = None;
    n.participants[1].initial_time_ms = Some(30_000);
    let s = created(n);
    assert_eq!(part(&s, "a").clock.initial, 90 * SEC);
    assert_eq!(part(&s, "b").clock.initial, 30 * SEC);
    assert_eq!(part(&s, "b").clock.remaining, 30 * SEC);
}

#[test]
fn create_requires_an_initial_time_naming_the_participant() {
    let mut n = new_session(&["a", "b"], 1000);
    n.participants[1].initial_time_ms = None;
    assert_field(&create_err(n), "participants[1].initial_time_ms");
}

#[test]
fn create_initial_time_must_be_positive_and_at_most_30_days() {
    for bad in [0, -1, i64::MIN, MAX_DURATION_MS + 1, i64::MAX] {
        let mut n = new_session(&["a", "b"], 1000);
        n.participants[1].initial_time_ms = Some(bad);
        assert_field(&create_err(n), "participants[1].initial_time_ms");
    }
    for good in [1, MAX_DURATION_MS] {
        let mut n = new_session(&["a", "b"], 1000);
        n.participants[1].initial_time_ms = Some(good);
        assert_eq!(part(&created(n), "b").clock.initial, good * MS);
    }
    assert_eq!(MAX_DURATION_MS, 30 * 24 * 3600 * 1000);
    for bad in [-5, MAX_DURATION_MS + 1] {
        let mut n = new_session(&["a"], 1000);
        n.initial_time_ms = bad;
        assert_field(&create_err(n), "initial_time_ms");
    }
}

#[test]
fn create_accepts_1_to_1000_participants() {
    let mut n = new_session(&["a"], 1000);
    n.participants.clear();
    assert_field(&create_err(n), "participants");

    let ids: Vec<String> = (0..MAX_PARTICIPANTS + 1).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(created(new_session(&refs[..1], 1000)).participants.len(), 1);
    assert_eq!(
        created(new_session(&refs[..MAX_PARTICIPANTS], 1000))
            .participants
            .len(),
        1000
    );
    assert_field(&create_err(new_session(&refs, 1000)), "participants");
}

#[test]
fn create_rejects_duplicate_ids_and_indexes_naming_the_second() {
    assert_field(
        &create_err(new_session(&["a", "b", "a"], 1000)),
        "participants[2].participant_id",
    );

    let mut n = new_session(&["a", "b", "c"], 1000);
    n.participants[1].index = Some(7);
    n.participants[2].index = Some(7);
    assert_field(&create_err(n), "participants[2].index");

    // An explicit index may clash with another participant's default (its position).
    let mut n = new_session(&["a", "b"], 1000);
    n.participants[1].index = Some(0);
    assert_field(&create_err(n), "participants[1].index");
}

#[test]
fn participant_ids_are_1_to_128_allowed_characters_naming_the_field() {
    assert!(
        ParticipantId::parse("participants[0].participant_id", &"a".repeat(MAX_ID_LEN)).is_ok()
    );
    for bad in [
        String::new(),
        "a".repeat(MAX_ID_LEN + 1),
        "a b".into(),
        "ä".into(),
        "a/b".into(),
        "a\n".into(),
    ] {
        let e = ParticipantId::parse("participants[4].participant_id", &bad).unwrap_err();
        assert_field(&e, "participants[4].participant_id");
    }
    assert!(ParticipantId::parse("f", "A-z_0.9:x").is_ok());
}

#[test]
fn create_rejects_fields_other_modes_use() {
    let mut n = new_session(&["a"], 1000);
    n.participants[0].group = Some(GroupId::parse("g", "team").unwrap());
    assert_field(&create_err(n), "participants[0].group_id");

    let mut n = new_session(&["a"], 1000);
    n.groups.push(NewGroup {
        id: GroupId::parse("g", "team").unwrap(),
        initial_time_ms: 1000,
    });
    assert_field(&create_err(n), "groups");

    let mut n = new_session(&["a"], 1000);
    n.cycle_time_ms = 1000;
    assert_field(&create_err(n), "cycle_time_ms");

    let mut n = new_session(&["a"], 1000);
    n.global_time_ms = 1000;
    assert_field(&create_err(n), "global_time_ms");

    let mut n = new_session(&["a"], 1000);
    n.max_time_ms = 1000;
    assert_field(&create_err(n), "max_time_ms");
}

#[test]
fn create_limits_metadata_to_32_entries_and_4_kib() {
    let with = |entries: Vec<(String, String)>| {
        let mut n = new_session(&["a"], 1000);
        n.metadata = entries.into_iter().collect();
        n
    };
    let many = |k: usize| {
        (0..k)
            .map(|i| (format!("k{i:02}"), "v".to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(created(with(many(MAX_METADATA_ENTRIES))).metadata.len(), 32);
    assert_field(
        &create_err(with(many(MAX_METADATA_ENTRIES + 1))),
        "metadata",
    );

    // keys and values both count: "k" + 4095 bytes = 4096 exactly.
    let exactly = vec![("k".to_owned(), "v".repeat(MAX_METADATA_BYTES - 1))];
    assert_eq!(
        created(with(exactly.clone())).metadata,
        exactly.into_iter().collect::<BTreeMap<_, _>>()
    );
    let over = vec![("k".to_owned(), "v".repeat(MAX_METADATA_BYTES))];
    assert_field(&create_err(with(over)), "metadata");
    let spread = vec![
        ("kk".to_owned(), "v".repeat(2047)),
        ("k2".to_owned(), "v".repeat(2046)),
    ];
    assert_field(&create_err(with(spread)), "metadata");

    assert_field(
        &create_err(with(vec![(String::new(), "v".into())])),
        "metadata",
    );
}

#[test]
fn create_checks_the_fischer_increment_and_its_cap() {
    let e = create_err(fischer(new_session(&["a"], 1000), -1, 0));
    assert_field(&e, "time_control.increment_ms");
    let e = create_err(fischer(new_session(&["a"], 1000), MAX_DURATION_MS + 1, 0));
    assert_field(&e, "time_control.increment_ms");
    assert_eq!(
        created(fischer(new_session(&["a"], 1000), MAX_DURATION_MS, 0))
            .time_control
            .increment,
        MAX_DURATION_MS * MS
    );
    assert_eq!(
        created(fischer(new_session(&["a"], 1000), 0, 0)).time_control,
        TimeControl::default()
    );

    // The cap only caps an increment.
    let e = create_err(fischer(new_session(&["a"], 1000), 0, 10_000));
    assert_field(&e, "time_control.max_remaining_ms");
    for bad in [-1, MAX_DURATION_MS + 1] {
        let e = create_err(fischer(new_session(&["a"], 1000), 1000, bad));
        assert_field(&e, "time_control.max_remaining_ms");
    }
    let s = created(fischer(new_session(&["a"], 1000), 2000, 60_000));
    assert_eq!(
        (s.time_control.increment, s.time_control.max_remaining),
        (2 * SEC, 60 * SEC)
    );
}

#[test]
fn create_keeps_the_timeout_action_metadata_and_request_id() {
    let mut n = on_timeout(new_session(&["a", "b"], 1000), TimeoutAction::Notify);
    n.metadata.insert("table".into(), "7".into());
    n.request_id = Some(rid("create-1"));
    let s = created(n);
    assert_eq!(s.timeout_action, TimeoutAction::Notify);
    assert_eq!(s.metadata.get("table").map(String::as_str), Some("7"));
    assert!(s.has_applied("create-1"));
}
