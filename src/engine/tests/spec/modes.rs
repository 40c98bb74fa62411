//! SPEC §3, the modes besides per participant (whose examples are the parent's
//! files): per cycle (a fresh budget every cycle, SKIP times the cycle out
//! without eliminating), per group (a clock shared inside a group, a flag
//! expires the whole group), global (one clock through every switch), count up
//! (stopwatches, a cap is the deadline); and what AdjustTime targets in each.

use super::*;

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
    // b moves (a call), then long overdue: each cycle times out in turn, at
    // its own instant, until a whole round timed out with nobody calling.
    let s = switch(&s, at(12_000));
    let (s, kinds) = timeout(&s, at(45_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::TimedOut, EventKind::Expired]);
    assert_eq!(s.status, Status::Expired);
    assert_eq!(s.ended_at, Some(at(32_000)));
    assert!(
        s.participants
            .iter()
            .all(|p| p.id.as_str() == "b" || !p.expired)
    );
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
