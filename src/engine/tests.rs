//! The clock rules (SPEC §1–5) as worked examples, then property tests that
//! replay thousands of random command sequences against the pure engine and
//! check the invariants after every `apply`.
//!
//! Units: every instant and duration here is microseconds (`Micros`); the
//! `*_ms` fields of the inputs are milliseconds.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;

use super::*;

const MS: Micros = MICROS_PER_MS;
const SEC: Micros = 1_000 * MS;
const MIN: Micros = 60 * SEC;
/// An arbitrary creation instant (2023-11-14).
const T0: Micros = 1_700_000_000_000_000;
/// Five minutes, the default budget of the examples.
const FIVE_MIN_MS: i64 = 5 * 60 * 1000;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn pid(s: &str) -> ParticipantId {
    ParticipantId::parse("participant_id", s).unwrap()
}

fn rid(s: &str) -> RequestId {
    RequestId::parse("request_id", s).unwrap()
}

fn new_participant(id: &str, initial_ms: Option<i64>) -> NewParticipant {
    NewParticipant {
        id: pid(id),
        index: None,
        group: None,
        initial_time_ms: initial_ms,
    }
}

/// A valid per-participant session: every participant gets `initial_ms`.
fn new_session(ids: &[&str], initial_ms: i64) -> NewSession {
    let participants = ids
        .iter()
        .map(|id| new_participant(id, Some(initial_ms)))
        .collect();
    NewSession {
        epoch: "epoch-1".to_owned(),
        ..NewSession::new(
            SessionId::parse("session_id", "game-1").unwrap(),
            Mode::PerParticipant,
            participants,
        )
    }
}

fn fischer(mut n: NewSession, increment_ms: i64, max_remaining_ms: i64) -> NewSession {
    n.time_control.increment_ms = increment_ms;
    n.time_control.max_remaining_ms = max_remaining_ms;
    n
}

fn on_timeout(mut n: NewSession, action: TimeoutAction) -> NewSession {
    n.timeout_action = Some(action);
    n
}

fn created(n: NewSession) -> Session {
    create(n, T0).expect("valid session").0
}

/// Created at T0 and started at T0 with the default first participant.
fn started(n: NewSession) -> Session {
    ok(&created(n), start(), T0).session
}

fn create_err(n: NewSession) -> RuleError {
    create(n, T0).expect_err("create must refuse this input")
}

fn req(c: Command) -> Request {
    Request::new(c)
}

fn ok(s: &Session, c: Command, now: Micros) -> Applied {
    let c2 = c.clone();
    apply(s, &req(c), now).unwrap_or_else(|e| panic!("{c2:?} at {now} refused: {e}"))
}

fn err(s: &Session, c: Command, now: Micros) -> RuleError {
    let c2 = c.clone();
    match apply(s, &req(c), now) {
        Ok(a) => panic!(
            "{c2:?} at {now} should be refused, got events {:?}",
            kinds(&a)
        ),
        Err(e) => e,
    }
}

fn start() -> Command {
    Command::Start { first: None }
}

fn start_with(id: &str) -> Command {
    Command::Start {
        first: Some(pid(id)),
    }
}

fn switch() -> Command {
    Command::Switch {
        from: None,
        next: None,
    }
}

fn switch_from(id: &str) -> Command {
    Command::Switch {
        from: Some(pid(id)),
        next: None,
    }
}

fn switch_to(id: &str) -> Command {
    Command::Switch {
        from: None,
        next: Some(pid(id)),
    }
}

fn adjust(id: &str, delta_ms: i64) -> Command {
    Command::Adjust {
        target: AdjustTarget::Participant(pid(id)),
        delta_ms,
    }
}

fn kinds(a: &Applied) -> Vec<(EventKind, Option<String>)> {
    a.events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.participant.as_ref().map(|p| p.as_str().to_owned()),
            )
        })
        .collect()
}

fn ev(kind: EventKind, who: Option<&str>) -> (EventKind, Option<String>) {
    (kind, who.map(str::to_owned))
}

fn part<'a>(s: &'a Session, id: &str) -> &'a Participant {
    s.participants
        .iter()
        .find(|p| p.id.as_str() == id)
        .unwrap_or_else(|| panic!("no participant {id}"))
}

fn pos(s: &Session, id: &str) -> usize {
    s.participant_position(&pid(id)).unwrap()
}

fn active_id(s: &Session) -> Option<&str> {
    s.active_participant().map(|p| p.id.as_str())
}

/// `(remaining, used)` of `id` at `now`.
fn clock(s: &Session, id: &str, now: Micros) -> (Micros, Micros) {
    participant_clock(s, pos(s, id), now)
}

fn field(e: &RuleError) -> &str {
    match e {
        RuleError::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// The error is INVALID_ARGUMENT for `name`, and its message starts with the field.
fn assert_field(e: &RuleError, name: &str) {
    assert_eq!(field(e), name, "{e}");
    assert!(
        e.to_string().starts_with(&format!("{name}: ")),
        "message must name the field: {e}"
    );
}

fn assert_failed_precondition(e: &RuleError, mentions: &str) {
    match e {
        RuleError::FailedPrecondition(msg) => assert!(
            msg.contains(mentions),
            "{msg:?} should mention {mentions:?}"
        ),
        other => panic!("expected FailedPrecondition mentioning {mentions:?}, got {other:?}"),
    }
}

fn assert_ledger(s: &Session) {
    for p in &s.participants {
        assert_eq!(
            p.clock.initial + p.clock.credits + p.clock.adjustments - p.clock.used,
            p.clock.remaining,
            "ledger of {}: {p:?}",
            p.id
        );
        assert!(p.clock.remaining >= 0 && p.clock.used >= 0, "{p:?}");
    }
}

// ---------------------------------------------------------------------------
// CreateSession
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

#[test]
fn start_defaults_to_the_participant_with_the_lowest_index() {
    let mut n = new_session(&["x", "y", "z"], FIVE_MIN_MS);
    n.participants[0].index = Some(9);
    n.participants[1].index = Some(3);
    n.participants[2].index = Some(4);
    let now = T0 + 2 * SEC;
    let a = ok(&created(n), start(), now);
    assert_eq!(kinds(&a), vec![ev(EventKind::Started, Some("y"))]);
    let s = &a.session;
    assert_eq!((s.version, s.status), (2, Status::Running));
    assert_eq!(active_id(s), Some("y"));
    assert_eq!(
        (s.cycle_started_at, s.started_at, s.updated_at),
        (Some(now), Some(now), now)
    );
    assert_eq!(deadline(s), Some(now + 5 * MIN));
    assert_eq!(a.events[0].session, *s);
    assert_eq!((a.events[0].version, a.events[0].at), (2, now));
}

#[test]
fn start_with_an_explicit_first_participant() {
    let a = ok(
        &created(new_session(&["a", "b", "c"], FIVE_MIN_MS)),
        start_with("c"),
        T0,
    );
    assert_eq!(kinds(&a), vec![ev(EventKind::Started, Some("c"))]);
    assert_eq!(active_id(&a.session), Some("c"));
}

#[test]
fn start_with_an_unknown_participant_is_invalid() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_field(&err(&s, start_with("zed"), T0), "first_participant_id");
}

#[test]
fn start_only_from_pending() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, start(), T0 + SEC), "RUNNING");
    let paused = ok(&s, Command::Pause, T0 + SEC).session;
    assert_failed_precondition(&err(&paused, start(), T0 + 2 * SEC), "PAUSED");
}

#[test]
fn start_with_a_budget_adjusted_to_zero_flags_at_once() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("a", -FIVE_MIN_MS), T0).session;
    let a = ok(&s, start(), T0 + SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Started, Some("a")),
            ev(EventKind::Expired, Some("a"))
        ]
    );
    assert_eq!(a.session.status, Status::Expired);
}

// ---------------------------------------------------------------------------
// Switch
// ---------------------------------------------------------------------------

#[test]
fn switch_charges_the_elapsed_time_and_activates_the_next() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let now = T0 + 12_345_678;
    let a = ok(&s, switch(), now);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    let s = &a.session;
    let pa = part(s, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count
        ),
        (5 * MIN - 12_345_678, 12_345_678, 0, 1)
    );
    assert_eq!(
        part(s, "b"),
        part(&created(new_session(&["a", "b"], FIVE_MIN_MS)), "b"),
        "the next is not charged"
    );
    assert_eq!(
        (s.version, s.cycle_count, s.cycle_started_at),
        (3, 1, Some(now))
    );
    assert_eq!(active_id(s), Some("b"));
    assert_eq!(deadline(s), Some(now + 5 * MIN));
    assert_ledger(s);
}

#[test]
fn switch_adds_the_fischer_increment() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let s = ok(&s, switch(), T0 + 12_345_678).session;
    let pa = part(&s, "a");
    assert_eq!(
        (pa.clock.remaining, pa.clock.used, pa.clock.credits),
        (5 * MIN - 12_345_678 + 2 * SEC, 12_345_678, 2 * SEC)
    );
    // An instant move still earns the increment.
    let s = ok(&s, switch(), T0 + 12_345_678).session;
    let pb = part(&s, "b");
    assert_eq!(
        (pb.clock.remaining, pb.clock.used, pb.clock.credits),
        (5 * MIN + 2 * SEC, 0, 2 * SEC)
    );
    assert_ledger(&s);
}

#[test]
fn the_increment_never_lifts_the_budget_above_the_cap() {
    // 60 s + 10 s per move, capped at 65 s.
    let s = started(fischer(new_session(&["a", "b"], 60_000), 10_000, 65_000));
    let s = ok(&s, switch(), T0 + 3 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.credits),
        (65 * SEC, 8 * SEC),
        "57 s + min(10 s, 8 s)"
    );
    let s = ok(&s, switch(), T0 + 4 * SEC).session;
    assert_eq!(
        (part(&s, "b").clock.remaining, part(&s, "b").clock.credits),
        (65 * SEC, 6 * SEC),
        "59 s + min(10 s, 6 s)"
    );
    // Above the cap (by an adjustment) the increment is 0, and the cap never takes time away.
    let s = ok(&s, adjust("a", 30_000), T0 + 4 * SEC).session;
    let s = ok(&s, switch(), T0 + 5 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.credits),
        (94 * SEC, 8 * SEC)
    );
    assert_ledger(&s);

    // A cap far above the budget lets the whole increment through.
    let s = started(fischer(new_session(&["a", "b"], 60_000), 10_000, 120_000));
    let s = ok(&s, switch(), T0 + 3 * SEC).session;
    assert_eq!(part(&s, "a").clock.remaining, 67 * SEC);
}

#[test]
fn switch_goes_to_the_next_index_wrapping() {
    let mut n = new_session(&["x", "y", "z"], FIVE_MIN_MS);
    n.participants[0].index = Some(20);
    n.participants[1].index = Some(5);
    n.participants[2].index = Some(11);
    let mut s = started(n);
    let mut seen = vec![active_id(&s).unwrap().to_owned()];
    for k in 1..=4 {
        s = ok(&s, switch(), T0 + k * SEC).session;
        seen.push(active_id(&s).unwrap().to_owned());
    }
    assert_eq!(seen, ["y", "z", "x", "y", "z"]);
    assert_eq!(s.cycle_count, 4);
    assert_eq!(
        s.participants
            .iter()
            .map(|p| p.cycle_count)
            .collect::<Vec<_>>(),
        [2, 1, 1]
    );
}

#[test]
fn switch_to_an_explicit_next_participant() {
    let s = started(new_session(&["a", "b", "c"], FIVE_MIN_MS));
    let s = ok(&s, switch_to("c"), T0 + SEC).session;
    assert_eq!(active_id(&s), Some("c"));
    // The mover may even keep the turn.
    let a = ok(
        &s,
        Command::Switch {
            from: Some(pid("c")),
            next: Some(pid("c")),
        },
        T0 + 3 * SEC,
    );
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("c"))]);
    assert_eq!(active_id(&a.session), Some("c"));
    assert_eq!(a.session.cycle_started_at, Some(T0 + 3 * SEC));
    assert_eq!(part(&a.session, "c").clock.used, 2 * SEC);
    assert_field(
        &err(&s, switch_to("nobody"), T0 + 4 * SEC),
        "next_participant_id",
    );
}

#[test]
fn a_one_participant_session_switches_to_itself() {
    let s = started(new_session(&["solo"], FIVE_MIN_MS));
    let a = ok(&s, switch(), T0 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("solo"))]);
    assert_eq!(active_id(&a.session), Some("solo"));
    assert_eq!(part(&a.session, "solo").clock.remaining, 5 * MIN - SEC);
}

#[test]
fn switch_from_a_participant_who_is_not_active_is_refused() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, switch_from("b"), T0 + SEC), "from_participant_id");
    assert_failed_precondition(
        &err(&s, switch_from("ghost"), T0 + SEC),
        "from_participant_id",
    );
    let s = ok(&s, switch_from("a"), T0 + SEC).session;
    assert_eq!(active_id(&s), Some("b"));
    // The second of two racing moves by "a" is refused.
    assert_failed_precondition(
        &err(&s, switch_from("a"), T0 + SEC),
        "not the active participant",
    );
}

#[test]
fn switch_to_an_expired_participant_is_refused_and_rotation_skips_it() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let s = ok(&s, Command::Timeout, T0 + 5 * MIN).session;
    assert!(part(&s, "a").expired);
    assert_eq!(active_id(&s), Some("b"));
    assert_failed_precondition(&err(&s, switch_to("a"), T0 + 6 * MIN), "has expired");
    let s = ok(&s, switch(), T0 + 6 * MIN).session;
    assert_eq!(active_id(&s), Some("c"));
    let s = ok(&s, switch(), T0 + 7 * MIN).session;
    assert_eq!(
        active_id(&s),
        Some("b"),
        "c wraps around past the expired a"
    );
}

#[test]
fn switch_only_while_running() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, switch(), T0), "PENDING");
    let s = ok(&ok(&s, start(), T0).session, Command::Pause, T0 + SEC).session;
    assert_failed_precondition(&err(&s, switch(), T0 + 2 * SEC), "PAUSED");
}

#[test]
fn switching_to_a_clock_at_zero_flags_it_at_once() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("b", -10 * 60 * 1000), T0 + SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments,
            part(&s, "b").expired
        ),
        (0, -5 * MIN, false)
    );
    let a = ok(&s, switch(), T0 + 2 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Switched, Some("a")),
            ev(EventKind::Expired, Some("b"))
        ]
    );
    assert_eq!(a.session.ended_at, Some(T0 + 2 * SEC));
    assert!(part(&a.session, "b").expired);
}

// ---------------------------------------------------------------------------
// Pause / resume
// ---------------------------------------------------------------------------

#[test]
fn pause_charges_the_running_stretch_and_stops_the_clock() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&s, Command::Pause, T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Paused, None)]);
    let s = a.session;
    assert_eq!(s.status, Status::Paused);
    assert_eq!(active_id(&s), Some("a"), "the turn stays with a");
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (290 * SEC, 10 * SEC)
    );
    assert_eq!((s.cycle_started_at, deadline(&s)), (None, None));
    assert_eq!(
        clock(&s, "a", T0 + 60 * MIN),
        (290 * SEC, 10 * SEC),
        "a paused clock does not move"
    );
    assert_eq!(err(&s, Command::Timeout, T0 + 60 * MIN), RuleError::NotDue);

    let a = ok(&s, Command::Resume, T0 + 100 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Resumed, None)]);
    let s = a.session;
    assert_eq!(
        (s.status, s.cycle_started_at),
        (Status::Running, Some(T0 + 100 * SEC))
    );
    assert_eq!(deadline(&s), Some(T0 + 100 * SEC + 290 * SEC));
    assert_eq!(clock(&s, "a", T0 + 101 * SEC), (289 * SEC, 11 * SEC));

    let s = ok(&s, switch(), T0 + 130 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (260 * SEC, 40 * SEC),
        "the pause is not charged"
    );
    assert_ledger(&s);
}

#[test]
fn pause_and_resume_only_from_the_right_status() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(
        &err(&s, Command::Pause, T0),
        "cannot pause a session that is PENDING",
    );
    assert_failed_precondition(&err(&s, Command::Resume, T0), "PENDING");
    let s = ok(&s, start(), T0).session;
    assert_failed_precondition(&err(&s, Command::Resume, T0), "RUNNING");
    let s = ok(&s, Command::Pause, T0).session;
    assert_failed_precondition(&err(&s, Command::Pause, T0), "PAUSED");
}

#[test]
fn resuming_a_clock_adjusted_to_zero_flags_at_once() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, Command::Pause, T0 + 10 * SEC).session;
    let s = ok(&s, adjust("a", -FIVE_MIN_MS), T0 + 20 * SEC).session;
    assert_eq!(part(&s, "a").clock.remaining, 0);
    let a = ok(&s, Command::Resume, T0 + 30 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Resumed, None),
            ev(EventKind::Expired, Some("a"))
        ]
    );
}

// ---------------------------------------------------------------------------
// Complete / cancel
// ---------------------------------------------------------------------------

#[test]
fn complete_charges_the_running_clock_and_ends_the_session() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&s, Command::Complete, T0 + 7 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Completed, None)]);
    let s = a.session;
    assert_eq!(
        (s.status, s.ended_at, s.cycle_started_at),
        (Status::Completed, Some(T0 + 7 * SEC), None)
    );
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (293 * SEC, 7 * SEC)
    );
    assert_eq!(deadline(&s), None);
    assert_ledger(&s);
}

#[test]
fn cancel_from_pending_running_and_paused() {
    let pending = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&pending, Command::Cancel, T0 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Cancelled, None)]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Cancelled, Some(T0 + SEC))
    );

    let running = ok(&pending, start(), T0).session;
    let a = ok(&running, Command::Cancel, T0 + 4 * SEC);
    assert_eq!(
        (a.session.status, part(&a.session, "a").clock.used),
        (Status::Cancelled, 4 * SEC)
    );

    let paused = ok(&running, Command::Pause, T0 + 4 * SEC).session;
    let a = ok(&paused, Command::Complete, T0 + 60 * SEC);
    assert_eq!(
        (a.session.status, part(&a.session, "a").clock.used),
        (Status::Completed, 4 * SEC)
    );
    let a = ok(&paused, Command::Cancel, T0 + 60 * SEC);
    assert_eq!(a.session.status, Status::Cancelled);
}

#[test]
fn complete_after_the_deadline_finds_the_session_expired() {
    // The clock is judged first: the session ended by time before the complete arrived.
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, Command::Complete, T0 + 5 * MIN), "EXPIRED");
    assert_failed_precondition(
        &err(&s, Command::Pause, T0 + 6 * MIN),
        "cannot pause a session that is EXPIRED",
    );
    let a = ok(&s, Command::Complete, T0 + 5 * MIN - 1);
    assert_eq!(a.session.status, Status::Completed);
}

// ---------------------------------------------------------------------------
// AdjustTime
// ---------------------------------------------------------------------------

#[test]
fn adjust_gives_time_to_the_running_clock_and_moves_its_deadline() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(deadline(&s), Some(T0 + 5 * MIN));
    let a = ok(&s, adjust("a", 30_000), T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::TimeAdjusted, Some("a"))]);
    let s = a.session;
    assert_eq!(clock(&s, "a", T0 + 10 * SEC), (320 * SEC, 10 * SEC));
    assert_eq!(part(&s, "a").clock.adjustments, 30 * SEC);
    assert_eq!(deadline(&s), Some(T0 + 5 * MIN + 30 * SEC));
    assert_eq!(
        (s.status, active_id(&s)),
        (Status::Running, Some("a")),
        "the turn goes on"
    );
    assert_eq!(clock(&s, "a", T0 + 15 * SEC), (315 * SEC, 15 * SEC));
    let s = ok(&s, switch(), T0 + 20 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (310 * SEC, 20 * SEC)
    );
    assert_ledger(&s);
}

#[test]
fn adjust_takes_time_from_a_waiting_clock_never_below_zero() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("b", -60_000), T0 + SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments
        ),
        (4 * MIN, -MIN)
    );
    let s = ok(&s, adjust("b", -600_000), T0 + 2 * SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments
        ),
        (0, -5 * MIN),
        "only what was left is taken"
    );
    assert!(
        !part(&s, "b").expired,
        "a clock that does not run does not flag"
    );
    assert_eq!(
        (s.status, deadline(&s)),
        (Status::Running, Some(T0 + 5 * MIN))
    );
    let s = ok(&s, adjust("b", 1), T0 + 3 * SEC).session;
    assert_eq!(part(&s, "b").clock.remaining, MS);
    assert_ledger(&s);
}

#[test]
fn adjust_works_while_pending_and_paused() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("a", 1000), T0).session;
    assert_eq!(part(&s, "a").clock.remaining, 5 * MIN + SEC);
    let s = ok(&ok(&s, start(), T0).session, Command::Pause, T0 + SEC).session;
    let s = ok(&s, adjust("a", -2000), T0 + 5 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (5 * MIN - 2 * SEC, SEC)
    );
    assert_eq!(s.status, Status::Paused);
    assert_ledger(&s);
}

#[test]
fn adjust_that_empties_the_running_clock_flags_in_the_same_apply() {
    // END_SESSION: TIME_ADJUSTED then EXPIRED, two versions in one apply.
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for delta in [-290_000, -600_000, -MAX_DURATION_MS] {
        let a = ok(&s, adjust("a", delta), T0 + 10 * SEC);
        assert_eq!(
            kinds(&a),
            vec![
                ev(EventKind::TimeAdjusted, Some("a")),
                ev(EventKind::Expired, Some("a"))
            ]
        );
        assert_eq!(
            a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            [3, 4]
        );
        let s = &a.session;
        let pa = part(s, "a");
        assert_eq!(
            (
                pa.clock.remaining,
                pa.clock.used,
                pa.clock.adjustments,
                pa.expired
            ),
            (0, 10 * SEC, -290 * SEC, true)
        );
        assert_eq!(
            (s.status, s.ended_at, deadline(s)),
            (Status::Expired, Some(T0 + 10 * SEC), None)
        );
        assert_ledger(s);
    }
    // 1 ms left: no flag.
    let a = ok(&s, adjust("a", -289_999), T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::TimeAdjusted, Some("a"))]);
    assert_eq!(deadline(&a.session), Some(T0 + 10 * SEC + MS));

    // NOTIFY: the session runs on with that clock at 0.
    let s = started(on_timeout(
        new_session(&["a", "b"], FIVE_MIN_MS),
        TimeoutAction::Notify,
    ));
    let a = ok(&s, adjust("a", -600_000), T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::TimeAdjusted, Some("a")),
            ev(EventKind::ParticipantExpired, Some("a"))
        ]
    );
    assert_eq!(
        (
            a.session.status,
            active_id(&a.session),
            deadline(&a.session)
        ),
        (Status::Running, Some("a"), None)
    );

    // SKIP: the turn moves on at that instant.
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let a = ok(&s, adjust("a", -600_000), T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::TimeAdjusted, Some("a")),
            ev(EventKind::ParticipantExpired, Some("a"))
        ]
    );
    assert_eq!(
        (active_id(&a.session), a.session.cycle_started_at),
        (Some("b"), Some(T0 + 10 * SEC))
    );
}

#[test]
fn adjust_checks_its_arguments() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for bad in [
        0,
        MAX_DURATION_MS + 1,
        -MAX_DURATION_MS - 1,
        i64::MAX,
        i64::MIN + 1,
    ] {
        assert_field(&err(&s, adjust("a", bad), T0), "delta_ms");
    }
    assert_eq!(
        part(&ok(&s, adjust("b", MAX_DURATION_MS), T0).session, "b")
            .clock
            .remaining,
        5 * MIN + 30 * 24 * 60 * MIN
    );
    assert_field(&err(&s, adjust("nobody", 1000), T0), "participant_id");
    let group = Command::Adjust {
        target: AdjustTarget::Group(GroupId::parse("g", "team").unwrap()),
        delta_ms: 1000,
    };
    assert_field(&err(&s, group, T0), "group_id");
}

/// Regression: `delta_ms.abs()` overflowed on i64::MIN (a panic in debug; in release
/// it passed validation and zeroed the clock, flagging a running one).
#[test]
fn adjust_with_the_most_negative_delta_is_invalid_not_a_panic() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let got = std::panic::catch_unwind(|| apply(&s, &req(adjust("a", i64::MIN)), T0 + SEC));
    match got {
        Ok(Err(e)) => assert_field(&e, "delta_ms"),
        Ok(Ok(a)) => panic!(
            "accepted delta_ms = i64::MIN: {:?}, a's clock {:?}",
            kinds(&a),
            participant_clock(&a.session, 0, T0 + SEC)
        ),
        Err(_) => panic!("apply panicked on delta_ms = i64::MIN"),
    }
}

// ---------------------------------------------------------------------------
// Running out of time (SPEC §5)
// ---------------------------------------------------------------------------

#[test]
fn timeout_is_not_due_one_microsecond_before_the_deadline() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let d = deadline(&s).unwrap();
    assert_eq!(d, T0 + 5 * MIN);
    assert_eq!(err(&s, Command::Timeout, d - 1), RuleError::NotDue);
    assert_eq!(err(&s, Command::Timeout, T0), RuleError::NotDue);
    assert_eq!(clock(&s, "a", d - 1), (1, 5 * MIN - 1));
    let pending = created(new_session(&["a"], 1000));
    assert_eq!(
        err(&pending, Command::Timeout, T0 + 60 * MIN),
        RuleError::NotDue
    );
}

#[test]
fn timeout_exactly_at_the_deadline_ends_the_session_once() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    let s2 = &a.session;
    assert_eq!(
        (s2.version, s2.status, s2.ended_at, s2.cycle_started_at),
        (3, Status::Expired, Some(d), None)
    );
    let pa = part(s2, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.expired
        ),
        (0, 5 * MIN, 0, true),
        "no increment on a flag"
    );
    assert_eq!(part(s2, "b"), part(&s, "b"));
    assert_eq!(deadline(s2), None);
    assert_ledger(s2);
    // Exactly one transition per deadline: a duplicate timer finds nothing to do.
    assert_eq!(err(s2, Command::Timeout, d), RuleError::NotDue);
    assert_eq!(err(s2, Command::Timeout, d + 60 * MIN), RuleError::NotDue);
}

#[test]
fn a_late_timeout_is_processed_at_the_deadline_instant() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d + 3 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(a.session.ended_at, Some(d), "ended when the clock ran out");
    assert_eq!(
        (a.events[0].at, a.session.updated_at),
        (d + 3 * SEC, d + 3 * SEC),
        "committed when processed"
    );
    assert_eq!(
        part(&a.session, "a").clock.used,
        5 * MIN,
        "never charged past zero"
    );
    assert_eq!(clock(&s, "a", d + 3 * SEC), (0, 5 * MIN));
}

#[test]
fn notify_flags_the_participant_and_keeps_the_session_running() {
    let s = started(fischer(
        on_timeout(new_session(&["a", "b"], FIVE_MIN_MS), TimeoutAction::Notify),
        2000,
        0,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s = a.session;
    assert_eq!((s.status, active_id(&s)), (Status::Running, Some("a")));
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").expired),
        (0, true)
    );
    assert_eq!(
        deadline(&s),
        None,
        "the flagged clock stays at 0, nothing more is due"
    );
    assert_eq!(clock(&s, "a", d + 60 * MIN), (0, 5 * MIN));
    assert_eq!(err(&s, Command::Timeout, d), RuleError::NotDue);

    // The caller moves on: no increment for the flagged mover.
    let a = ok(&s, switch(), d + 4 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    let s = a.session;
    let pa = part(&s, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count
        ),
        (0, 5 * MIN, 0, 1)
    );
    assert_eq!(
        (active_id(&s), s.cycle_started_at, deadline(&s)),
        (Some("b"), Some(d + 4 * SEC), Some(d + 4 * SEC + 5 * MIN))
    );
    // b's moves rotate back to b alone.
    let s = ok(&s, switch(), d + 5 * SEC).session;
    assert_eq!(
        (active_id(&s), part(&s, "b").clock.remaining),
        (Some("b"), 5 * MIN - SEC + 2 * SEC)
    );
    assert_failed_precondition(&err(&s, switch_to("a"), d + 6 * SEC), "has expired");

    // b flags too: nobody is eligible, so the next switch ends the session by time.
    let d2 = deadline(&s).unwrap();
    let a = ok(&s, Command::Timeout, d2);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("b"))]
    );
    assert_eq!(a.session.status, Status::Running);
    let a = ok(&a.session, switch(), d2 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("b"))]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Expired, Some(d2 + SEC))
    );
    assert_ledger(&a.session);
}

#[test]
fn skip_flags_the_participant_and_moves_on_from_the_deadline() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d + 3 * SEC);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s = a.session;
    assert_eq!((s.status, active_id(&s)), (Status::Running, Some("b")));
    assert_eq!(
        s.cycle_started_at,
        Some(d),
        "b's turn began when a's clock ran out"
    );
    assert_eq!(clock(&s, "b", d + 3 * SEC), (5 * MIN - 3 * SEC, 3 * SEC));
    assert_eq!(deadline(&s), Some(d + 5 * MIN));
    assert_eq!(
        (
            part(&s, "a").expired,
            part(&s, "a").cycle_count,
            s.cycle_count
        ),
        (true, 1, 1)
    );
    assert_eq!(err(&s, Command::Timeout, d + 3 * SEC), RuleError::NotDue);
}

#[test]
fn skip_ends_the_session_when_fewer_than_two_remain() {
    let s = started(on_timeout(
        new_session(&["a", "b"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let a = ok(&s, Command::Timeout, T0 + 5 * MIN);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Expired, Some(T0 + 5 * MIN))
    );
}

#[test]
fn skip_processes_every_passed_deadline_at_its_own_instant() {
    let mut n = on_timeout(
        new_session(&["a", "b", "c", "d"], 60_000),
        TimeoutAction::Skip,
    );
    n.participants[0].initial_time_ms = Some(5_000);
    n.participants[1].initial_time_ms = Some(2_000);
    let s = started(n);
    let a = ok(&s, Command::Timeout, T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::ParticipantExpired, Some("b"))
        ]
    );
    assert_eq!(
        a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let s2 = &a.session;
    assert_eq!(
        (active_id(s2), s2.cycle_started_at, deadline(s2)),
        (Some("c"), Some(T0 + 7 * SEC), Some(T0 + 67 * SEC))
    );
    assert_eq!(
        (part(s2, "b").clock.used, part(s2, "b").clock.remaining),
        (2 * SEC, 0)
    );

    // With three players the second flag leaves one: the session expires at b's deadline.
    let mut n = on_timeout(new_session(&["a", "b", "c"], 60_000), TimeoutAction::Skip);
    n.participants[0].initial_time_ms = Some(5_000);
    n.participants[1].initial_time_ms = Some(2_000);
    let a = ok(&started(n), Command::Timeout, T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Expired, Some("b"))
        ]
    );
    assert_eq!(a.session.ended_at, Some(T0 + 7 * SEC));
}

// A switch that arrives after the deadline is judged by the clock (SPEC §5).

#[test]
fn a_late_switch_under_end_session_expires_the_session_instead() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let d = T0 + 5 * MIN;
    for now in [d, d + 1, d + 5 * SEC] {
        let a = ok(&s, switch(), now);
        assert_eq!(
            kinds(&a),
            vec![ev(EventKind::Expired, Some("a"))],
            "switch at d+{}µs",
            now - d
        );
        let s2 = &a.session;
        assert_eq!(
            (s2.status, s2.ended_at, s2.version),
            (Status::Expired, Some(d), 3)
        );
        let pa = part(s2, "a");
        assert_eq!(
            (
                pa.clock.remaining,
                pa.clock.used,
                pa.clock.credits,
                pa.cycle_count,
                pa.expired
            ),
            (0, 5 * MIN, 0, 0, true)
        );
        assert_eq!(
            (s2.cycle_count, part(s2, "b")),
            (0, part(&s, "b")),
            "the switch itself is not applied"
        );
    }
    // Arguments of a switch that came too late do not matter any more.
    let a = ok(&s, switch_from("b"), d + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
}

#[test]
fn a_move_landing_exactly_on_the_deadline_instant_is_a_flag() {
    // settle() processes every deadline `d <= now`: the deadline instant itself is
    // already out of time, so the move never earns its increment there.
    let d = T0 + 5 * MIN;
    let n = |action| {
        fischer(
            on_timeout(new_session(&["a", "b", "c"], FIVE_MIN_MS), action),
            2000,
            0,
        )
    };

    let a = ok(&started(n(TimeoutAction::EndSession)), switch(), d);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(
        (a.session.ended_at, part(&a.session, "a").clock.credits),
        (Some(d), 0)
    );

    let a = ok(&started(n(TimeoutAction::Skip)), switch(), d);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    assert_eq!(
        (active_id(&a.session), a.session.cycle_started_at),
        (Some("b"), Some(d))
    );
    assert_eq!(part(&a.session, "a").clock.credits, 0);

    let a = ok(&started(n(TimeoutAction::Notify)), switch(), d);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Switched, Some("a"))
        ]
    );
    assert_eq!(
        (active_id(&a.session), part(&a.session, "a").clock.remaining),
        (Some("b"), 0)
    );
    assert_eq!(part(&a.session, "a").clock.credits, 0);

    // The same instant through the timer: one transition, then nothing is due.
    let s = started(n(TimeoutAction::EndSession));
    let t = ok(&s, Command::Timeout, d);
    assert_eq!(t.events.len(), 1);
    assert_eq!(err(&t.session, Command::Timeout, d), RuleError::NotDue);
}

#[test]
fn a_switch_one_microsecond_before_the_deadline_is_in_time() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let a = ok(&s, switch(), T0 + 5 * MIN - 1);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    assert_eq!(
        (
            part(&a.session, "a").clock.remaining,
            part(&a.session, "a").expired
        ),
        (1 + 2 * SEC, false)
    );
    assert_eq!(active_id(&a.session), Some("b"));
}

#[test]
fn a_late_switch_under_skip_only_applies_the_skip() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, switch_from("a"), d + 5 * SEC);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s2 = &a.session;
    assert_eq!(
        (s2.status, active_id(s2), s2.cycle_started_at),
        (Status::Running, Some("b"), Some(d))
    );
    assert_eq!(
        clock(s2, "b", d + 5 * SEC),
        (5 * MIN - 5 * SEC, 5 * SEC),
        "b has been on the clock since d"
    );
    assert_eq!(s2.cycle_count, 1);
    // Exactly the state the timer would have produced.
    let timer = ok(&s, Command::Timeout, d + 5 * SEC);
    assert_eq!(timer.session, a.session);
}

#[test]
fn a_late_switch_under_notify_flags_then_switches() {
    let s = started(fischer(
        on_timeout(
            new_session(&["a", "b", "c"], FIVE_MIN_MS),
            TimeoutAction::Notify,
        ),
        2000,
        0,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, switch(), d + 5 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Switched, Some("a"))
        ]
    );
    assert_eq!(
        a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let s2 = &a.session;
    assert_eq!(
        (s2.status, active_id(s2), s2.cycle_started_at),
        (Status::Running, Some("b"), Some(d + 5 * SEC))
    );
    let pa = part(s2, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count,
            pa.expired
        ),
        (0, 5 * MIN, 0, 1, true)
    );
    assert_ledger(s2);
}

// ---------------------------------------------------------------------------
// Terminal states
// ---------------------------------------------------------------------------

fn every_command() -> Vec<Command> {
    vec![
        start(),
        start_with("a"),
        switch(),
        switch_from("a"),
        switch_to("b"),
        Command::Pause,
        Command::Resume,
        Command::Complete,
        Command::Cancel,
        adjust("a", 1000),
        adjust("b", -1000),
        adjust("a", 0),
        adjust("nobody", 1000),
    ]
}

#[test]
fn terminal_sessions_accept_no_command() {
    let running = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let expired = ok(&running, Command::Timeout, T0 + 5 * MIN).session;
    let completed = ok(&running, Command::Complete, T0 + SEC).session;
    let cancelled = ok(
        &created(new_session(&["a", "b"], FIVE_MIN_MS)),
        Command::Cancel,
        T0,
    )
    .session;
    for (s, name) in [
        (&expired, "EXPIRED"),
        (&completed, "COMPLETED"),
        (&cancelled, "CANCELLED"),
    ] {
        assert!(s.status.is_terminal());
        for c in every_command() {
            for now in [s.updated_at, s.updated_at + 60 * MIN, T0 - 60 * MIN] {
                assert_failed_precondition(&err(s, c.clone(), now), name);
            }
        }
        // The timer's command has nothing to do on an ended session (the store treats it as a no-op).
        assert_eq!(
            err(s, Command::Timeout, s.updated_at + 60 * MIN),
            RuleError::NotDue
        );
    }
}

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
        "the snapshot carries the remembered id"
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
// Time, snapshots, helpers
// ---------------------------------------------------------------------------

#[test]
fn a_now_earlier_than_the_last_change_is_treated_as_the_last_change() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 1000, 0));
    let s = ok(&s, switch(), T0 + 10 * SEC).session;
    let a = ok(&s, switch(), T0 + 3 * SEC);
    let s = a.session;
    assert_eq!(
        (part(&s, "b").clock.used, part(&s, "b").clock.remaining),
        (0, 5 * MIN + SEC),
        "charged 0, not -7 s"
    );
    assert_eq!(
        (s.updated_at, a.events[0].at, s.cycle_started_at),
        (T0 + 10 * SEC, T0 + 10 * SEC, Some(T0 + 10 * SEC))
    );
    assert_eq!(err(&s, Command::Timeout, T0), RuleError::NotDue);
}

#[test]
fn participant_clock_charges_the_running_stretch_on_the_fly() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(clock(&s, "a", T0), (5 * MIN, 0));
    assert_eq!(
        clock(&s, "a", T0 + 1_500_000),
        (5 * MIN - 1_500_000, 1_500_000)
    );
    assert_eq!(
        clock(&s, "a", T0 - 5 * SEC),
        (5 * MIN, 0),
        "never before the cycle started"
    );
    assert_eq!(clock(&s, "a", T0 + 5 * MIN), (0, 5 * MIN));
    assert_eq!(
        clock(&s, "a", T0 + 60 * MIN),
        (0, 5 * MIN),
        "never past zero"
    );
    assert_eq!(
        clock(&s, "b", T0 + 60 * MIN),
        (5 * MIN, 0),
        "a waiting clock does not move"
    );
}

#[test]
fn participant_clock_does_not_panic_on_extreme_instants() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for now in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let got = std::panic::catch_unwind(|| participant_clock(&s, 0, now));
        assert!(got.is_ok(), "participant_clock(.., {now}) panicked");
    }
    assert_eq!(participant_clock(&s, 0, i64::MIN), (5 * MIN, 0));
    assert_eq!(participant_clock(&s, 0, i64::MAX), (0, 5 * MIN));
}

#[test]
fn deadline_only_while_a_clock_runs() {
    let pending = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(deadline(&pending), None);
    let running = ok(&pending, start(), T0 + SEC).session;
    assert_eq!(deadline(&running), Some(T0 + SEC + 5 * MIN));
    assert_eq!(
        deadline(&ok(&running, Command::Pause, T0 + 2 * SEC).session),
        None
    );
    assert_eq!(
        deadline(&ok(&running, Command::Complete, T0 + 2 * SEC).session),
        None
    );
}

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

// ---------------------------------------------------------------------------
// Property tests: random sessions and command sequences
// ---------------------------------------------------------------------------

/// Stands for a participant id the session does not have.
const GHOST: usize = usize::MAX;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files: nothing outside this file is written.
        failure_persistence: None,
        // ChaCha is most of the run time in an unoptimised test build; XorShift is plenty here.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
struct SessionSpec {
    /// One budget per participant `p0..p{n-1}`, in ms.
    initial_ms: Vec<i64>,
    /// Explicit rotation indexes, or positions.
    indexes: Option<Vec<u32>>,
    /// Even participants take the session-level budget (`initial_ms[0]`).
    shared_initial: bool,
    increment_ms: i64,
    cap_ms: i64,
    action: Option<TimeoutAction>,
}

impl SessionSpec {
    fn expected_initial_ms(&self, i: usize) -> i64 {
        if self.shared_initial && i % 2 == 0 {
            self.initial_ms[0]
        } else {
            self.initial_ms[i]
        }
    }

    fn build(&self) -> NewSession {
        let mut n = new_session(&[], 1);
        n.participants = (0..self.initial_ms.len())
            .map(|i| NewParticipant {
                id: pid(&format!("p{i}")),
                index: self.indexes.as_ref().map(|v| v[i]),
                group: None,
                initial_time_ms: if self.shared_initial && i % 2 == 0 {
                    None
                } else {
                    Some(self.initial_ms[i])
                },
            })
            .collect();
        n.initial_time_ms = if self.shared_initial {
            self.initial_ms[0]
        } else {
            0
        };
        n.time_control.increment_ms = self.increment_ms;
        n.time_control.max_remaining_ms = self.cap_ms;
        n.timeout_action = self.action;
        n
    }
}

fn session_spec(tight: bool) -> impl Strategy<Value = SessionSpec> {
    let budget = if tight {
        prop_oneof![3 => 1i64..=50, 5 => 50i64..=3_000, 1 => 3_000i64..=20_000].boxed()
    } else {
        prop_oneof![1 => 1i64..=50, 3 => 100i64..=10_000, 4 => 10_000i64..=3_600_000, 1 => Just(MAX_DURATION_MS)].boxed()
    };
    let action = if tight {
        prop_oneof![1 => Just(None), 1 => Just(Some(TimeoutAction::EndSession)), 4 => Just(Some(TimeoutAction::Skip)), 3 => Just(Some(TimeoutAction::Notify))].boxed()
    } else {
        prop_oneof![
            Just(None),
            Just(Some(TimeoutAction::EndSession)),
            Just(Some(TimeoutAction::Skip)),
            Just(Some(TimeoutAction::Notify))
        ]
        .boxed()
    };
    let increment = prop_oneof![3 => Just(0i64), 4 => 1i64..=5_000, 1 => 5_000i64..=120_000, 1 => Just(MAX_DURATION_MS)];
    let cap = prop_oneof![2 => Just(0i64), 2 => 1i64..=20_000, 2 => 20_000i64..=7_200_000, 1 => Just(MAX_DURATION_MS)];
    (2usize..=6)
        .prop_flat_map(move |n| {
            (
                vec(budget.clone(), n),
                proptest::option::of(
                    proptest::collection::btree_set(any::<u32>(), n)
                        .prop_map(Vec::from_iter)
                        .prop_shuffle(),
                ),
                any::<bool>(),
                increment.clone(),
                cap.clone(),
                action.clone(),
            )
        })
        .prop_map(
            |(initial_ms, indexes, shared_initial, increment_ms, cap_ms, action)| SessionSpec {
                initial_ms,
                indexes,
                shared_initial,
                increment_ms,
                cap_ms: if increment_ms == 0 { 0 } else { cap_ms },
                action,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Start(Option<usize>),
    Switch {
        from: Option<usize>,
        next: Option<usize>,
    },
    Pause,
    Resume,
    Complete,
    Cancel,
    Adjust {
        who: usize,
        delta_ms: i64,
    },
    Timeout,
}

#[derive(Clone, Copy, Debug)]
enum When {
    /// The previous `now` plus this many µs.
    After(Micros),
    /// The previous `now` minus this many µs: a caller whose clock runs behind.
    Back(Micros),
    /// Exactly the running clock's deadline (or the previous `now`).
    AtDeadline,
    /// One µs before the deadline.
    JustBefore,
    /// This many µs after the deadline.
    PastDeadline(Micros),
}

#[derive(Clone, Debug)]
enum Rid {
    No,
    Fresh,
    /// Reuse one of the ids sent so far (applied, refused or forgotten).
    Reuse(Index),
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    No,
    Current,
    Wrong(u64),
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    when: When,
    rid: Rid,
    ev: Ev,
}

fn who() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![12 => 0usize..6, 1 => Just(GHOST)]
}

fn delta_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => -600_000i64..=600_000,
        2 => -20i64..=20,
        1 => Just(MAX_DURATION_MS),
        1 => Just(-MAX_DURATION_MS),
        1 => prop_oneof![Just(MAX_DURATION_MS + 1), Just(-MAX_DURATION_MS - 1), Just(i64::MAX), Just(i64::MIN + 1), Just(i64::MIN)],
    ]
}

fn op(tight: bool) -> impl Strategy<Value = Op> {
    let end_weight = if tight { 1 } else { 2 };
    prop_oneof![
        3 => proptest::option::weighted(0.3, who()).prop_map(Op::Start),
        14 => (proptest::option::weighted(0.3, who()), proptest::option::weighted(0.25, who()))
            .prop_map(|(from, next)| Op::Switch { from, next }),
        3 => Just(Op::Pause),
        3 => Just(Op::Resume),
        5 => (who(), delta_ms()).prop_map(|(who, delta_ms)| Op::Adjust { who, delta_ms }),
        6 => Just(Op::Timeout),
        end_weight => Just(Op::Complete),
        end_weight => Just(Op::Cancel),
    ]
}

fn when(tight: bool) -> impl Strategy<Value = When> {
    let step = if tight { 1_500 * MS } else { 3 * SEC };
    prop_oneof![
        8 => (0..=step).prop_map(When::After),
        2 => (0i64..=20).prop_map(When::After),
        2 => (0..=30 * MIN).prop_map(When::After),
        1 => (1..=10 * SEC).prop_map(When::Back),
        3 => Just(When::AtDeadline),
        1 => Just(When::JustBefore),
        2 => (1..=5 * SEC).prop_map(When::PastDeadline),
    ]
}

fn step(tight: bool) -> impl Strategy<Value = Step> {
    let rid = prop_oneof![6 => Just(Rid::No), 3 => Just(Rid::Fresh), 1 => any::<Index>().prop_map(Rid::Reuse)];
    let ev = prop_oneof![8 => Just(Ev::No), 2 => Just(Ev::Current), 1 => prop_oneof![Just(1u64), Just(2), Just(u64::MAX)].prop_map(Ev::Wrong)];
    (op(tight), when(tight), rid, ev).prop_map(|(op, when, rid, ev)| Step { op, when, rid, ev })
}

fn ghost_or(i: usize, n: usize) -> ParticipantId {
    if i == GHOST {
        pid("ghost")
    } else {
        pid(&format!("p{}", i % n))
    }
}

fn command(op: &Op, n: usize) -> Command {
    match op {
        Op::Start(first) => Command::Start {
            first: first.map(|i| ghost_or(i, n)),
        },
        Op::Switch { from, next } => Command::Switch {
            from: from.map(|i| ghost_or(i, n)),
            next: next.map(|i| ghost_or(i, n)),
        },
        Op::Pause => Command::Pause,
        Op::Resume => Command::Resume,
        Op::Complete => Command::Complete,
        Op::Cancel => Command::Cancel,
        Op::Adjust { who, delta_ms } => Command::Adjust {
            target: AdjustTarget::Participant(ghost_or(*who, n)),
            delta_ms: *delta_ms,
        },
        Op::Timeout => Command::Timeout,
    }
}

/// Creates the session of `spec`, then applies `steps`, checking every rule after each.
fn run(spec: &SessionSpec, lead_start: bool, steps: &[Step]) {
    let n = spec.initial_ms.len();
    let (mut s, created_event) = create(spec.build(), T0).expect("the generated session is valid");
    assert_eq!(
        (s.version, s.status, created_event.version),
        (1, Status::Pending, 1)
    );
    assert_eq!(created_event.session, s);
    assert_eq!(
        s.timeout_action,
        spec.action.unwrap_or(TimeoutAction::EndSession)
    );
    for i in 0..n {
        let p = part(&s, &format!("p{i}"));
        assert_eq!(
            (p.clock.initial, p.clock.remaining),
            (
                spec.expected_initial_ms(i) * MS,
                spec.expected_initial_ms(i) * MS
            )
        );
    }
    check_invariants(&s, T0);

    let lead = lead_start.then_some(Step {
        op: Op::Start(None),
        when: When::After(0),
        rid: Rid::No,
        ev: Ev::No,
    });
    let mut now = T0;
    let mut sent: Vec<String> = Vec::new();
    for (k, step) in lead.iter().chain(steps).enumerate() {
        now = match step.when {
            When::After(dt) => now + dt,
            When::Back(dt) => now - dt,
            When::AtDeadline => deadline(&s).unwrap_or(now),
            When::JustBefore => deadline(&s).map_or(now, |d| d - 1),
            When::PastDeadline(dt) => deadline(&s).unwrap_or(now) + dt,
        };
        let request_id = match &step.rid {
            Rid::No => None,
            Rid::Fresh => {
                sent.push(format!("req-{k}"));
                sent.last().cloned()
            }
            Rid::Reuse(ix) if !sent.is_empty() => Some(ix.get(&sent).clone()),
            Rid::Reuse(_) => None,
        };
        let expected_version = match step.ev {
            Ev::No => None,
            Ev::Current => Some(s.version),
            Ev::Wrong(k) => Some(s.version.wrapping_add(k)),
        };
        let r = Request {
            command: command(&step.op, n),
            expected_version,
            request_id: request_id.map(|r| rid(&r)),
        };
        s = check_step(&s, &r, now);
    }
}

/// Applies `r` to `before` at `now` and checks the outcome; returns the session after it.
fn check_step(before: &Session, r: &Request, now: Micros) -> Session {
    let got = apply(before, r, now);
    // Pure: the same inputs give the same outputs (a store may retry after a conflict).
    match (&got, &apply(before, r, now)) {
        (Ok(a), Ok(b)) => assert_eq!((&a.session, &a.events), (&b.session, &b.events)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("apply is not deterministic: {a:?} vs {b:?}"),
    }

    let rid = r.request_id.as_ref().map(RequestId::as_str);
    if rid.is_some_and(|id| before.has_applied(id)) {
        let a = got.expect("a repeated request_id is answered, not refused");
        assert!(a.events.is_empty(), "a repeated request_id applies nothing");
        assert_eq!(a.session, *before);
        return a.session;
    }
    if let Some(v) = r.expected_version.filter(|v| *v != before.version) {
        assert_eq!(
            got.unwrap_err(),
            RuleError::VersionMismatch {
                expected: v,
                actual: before.version
            }
        );
        return before.clone();
    }
    if before.status.is_terminal() {
        match (&r.command, &got) {
            (Command::Timeout, Err(RuleError::NotDue))
            | (_, Err(RuleError::FailedPrecondition(_))) => {}
            _ => panic!(
                "a {} session accepted {:?}: {got:?}",
                before.status.name(),
                r.command
            ),
        }
        if !matches!(r.command, Command::Timeout) {
            assert_failed_precondition(got.as_ref().unwrap_err(), before.status.name());
        }
        return before.clone();
    }

    let eff = now.max(before.updated_at);
    let due = deadline(before).filter(|d| *d <= eff);
    match (&r.command, due) {
        (Command::Timeout, _) => check_timeout(before, r, now, &got),
        (_, Some(_)) => check_late(before, r, now, &got),
        (_, None) => check_on_time(before, r, eff, &got),
    }
    match got {
        Ok(a) => {
            check_applied(before, r, eff, &a);
            if let Some(id) = rid {
                // The same request again is a no-op.
                let again = apply(&a.session, r, now + SEC).expect("replay");
                assert!(again.events.is_empty(), "replay of {id} applied again");
                assert_eq!(again.session, a.session);
            }
            a.session
        }
        Err(_) => before.clone(),
    }
}

/// `Timeout`: NotDue before the deadline; at or after it, one transition per passed
/// deadline, each as if the timer had fired at that instant; a second one is NotDue.
fn check_timeout(before: &Session, r: &Request, now: Micros, got: &Result<Applied, RuleError>) {
    let eff = now.max(before.updated_at);
    let Some(d) = deadline(before).filter(|d| *d <= eff) else {
        assert_eq!(
            got.as_ref().unwrap_err(),
            &RuleError::NotDue,
            "nothing was due at {eff}"
        );
        return;
    };
    let a = got.as_ref().unwrap_or_else(|e| {
        panic!("the deadline {d} passed at {eff} but the timeout was refused: {e}")
    });
    assert!(!a.events.is_empty());
    let mover = before.active_participant().unwrap().id.clone();
    assert_eq!(
        a.events[0].participant.as_ref(),
        Some(&mover),
        "the first flag is the running clock's"
    );
    let flagged: Vec<ParticipantId> = (0..before.participants.len())
        .filter(|&i| !before.participants[i].expired && a.session.participants[i].expired)
        .map(|i| a.session.participants[i].id.clone())
        .collect();
    assert_eq!(a.events.len(), flagged.len(), "one transition per flag");
    let named: BTreeSet<&ParticipantId> = a
        .events
        .iter()
        .filter_map(|e| e.participant.as_ref())
        .collect();
    assert_eq!(
        named,
        flagged.iter().collect(),
        "each event names one participant that flagged"
    );
    for (k, e) in a.events.iter().enumerate() {
        let last = k + 1 == a.events.len();
        assert!(
            e.kind == EventKind::ParticipantExpired || (last && e.kind == EventKind::Expired),
            "{:?}",
            kinds(a)
        );
    }
    match before.timeout_action {
        TimeoutAction::EndSession => {
            assert_eq!(
                kinds(a),
                vec![(EventKind::Expired, Some(mover.as_str().to_owned()))]
            );
            assert_eq!(
                (a.session.status, a.session.ended_at),
                (Status::Expired, Some(d))
            );
        }
        TimeoutAction::Notify => {
            assert_eq!(
                kinds(a),
                vec![(
                    EventKind::ParticipantExpired,
                    Some(mover.as_str().to_owned())
                )]
            );
            assert_eq!(
                (a.session.status, a.session.active),
                (Status::Running, before.active)
            );
        }
        TimeoutAction::Skip => {}
    }
    if eff == d && before.timeout_action != TimeoutAction::Skip {
        assert_eq!(a.events.len(), 1, "exactly one transition at the deadline");
    }

    // The same as a timer firing at each deadline in turn.
    let mut s = before.clone();
    let mut steps = Vec::new();
    while let Some(dd) = deadline(&s).filter(|x| *x <= eff) {
        let one = apply(&s, &Request::new(Command::Timeout), dd).expect("due at its own deadline");
        steps.extend(
            one.events
                .iter()
                .map(|e| (e.version, e.kind, e.participant.clone())),
        );
        s = one.session;
    }
    let direct: Vec<_> = a
        .events
        .iter()
        .map(|e| (e.version, e.kind, e.participant.clone()))
        .collect();
    assert_eq!(direct, steps);
    assert_eq!(a.session.participants, s.participants);
    assert_eq!(
        (
            a.session.status,
            a.session.active,
            a.session.cycle_started_at,
            a.session.ended_at,
            a.session.cycle_count
        ),
        (
            s.status,
            s.active,
            s.cycle_started_at,
            s.ended_at,
            s.cycle_count
        )
    );

    // A duplicate timer at the same instant finds nothing to do.
    assert_eq!(
        apply(&a.session, &Request::new(Command::Timeout), now).unwrap_err(),
        RuleError::NotDue
    );
    let _ = r;
}

/// A command after the deadline: judged by the clock. It behaves as if the timer
/// had fired first, except that a switch whose mover no longer has the turn is void.
fn check_late(before: &Session, r: &Request, now: Micros, got: &Result<Applied, RuleError>) {
    let timer = apply(before, &Request::new(Command::Timeout), now)
        .expect("the deadline passed: the timer fires");
    let settled = &timer.session;
    let turn_moved_on = !(settled.status == Status::Running && settled.active == before.active);
    if matches!(r.command, Command::Switch { .. }) && turn_moved_on {
        let a = got
            .as_ref()
            .unwrap_or_else(|e| panic!("a late switch is answered with the flag, got {e}"));
        let mut want = settled.clone();
        let mut want_events = timer.events.clone();
        if let Some(id) = &r.request_id {
            want.remember_request(id.as_str());
            want_events.last_mut().unwrap().session.recent_requests = want.recent_requests.clone();
        }
        assert_eq!(a.session, want);
        assert_eq!(a.events, want_events);
        if before.timeout_action == TimeoutAction::EndSession {
            assert_eq!(a.session.status, Status::Expired);
        }
        return;
    }
    let then = apply(
        settled,
        &Request {
            command: r.command.clone(),
            expected_version: None,
            request_id: r.request_id.clone(),
        },
        now,
    );
    match (got, then) {
        (Err(e1), Err(e2)) => assert_eq!(e1, &e2),
        (Ok(a1), Ok(a2)) => {
            assert_eq!(a1.session, a2.session);
            let want: Vec<Event> = timer.events.iter().chain(&a2.events).cloned().collect();
            assert_eq!(a1.events, want);
        }
        (a, b) => panic!(
            "late {:?}: direct {a:?} vs timer-then-command {b:?}",
            r.command
        ),
    }
}

/// A command before any deadline passed: the rule of each command, worked out here.
fn check_on_time(before: &Session, r: &Request, eff: Micros, got: &Result<Applied, RuleError>) {
    let n = before.participants.len();
    let tc = &before.time_control;
    // What the running clock has used in this stretch.
    let running_e = match (before.status, before.active, before.cycle_started_at) {
        (Status::Running, Some(a), Some(st)) if !before.participants[a].expired => eff - st,
        _ => 0,
    };
    let refused = |what: &str| -> &RuleError {
        got.as_ref()
            .err()
            .unwrap_or_else(|| panic!("{what}: {:?} should be refused", r.command))
    };
    let applied = || {
        got.as_ref()
            .unwrap_or_else(|e| panic!("{:?} at {eff} refused: {e}\n{before:?}", r.command))
    };
    let others_unchanged = |after: &Session, except: Option<usize>| {
        for i in (0..n).filter(|i| Some(*i) != except) {
            assert_eq!(
                after.participants[i], before.participants[i],
                "participant {i} changed"
            );
        }
    };
    match &r.command {
        Command::Timeout => unreachable!(),
        Command::Start { first } => {
            if before.status != Status::Pending {
                assert_failed_precondition(refused("start"), before.status.name());
                return;
            }
            let pos = match first {
                None => 0,
                Some(id) => match before.participant_position(id) {
                    Some(p) => p,
                    None => return assert_field(refused("unknown first"), "first_participant_id"),
                },
            };
            let e0 = &applied().events[0];
            assert_eq!(
                (e0.kind, e0.participant.as_ref()),
                (EventKind::Started, Some(&before.participants[pos].id))
            );
            let s0 = &e0.session;
            assert_eq!(
                (s0.status, s0.active, s0.cycle_started_at, s0.started_at),
                (Status::Running, Some(pos), Some(eff), Some(eff))
            );
            others_unchanged(s0, None);
        }
        Command::Switch { from, next } => {
            if before.status != Status::Running {
                assert_failed_precondition(refused("switch"), before.status.name());
                return;
            }
            let mover = before.active.unwrap();
            let m = &before.participants[mover];
            if from.as_ref().is_some_and(|f| *f != m.id) {
                assert_failed_precondition(refused("from mismatch"), "from_participant_id");
                return;
            }
            let target = match next {
                Some(id) => match before.participant_position(id) {
                    None => return assert_field(refused("unknown next"), "next_participant_id"),
                    Some(p) if before.participants[p].expired => {
                        return assert_failed_precondition(refused("expired next"), "has expired");
                    }
                    Some(p) => Some(p),
                },
                None => (1..=n)
                    .map(|k| (mover + k) % n)
                    .find(|&i| !before.participants[i].expired),
            };
            let credit = if m.expired {
                0
            } else if tc.max_remaining > 0 {
                tc.increment
                    .min((tc.max_remaining - (m.clock.remaining - running_e)).max(0))
            } else {
                tc.increment
            };
            let e0 = &applied().events[0];
            let s0 = &e0.session;
            let ma = &s0.participants[mover];
            assert!(
                running_e < m.clock.remaining || m.expired,
                "on time means before the deadline"
            );
            assert_eq!(ma.clock.used, m.clock.used + running_e, "charged e");
            assert_eq!(
                ma.clock.remaining,
                m.clock.remaining - running_e + credit,
                "R - e + increment (capped)"
            );
            assert_eq!(
                (ma.clock.credits, ma.cycle_count, ma.expired),
                (m.clock.credits + credit, m.cycle_count + 1, m.expired)
            );
            if tc.max_remaining > 0 && credit > 0 {
                assert!(
                    ma.clock.remaining <= tc.max_remaining,
                    "the increment lifted the budget above the cap"
                );
            }
            assert_eq!(s0.cycle_count, before.cycle_count + 1);
            assert_eq!(e0.participant.as_ref(), Some(&m.id));
            others_unchanged(s0, Some(mover));
            match target {
                Some(t) => {
                    assert_eq!(e0.kind, EventKind::Switched);
                    assert_eq!(
                        (s0.status, s0.active, s0.cycle_started_at),
                        (Status::Running, Some(t), Some(eff))
                    );
                }
                None => {
                    assert_eq!(
                        before.timeout_action,
                        TimeoutAction::Notify,
                        "only NOTIFY can run out of eligible participants"
                    );
                    assert_eq!(
                        (e0.kind, s0.status, s0.ended_at),
                        (EventKind::Expired, Status::Expired, Some(eff))
                    );
                }
            }
        }
        Command::Pause => {
            if before.status != Status::Running {
                assert_failed_precondition(refused("pause"), before.status.name());
                return;
            }
            let a = applied();
            assert_eq!(kinds(a), vec![(EventKind::Paused, None)]);
            let mover = before.active.unwrap();
            let (m, ma) = (&before.participants[mover], &a.session.participants[mover]);
            assert_eq!(
                (ma.clock.used, ma.clock.remaining),
                (m.clock.used + running_e, m.clock.remaining - running_e)
            );
            assert_eq!(
                (
                    a.session.status,
                    a.session.active,
                    a.session.cycle_started_at
                ),
                (Status::Paused, before.active, None)
            );
            others_unchanged(&a.session, Some(mover));
        }
        Command::Resume => {
            if before.status != Status::Paused {
                assert_failed_precondition(refused("resume"), before.status.name());
                return;
            }
            let e0 = &applied().events[0];
            assert_eq!(
                (e0.kind, e0.participant.as_ref()),
                (EventKind::Resumed, None)
            );
            let s0 = &e0.session;
            assert_eq!(
                (s0.status, s0.active, s0.cycle_started_at),
                (Status::Running, before.active, Some(eff))
            );
            others_unchanged(s0, None);
        }
        Command::Complete | Command::Cancel => {
            let (status, kind) = if r.command == Command::Complete {
                (Status::Completed, EventKind::Completed)
            } else {
                (Status::Cancelled, EventKind::Cancelled)
            };
            let a = applied();
            assert_eq!(kinds(a), vec![(kind, None)]);
            assert_eq!(
                (
                    a.session.status,
                    a.session.ended_at,
                    a.session.cycle_started_at
                ),
                (status, Some(eff), None)
            );
            if let Some(mover) = before.active {
                let (m, ma) = (&before.participants[mover], &a.session.participants[mover]);
                assert_eq!(
                    (ma.clock.used, ma.clock.remaining),
                    (m.clock.used + running_e, m.clock.remaining - running_e)
                );
            }
            others_unchanged(&a.session, before.active);
        }
        Command::Adjust { target, delta_ms } => {
            if *delta_ms == 0 || delta_ms.unsigned_abs() > MAX_DURATION_MS as u64 {
                return assert_field(refused("bad delta"), "delta_ms");
            }
            let AdjustTarget::Participant(id) = target else {
                unreachable!()
            };
            let Some(pos) = before.participant_position(id) else {
                return assert_field(refused("unknown participant"), "participant_id");
            };
            // Every command first charges the running stretch up to now.
            let c = charged(before, eff);
            let r_before = c.participants[pos].clock.remaining;
            assert_eq!(participant_clock(before, pos, eff).0, r_before);
            let want = (r_before + delta_ms * MS).max(0);
            let e0 = &applied().events[0];
            assert_eq!(
                (e0.kind, e0.participant.as_ref()),
                (EventKind::TimeAdjusted, Some(id))
            );
            let s0 = &e0.session;
            assert_eq!(
                participant_clock(s0, pos, eff).0,
                want,
                "remaining at now moves by delta, floored at 0"
            );
            let (p, pa) = (&c.participants[pos], &s0.participants[pos]);
            let mut moved = ledger(p);
            moved.0 = want;
            moved.3 += want - r_before;
            assert_eq!(
                ledger(pa),
                moved,
                "only the target's remaining and adjustments move"
            );
            assert_eq!((s0.status, s0.active), (before.status, before.active));
            assert_eq!(deadline(s0).is_some(), deadline(before).is_some());
            for i in (0..n).filter(|i| *i != pos) {
                assert_eq!(
                    ledger(&s0.participants[i]),
                    ledger(&c.participants[i]),
                    "participant {i}"
                );
            }
        }
    }
}

/// A participant's clock as the rules see it: (remaining, used, credits, adjustments, cycle_count, expired).
fn ledger(p: &Participant) -> (Micros, Micros, Micros, Micros, u64, bool) {
    (
        p.clock.remaining,
        p.clock.used,
        p.clock.credits,
        p.clock.adjustments,
        p.cycle_count,
        p.expired,
    )
}

/// `before` with the running stretch charged up to `eff` (no deadline passed in between).
fn charged(before: &Session, eff: Micros) -> Session {
    let mut s = before.clone();
    if let (Status::Running, Some(a), Some(started)) = (s.status, s.active, s.cycle_started_at) {
        let p = &mut s.participants[a];
        if !p.expired {
            let e = eff - started;
            assert!(
                e < p.clock.remaining,
                "charged() is only for on-time commands"
            );
            p.clock.used += e;
            p.clock.remaining -= e;
        }
        s.cycle_started_at = Some(eff);
    }
    s
}

/// What holds for every applied (non-replayed) request.
fn check_applied(before: &Session, r: &Request, eff: Micros, a: &Applied) {
    let s = &a.session;
    assert!(
        !a.events.is_empty(),
        "an applied command makes at least one version"
    );
    for (k, e) in a.events.iter().enumerate() {
        assert_eq!(
            e.version,
            before.version + 1 + k as u64,
            "versions are contiguous"
        );
        assert_eq!(e.session.version, e.version);
        assert_eq!(e.at, eff);
        assert_eq!(e.session.updated_at, eff);
        check_snapshot(&e.session);
    }
    assert_eq!(s.version, before.version + a.events.len() as u64);
    assert_eq!(
        a.events.last().unwrap().session,
        *s,
        "the last snapshot is the session"
    );
    assert_eq!(s.updated_at, eff);
    check_invariants(s, eff);
    if let Some(d) = deadline(s) {
        assert!(
            d > eff,
            "apply left a passed deadline unprocessed: {d} <= {eff}"
        );
    }
    if let Some(id) = &r.request_id {
        assert!(s.has_applied(id.as_str()));
    }
    // What never changes, and what only grows.
    assert_eq!(
        (&s.id, &s.epoch, s.mode, s.created_at),
        (&before.id, &before.epoch, before.mode, before.created_at)
    );
    assert_eq!(
        (&s.time_control, s.timeout_action, &s.metadata),
        (
            &before.time_control,
            before.timeout_action,
            &before.metadata
        )
    );
    assert!(s.cycle_count >= before.cycle_count);
    if before.started_at.is_some() {
        assert_eq!(s.started_at, before.started_at);
    }
    for (p, q) in before.participants.iter().zip(&s.participants) {
        assert_eq!(
            (&p.id, p.index, p.clock.initial),
            (&q.id, q.index, q.clock.initial)
        );
        assert!(
            q.clock.used >= p.clock.used
                && q.clock.credits >= p.clock.credits
                && q.cycle_count >= p.cycle_count,
            "{p:?} -> {q:?}"
        );
        assert!(
            !p.expired || q.expired,
            "an expired participant came back: {}",
            p.id
        );
    }
}

/// What holds for every session at every version, and for what it shows at `now` and later.
fn check_invariants(s: &Session, now: Micros) {
    check_snapshot(s);
    // What a reply computes at other instants (before, later, long after any deadline).
    let views: Vec<Session> = [
        now - 60 * MIN,
        now,
        now + 60 * MIN,
        now + 40 * 24 * 60 * MIN,
    ]
    .iter()
    .map(|at| view(s, *at))
    .collect();
    for v in &views {
        assert_eq!(
            (v.version, v.status, v.active),
            (s.version, s.status, s.active),
            "a view is not a new version"
        );
    }
    for (i, p) in s.participants.iter().enumerate() {
        let mut last_remaining = Micros::MAX;
        for (k, at) in [
            now - 60 * MIN,
            now,
            now + 60 * MIN,
            now + 40 * 24 * 60 * MIN,
        ]
        .into_iter()
        .enumerate()
        {
            let (rem, used) = if at == now {
                participant_clock(s, i, at)
            } else {
                let c = participant_view(&views[k], i);
                (c.remaining, c.used)
            };
            assert!(
                rem >= 0 && used >= 0,
                "participant_clock({i}, {at}) = ({rem}, {used})"
            );
            assert!(rem <= p.clock.remaining && used >= p.clock.used);
            assert_eq!(
                rem + used,
                p.clock.remaining + p.clock.used,
                "time is only moved from remaining to used"
            );
            assert!(rem <= last_remaining, "a clock never goes back up");
            last_remaining = rem;
        }
    }
}

/// What holds for the stored state of every session at every version.
fn check_snapshot(s: &Session) {
    let n = s.participants.len();
    assert!(s.version >= 1);
    assert!(
        s.participants.windows(2).all(|w| w[0].index < w[1].index),
        "sorted by index"
    );
    for p in &s.participants {
        assert!(p.clock.remaining >= 0, "negative remaining: {p:?}");
        assert!(p.clock.bounded, "a per-participant clock is bounded");
        assert_eq!(
            p.expired, p.clock.expired,
            "participant and clock agree on the flag: {p:?}"
        );
        assert!(p.clock.used >= 0 && p.clock.credits >= 0, "{p:?}");
        assert_eq!(
            p.clock.initial + p.clock.credits + p.clock.adjustments - p.clock.used,
            p.clock.remaining,
            "ledger: {p:?}"
        );
    }
    assert_eq!(
        s.cycle_count,
        s.participants.iter().map(|p| p.cycle_count).sum::<u64>()
    );
    assert!(s.recent_requests.len() <= REMEMBERED_REQUESTS);

    let active = s.active.map(|a| &s.participants[a]);
    let want = match (s.status, s.cycle_started_at, active) {
        (Status::Running, Some(st), Some(p)) if !p.expired => Some(st + p.clock.remaining),
        _ => None,
    };
    assert_eq!(
        deadline(s),
        want,
        "deadline = cycle_started_at + remaining of the running clock"
    );

    match s.status {
        Status::Pending => {
            assert_eq!(
                (s.active, s.cycle_started_at, s.started_at, s.ended_at),
                (None, None, None, None)
            );
        }
        Status::Running => {
            assert!(
                s.active.is_some()
                    && s.cycle_started_at.is_some()
                    && s.started_at.is_some()
                    && s.ended_at.is_none()
            );
            assert!(s.cycle_started_at <= Some(s.updated_at));
        }
        Status::Paused => {
            assert!(s.active.is_some() && s.cycle_started_at.is_none() && s.ended_at.is_none());
        }
        Status::Expired | Status::Completed | Status::Cancelled => {
            assert!(s.cycle_started_at.is_none() && s.ended_at.is_some());
        }
    }
    let live = s.participants.iter().filter(|p| !p.expired).count();
    match s.timeout_action {
        TimeoutAction::EndSession => {
            let flagged = n - live;
            assert_eq!(
                flagged,
                usize::from(s.status == Status::Expired),
                "END_SESSION: exactly the flag ends it"
            );
        }
        TimeoutAction::Skip => match s.status {
            Status::Running | Status::Paused => {
                assert!(
                    live >= 2,
                    "SKIP runs on only with two eligible participants"
                );
                assert!(
                    !active.unwrap().expired,
                    "SKIP never leaves the turn with a flagged participant"
                );
            }
            Status::Expired => assert!(live <= 1),
            _ => {}
        },
        TimeoutAction::Notify => {
            if s.status == Status::Expired {
                assert_eq!(live, 0, "NOTIFY ends by time only when nobody is eligible");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// Random sessions (2–6 participants, any budget, increment and cap, any
    /// timeout action) and up to 40 random commands at random instants.
    #[test]
    fn random_command_sequences_keep_every_rule(
        spec in session_spec(false),
        lead_start in proptest::bool::weighted(0.8),
        steps in vec(step(false), 1..40),
    ) {
        run(&spec, lead_start, &steps);
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// Tight budgets (ms), mostly SKIP and NOTIFY: many flags, cascades and late commands.
    #[test]
    fn tight_clocks_flag_skip_and_notify_by_the_rules(
        spec in session_spec(true),
        lead_start in proptest::bool::weighted(0.9),
        steps in vec(step(true), 1..40),
    ) {
        run(&spec, lead_start, &steps);
    }
}

// ---------------------------------------------------------------------------
// Property tests: CreateSession input limits
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct CreateSpec {
    /// (id from a small pool, index, has a group, initial_time_ms)
    participants: Vec<(usize, Option<u32>, bool, Option<i64>)>,
    /// Append valid participants up to this count.
    pad_to: Option<usize>,
    session_initial_ms: i64,
    increment_ms: i64,
    cap_ms: i64,
    groups: bool,
    cycle_time_ms: i64,
    global_time_ms: i64,
    max_time_ms: i64,
    metadata: (usize, usize, bool),
    action: Option<TimeoutAction>,
}

impl CreateSpec {
    fn metadata(&self) -> BTreeMap<String, String> {
        let (entries, value_len, empty_key) = self.metadata;
        let mut m: BTreeMap<String, String> = (0..entries)
            .map(|i| (format!("k{i}"), "v".repeat(value_len)))
            .collect();
        if empty_key {
            m.insert(String::new(), "x".into());
        }
        m
    }

    fn participants(&self) -> Vec<NewParticipant> {
        let mut out: Vec<NewParticipant> = self
            .participants
            .iter()
            .map(|&(id, index, group, initial)| NewParticipant {
                id: pid(["a", "b", "c", "d", "e", "f", "g"][id]),
                index,
                group: group.then(|| GroupId::parse("g", "team").unwrap()),
                initial_time_ms: initial,
            })
            .collect();
        if let Some(to) = self.pad_to {
            let k = out.len();
            out.extend((k..to).map(|i| new_participant(&format!("pad{i}"), Some(1000))));
        }
        out
    }

    fn build(&self) -> NewSession {
        let mut n = new_session(&[], 1);
        n.participants = self.participants();
        n.initial_time_ms = self.session_initial_ms;
        n.time_control.increment_ms = self.increment_ms;
        n.time_control.max_remaining_ms = self.cap_ms;
        if self.groups {
            n.groups.push(NewGroup {
                id: GroupId::parse("g", "team").unwrap(),
                initial_time_ms: 1000,
            });
        }
        n.cycle_time_ms = self.cycle_time_ms;
        n.global_time_ms = self.global_time_ms;
        n.max_time_ms = self.max_time_ms;
        n.metadata = self.metadata();
        n.timeout_action = self.action;
        n
    }

    /// Every field the request gets wrong (empty: valid).
    fn defects(&self) -> Vec<String> {
        let in_range = |ms: i64| (1..=MAX_DURATION_MS).contains(&ms);
        let mut d: Vec<String> = Vec::new();
        let m = self.metadata();
        let bytes: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        if m.len() > MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES || m.contains_key("") {
            d.push("metadata".into());
        }
        let ps = self.participants();
        if ps.is_empty() || ps.len() > MAX_PARTICIPANTS {
            d.push("participants".into());
        }
        for (on, name) in [
            (self.groups, "groups"),
            (self.cycle_time_ms != 0, "cycle_time_ms"),
            (self.global_time_ms != 0, "global_time_ms"),
            (self.max_time_ms != 0, "max_time_ms"),
        ] {
            if on {
                d.push(name.into());
            }
        }
        if !(0..=MAX_DURATION_MS).contains(&self.increment_ms) {
            d.push("time_control.increment_ms".into());
        }
        if self.cap_ms != 0 && (!in_range(self.cap_ms) || self.increment_ms == 0) {
            d.push("time_control.max_remaining_ms".into());
        }
        if self.session_initial_ms != 0 && !in_range(self.session_initial_ms) {
            d.push("initial_time_ms".into());
        }
        let (mut ids, mut indexes) = (BTreeSet::new(), BTreeSet::new());
        for (i, p) in ps.iter().enumerate() {
            if !ids.insert(p.id.clone()) {
                d.push(format!("participants[{i}].participant_id"));
            }
            if !indexes.insert(p.index.unwrap_or(i as u32)) {
                d.push(format!("participants[{i}].index"));
            }
            if p.group.is_some() {
                d.push(format!("participants[{i}].group_id"));
            }
            let ok = match p.initial_time_ms {
                Some(ms) => in_range(ms),
                None => self.session_initial_ms != 0,
            };
            if !ok {
                d.push(format!("participants[{i}].initial_time_ms"));
            }
        }
        d
    }
}

fn create_spec() -> impl Strategy<Value = CreateSpec> {
    let duration = || {
        prop_oneof![
            8 => 1i64..=MAX_DURATION_MS,
            1 => Just(0i64),
            1 => Just(-1i64),
            1 => Just(MAX_DURATION_MS),
            1 => Just(MAX_DURATION_MS + 1),
            1 => any::<i64>(),
        ]
    };
    let participant = (
        0usize..7,
        proptest::option::weighted(0.3, 0u32..8),
        proptest::bool::weighted(0.03),
        proptest::option::weighted(0.85, duration()),
    );
    let rare = |v: i64| prop_oneof![30 => Just(0i64), 1 => Just(v)];
    (
        vec(participant, 0..8),
        prop_oneof![30 => Just(None), 1 => Just(Some(MAX_PARTICIPANTS)), 1 => Just(Some(MAX_PARTICIPANTS + 1))],
        prop_oneof![3 => Just(0i64), 1 => duration()],
        prop_oneof![3 => Just(0i64), 3 => 1i64..=10_000, 1 => Just(-1i64), 1 => Just(MAX_DURATION_MS), 1 => Just(MAX_DURATION_MS + 1)],
        prop_oneof![3 => Just(0i64), 1 => duration()],
        proptest::bool::weighted(0.03),
        (rare(1000), rare(-5), rare(MAX_DURATION_MS + 1)),
        (
            prop_oneof![
                8 => (0usize..=4, 0usize..=20),
                1 => Just((MAX_METADATA_ENTRIES, 10)),
                1 => Just((MAX_METADATA_ENTRIES + 1, 1)),
                1 => Just((1, MAX_METADATA_BYTES - 2)),
                1 => Just((1, MAX_METADATA_BYTES - 1)),
            ],
            proptest::bool::weighted(0.03),
        ),
        prop_oneof![Just(None), Just(Some(TimeoutAction::EndSession)), Just(Some(TimeoutAction::Skip)), Just(Some(TimeoutAction::Notify))],
    )
        .prop_map(
            |(participants, pad_to, session_initial_ms, increment_ms, cap_ms, groups, (cycle, global, max_time), ((entries, len), empty), action)| {
                CreateSpec {
                    participants,
                    pad_to,
                    session_initial_ms,
                    increment_ms,
                    cap_ms,
                    groups,
                    cycle_time_ms: cycle,
                    global_time_ms: global,
                    max_time_ms: max_time,
                    metadata: (entries, len, empty),
                    action,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(2048))]

    /// Random MODE_PER_PARTICIPANT CreateSession inputs (Fischer with or without
    /// a cap, fields of other modes set by mistake): accepted exactly when every limit holds; a
    /// refusal names one of the offending fields; an accepted session is version 1.
    #[test]
    fn create_accepts_exactly_the_valid_inputs(spec in create_spec()) {
        let defects = spec.defects();
        match create(spec.build(), T0) {
            Ok((s, e)) => {
                prop_assert!(defects.is_empty(), "accepted despite {defects:?}");
                prop_assert_eq!((s.version, s.status, e.version, e.kind), (1, Status::Pending, 1, EventKind::Created));
                prop_assert_eq!(&e.session, &s);
                prop_assert_eq!(s.timeout_action, spec.action.unwrap_or(TimeoutAction::EndSession));
                prop_assert_eq!(&s.metadata, &spec.metadata());
                let given = spec.participants();
                prop_assert_eq!(s.participants.len(), given.len());
                for (i, p) in given.iter().enumerate() {
                    let q = part(&s, p.id.as_str());
                    let want = p.initial_time_ms.unwrap_or(spec.session_initial_ms) * MS;
                    prop_assert_eq!((q.index, q.clock.initial, q.clock.remaining), (p.index.unwrap_or(i as u32), want, want));
                    prop_assert_eq!((q.clock.used, q.clock.credits, q.clock.adjustments, q.cycle_count, q.expired), (0, 0, 0, 0, false));
                }
                prop_assert_eq!(s.time_control.increment, spec.increment_ms * MS);
                prop_assert_eq!(s.time_control.max_remaining, spec.cap_ms * MS);
                check_invariants(&s, T0);
            }
            Err(RuleError::InvalidArgument { field, reason }) => {
                prop_assert!(defects.contains(&field), "refused {field:?} ({reason}) but the defects are {defects:?}");
                prop_assert!(!reason.is_empty());
            }
            Err(other) => prop_assert!(false, "create can only refuse with InvalidArgument: {other:?}"),
        }
    }
}
