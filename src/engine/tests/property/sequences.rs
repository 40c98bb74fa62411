//! Random MODE_PER_PARTICIPANT sessions (2–6 participants, any budget, Fischer
//! increment and cap, any timeout action) and up to 40 random commands at
//! random instants (forward, backwards, at, just before and past the
//! deadline), with fresh, reused or no request ids and right, wrong or no
//! expected versions; `run` checks every step with the model in `mod.rs`.
//! Once with wide budgets, once with tight ones (mostly SKIP and NOTIFY: many
//! flags, cascades and late commands).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

/// Stands for a participant id the session does not have.
const GHOST: usize = usize::MAX;

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
                // Under SKIP a flag arms the next budget: none is below the
                // floor of a repeating duration (tiny ones still come from
                // AdjustTime and play).
                initial_ms: if action == Some(TimeoutAction::Skip) {
                    initial_ms
                        .into_iter()
                        .map(|ms| ms.max(MIN_REPEATING_MS))
                        .collect()
                } else {
                    initial_ms
                },
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
            lag_ms: None,
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
