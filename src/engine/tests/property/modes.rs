//! Property tests across every mode, time control and timeout action: random
//! sessions, random command sequences at random (sometimes backwards) times.
//! After every apply: versions are contiguous, every clock's ledger balances,
//! nothing is negative, no deadline is left overdue, a timeout at the
//! deadline is exactly one transition, terminal sessions accept nothing.
//!
//! Self-contained: its own `T0`, builders and checks (`check_step` here is not
//! the per-participant model of `mod.rs`).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::engine::*;

const T0: Micros = 1_800_000_000_000_000;

#[derive(Clone, Debug)]
enum Control {
    SuddenDeath,
    Fischer {
        inc: i64,
        cap: Option<i64>,
    },
    Bronstein(i64),
    Simple(i64),
    Byoyomi {
        periods: u32,
        period: i64,
    },
    Canadian {
        stones: u32,
        block: i64,
    },
    Hourglass,
    Stages {
        inc: i64,
        after: u32,
        add: i64,
        stage_inc: i64,
    },
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        Just(Control::SuddenDeath),
        (1..5_000i64, proptest::option::of(1_000..20_000i64))
            .prop_map(|(inc, cap)| Control::Fischer { inc, cap }),
        (1..5_000i64).prop_map(Control::Bronstein),
        (1..5_000i64).prop_map(Control::Simple),
        // Periods and blocks start at their floor, MIN_REPEATING_MS.
        (1..5u32, 250..3_000i64).prop_map(|(periods, period)| Control::Byoyomi { periods, period }),
        (1..5u32, 250..5_000i64).prop_map(|(stones, block)| Control::Canadian { stones, block }),
        Just(Control::Hourglass),
        (0..3_000i64, 1..4u32, 0..5_000i64, 0..3_000i64).prop_map(
            |(inc, after, add, stage_inc)| Control::Stages {
                inc,
                after,
                add,
                stage_inc
            }
        ),
    ]
}

fn time_control(c: &Control) -> NewTimeControl {
    let mut tc = NewTimeControl::default();
    match *c {
        Control::SuddenDeath => {}
        Control::Fischer { inc, cap } => {
            tc.increment_ms = inc;
            tc.max_remaining_ms = cap.unwrap_or(0);
        }
        Control::Bronstein(d) => {
            tc.delay_ms = d;
            tc.delay_kind = Some(DelayKind::Bronstein);
        }
        Control::Simple(d) => {
            tc.delay_ms = d;
            tc.delay_kind = Some(DelayKind::Simple);
        }
        Control::Byoyomi { periods, period } => {
            tc.byoyomi_periods = periods;
            tc.byoyomi_period_ms = period;
        }
        Control::Canadian { stones, block } => {
            tc.canadian_stones = stones;
            tc.canadian_block_ms = block;
        }
        Control::Hourglass => tc.hourglass = true,
        Control::Stages {
            inc,
            after,
            add,
            stage_inc,
        } => {
            tc.increment_ms = inc;
            tc.stages = vec![NewStage {
                after_cycles: after,
                add_ms: add,
                increment_ms: Some(stage_inc),
            }];
        }
    }
    tc
}

#[derive(Clone, Debug)]
struct Setup {
    mode: Mode,
    players: usize,
    groups: usize,
    budget_ms: i64,
    control: Control,
    action: Option<TimeoutAction>,
    /// Lag compensation (where the mode has it) and the abort timeouts.
    lag: bool,
    start_timeout_ms: i64,
    first_move_timeout_ms: i64,
}

fn setup() -> impl Strategy<Value = Setup> {
    let mode = prop_oneof![
        Just(Mode::PerParticipant),
        Just(Mode::PerCycle),
        Just(Mode::PerGroup),
        Just(Mode::Global),
        Just(Mode::CountUp),
    ];
    let action = prop_oneof![
        Just(None),
        Just(Some(TimeoutAction::EndSession)),
        Just(Some(TimeoutAction::Skip)),
        Just(Some(TimeoutAction::Notify)),
    ];
    (
        mode,
        1..6usize,
        1..4usize,
        // From the floor of a repeating duration (cycles, budgets under SKIP).
        MIN_REPEATING_MS..20_000i64,
        control(),
        action,
        (
            any::<bool>(),
            prop_oneof![3 => Just(0i64), 1 => MIN_REPEATING_MS..20_000i64],
            prop_oneof![3 => Just(0i64), 1 => MIN_REPEATING_MS..20_000i64],
        ),
    )
        .prop_map(
            |(mode, players, groups, budget_ms, control, action, (lag, start, first))| {
                let action = match mode {
                    Mode::Global => None,
                    _ => action,
                };
                Setup {
                    mode,
                    players,
                    groups: groups.min(players),
                    budget_ms,
                    control,
                    action,
                    lag: lag && matches!(mode, Mode::PerParticipant | Mode::PerGroup),
                    start_timeout_ms: start,
                    first_move_timeout_ms: first,
                }
            },
        )
}

fn build(st: &Setup) -> Session {
    let ids: Vec<String> = (0..st.players).map(|i| format!("p{i}")).collect();
    let uses_control = matches!(st.mode, Mode::PerParticipant | Mode::PerGroup);
    let mut new = NewSession {
        id: SessionId::parse("session_id", "prop").unwrap(),
        epoch: "e".into(),
        mode: st.mode,
        participants: ids
            .iter()
            .enumerate()
            .map(|(i, id)| NewParticipant {
                id: ParticipantId::parse("p", id).unwrap(),
                index: Some((st.players - i) as u32 * 10),
                group: (st.mode == Mode::PerGroup)
                    .then(|| GroupId::parse("g", &format!("g{}", i % st.groups)).unwrap()),
                initial_time_ms: None,
            })
            .collect(),
        groups: Vec::new(),
        time_control: if uses_control {
            time_control(&st.control)
        } else {
            NewTimeControl::default()
        },
        initial_time_ms: if st.mode == Mode::PerParticipant {
            st.budget_ms
        } else {
            0
        },
        lag_compensation: st.lag,
        start_timeout_ms: st.start_timeout_ms,
        first_move_timeout_ms: st.first_move_timeout_ms,
        cycle_time_ms: if st.mode == Mode::PerCycle {
            st.budget_ms
        } else {
            0
        },
        global_time_ms: if st.mode == Mode::Global {
            st.budget_ms
        } else {
            0
        },
        max_time_ms: if st.mode == Mode::CountUp && st.budget_ms % 2 == 0 {
            st.budget_ms
        } else {
            0
        },
        timeout_action: st.action,
        metadata: BTreeMap::new(),
        request_id: None,
        start_within: None,
    };
    if st.mode == Mode::PerGroup {
        new.groups = (0..st.groups)
            .map(|g| NewGroup {
                id: GroupId::parse("g", &format!("g{g}")).unwrap(),
                initial_time_ms: st.budget_ms,
            })
            .collect();
    }
    if st.mode == Mode::CountUp && new.max_time_ms == 0 {
        new.timeout_action = None;
    }
    create(new, T0).expect("generated sessions are valid").0
}

#[derive(Clone, Debug)]
enum Op {
    Start(Option<usize>),
    Switch {
        from_active: bool,
        next: Option<usize>,
        lag_ms: Option<i64>,
    },
    Pause,
    Resume,
    Complete,
    Cancel,
    Adjust {
        who: usize,
        delta_ms: i64,
        group: bool,
    },
    Timeout,
    Undo,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => proptest::option::of(0..6usize).prop_map(Op::Start),
        8 => (any::<bool>(), proptest::option::of(0..6usize), proptest::option::of(0..2_000i64)).prop_map(|(from_active, next, lag_ms)| Op::Switch { from_active, next, lag_ms }),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => (0..6usize, -30_000..30_000i64, any::<bool>()).prop_map(|(who, delta_ms, group)| Op::Adjust { who, delta_ms, group }),
        3 => Just(Op::Timeout),
        2 => Just(Op::Undo),
        1 => prop_oneof![Just(Op::Complete), Just(Op::Cancel)],
    ]
}

fn command(s: &Session, op: &Op) -> Command {
    let pid = |i: usize| s.participants[i % s.participants.len()].id.clone();
    match *op {
        Op::Start(first) => Command::Start {
            first: first.map(pid),
        },
        Op::Switch {
            from_active,
            next,
            lag_ms,
        } => Command::Switch {
            from: if from_active {
                s.active_participant().map(|p| p.id.clone())
            } else {
                None
            },
            next: next.map(pid),
            lag_ms,
        },
        Op::Pause => Command::Pause,
        Op::Resume => Command::Resume,
        Op::Complete => Command::Complete,
        Op::Cancel => Command::Cancel,
        Op::Adjust {
            who,
            delta_ms,
            group,
        } => Command::Adjust {
            target: if group && !s.groups.is_empty() {
                AdjustTarget::Group(s.groups[who % s.groups.len()].id.clone())
            } else {
                AdjustTarget::Participant(pid(who))
            },
            delta_ms,
        },
        Op::Timeout => Command::Timeout,
        Op::Undo => Command::Undo,
    }
}

fn budgets(s: &Session) -> Vec<(&'static str, &Budget)> {
    let mut out: Vec<(&'static str, &Budget)> = s
        .participants
        .iter()
        .map(|p| ("participant", &p.clock))
        .collect();
    out.extend(s.groups.iter().map(|g| ("group", &g.clock)));
    out.extend(s.global.iter().map(|b| ("global", b)));
    out.extend(s.cycle.iter().map(|b| ("cycle", b)));
    out
}

fn check_clocks(s: &Session) -> Result<(), TestCaseError> {
    for (what, b) in budgets(s) {
        prop_assert!(b.remaining >= 0, "{what} remaining {} < 0", b.remaining);
        prop_assert!(b.used >= 0, "{what} used {} < 0", b.used);
        if b.bounded {
            prop_assert_eq!(
                b.initial + b.credits + b.adjustments - b.used,
                b.remaining,
                "{} ledger: {:?}",
                what,
                b
            );
        } else {
            prop_assert_eq!(b.remaining, 0, "an unbounded clock has no budget");
        }
        prop_assert!(b.period_left >= 0 && b.block_left >= 0);
    }
    Ok(())
}

fn check_step(
    before: &Session,
    result: &Result<Applied, RuleError>,
    now: Micros,
) -> Result<(), TestCaseError> {
    let Ok(applied) = result else { return Ok(()) };
    let after = &applied.session;
    prop_assert_eq!(after.version, before.version + applied.events.len() as u64);
    for (i, e) in applied.events.iter().enumerate() {
        prop_assert_eq!(
            e.version,
            before.version + 1 + i as u64,
            "versions are contiguous"
        );
        prop_assert_eq!(e.session.version, e.version);
        check_clocks(&e.session)?;
    }
    if before.status.is_terminal() {
        prop_assert!(
            applied.events.is_empty(),
            "a terminal session accepted {:?}",
            applied.events
        );
    }
    check_clocks(after)?;
    let effective_now = now.max(before.updated_at);
    if let Some(d) = deadline(after) {
        prop_assert!(
            d > effective_now,
            "deadline {d} left overdue at {effective_now}"
        );
        prop_assert!(
            (after.status == Status::Running && after.cycle_started_at.is_some())
                || (after.status == Status::Pending && after.start_timeout > 0),
            "a deadline only while a clock runs, or a start is awaited"
        );
    }
    if !matches!(after.status, Status::Running | Status::Pending) {
        prop_assert_eq!(deadline(after), None);
    }
    for p in &after.participants {
        prop_assert!(p.lag_quota >= 0, "a negative lag quota");
    }
    if after.status == Status::Cancelled {
        prop_assert!(after.cancel_reason.is_some(), "a cancellation says why");
    }
    // Everything shown is non-negative, at any instant.
    let v = view(after, effective_now + 1_234_567);
    for i in 0..v.participants.len() {
        let c = participant_view(&v, i);
        prop_assert!(c.remaining >= 0 && c.used >= 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6_000, ..ProptestConfig::default() })]

    #[test]
    fn every_mode_and_control_keeps_its_invariants(
        st in setup(),
        ops in proptest::collection::vec((op(), -2_000..40_000i64), 1..40),
    ) {
        let mut s = build(&st);
        check_clocks(&s)?;
        let mut now = T0;
        for (op, dt) in ops {
            now += dt * 1_000 / 3;
            let cmd = command(&s, &op);
            let result = apply(&s, &Request::new(cmd.clone()), now);
            check_step(&s, &result, now)?;
            if let (Command::Timeout, Ok(a)) = (&cmd, &result) {
                // One transition per deadline: a second timeout at the same instant finds nothing due.
                prop_assert!(!a.events.is_empty());
                prop_assert_eq!(apply(&a.session, &Request::new(Command::Timeout), now).err(), Some(RuleError::NotDue));
            }
            if let Ok(a) = result {
                s = a.session;
            }
        }
    }

    #[test]
    fn the_deadline_is_exactly_when_the_timeout_becomes_due(
        st in setup(),
        switches in proptest::collection::vec(0..30_000i64, 0..6),
    ) {
        let mut s = build(&st);
        let mut now = T0;
        s = apply(&s, &Request::new(Command::Start { first: None }), now).unwrap().session;
        for dt in switches {
            now += dt;
            if let Ok(a) = apply(&s, &Request::new(Command::Switch { from: None, next: None, lag_ms: None }), now) {
                s = a.session;
            }
        }
        if let Some(d) = deadline(&s) {
            prop_assert_eq!(apply(&s, &Request::new(Command::Timeout), d - 1).err(), Some(RuleError::NotDue));
            let fired = apply(&s, &Request::new(Command::Timeout), d).unwrap();
            prop_assert!(!fired.events.is_empty());
            // Fired at the deadline instant: the flagged clock was charged exactly what it had.
            check_clocks(&fired.session)?;
        }
    }
}

proptest! {
    // Many random prefixes end the session or leave no live turn: those
    // cases are rejected, so allow for them.
    #![proptest_config(ProptestConfig { cases: 4_000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    /// UndoSwitch, over every mode, time control and timeout action: a
    /// switch then its undo leaves every clock as it stood at the switch
    /// instant (the mover's and the next's ledgers, groups, the cycle, the
    /// global clock), with the mover's clock running from the undo; a pause
    /// and resume in between change nothing of it; and a deadline that came
    /// in between takes the undo away instead.
    #[test]
    fn switch_then_undo_leaves_every_ledger_as_before_the_switch(
        st in setup(),
        ops in proptest::collection::vec((op(), 0..5_000i64), 0..6),
        think in 0..30_000i64,
        pause in proptest::option::of((0..5_000i64, 0..50_000i64)),
        lag in proptest::option::of(0..3_000i64),
    ) {
        let mut s = build(&st);
        let mut now = T0;
        s = apply(&s, &Request::new(Command::Start { first: None }), now).unwrap().session;
        for (op, dt) in ops {
            now += dt;
            if let Ok(a) = apply(&s, &Request::new(command(&s, &op)), now) {
                s = a.session;
            }
        }
        // Only a live turn, on time, can be switched and undone.
        prop_assume!(s.status == Status::Running && deadline(&s).is_none_or(|d| d > now));
        let at_switch = view(&s, now);
        let switch = Command::Switch { from: None, next: None, lag_ms: lag };
        let switched = apply(&s, &Request::new(switch), now).unwrap();
        prop_assume!(switched.events.last().map(|e| e.kind) == Some(EventKind::Switched));
        let mut s2 = switched.session;
        let mut t = now;
        let mut due_first = false;
        if let Some((before, length)) = pause {
            t += before;
            due_first = deadline(&s2).is_some_and(|d| d <= t);
            // A pause after the deadline commits the flag instead.
            let paused = apply(&s2, &Request::new(Command::Pause), t).unwrap().session;
            s2 = paused;
            if s2.status == Status::Paused {
                t += length;
                s2 = apply(&s2, &Request::new(Command::Resume), t).unwrap().session;
            }
        }
        t += think;
        due_first |= deadline(&s2).is_some_and(|d| d <= t);
        let undone = apply(&s2, &Request::new(Command::Undo), t);
        if due_first {
            prop_assert!(undone.is_err(), "a deadline came between: no undo");
            return Ok(());
        }
        let u = undone.unwrap();
        prop_assert_eq!(u.events.len(), 1);
        prop_assert_eq!(u.events[0].kind, EventKind::Undone);
        let r = u.session;
        prop_assert_eq!(&r.participants, &at_switch.participants);
        prop_assert_eq!(&r.groups, &at_switch.groups);
        prop_assert_eq!(&r.cycle, &at_switch.cycle);
        prop_assert_eq!(&r.global, &at_switch.global);
        prop_assert_eq!(r.cycle_count, at_switch.cycle_count);
        prop_assert_eq!(r.active, at_switch.active);
        prop_assert_eq!(r.cycle_started_at, Some(t));
        check_clocks(&r)?;
        // From the undo on, the mover's clock runs as it ran at the switch.
        let mut resumed = at_switch.clone();
        resumed.cycle_started_at = Some(t);
        prop_assert_eq!(flag_at(&r), flag_at(&resumed));
    }
}
