//! Random MODE_PER_PARTICIPANT CreateSession inputs (ids from a small pool,
//! indexes, groups, initial times, Fischer with or without a cap, fields of
//! other modes, metadata near its limits): accepted exactly when every limit
//! holds, a refusal names one of the offending fields, an accepted session is
//! version 1 and keeps every invariant.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

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
