//! The three fuzz harnesses of SyncKairos, one function per `cargo fuzz`
//! target (`fuzz_targets/*.rs` only call them), and the checks they share.
//! Each takes raw bytes, drives them through the library exactly as the
//! service would, and panics only when an invariant breaks (libFuzzer
//! reports a panic as a crash). docs/fuzzing.md says how to run them.
//!
//! - [`request_path`]: protobuf requests (a CreateSession, then mutations)
//!   through the gRPC handlers' conversion (`grpc::convert`) into
//!   `engine::create` / `engine::apply`, at a `now` that moves by fuzzed
//!   amounts, with timer firings at the deadline.
//! - [`stored_session`]: bytes read back from Redis (a state, a log or audit
//!   entry, a Pub/Sub batch) through `wire::decode`, then what the service
//!   does with what decodes: the GetSession reply, the stream's events, a few
//!   commands.
//! - [`page_token`]: a ListSessionEvents page token through the handler's
//!   check and the audit's decoder.
//! - [`list_token`]: a ListSessions page token through the handler's check
//!   and the listing's decoder.
//!
//! The service's own test suite replays the crashes found, kept in
//! `fuzz/regressions/<target>/`, through these same functions
//! (`tests/api/fuzz_regressions.rs` includes this file), so this file names
//! nothing of libFuzzer.

use prost::Message;
use synckairos::app::AppError;
use synckairos::engine::{
    self, AdjustTarget, Budget, Command, Event, Micros, Mode, Request, RuleError, Session, Status,
};
use synckairos::fuzzing as fz;
use synckairos::grpc::pb;
use synckairos::wire;
use tonic_types::StatusExt;

/// The instant a fuzzed session is created at (2027).
const T0: Micros = 1_800_000_000_000_000;

/// Reads the fuzzer's bytes front to back; past the end every read is empty.
struct Bytes<'a> {
    rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).first().copied()
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }

    fn i32(&mut self) -> i32 {
        let mut four = [0u8; 4];
        for (d, s) in four.iter_mut().zip(self.take(4)) {
            *d = *s;
        }
        i32::from_le_bytes(four)
    }
}

// ---------- request_path ----------

/// The bytes are records:
/// - `len: u16 LE`, then `len` bytes of a `CreateSessionRequest`;
/// - then, until the bytes run out, steps: `tag: u8`, `dt: i32 LE` (µs the
///   clock moves, backwards too), `len: u8`, then `len` bytes of the request
///   the tag names (`tag % 10`): 0 Start, 1 SwitchCycle, 2 Pause, 3 Resume,
///   4 Complete, 5 Cancel, 6 AdjustTime; 7 the timer fires at the session's
///   deadline (at `now + dt` when none), 8 the timer fires at `now + dt`;
///   9 a GetSession reply at `now + dt`.
///
/// Each request is decoded with prost (undecodable: the step is skipped, as
/// tonic would refuse it) and converted as its handler converts it; a
/// refusal must be an `AppError` whose `Status` names the field. A request
/// that converts is applied with `engine::apply` (the session id must parse;
/// which session it names is not checked: the harness holds one). The
/// invariants of every step are in [`check_step`].
pub fn request_path(data: &[u8]) {
    let mut input = Bytes { rest: data };
    let len = input.u16() as usize;
    let Ok(create) = pb::CreateSessionRequest::decode(input.take(len)) else {
        return;
    };
    let mut new = match fz::create_request(create) {
        Ok(new) => new,
        Err(e) => return refused(e),
    };
    // App::create gives every session a random epoch; a fixed one keeps runs repeatable.
    new.epoch = "fuzz".into();
    let mut now = T0;
    let (mut s, created) = match engine::create(new, now) {
        Ok(c) => c,
        Err(e) => return refused(e.into()),
    };
    assert_eq!((s.version, s.status), (1, Status::Pending));
    assert_eq!((created.version, &created.session), (1, &s));
    check_session(&s);
    check_shown(&s, now);
    check_wire(&s, std::slice::from_ref(&created));

    while let Some(tag) = input.u8() {
        let dt = Micros::from(input.i32());
        let len = input.u8().unwrap_or(0) as usize;
        let raw = input.take(len);
        now = now.saturating_add(dt);
        let request = match tag % 10 {
            0 => convert::<pb::StartSessionRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                let first = fz::start_first(&r)?;
                with_guards(Command::Start { first }, r.expected_version, &r.request_id)
            }),
            1 => convert::<pb::SwitchCycleRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                let (from, next) = fz::switch_args(&r)?;
                with_guards(
                    Command::Switch {
                        from,
                        next,
                        lag_ms: None,
                    },
                    r.expected_version,
                    &r.request_id,
                )
            }),
            2 => convert::<pb::PauseSessionRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                with_guards(Command::Pause, r.expected_version, &r.request_id)
            }),
            3 => convert::<pb::ResumeSessionRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                with_guards(Command::Resume, r.expected_version, &r.request_id)
            }),
            4 => convert::<pb::CompleteSessionRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                with_guards(Command::Complete, r.expected_version, &r.request_id)
            }),
            5 => convert::<pb::CancelSessionRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                with_guards(Command::Cancel, r.expected_version, &r.request_id)
            }),
            6 => convert::<pb::AdjustTimeRequest>(raw, |r| {
                fz::session_id(&r.session_id)?;
                let target = fz::adjust_target(&r)?;
                with_guards(
                    Command::Adjust {
                        target,
                        delta_ms: r.delta_ms,
                    },
                    r.expected_version,
                    &r.request_id,
                )
            }),
            7 => {
                if let Some(d) = engine::deadline(&s) {
                    now = d;
                }
                Some(Ok(Request::new(Command::Timeout)))
            }
            8 => Some(Ok(Request::new(Command::Timeout))),
            _ => {
                check_shown(&s, now.max(s.updated_at));
                None
            }
        };
        match request {
            None => {}
            Some(Err(e)) => refused(e),
            Some(Ok(request)) => s = check_step(&s, &request, now),
        }
    }
}

/// Decodes `raw` as `M` and converts it with `f`; `None` when it does not decode.
fn convert<M: Message + Default>(
    raw: &[u8],
    f: impl FnOnce(M) -> Result<Request, AppError>,
) -> Option<Result<Request, AppError>> {
    M::decode(raw).ok().map(f)
}

fn with_guards(
    command: Command,
    expected_version: Option<u64>,
    request_id: &str,
) -> Result<Request, AppError> {
    let g = fz::guards(expected_version, request_id)?;
    Ok(Request {
        command,
        expected_version: g.expected_version,
        request_id: g.request_id,
    })
}

/// A refusal: its status has a message, and INVALID_ARGUMENT names a field
/// in a `google.rpc.BadRequest`, as the error table (grpc/error.rs) promises.
fn refused(e: AppError) {
    let invalid = matches!(e, AppError::InvalidArgument { .. });
    let status = tonic::Status::from(e);
    assert!(!status.message().is_empty(), "{status:?}");
    if invalid {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let bad = status.get_details_bad_request();
        assert!(
            bad.is_some_and(|b| b.field_violations.iter().any(|v| !v.field.is_empty())),
            "INVALID_ARGUMENT without a field: {status:?}"
        );
    }
}

/// Applies `r` to `before` at `now`, checks every invariant of the outcome,
/// and returns the session after it (`before` when refused).
fn check_step(before: &Session, r: &Request, now: Micros) -> Session {
    let got = engine::apply(before, r, now);
    // Pure: the same inputs give the same outputs (a store retries after a conflict).
    match (&got, &engine::apply(before, r, now)) {
        (Ok(a), Ok(b)) => assert_eq!((&a.session, &a.events), (&b.session, &b.events)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("apply is not deterministic: {a:?} vs {b:?}"),
    }
    let eff = now.max(before.updated_at);
    let due = engine::deadline(before).filter(|d| *d <= eff);
    let replayed = r
        .request_id
        .as_ref()
        .is_some_and(|id| before.has_applied(id.as_str()));
    let a = match got {
        Err(e) => {
            if before.status.is_terminal() && r.command != Command::Timeout {
                assert!(
                    matches!(
                        e,
                        RuleError::FailedPrecondition(_) | RuleError::VersionMismatch { .. }
                    ),
                    "a {} session refused {:?} with {e:?}",
                    before.status.name(),
                    r.command
                );
            }
            if r.command == Command::Timeout {
                assert_eq!(e, RuleError::NotDue, "a timer firing refused otherwise");
                assert_eq!(due, None, "the deadline passed but the timer was refused");
            }
            refused(e.into());
            return before.clone();
        }
        Ok(a) if replayed => {
            assert!(a.events.is_empty(), "a repeated request_id applied again");
            assert_eq!(&a.session, before);
            return a.session;
        }
        Ok(a) => a,
    };
    assert!(
        !before.status.is_terminal(),
        "a {} session accepted {:?}",
        before.status.name(),
        r.command
    );
    if r.command == Command::Timeout {
        assert!(due.is_some(), "a timer firing applied with nothing due");
    }
    assert!(!a.events.is_empty(), "an applied command makes a version");
    for (k, e) in a.events.iter().enumerate() {
        assert_eq!(e.version, before.version + 1 + k as u64, "contiguous");
        assert_eq!(e.session.version, e.version);
        assert_eq!((e.at, e.session.updated_at), (eff, eff));
        check_session(&e.session);
    }
    let s = &a.session;
    assert_eq!(s.version, before.version + a.events.len() as u64);
    assert_eq!(&a.events[a.events.len() - 1].session, s, "last snapshot");
    check_session(s);
    if let Some(d) = engine::deadline(s) {
        assert!(d > eff, "deadline {d} left overdue at {eff}");
    }
    // What never changes, and what only grows.
    assert_eq!(
        (&s.id, &s.epoch, s.mode, s.created_at, s.timeout_action),
        (
            &before.id,
            &before.epoch,
            before.mode,
            before.created_at,
            before.timeout_action
        )
    );
    assert_eq!(
        (
            &s.time_control,
            &s.metadata,
            s.participants.len(),
            s.groups.len()
        ),
        (
            &before.time_control,
            &before.metadata,
            before.participants.len(),
            before.groups.len()
        )
    );
    assert!(s.cycle_count >= before.cycle_count);
    for (p, q) in before.participants.iter().zip(&s.participants) {
        assert_eq!((&p.id, p.index, &p.group), (&q.id, q.index, &q.group));
        assert!(q.clock.used >= p.clock.used && q.cycle_count >= p.cycle_count);
        assert!(!p.expired || q.expired, "{} came back from expiry", p.id);
    }
    if let Some(id) = &r.request_id {
        assert!(s.has_applied(id.as_str()));
        let again = engine::apply(s, r, now).expect("a replay is answered");
        assert!(again.events.is_empty(), "a replay applied again");
    }
    if r.command == Command::Timeout {
        // One firing per deadline: a second one at the same instant finds nothing.
        assert_eq!(
            engine::apply(s, r, now).err(),
            Some(RuleError::NotDue),
            "a second firing at {now} found something due"
        );
    }
    check_shown(s, eff);
    check_wire(s, &a.events);
    a.session
}

/// Every clock of a session: `(what, budget)`.
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

/// What holds for every stored version of every session (the property
/// tests' `check_clocks` and `check_snapshot`, for every mode).
fn check_session(s: &Session) {
    for (what, b) in budgets(s) {
        assert!(b.remaining >= 0 && b.used >= 0, "{what} negative: {b:?}");
        assert!(b.period_left >= 0 && b.block_left >= 0, "{what}: {b:?}");
        if b.bounded {
            assert_eq!(
                b.initial + b.credits + b.adjustments - b.used,
                b.remaining,
                "{what} ledger: {b:?}"
            );
        } else {
            assert_eq!(b.remaining, 0, "an unbounded {what} clock has a budget");
        }
    }
    assert!(
        s.participants.windows(2).all(|w| w[0].index < w[1].index),
        "participants sorted by index"
    );
    assert!(s.active.is_none_or(|a| a < s.participants.len()));
    assert!(s.recent_requests.len() <= engine::REMEMBERED_REQUESTS);
    assert_eq!(
        s.cycle_count,
        s.participants.iter().map(|p| p.cycle_count).sum::<u64>(),
        "session cycles are the participants' turns"
    );
    if matches!(s.mode, Mode::PerParticipant | Mode::CountUp) {
        for p in &s.participants {
            assert_eq!(p.expired, p.clock.expired, "flag of {}", p.id);
        }
    }
    if s.mode == Mode::PerGroup {
        for p in &s.participants {
            let g = p
                .group
                .as_ref()
                .expect("a per-group participant has a group");
            assert!(s.group_position(g).is_some(), "group {g} of {}", p.id);
        }
    }
    let shape = (
        s.active.is_some(),
        s.cycle_started_at.is_some(),
        s.started_at.is_some(),
        s.ended_at.is_some(),
    );
    match s.status {
        Status::Pending => assert_eq!(shape, (false, false, false, false), "{s:?}"),
        Status::Running => {
            assert_eq!(shape, (true, true, true, false), "{s:?}");
            assert!(s.cycle_started_at <= Some(s.updated_at));
        }
        Status::Paused => assert_eq!((shape.0, shape.1, shape.3), (true, false, false)),
        Status::Expired | Status::Completed | Status::Cancelled => {
            assert_eq!((shape.1, shape.3), (false, true), "{s:?}");
        }
    }
    if s.status != Status::Running {
        assert_eq!(engine::deadline(s), None, "a deadline while no clock runs");
    }
}

/// What a reply shows at `now` and later: never a negative clock; the
/// GetSession reply is computed and encodes.
fn check_shown(s: &Session, now: Micros) {
    for at in [now, now + 1_234_567, now + 40 * 24 * 3_600_000_000] {
        let v = engine::view(s, at);
        assert_eq!(
            (v.version, v.status, v.active),
            (s.version, s.status, s.active)
        );
        for i in 0..v.participants.len() {
            let c = engine::participant_view(&v, i);
            assert!(c.remaining >= 0 && c.used >= 0, "shown at {at}: {c:?}");
        }
    }
    let reply = fz::session(s, now);
    assert_eq!(reply.version, s.version);
    for p in &reply.participants {
        assert!(p.remaining_ms >= 0 && p.used_ms >= 0, "{p:?}");
    }
    let bytes = reply.encode_to_vec();
    assert_eq!(pb::Session::decode(bytes.as_slice()).ok(), Some(reply));
}

/// The bytes the store writes read back as what was written: the state,
/// and each event as the log, the audit stream and Pub/Sub carry it.
fn check_wire(s: &Session, events: &[Event]) {
    let state = wire::encode_state(s);
    assert_eq!(
        wire::decode::<Session>(state.bytes()).ok().as_ref(),
        Some(s)
    );
    let mut batch = Vec::new();
    let mut sent_all = Vec::new();
    for e in events {
        let bytes = wire::encode_event(e, s, &state);
        assert_eq!(bytes, wire::encode(e), "encode_event spells the derive");
        // An event's snapshot leaves the remembered request ids and the
        // undo point out.
        let mut sent = e.clone();
        sent.session.recent_requests.clear();
        sent.session.undo = None;
        assert_eq!(wire::decode::<Event>(&bytes).ok().as_ref(), Some(&sent));
        fz::event(e).encode_to_vec();
        batch.push(bytes);
        sent_all.push(sent);
    }
    let back = wire::decode_batch(&wire::join_batch(&batch)).expect("a batch decodes");
    assert_eq!(back, sent_all);
}

// ---------- stored_session ----------

/// The bytes are what a Redis GET or XRANGE or a Pub/Sub message hands
/// back: they are decoded as a stored state, as an event (a log or audit
/// entry) and as a Pub/Sub batch, as the store, the audit source and the
/// fan-out decode them. Whatever decodes must re-encode to the same value,
/// and the service must be able to use it without a panic or an unbounded
/// loop: the GetSession reply and the stream's event, the view at several
/// instants, the DELETED event, and each command applied at the session's
/// time, at its deadline and later. (A stored value can be corrupt, or
/// written by a hostile client of the Redis server.)
pub fn stored_session(data: &[u8]) {
    if let Ok(s) = wire::decode::<Session>(data) {
        // As a state: the request ids it remembers are kept.
        let again = wire::encode_state(&s).into_bytes();
        assert_eq!(wire::decode::<Session>(&again).ok().as_ref(), Some(&s));
        use_stored(&s);
    }
    if let Ok(e) = wire::decode::<Event>(data) {
        // As an event: its snapshot leaves the request ids out.
        let again = wire::encode(&e);
        let mut sent = e.clone();
        sent.session.recent_requests.clear();
        assert_eq!(wire::decode::<Event>(&again).ok().as_ref(), Some(&sent));
        fz::event(&e).encode_to_vec();
        use_stored(&e.session);
    }
    if let Ok(batch) = wire::decode_batch(data) {
        for e in &batch {
            fz::event(e).encode_to_vec();
        }
        if let Some(e) = batch.first() {
            use_stored(&e.session);
        }
    }
}

/// What the service does with a session it read back.
fn use_stored(s: &Session) {
    let now = s.updated_at;
    let deadline = engine::deadline(s);
    let mut instants = vec![now, now.saturating_add(1_000_000)];
    instants.extend(deadline);
    for &at in &instants {
        fz::session(s, at).encode_to_vec();
        engine::deleted_event(s, at);
    }
    let someone = s.participants.first().map(|p| p.id.clone());
    let other = s.participants.last().map(|p| p.id.clone());
    let mut commands = vec![
        Command::Start { first: None },
        Command::Switch {
            from: None,
            next: None,
            lag_ms: None,
        },
        Command::Pause,
        Command::Resume,
        Command::Complete,
        Command::Cancel,
        Command::Timeout,
    ];
    if let Some(id) = someone.clone() {
        commands.push(Command::Start {
            first: Some(id.clone()),
        });
        commands.push(Command::Adjust {
            target: AdjustTarget::Participant(id),
            delta_ms: 1_000,
        });
    }
    if let (Some(from), Some(next)) = (someone, other) {
        commands.push(Command::Switch {
            from: Some(from),
            next: Some(next),
            lag_ms: None,
        });
    }
    if let Some(g) = s.groups.first() {
        commands.push(Command::Adjust {
            target: AdjustTarget::Group(g.id.clone()),
            delta_ms: -1_000,
        });
    }
    let rid = engine::RequestId::parse("request_id", "fuzz-1").expect("a valid id");
    for command in commands {
        for &at in &instants {
            let request = Request {
                command: command.clone(),
                expected_version: None,
                request_id: Some(rid.clone()),
            };
            if let Ok(a) = engine::apply(s, &request, at) {
                fz::session(&a.session, at).encode_to_vec();
                for e in &a.events {
                    fz::event(e).encode_to_vec();
                }
            }
        }
    }
}

// ---------- page_token ----------

/// The bytes are a ListSessionEvents `page_token` (a proto string: bytes
/// that are not UTF-8 never reach the handler). It goes through the
/// handler's check (`convert::page_token`) and the audit's decoder: a
/// refusal is INVALID_ARGUMENT naming `page_token`; a token that decodes
/// re-encodes to itself (tokens are canonical: one position, one token).
/// The bytes also make a position (an epoch and a version) whose token
/// must decode back to it.
pub fn page_token(data: &[u8]) {
    if let Ok(token) = std::str::from_utf8(data) {
        match fz::page_token(token.to_owned()) {
            Err(e) => refused(e),
            Ok(token) => match fz::decode_page_token(&token) {
                Ok((epoch, version)) => {
                    assert_eq!(
                        fz::encode_page_token(&epoch, version),
                        token,
                        "a token decoded to ({epoch:?}, {version}) but that position has another token"
                    );
                }
                Err(e) => {
                    let e = AppError::from(e);
                    match &e {
                        AppError::InvalidArgument { field, .. } => assert_eq!(field, "page_token"),
                        other => panic!("a bad token refused with {other:?}"),
                    }
                    refused(e);
                }
            },
        }
    }
    let (head, tail) = data.split_at(data.len().min(8));
    let mut eight = [0u8; 8];
    eight[..head.len()].copy_from_slice(head);
    let version = u64::from_le_bytes(eight);
    let epoch = String::from_utf8_lossy(tail);
    let token = fz::encode_page_token(&epoch, version);
    if token.len() <= 512 {
        assert_eq!(
            fz::decode_page_token(&token).ok(),
            Some((epoch.into_owned(), version)),
            "the token {token:?} does not decode to its position"
        );
    }
}

// ---------- list_token ----------

/// The bytes are a ListSessions `page_token` (a proto string). It goes
/// through the handler's check (`convert::page_token`) and the listing's
/// decoder: a refusal is INVALID_ARGUMENT naming `page_token`; a token that
/// decodes re-encodes to itself (one position, one token). The bytes also
/// make a position (a `created_at` and a session id) whose token must
/// decode back to it.
pub fn list_token(data: &[u8]) {
    if let Ok(token) = std::str::from_utf8(data) {
        match fz::page_token(token.to_owned()) {
            Err(e) => refused(e),
            Ok(token) => match fz::decode_list_token(&token) {
                Ok((created_at, id)) => {
                    assert_eq!(
                        fz::encode_list_token(created_at, &id).as_deref(),
                        Some(token.as_str()),
                        "a token decoded to ({created_at}, {id:?}) but that position has another token"
                    );
                }
                Err(e) => {
                    match &e {
                        AppError::InvalidArgument { field, .. } => assert_eq!(field, "page_token"),
                        other => panic!("a bad token refused with {other:?}"),
                    }
                    refused(e);
                }
            },
        }
    }
    let (head, tail) = data.split_at(data.len().min(8));
    let mut eight = [0u8; 8];
    eight[..head.len()].copy_from_slice(head);
    let created_at = i64::from_le_bytes(eight) & i64::MAX;
    let id = String::from_utf8_lossy(tail);
    if let Some(token) = fz::encode_list_token(created_at, &id) {
        assert_eq!(
            fz::decode_list_token(&token).ok(),
            Some((created_at, id.into_owned())),
            "the token {token:?} does not decode to its position"
        );
    }
}
