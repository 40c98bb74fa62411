//! SPEC §4, one worked example per time control: sudden death, Fischer and its
//! cap, Bronstein and simple delay (and how far apart they flag), byo-yomi
//! periods, Canadian overtime, hourglass, stages; and no increment for a mover
//! who flagged on the move.

use super::*;

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
            lag_ms: None,
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
