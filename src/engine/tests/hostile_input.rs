//! Issue 12, hostile input, at the engine: metadata with control characters
//! is refused naming the entry; every duration that repeats or resets has a
//! floor of 250 ms (`MIN_REPEATING_MS`), zero still meaning "off"; and a
//! session left alone stops committing after one round of automatic
//! transitions (a whole round of per-cycle SKIPs with no call in between ends
//! it EXPIRED), checked on examples and as a property over random sessions.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::*;

/// The floor of every repeating duration (`create::MIN_REPEATING_MS`),
/// spelled here so that the tests say the number they expect.
const FLOOR_MS: i64 = 250;

fn per_cycle(ids: &[&str], cycle_ms: i64) -> NewSession {
    NewSession {
        epoch: "epoch-1".to_owned(),
        cycle_time_ms: cycle_ms,
        ..NewSession::new(
            SessionId::parse("session_id", "table-1").unwrap(),
            Mode::PerCycle,
            ids.iter().map(|id| new_participant(id, None)).collect(),
        )
    }
}

fn create_err(n: NewSession) -> RuleError {
    match create(n, T0) {
        Ok(_) => panic!("should be refused"),
        Err(e) => e,
    }
}

fn with_metadata(k: &str, v: &str) -> NewSession {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.metadata.insert("title".into(), "fine".into());
    n.metadata.insert(k.into(), v.into());
    n
}

/// The timers, for a session nobody calls: fire every deadline, at its
/// instant, until no clock runs. Returns the events, in order.
fn left_alone(mut s: Session, limit: usize) -> (Session, Vec<Event>) {
    let mut events = Vec::new();
    while let Some(d) = deadline(&s) {
        assert!(
            events.len() < limit,
            "still committing after {limit} events"
        );
        let a = ok(&s, Command::Timeout, d);
        events.extend(a.events);
        s = a.session;
    }
    (s, events)
}

// ---------------------------------------------------------------------------
// 1. Control characters in metadata
// ---------------------------------------------------------------------------

#[test]
fn a_control_character_in_a_metadata_value_is_refused_naming_the_entry_and_the_byte() {
    for (c, name) in [
        ('\u{0}', "U+0000"),
        ('\u{1b}', "U+001B"),
        ('\u{7f}', "U+007F"),
        ('\u{85}', "U+0085"),
        ('\n', "U+000A"),
    ] {
        let e = create_err(with_metadata("note", &format!("abé{c}x")));
        assert_field(&e, "metadata[\"note\"]");
        assert_eq!(
            e.to_string(),
            format!("metadata[\"note\"]: must not contain control characters ({name} at byte 4)")
        );
    }
}

#[test]
fn a_control_character_in_a_metadata_key_is_refused_with_the_key_escaped() {
    let e = create_err(with_metadata("a\u{0}b", "v"));
    assert_field(&e, "metadata[\"a\\0b\"]");
    assert_eq!(
        e.to_string(),
        "metadata[\"a\\0b\"]: the key must not contain control characters (U+0000 at byte 1)"
    );
    let e = create_err(with_metadata("\u{1b}[31m", "v"));
    assert!(e.to_string().ends_with("(U+001B at byte 0)"), "{e}");
}

#[test]
fn other_unicode_in_metadata_is_kept_as_given() {
    // U+2028 (line separator) is category Zl, not a control character.
    let n = with_metadata("note\u{2028}", "ünïcødé \u{2028} \u{200b} 🎲 tab-free");
    let s = created(n);
    assert_eq!(
        s.metadata.get("note\u{2028}").map(String::as_str),
        Some("ünïcødé \u{2028} \u{200b} 🎲 tab-free")
    );
}

// ---------------------------------------------------------------------------
// 2. Floors of the durations that repeat or reset
// ---------------------------------------------------------------------------

#[test]
fn a_cycle_shorter_than_the_floor_is_refused_naming_the_field_and_the_floor() {
    for ms in [1, 100, FLOOR_MS - 1] {
        let e = create_err(per_cycle(&["a", "b"], ms));
        assert_field(&e, "cycle_time_ms");
        assert!(e.to_string().contains("at least 250 ms"), "{e}");
        assert!(e.to_string().contains(&format!("got {ms}")), "{e}");
    }
    assert!(create(per_cycle(&["a", "b"], FLOOR_MS), T0).is_ok());
    // Zero is not "off" for a per-cycle session: it stays required.
    assert_field(&create_err(per_cycle(&["a", "b"], 0)), "cycle_time_ms");
}

#[test]
fn byoyomi_periods_and_canadian_blocks_have_the_floor_and_zero_stays_off() {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.time_control.byoyomi_periods = 3;
    n.time_control.byoyomi_period_ms = FLOOR_MS - 1;
    let e = create_err(n.clone());
    assert_field(&e, "time_control.byoyomi_period_ms");
    assert!(e.to_string().contains("at least 250 ms"), "{e}");
    n.time_control.byoyomi_period_ms = FLOOR_MS;
    assert!(create(n, T0).is_ok());

    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.time_control.canadian_stones = 5;
    n.time_control.canadian_block_ms = 1;
    let e = create_err(n.clone());
    assert_field(&e, "time_control.canadian_block_ms");
    assert!(e.to_string().contains("at least 250 ms"), "{e}");
    n.time_control.canadian_block_ms = FLOOR_MS;
    assert!(create(n, T0).is_ok());

    // No overtime at all: both zero, accepted.
    assert!(create(new_session(&["a", "b"], FIVE_MIN_MS), T0).is_ok());
}

#[test]
fn under_skip_every_budget_the_previous_flag_arms_has_the_floor() {
    let skip = |n: NewSession| on_timeout(n, TimeoutAction::Skip);
    // The session's default budget.
    let mut n = skip(new_session(&["a", "b", "c"], FIVE_MIN_MS));
    for p in &mut n.participants {
        p.initial_time_ms = None;
    }
    n.initial_time_ms = 1;
    assert_field(&create_err(n.clone()), "initial_time_ms");
    n.initial_time_ms = FLOOR_MS;
    assert!(create(n, T0).is_ok());
    // One participant's own budget.
    let mut n = skip(new_session(&["a", "b", "c"], FIVE_MIN_MS));
    n.participants[2].initial_time_ms = Some(FLOOR_MS - 1);
    let e = create_err(n);
    assert_field(&e, "participants[2].initial_time_ms");
    assert!(e.to_string().contains("TIMEOUT_ACTION_SKIP"), "{e}");
    // The same budget under END_SESSION or NOTIFY flags once: no floor.
    for action in [TimeoutAction::EndSession, TimeoutAction::Notify] {
        let mut n = on_timeout(new_session(&["a", "b"], FIVE_MIN_MS), action);
        n.participants[1].initial_time_ms = Some(1);
        assert!(create(n, T0).is_ok(), "{action:?}");
    }
    // A group's budget.
    let mut n = skip(new_session(&["a", "b"], FIVE_MIN_MS));
    n.mode = Mode::PerGroup;
    for (p, g) in n.participants.iter_mut().zip(["x", "y"]) {
        p.initial_time_ms = None;
        p.group = Some(GroupId::parse("g", g).unwrap());
    }
    n.groups = ["x", "y"]
        .iter()
        .map(|g| NewGroup {
            id: GroupId::parse("g", g).unwrap(),
            initial_time_ms: 100,
        })
        .collect();
    assert_field(&create_err(n), "groups[0].initial_time_ms");
    // A count-up cap.
    let mut n = skip(new_session(&["a", "b"], FIVE_MIN_MS));
    n.mode = Mode::CountUp;
    for p in &mut n.participants {
        p.initial_time_ms = None;
    }
    n.max_time_ms = 10;
    assert_field(&create_err(n.clone()), "max_time_ms");
    n.max_time_ms = FLOOR_MS;
    assert!(create(n, T0).is_ok());
}

// ---------------------------------------------------------------------------
// 3. A session left alone stops
// ---------------------------------------------------------------------------

#[test]
fn a_per_cycle_skip_session_left_alone_ends_after_one_round() {
    let s = ok(&created(per_cycle(&["a", "b", "c"], FLOOR_MS)), start(), T0).session;
    let (s, events) = left_alone(s, 100);
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.participant.as_ref().unwrap().as_str().to_owned(),
                e.at,
            )
        })
        .collect();
    let cycle = FLOOR_MS * MS;
    assert_eq!(
        got,
        vec![
            (EventKind::TimedOut, "a".to_owned(), T0 + cycle),
            (EventKind::TimedOut, "b".to_owned(), T0 + 2 * cycle),
            (EventKind::Expired, "c".to_owned(), T0 + 3 * cycle),
        ],
        "every participant timed out in turn, then the session ended"
    );
    assert_eq!(s.status, Status::Expired);
    assert_eq!(s.ended_at, Some(T0 + 3 * cycle));
    assert!(
        part(&s, "c").expired,
        "the last one out is expired, as under END_SESSION"
    );
    assert!(!part(&s, "a").expired && !part(&s, "b").expired);
    assert_eq!(deadline(&s), None, "no clock runs: nothing more to commit");
    assert_eq!(err(&s, Command::Timeout, T0 + 60 * MIN), RuleError::NotDue);
}

#[test]
fn one_late_timeout_settles_the_whole_round_and_stops() {
    let s = ok(&created(per_cycle(&["a", "b"], 10_000)), start(), T0).session;
    // The timers were down for an hour: one apply, one round, then EXPIRED.
    let a = ok(&s, Command::Timeout, T0 + 60 * MIN);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::TimedOut, Some("a")),
            ev(EventKind::Expired, Some("b"))
        ]
    );
    assert_eq!(a.session.ended_at, Some(T0 + 20 * SEC));
}

#[test]
fn any_call_starts_the_count_again() {
    let s = ok(&created(per_cycle(&["a", "b", "c"], 10_000)), start(), T0).session;
    // a and b time out; c is about to make it a whole round...
    let s = ok(&s, Command::Timeout, T0 + 20 * SEC).session;
    assert_eq!(active_id(&s), Some("c"));
    // ...but c moves: a call, so the count starts again from zero.
    let s = ok(&s, switch(), T0 + 25 * SEC).session;
    let (s, events) = left_alone(s, 100);
    let who: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.participant.as_ref().unwrap().as_str()))
        .collect();
    assert_eq!(
        who,
        vec![
            (EventKind::TimedOut, "a"),
            (EventKind::TimedOut, "b"),
            (EventKind::Expired, "c")
        ]
    );
    assert_eq!(s.ended_at, Some(T0 + 55 * SEC));

    // AdjustTime, Pause and Resume are calls too.
    for call in [adjust("b", 1_000), Command::Pause] {
        let s = ok(&created(per_cycle(&["a", "b"], 10_000)), start(), T0).session;
        let s = ok(&s, Command::Timeout, T0 + 10 * SEC).session;
        assert_eq!(active_id(&s), Some("b"));
        let mut s = ok(&s, call.clone(), T0 + 15 * SEC).session;
        if s.status == Status::Paused {
            s = ok(&s, Command::Resume, T0 + 16 * SEC).session;
        }
        let (s, events) = left_alone(s, 100);
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::TimedOut, EventKind::Expired],
            "after {call:?}: a whole round again"
        );
        assert_eq!(s.status, Status::Expired);
    }
}

#[test]
fn a_single_participant_per_cycle_session_ends_at_its_first_unattended_timeout() {
    let s = ok(&created(per_cycle(&["solo"], 30_000)), start(), T0).session;
    let (s, events) = left_alone(s, 100);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventKind::Expired]
    );
    assert_eq!(s.status, Status::Expired);
}

#[test]
fn a_snapshot_and_the_stored_session_agree_on_the_count() {
    let s = ok(&created(per_cycle(&["a", "b", "c"], 10_000)), start(), T0).session;
    let a = ok(&s, Command::Timeout, T0 + 10 * SEC);
    assert_eq!(a.events.last().unwrap().session, a.session);
    let b = ok(&a.session, switch(), T0 + 12 * SEC);
    assert_eq!(b.events.last().unwrap().session, b.session);
}

// ---------------------------------------------------------------------------
// Property: any session, after any calls, left alone
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Table {
    mode: Mode,
    players: usize,
    budget_ms: i64,
    action: Option<TimeoutAction>,
    calls: Vec<(u8, i64)>,
}

fn table() -> impl Strategy<Value = Table> {
    (
        prop_oneof![
            Just(Mode::PerParticipant),
            Just(Mode::PerCycle),
            Just(Mode::PerGroup),
            Just(Mode::Global),
            Just(Mode::CountUp),
        ],
        1..8usize,
        FLOOR_MS..5_000,
        prop_oneof![
            Just(None),
            Just(Some(TimeoutAction::EndSession)),
            Just(Some(TimeoutAction::Skip)),
            Just(Some(TimeoutAction::Notify)),
        ],
        proptest::collection::vec((0..5u8, 0..3_000i64), 0..12),
    )
        .prop_map(|(mode, players, budget_ms, action, calls)| Table {
            mode,
            players,
            budget_ms,
            action: if mode == Mode::Global { None } else { action },
            calls,
        })
}

fn build(t: &Table) -> Session {
    let ids: Vec<String> = (0..t.players).map(|i| format!("p{i}")).collect();
    let mut n = NewSession {
        epoch: "e".into(),
        timeout_action: t.action,
        ..NewSession::new(
            SessionId::parse("session_id", "s").unwrap(),
            t.mode,
            ids.iter().map(|id| new_participant(id, None)).collect(),
        )
    };
    match t.mode {
        Mode::PerParticipant => n.initial_time_ms = t.budget_ms,
        Mode::PerCycle => n.cycle_time_ms = t.budget_ms,
        Mode::Global => n.global_time_ms = t.budget_ms,
        Mode::CountUp => n.max_time_ms = t.budget_ms,
        Mode::PerGroup => {
            // Two teams (one when alone), members alternating.
            let teams = t.players.min(2);
            for (i, p) in n.participants.iter_mut().enumerate() {
                p.group = Some(GroupId::parse("g", &format!("g{}", i % teams)).unwrap());
            }
            n.groups = (0..teams)
                .map(|g| NewGroup {
                    id: GroupId::parse("g", &format!("g{g}")).unwrap(),
                    initial_time_ms: t.budget_ms,
                })
                .collect();
        }
    }
    create(n, T0).expect("valid").0
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Whatever was played before, a session nobody calls any more makes at
    /// most one automatic transition per participant (one round), never two
    /// in less than the floor when they follow from a cycle, then no clock runs.
    #[test]
    fn a_session_left_alone_commits_at_most_one_round_then_stops(t in table()) {
        let mut s = ok(&build(&t), start(), T0).session;
        let mut now = T0;
        for (call, dt) in &t.calls {
            now += dt * MS;
            let cmd = match call {
                0 | 1 => switch(),
                2 => Command::Pause,
                3 => Command::Resume,
                _ => adjust("p0", -500),
            };
            if let Ok(a) = apply(&s, &req(cmd), now) {
                s = a.session;
            }
        }
        if s.status == Status::Paused {
            s = ok(&s, Command::Resume, now).session;
        }
        let (s, events) = left_alone(s, 10 * t.players + 10);
        prop_assert!(
            events.len() <= t.players,
            "{} automatic events for {} participants: {:?}",
            events.len(),
            t.players,
            events.iter().map(|e| e.kind).collect::<Vec<_>>()
        );
        prop_assert_eq!(deadline(&s), None);
        if t.mode == Mode::PerCycle {
            for w in events.windows(2) {
                prop_assert!(w[1].at - w[0].at >= FLOOR_MS * MS, "{} then {}", w[0].at, w[1].at);
            }
        }
    }
}

/// A session created with a wait of `wait_ms` to be started.
fn waiting(wait_ms: i64) -> Session {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.start_within = Some(wait_ms * MICROS_PER_MS);
    created(n)
}

#[test]
fn a_session_never_started_expires_when_its_wait_ends_whatever_calls_it_gets() {
    let s = waiting(10_000);
    let end = T0 + 10_000 * MICROS_PER_MS;
    assert_eq!(s.start_by, Some(end));
    assert_eq!(deadline(&s), Some(end), "the timers wake for it");
    assert_eq!(
        flag_at(&s),
        None,
        "no clock runs: no deadline_at for clients"
    );
    // Calls during the wait keep it PENDING but do not move the end.
    let s = ok(&s, adjust("a", 1_000), end - 1).session;
    assert_eq!(s.status, Status::Pending);
    assert_eq!(deadline(&s), Some(end));
    assert_eq!(err(&s, Command::Timeout, end - 1), RuleError::NotDue);
    let a = ok(&s, Command::Timeout, end + 5);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, None)]);
    assert_eq!(a.session.status, Status::Expired);
    assert_eq!(a.session.ended_at, Some(end));
    assert_eq!(deadline(&a.session), None, "nothing more to fire");
    // A start after the wait is refused: the session has expired.
    assert_failed_precondition(&err(&s, start(), end + 1), "EXPIRED");
}

#[test]
fn a_started_session_is_no_longer_bound_by_its_wait() {
    let s = waiting(10_000);
    let s = ok(&s, start(), T0 + 1).session;
    assert_eq!(s.status, Status::Running);
    assert_eq!(deadline(&s), flag_at(&s));
    assert_eq!(deadline(&s), Some(T0 + 1 + FIVE_MIN_MS * MICROS_PER_MS));
    let later = T0 + 20_000 * MICROS_PER_MS;
    let s = ok(&s, Command::Pause, later).session;
    assert_eq!(s.status, Status::Paused, "the wait no longer applies");
    assert_eq!(deadline(&s), None);
}
