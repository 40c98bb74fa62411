//! Worked examples for every row of SPEC §3 (modes), §4 (time controls) and
//! §5 (timeout actions), straight from the formulas. Times are in ms here
//! and converted to the engine's microseconds by `ms()`.

use super::*;

const T0: Micros = 1_700_000_000_000_000;

fn ms(v: i64) -> Micros {
    v * 1_000
}

fn at(offset_ms: i64) -> Micros {
    T0 + ms(offset_ms)
}

fn pid(s: &str) -> ParticipantId {
    ParticipantId::parse("participant_id", s).unwrap()
}

fn gid(s: &str) -> GroupId {
    GroupId::parse("group_id", s).unwrap()
}

fn new_session(mode: Mode, ids: &[&str]) -> NewSession {
    let participants = ids
        .iter()
        .map(|id| NewParticipant::named(pid(id)))
        .collect();
    NewSession {
        epoch: "e".into(),
        ..NewSession::new(
            SessionId::parse("session_id", "s").unwrap(),
            mode,
            participants,
        )
    }
}

fn chess(initial_ms: i64, tc: NewTimeControl) -> NewSession {
    NewSession {
        initial_time_ms: initial_ms,
        time_control: tc,
        ..new_session(Mode::PerParticipant, &["w", "b"])
    }
}

/// Creates at T0 and starts at T0.
fn started(new: NewSession) -> Session {
    let (s, _) = create(new, T0).unwrap();
    step(&s, Command::Start { first: None }, T0)
}

fn step(s: &Session, command: Command, now: Micros) -> Session {
    apply(s, &Request::new(command), now).unwrap().session
}

fn apply_events(s: &Session, command: Command, now: Micros) -> (Session, Vec<EventKind>) {
    let a = apply(s, &Request::new(command), now).unwrap();
    (a.session, a.events.iter().map(|e| e.kind).collect())
}

fn switch(s: &Session, now: Micros) -> Session {
    step(
        s,
        Command::Switch {
            from: None,
            next: None,
        },
        now,
    )
}

fn clock<'a>(s: &'a Session, who: &str) -> &'a Budget {
    &s.participants[s.participant_position(&pid(who)).unwrap()].clock
}

fn shown(s: &Session, who: &str, now: Micros) -> ClockView {
    participant_view(&view(s, now), s.participant_position(&pid(who)).unwrap())
}

fn timeout(s: &Session, now: Micros) -> Result<(Session, Vec<EventKind>), RuleError> {
    apply(s, &Request::new(Command::Timeout), now)
        .map(|a| (a.session, a.events.iter().map(|e| e.kind).collect()))
}

fn active_id(s: &Session) -> &str {
    s.active_participant().unwrap().id.as_str()
}

// ---------------- §4 time controls ----------------

#[test]
fn sudden_death_charges_elapsed_and_flags_at_start_plus_budget() {
    let s = started(chess(60_000, NewTimeControl::default()));
    assert_eq!(deadline(&s), Some(at(60_000)));
    let s = switch(&s, at(10_000));
    assert_eq!(clock(&s, "w").remaining, ms(50_000));
    assert_eq!(deadline(&s), Some(at(10_000 + 60_000)));
}

#[test]
fn fischer_adds_the_increment_after_the_move_and_respects_the_cap() {
    let tc = NewTimeControl {
        increment_ms: 2_000,
        ..Default::default()
    };
    let s = switch(&started(chess(60_000, tc)), at(10_000));
    assert_eq!(clock(&s, "w").remaining, ms(52_000));
    assert_eq!(clock(&s, "w").credits, ms(2_000));

    let capped = NewTimeControl {
        increment_ms: 5_000,
        max_remaining_ms: 61_000,
        ..Default::default()
    };
    let s = switch(&started(chess(60_000, capped)), at(1_000));
    // 59 000 + 5 000 would be 64 000: the cap keeps it at 61 000.
    assert_eq!(clock(&s, "w").remaining, ms(61_000));
    assert_eq!(clock(&s, "w").credits, ms(2_000));
}

#[test]
fn bronstein_credits_min_of_elapsed_and_delay_and_flags_when_main_runs_out() {
    let tc = NewTimeControl {
        delay_ms: 5_000,
        delay_kind: Some(DelayKind::Bronstein),
        ..Default::default()
    };
    let s = started(chess(60_000, tc.clone()));
    assert_eq!(
        deadline(&s),
        Some(at(60_000)),
        "Bronstein flags at start + R"
    );
    let s2 = switch(&s, at(3_000));
    assert_eq!(
        clock(&s2, "w").remaining,
        ms(60_000),
        "R - e + min(e, d) with e < d"
    );
    let s3 = switch(&s, at(8_000));
    assert_eq!(
        clock(&s3, "w").remaining,
        ms(57_000),
        "R - e + d with e > d"
    );
}

#[test]
fn simple_delay_charges_only_past_the_delay_and_flags_at_budget_plus_delay() {
    let tc = NewTimeControl {
        delay_ms: 5_000,
        delay_kind: Some(DelayKind::Simple),
        ..Default::default()
    };
    let s = started(chess(60_000, tc));
    assert_eq!(
        deadline(&s),
        Some(at(65_000)),
        "simple delay flags at start + d + R"
    );
    let s2 = switch(&s, at(3_000));
    assert_eq!(clock(&s2, "w").remaining, ms(60_000));
    assert_eq!(
        clock(&s2, "w").used,
        ms(3_000),
        "used is wall time, before the credit"
    );
    let s3 = switch(&s, at(8_000));
    assert_eq!(clock(&s3, "w").remaining, ms(57_000));
    // The free part survives a pause: 3 s, pause, resume, 4 s more = 2 s charged.
    let p = step(&s, Command::Pause, at(3_000));
    let r = step(&p, Command::Resume, at(100_000));
    let done = switch(&r, at(104_000));
    assert_eq!(clock(&done, "w").remaining, ms(58_000));
}

#[test]
fn bronstein_versus_simple_flag_one_delay_apart() {
    let bronstein = NewTimeControl {
        delay_ms: 2_000,
        delay_kind: Some(DelayKind::Bronstein),
        ..Default::default()
    };
    let simple = NewTimeControl {
        delay_ms: 2_000,
        delay_kind: Some(DelayKind::Simple),
        ..Default::default()
    };
    let b = started(chess(10_000, bronstein));
    let s = started(chess(10_000, simple));
    assert!(timeout(&b, at(10_000)).is_ok(), "Bronstein flags at R");
    assert_eq!(
        timeout(&s, at(10_000)).unwrap_err(),
        RuleError::NotDue,
        "simple has not flagged at R"
    );
    assert!(timeout(&s, at(12_000)).is_ok(), "simple flags at R + d");
}

#[test]
fn byoyomi_main_time_flows_into_periods_and_a_move_inside_a_period_keeps_it() {
    let tc = NewTimeControl {
        byoyomi_periods: 3,
        byoyomi_period_ms: 10_000,
        ..Default::default()
    };
    let s = started(chess(60_000, tc));
    assert_eq!(
        deadline(&s),
        Some(at(60_000 + 3 * 10_000)),
        "R + periods x period"
    );
    // Main runs out mid-turn (60 s) and the move lands 4 s into the first period.
    let s = switch(&s, at(64_000));
    let w = clock(&s, "w");
    assert_eq!(
        (w.remaining, w.periods_left, w.period_left),
        (0, 3, ms(10_000)),
        "period kept and reset"
    );
    let v = shown(&s, "w", at(64_000));
    assert!(v.in_overtime);
    assert_eq!(v.remaining, ms(10_000));
    // Black moves at once; white now spends 25 s: two full periods elapse, one is left.
    let s = switch(&s, at(64_000));
    let s = switch(&s, at(89_000));
    let w = clock(&s, "w");
    assert_eq!((w.periods_left, w.period_left), (1, ms(10_000)));
    // Ledger: main time never went below 0; overtime spent is booked as credit.
    assert_eq!(w.initial + w.credits + w.adjustments - w.used, w.remaining);
    // White's last period: flag exactly 10 s into the turn.
    let s = switch(&s, at(89_000));
    assert_eq!(deadline(&s), Some(at(99_000)));
    let (s, kinds) = timeout(&s, at(99_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(clock(&s, "w").periods_left, 0);
}

#[test]
fn canadian_overtime_takes_stones_in_a_block_and_resets_it() {
    let tc = NewTimeControl {
        canadian_stones: 2,
        canadian_block_ms: 20_000,
        ..Default::default()
    };
    let s = started(chess(1_000, tc));
    assert_eq!(deadline(&s), Some(at(21_000)), "R + block_left");
    // Main time spent inside the first move: it is the first stone of the block.
    let s = switch(&s, at(6_000));
    let w = clock(&s, "w");
    assert_eq!(
        (w.remaining, w.stones_left, w.block_left),
        (0, 1, ms(15_000))
    );
    // Second stone within the block: block resets.
    let s = switch(&s, at(6_000));
    let s = switch(&s, at(10_000));
    let w = clock(&s, "w");
    assert_eq!((w.stones_left, w.block_left), (2, ms(20_000)));
    // A third turn longer than the block flags.
    let s = switch(&s, at(10_000));
    assert_eq!(deadline(&s), Some(at(30_000)));
    assert!(timeout(&s, at(29_999)).is_err());
    assert_eq!(timeout(&s, at(30_000)).unwrap().1, vec![EventKind::Expired]);
}

#[test]
fn hourglass_gives_the_movers_time_to_everyone_else() {
    let tc = NewTimeControl {
        hourglass: true,
        ..Default::default()
    };
    let s = started(chess(60_000, tc));
    // While white thinks, black's shown time grows.
    assert_eq!(shown(&s, "b", at(7_000)).remaining, ms(67_000));
    let s = switch(&s, at(7_000));
    assert_eq!(clock(&s, "w").remaining, ms(53_000));
    assert_eq!(clock(&s, "b").remaining, ms(67_000));
    assert_eq!(deadline(&s), Some(at(7_000 + 67_000)));
}

#[test]
fn stages_add_time_when_the_cycle_count_is_reached_and_switch_increments() {
    let tc = NewTimeControl {
        increment_ms: 1_000,
        stages: vec![NewStage {
            after_cycles: 2,
            add_ms: 30_000,
            increment_ms: Some(5_000),
        }],
        ..Default::default()
    };
    let mut s = started(chess(60_000, tc));
    // White's move 1 (inc 1 s), move 2 (inc 1 s + stage add 30 s), move 3 (inc 5 s).
    let mut t = 0;
    let mut expected = 60_000;
    for (credit, spend) in [(1_000, 1_000), (1_000 + 30_000, 1_000), (5_000, 1_000)] {
        t += spend;
        s = switch(&s, at(t)); // white moves
        expected += credit - spend;
        assert_eq!(clock(&s, "w").remaining, ms(expected));
        s = switch(&s, at(t)); // black moves at once
    }
}

#[test]
fn increment_is_not_given_to_a_participant_who_flagged_on_the_move() {
    let tc = NewTimeControl {
        increment_ms: 2_000,
        ..Default::default()
    };
    let new = NewSession {
        timeout_action: Some(TimeoutAction::Notify),
        ..chess(5_000, tc)
    };
    let s = started(new);
    // The switch arrives 1 s after the flag: under NOTIFY the flagged mover keeps the turn.
    let (s, kinds) = apply_events(
        &s,
        Command::Switch {
            from: None,
            next: None,
        },
        at(6_000),
    );
    assert_eq!(
        kinds,
        vec![EventKind::ParticipantExpired, EventKind::Switched]
    );
    let w = clock(&s, "w");
    assert_eq!((w.remaining, w.credits), (0, 0));
}

// ---------------- §3 modes ----------------

#[test]
fn per_cycle_gives_each_cycle_a_fresh_budget_and_accounts_time_per_participant() {
    let new = NewSession {
        cycle_time_ms: 30_000,
        ..new_session(Mode::PerCycle, &["a", "b", "c"])
    };
    let s = started(new);
    assert_eq!(
        s.timeout_action,
        TimeoutAction::Skip,
        "SKIP is the per-cycle default"
    );
    assert_eq!(deadline(&s), Some(at(30_000)));
    let s = switch(&s, at(12_000));
    assert_eq!(deadline(&s), Some(at(12_000 + 30_000)), "fresh cycle");
    assert_eq!(clock(&s, "a").used, ms(12_000));
    assert_eq!(shown(&s, "b", at(20_000)).remaining, ms(22_000));
}

#[test]
fn per_cycle_skip_times_out_the_cycle_and_moves_on_without_eliminating() {
    let new = NewSession {
        cycle_time_ms: 10_000,
        ..new_session(Mode::PerCycle, &["a", "b"])
    };
    let s = started(new);
    let (s, kinds) = timeout(&s, at(10_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::TimedOut]);
    assert_eq!(active_id(&s), "b");
    assert!(s.participants.iter().all(|p| !p.expired));
    assert_eq!(
        deadline(&s),
        Some(at(20_000)),
        "fresh cycle from the deadline instant"
    );
    // Long overdue: each cycle times out in turn, at its own instant.
    let (s, kinds) = timeout(&s, at(45_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::TimedOut; 3]);
    assert_eq!(active_id(&s), "a");
    assert_eq!(deadline(&s), Some(at(50_000)));
}

#[test]
fn per_group_shares_a_clock_switching_inside_keeps_it_and_crossing_charges_it() {
    let mut new = new_session(Mode::PerGroup, &["a1", "a2", "b1"]);
    new.groups = vec![
        NewGroup {
            id: gid("A"),
            initial_time_ms: 60_000,
        },
        NewGroup {
            id: gid("B"),
            initial_time_ms: 60_000,
        },
    ];
    for (p, g) in new.participants.iter_mut().zip(["A", "A", "B"]) {
        p.group = Some(gid(g));
    }
    new.time_control.increment_ms = 1_000;
    let s = started(new);
    assert_eq!(deadline(&s), Some(at(60_000)));
    // a1 -> a2 inside group A: the clock keeps running, same deadline, no increment.
    let s = switch(&s, at(5_000));
    assert_eq!(active_id(&s), "a2");
    assert_eq!(deadline(&s), Some(at(60_000)));
    // a2 -> b1 crosses: group A charged 9 s in all, plus one increment.
    let s = switch(&s, at(9_000));
    assert_eq!(s.groups[0].clock.remaining, ms(60_000 - 9_000 + 1_000));
    assert_eq!(clock(&s, "a1").used, ms(5_000));
    assert_eq!(clock(&s, "a2").used, ms(4_000));
    assert_eq!(deadline(&s), Some(at(9_000 + 60_000)));
}

#[test]
fn per_group_flag_expires_the_whole_group() {
    let mut new = new_session(Mode::PerGroup, &["a1", "b1", "c1", "a2"]);
    new.groups = ["A", "B", "C"]
        .iter()
        .map(|g| NewGroup {
            id: gid(g),
            initial_time_ms: 10_000,
        })
        .collect();
    for (p, g) in new.participants.iter_mut().zip(["A", "B", "C", "A"]) {
        p.group = Some(gid(g));
    }
    new.timeout_action = Some(TimeoutAction::Skip);
    let s = started(new);
    let (s, kinds) = timeout(&s, at(10_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::ParticipantExpired]);
    assert!(clock(&s, "a1").used == ms(10_000) && s.groups[0].clock.expired);
    assert!(
        s.participants
            .iter()
            .filter(|p| p.group == Some(gid("A")))
            .all(|p| p.expired)
    );
    assert_eq!(active_id(&s), "b1");
    // a2 belongs to the expired group: it is skipped.
    let s = switch(&s, at(11_000));
    let s = switch(&s, at(12_000));
    assert_eq!(active_id(&s), "b1");
}

#[test]
fn global_clock_runs_through_switches_and_pause_moves_its_deadline() {
    let new = NewSession {
        global_time_ms: 60_000,
        ..new_session(Mode::Global, &["a", "b"])
    };
    let s = started(new);
    let s = switch(&s, at(10_000));
    assert_eq!(
        deadline(&s),
        Some(at(60_000)),
        "a switch never touches the global deadline"
    );
    assert_eq!(s.cycle_count, 1);
    assert_eq!(active_id(&s), "b");
    let p = step(&s, Command::Pause, at(20_000));
    assert_eq!(deadline(&p), None);
    let r = step(&p, Command::Resume, at(50_000));
    assert_eq!(deadline(&r), Some(at(90_000)), "the 30 s pause moved it");
    let (e, kinds) = timeout(&r, at(90_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(e.status, Status::Expired);
    assert_eq!(e.global.as_ref().unwrap().remaining, 0);
}

#[test]
fn count_up_stopwatches_count_up_and_a_cap_is_the_deadline() {
    let uncapped = started(new_session(Mode::CountUp, &["runner"]));
    assert_eq!(deadline(&uncapped), None);
    assert_eq!(
        shown(&uncapped, "runner", at(3_600_000)).used,
        ms(3_600_000)
    );

    let mut new = new_session(Mode::CountUp, &["a", "b"]);
    new.max_time_ms = 20_000;
    let s = started(new);
    assert_eq!(deadline(&s), Some(at(20_000)));
    let s = switch(&s, at(8_000));
    assert_eq!(clock(&s, "a").used, ms(8_000));
    let s = switch(&s, at(9_000));
    // a's stopwatch resumes from 8 s: the cap is 12 s away.
    assert_eq!(deadline(&s), Some(at(9_000 + 12_000)));
    let v = shown(&s, "a", at(10_000));
    assert_eq!(
        (v.used, v.remaining),
        (ms(9_000), ms(11_000)),
        "remaining = max - used"
    );
}

// ---------------- §5 timeout actions ----------------

#[test]
fn end_session_expires_the_participant_and_stops_every_clock() {
    let s = started(chess(5_000, NewTimeControl::default()));
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(s.status, Status::Expired);
    assert!(s.participants[0].expired);
    assert_eq!(deadline(&s), None);
    assert_eq!(s.ended_at, Some(at(5_000)));
}

#[test]
fn skip_per_participant_eliminates_and_ends_when_fewer_than_two_remain() {
    let new = NewSession {
        initial_time_ms: 5_000,
        timeout_action: Some(TimeoutAction::Skip),
        ..new_session(Mode::PerParticipant, &["a", "b", "c"])
    };
    let s = started(new);
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::ParticipantExpired]);
    assert_eq!(active_id(&s), "b");
    // b and c play; a is skipped from now on.
    let s = switch(&s, at(6_000));
    let s = switch(&s, at(7_000));
    assert_eq!(active_id(&s), "b");
    // b flags: only c is left -> EXPIRED.
    let (s, kinds) = timeout(&s, at(7_000 + 4_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(s.status, Status::Expired);
}

#[test]
fn notify_keeps_the_session_running_with_the_clock_at_zero() {
    let new = NewSession {
        timeout_action: Some(TimeoutAction::Notify),
        ..chess(5_000, NewTimeControl::default())
    };
    let s = started(new);
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::ParticipantExpired]);
    assert_eq!(s.status, Status::Running);
    assert_eq!(deadline(&s), None);
    assert_eq!(shown(&s, "w", at(9_000)).remaining, 0);
    assert_eq!(
        timeout(&s, at(9_000)).unwrap_err(),
        RuleError::NotDue,
        "one transition per deadline"
    );
    let s = switch(&s, at(9_000));
    assert_eq!(active_id(&s), "b");
    assert_eq!(deadline(&s), Some(at(9_000 + 5_000)));
}

#[test]
fn a_late_switch_is_judged_by_the_clock() {
    let s = started(chess(
        5_000,
        NewTimeControl {
            increment_ms: 3_000,
            ..Default::default()
        },
    ));
    let (s, kinds) = apply_events(
        &s,
        Command::Switch {
            from: Some(pid("w")),
            next: None,
        },
        at(5_001),
    );
    assert_eq!(kinds, vec![EventKind::Expired], "the switch is not applied");
    assert!(s.participants[0].expired);
    assert_eq!(clock(&s, "w").remaining, 0);
}

#[test]
fn an_adjustment_that_empties_the_running_clock_flags_at_once() {
    let s = started(chess(60_000, NewTimeControl::default()));
    let adjust = Command::Adjust {
        target: AdjustTarget::Participant(pid("w")),
        delta_ms: -100_000,
    };
    let (s, kinds) = apply_events(&s, adjust, at(1_000));
    assert_eq!(kinds, vec![EventKind::TimeAdjusted, EventKind::Expired]);
    assert_eq!(clock(&s, "w").adjustments, -ms(59_000));
}

#[test]
fn adjust_targets_groups_in_group_mode_and_the_shared_clock_elsewhere() {
    let mut new = new_session(Mode::PerGroup, &["a1", "b1"]);
    new.groups = ["A", "B"]
        .iter()
        .map(|g| NewGroup {
            id: gid(g),
            initial_time_ms: 10_000,
        })
        .collect();
    for (p, g) in new.participants.iter_mut().zip(["A", "B"]) {
        p.group = Some(gid(g));
    }
    let s = started(new);
    let s = step(
        &s,
        Command::Adjust {
            target: AdjustTarget::Group(gid("B")),
            delta_ms: 5_000,
        },
        at(0),
    );
    assert_eq!(s.groups[1].clock.remaining, ms(15_000));
    let bad = apply(
        &s,
        &Request::new(Command::Adjust {
            target: AdjustTarget::Participant(pid("a1")),
            delta_ms: 1,
        }),
        at(0),
    );
    assert!(
        matches!(bad, Err(RuleError::InvalidArgument { ref field, .. }) if field == "participant_id")
    );

    let g = started(NewSession {
        global_time_ms: 10_000,
        ..new_session(Mode::Global, &["a", "b"])
    });
    let g = step(
        &g,
        Command::Adjust {
            target: AdjustTarget::Participant(pid("b")),
            delta_ms: 5_000,
        },
        at(1_000),
    );
    assert_eq!(deadline(&g), Some(at(15_000)));
}

// ---------------- combinations ----------------

#[test]
fn nonsense_combinations_are_rejected_naming_the_fields() {
    fn field_of(new: NewSession) -> String {
        match create(new, T0) {
            Err(RuleError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    let byo_delay = NewTimeControl {
        byoyomi_periods: 3,
        byoyomi_period_ms: 1_000,
        delay_ms: 1_000,
        delay_kind: Some(DelayKind::Simple),
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, byo_delay)),
        "time_control.byoyomi_periods"
    );
    let hourglass_inc = NewTimeControl {
        hourglass: true,
        increment_ms: 1_000,
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, hourglass_inc)),
        "time_control.hourglass"
    );
    let cycle_in_pp = NewSession {
        cycle_time_ms: 1_000,
        ..chess(1_000, NewTimeControl::default())
    };
    assert_eq!(field_of(cycle_in_pp), "cycle_time_ms");
    let delay_without_kind = NewTimeControl {
        delay_ms: 1_000,
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, delay_without_kind)),
        "time_control.delay_kind"
    );
    let per_cycle_without_time = new_session(Mode::PerCycle, &["a"]);
    assert_eq!(field_of(per_cycle_without_time), "cycle_time_ms");
    let global_skip = NewSession {
        global_time_ms: 1_000,
        timeout_action: Some(TimeoutAction::Skip),
        ..new_session(Mode::Global, &["a"])
    };
    assert_eq!(field_of(global_skip), "timeout_action");
    let mut group_missing = new_session(Mode::PerGroup, &["a"]);
    group_missing.groups = vec![NewGroup {
        id: gid("A"),
        initial_time_ms: 1_000,
    }];
    assert_eq!(field_of(group_missing), "participants[0].group_id");
    let controls_in_cycle = NewSession {
        cycle_time_ms: 1_000,
        time_control: NewTimeControl {
            increment_ms: 1,
            ..Default::default()
        },
        ..new_session(Mode::PerCycle, &["a"])
    };
    assert_eq!(field_of(controls_in_cycle), "time_control");
    let stages_out_of_order = NewTimeControl {
        stages: vec![
            NewStage {
                after_cycles: 40,
                add_ms: 1,
                increment_ms: None,
            },
            NewStage {
                after_cycles: 20,
                add_ms: 1,
                increment_ms: None,
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, stages_out_of_order)),
        "time_control.stages[1].after_cycles"
    );
}
