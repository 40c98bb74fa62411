//! WatchSessions at the edge: the request parsed into domain values (every
//! bad field named by its path, `sessions[3].session_id`, before anything is
//! touched), and what the stream carries back onto the wire.

use std::collections::HashMap;

use super::convert;
use super::pb;
use crate::app::{AppError, MAX_WATCHED, WatchItem, WatchOptions, WatchScope, WatchTarget};
use crate::engine::{EventKind, SessionId};

/// The event type a filter names, as the engine knows it; `None`: a
/// stream-only type (SNAPSHOT, HEARTBEAT), always sent, so naming it
/// filters nothing.
fn filter_kind(t: pb::EventType) -> Option<EventKind> {
    Some(match t {
        pb::EventType::Unspecified | pb::EventType::Snapshot | pb::EventType::Heartbeat => {
            return None;
        }
        pb::EventType::Created => EventKind::Created,
        pb::EventType::Started => EventKind::Started,
        pb::EventType::Switched => EventKind::Switched,
        pb::EventType::Paused => EventKind::Paused,
        pb::EventType::Resumed => EventKind::Resumed,
        pb::EventType::TimeAdjusted => EventKind::TimeAdjusted,
        pb::EventType::TimedOut => EventKind::TimedOut,
        pb::EventType::ParticipantExpired => EventKind::ParticipantExpired,
        pb::EventType::Expired => EventKind::Expired,
        pb::EventType::Completed => EventKind::Completed,
        pb::EventType::Cancelled => EventKind::Cancelled,
        pb::EventType::Deleted => EventKind::Deleted,
        pb::EventType::Undone => EventKind::Undone,
    })
}

/// The request as the app takes it, and whether events go without `session`.
pub fn request(r: pb::WatchSessionsRequest) -> Result<(WatchOptions, bool), AppError> {
    let scope = if r.all_sessions {
        if !r.sessions.is_empty() {
            return Err(AppError::invalid(
                "sessions",
                "must be empty with all_sessions",
            ));
        }
        WatchScope::All
    } else {
        if r.sessions.is_empty() {
            return Err(AppError::invalid(
                "sessions",
                "name at least one session, or set all_sessions",
            ));
        }
        if r.sessions.len() > MAX_WATCHED {
            return Err(AppError::invalid(
                "sessions",
                format!("at most {MAX_WATCHED} sessions, got {}", r.sessions.len()),
            ));
        }
        let mut seen: HashMap<SessionId, usize> = HashMap::with_capacity(r.sessions.len());
        let mut targets = Vec::with_capacity(r.sessions.len());
        for (i, w) in r.sessions.into_iter().enumerate() {
            let field = format!("sessions[{i}].session_id");
            let id = SessionId::parse(&field, &w.session_id).map_err(AppError::from)?;
            if let Some(first) = seen.insert(id.clone(), i) {
                return Err(AppError::invalid(
                    field,
                    format!("the same session as sessions[{first}]"),
                ));
            }
            let epoch = convert::text(&format!("sessions[{i}].epoch"), w.epoch)?;
            targets.push(WatchTarget {
                id,
                from_version: w.from_version,
                epoch,
            });
        }
        WatchScope::Sessions(targets)
    };
    let mut kinds = Vec::new();
    for (i, raw) in r.event_types.iter().enumerate() {
        let t = pb::EventType::try_from(*raw)
            .ok()
            .filter(|t| *t != pb::EventType::Unspecified)
            .ok_or_else(|| {
                AppError::invalid(format!("event_types[{i}]"), format!("unknown value {raw}"))
            })?;
        if let Some(k) = filter_kind(t)
            && !kinds.contains(&k)
        {
            kinds.push(k);
        }
    }
    // A filter that names only SNAPSHOT or HEARTBEAT (always sent) asks
    // for no event type: DELETED (always sent) is all that passes.
    if kinds.is_empty() && !r.event_types.is_empty() {
        kinds.push(EventKind::Deleted);
    }
    Ok((
        WatchOptions {
            scope,
            kinds,
            heartbeat_ms: r.heartbeat_ms,
            progress: r.progress,
        },
        r.omit_session,
    ))
}

/// One message of the stream.
pub fn response(item: &WatchItem, omit_session: bool) -> pb::WatchSessionsResponse {
    let (event, progress) = match item {
        WatchItem::Event(e) if omit_session => (convert::event_head(e), Vec::new()),
        WatchItem::Event(e) => (convert::event(e), Vec::new()),
        WatchItem::Snapshot { session, at } => (
            pb::SessionEvent {
                session_id: session.id.to_string(),
                version: session.version,
                epoch: session.epoch.clone(),
                r#type: pb::EventType::Snapshot as i32,
                server_time: Some(convert::timestamp(*at)),
                session: Some(convert::session(session, *at)),
                ..Default::default()
            },
            Vec::new(),
        ),
        WatchItem::Gone {
            id,
            epoch,
            version,
            at,
        } => (
            pb::SessionEvent {
                session_id: id.to_string(),
                version: *version,
                epoch: epoch.clone(),
                r#type: pb::EventType::Deleted as i32,
                server_time: Some(convert::timestamp(*at)),
                ..Default::default()
            },
            Vec::new(),
        ),
        WatchItem::Heartbeat { progress, at } => (
            pb::SessionEvent {
                r#type: pb::EventType::Heartbeat as i32,
                server_time: Some(convert::timestamp(*at)),
                ..Default::default()
            },
            progress
                .iter()
                .flatten()
                .map(|p| pb::SessionProgress {
                    session_id: p.id.to_string(),
                    epoch: p.epoch.clone(),
                    version: p.version,
                })
                .collect(),
        ),
    };
    pb::WatchSessionsResponse {
        event: Some(event),
        progress,
    }
}
