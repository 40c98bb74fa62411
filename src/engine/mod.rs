//! The clock rules, pure: sessions, participants, modes, time controls,
//! timeouts. `create(new, now)` builds version 1; `apply(session, request, now)`
//! returns the next session and one event per new version, or a `RuleError`;
//! `deadline(session)` says when the session next needs the timers (its
//! running clock runs out, or a session never started has waited too long),
//! `flag_at(session)` when the running clock runs out;
//! `check_stored(session)` whether a session read back from storage is one
//! the rules can run on.
//!
//! `now` is always an argument: nothing here reads a clock, does I/O, or knows
//! about tokio, tonic, prost, redis or diesel (std + serde + thiserror only),
//! so every rule is testable with plain numbers and property tests can replay
//! thousands of random command sequences.

mod apply;
mod budget;
mod create;
mod ids;
mod lag;
mod model;
mod stored;
mod text;
mod undo;
mod view;

#[cfg(test)]
mod tests;

pub use apply::{AdjustTarget, Applied, Command, Request, abort_at, apply, deadline, flag_at};
pub use budget::Budget;
pub use create::{
    MAX_DURATION_MS, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, MAX_PARTICIPANTS, MIN_REPEATING_MS,
    NewGroup, NewParticipant, NewSession, NewStage, NewTimeControl, create,
};
pub use ids::{GroupId, MAX_ID_LEN, ParticipantId, RequestId, SessionId, SessionKey, Tenant};
pub use lag::{MAX_LAG_MS, gain as lag_gain};
pub use model::{
    CancelReason, DelayKind, Event, EventKind, Group, LagCredit, MICROS_PER_MS, Micros, Mode,
    Participant, REMEMBERED_REQUESTS, Session, Stage, Status, TimeControl, TimeoutAction,
    UndoPoint,
};
pub use stored::{check_stored, check_stored_event};
pub use text::check_text;
pub use view::{ClockView, deleted_event, participant_clock, participant_view, view};

/// Why a request was refused. Each message names the field or the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Bad input; `field` is the request field's path, e.g. `participants[2].participant_id`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// Wrong status or wrong participant for this command.
    #[error("{0}")]
    FailedPrecondition(String),
    /// `expected_version` did not match.
    #[error("expected_version {expected} does not match the session's version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// A timeout was requested but the clock has not run out: nothing to do.
    #[error("the deadline has not passed")]
    NotDue,
    /// A rule of the spec this build does not implement yet.
    #[error("{0}")]
    Unimplemented(String),
}

impl RuleError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        RuleError::InvalidArgument {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
