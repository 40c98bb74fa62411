//! Property tests (proptest): random sessions and command sequences, replayed
//! by the thousand against the pure engine.
//!
//! For MODE_PER_PARTICIPANT this module is the model they are checked against,
//! worked out here, not taken from the engine: `check_step` judges the outcome
//! of each `apply` (a replayed request_id, a version mismatch, a terminal
//! session, a Timeout, a command after the deadline, or the rule of each
//! command on time), and `check_applied`, `check_invariants` and
//! `check_snapshot` what holds for every version. `config` sets the cases and
//! writes no regression files. Used by:
//! - `sequences`: random sessions and command sequences (4096 cases each);
//! - `create`: random CreateSession inputs (2048 cases).
//!
//! `modes` covers every mode, time control and timeout action with builders
//! and invariants of its own (6000 cases each); it uses nothing from here.

use std::collections::BTreeSet;

use proptest::test_runner::Config as ProptestConfig;

use super::*;

mod create;
mod modes;
mod sequences;

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
/// had fired first, except that a switch whose mover no longer has the turn is
/// void, and a pause or complete of a session the flag ended commits the flag.
fn check_late(before: &Session, r: &Request, now: Micros, got: &Result<Applied, RuleError>) {
    let timer = apply(before, &Request::new(Command::Timeout), now)
        .expect("the deadline passed: the timer fires");
    let settled = &timer.session;
    let turn_moved_on = !(settled.status == Status::Running && settled.active == before.active);
    let answered_by_the_flag = match r.command {
        Command::Switch { .. } => turn_moved_on,
        Command::Pause | Command::Complete => settled.status.is_terminal(),
        _ => false,
    };
    if answered_by_the_flag {
        let a = got.as_ref().unwrap_or_else(|e| {
            panic!("a late {:?} is answered with the flag, got {e}", r.command)
        });
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
        // Undo has properties of its own (undo.rs' tests).
        Command::Undo => unreachable!("not generated here"),
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
        Command::Switch { from, next, .. } => {
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
