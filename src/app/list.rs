//! ListSessions: the caller's tenant's sessions, newest first (by
//! `created_at`, then session id, both descending), a page at a time, over
//! the store's listing index (`SessionStore::list`). What is listed is read
//! from the sessions' states as `GetSession` reads them, and filtered by
//! status from those states, so a page agrees with `GetSession`.
//!
//! A page resumes strictly after the position (`created_at`, id) the last
//! one ended at, so a session that existed before a listing began is listed
//! exactly once by it, whatever is created or deleted meanwhile (a session
//! created meanwhile is newer than every position after the first page:
//! never listed by the pages after it).
//!
//! Bounds, each documented on the proto's ListSessionsRequest and in
//! docs/deploy.md (limits):
//! - a page holds at most `page_size` sessions (default
//!   [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]);
//! - a call examines at most [`EXAMINED_PER_SESSION`] × `page_size` index
//!   entries, so a status filter that matches rarely never makes one call
//!   read the whole index: the page may then be short, even empty, with a
//!   `next_page_token` that resumes after the last entry examined;
//! - a page also ends once its sessions reach `SYNCKAIROS_MAX_PAGE_BYTES`
//!   of protobuf (default 2 MiB, the audit's [`crate::audit::DEFAULT_PAGE_BYTES`];
//!   at least one session a page), under a gRPC client's default 4 MiB
//!   limit: 1,000 sessions of 1,000 participants would be about 100 MB.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::AppError;
use crate::engine::{Micros, Session, SessionId, Status, Tenant};
use crate::store::{ListPosition, SessionStore};

/// ListSessions' default and largest page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Index entries one call may examine per session its page may hold.
pub const EXAMINED_PER_SESSION: usize = 10;
/// The longest page token accepted (the longest issued is about 230 bytes).
const MAX_TOKEN_LEN: usize = 512;

/// Which statuses a listing keeps: a set (order and repeats do not matter);
/// the empty set keeps every status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusFilter(u8);

impl StatusFilter {
    pub fn of(statuses: &[Status]) -> Self {
        Self(statuses.iter().fold(0, |set, &s| set | bit(s)))
    }

    fn keeps(self, s: Status) -> bool {
        self.0 == 0 || self.0 & bit(s) != 0
    }
}

fn bit(s: Status) -> u8 {
    1 << match s {
        Status::Pending => 0,
        Status::Running => 1,
        Status::Paused => 2,
        Status::Expired => 3,
        Status::Completed => 4,
        Status::Cancelled => 5,
    }
}

/// A ListSessions request, parsed.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// 0: the default.
    pub page_size: u32,
    /// Empty: the first page.
    pub page_token: String,
    pub statuses: StatusFilter,
}

/// One page: the sessions as `render` made them, and where the next starts.
pub struct SessionsPage<T> {
    pub sessions: Vec<T>,
    /// Empty when there is nothing more.
    pub next_page_token: String,
}

/// Page tokens are opaque to clients: base64 (URL-safe alphabet, no padding)
/// of `<created_at>:<session id>:<binding>`, the position the page ended at,
/// where the binding is the first 16 hex digits of SHA-256 of the tenant
/// and the status filter: a token is refused unless presented by the tenant
/// and with the filter it was issued for, rather than read as a position in
/// another listing. Anything that does not decode to that shape, is longer
/// than 512 bytes, or is not exactly the token `encode_token` makes of what
/// it decodes to (`01` for `1`, say), is refused. As ListSessionEvents'
/// (`audit::encode_token`).
pub(crate) fn encode_token(tenant: &Tenant, filter: StatusFilter, pos: &ListPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}:{}",
        pos.created_at,
        pos.id,
        binding(tenant, filter)
    ))
}

fn binding(tenant: &Tenant, filter: StatusFilter) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::new()
        .chain_update(b"synckairos/list\0")
        .chain_update(tenant.as_str())
        .chain_update([0, filter.0])
        .finalize();
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_token(
    tenant: &Tenant,
    filter: StatusFilter,
    token: &str,
) -> Result<ListPosition, AppError> {
    let bad = || AppError::invalid("page_token", "not a token this server issued");
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (time, rest) = text.split_once(':').ok_or_else(bad)?;
    let (id, bound) = rest.rsplit_once(':').ok_or_else(bad)?;
    let created_at: Micros = time.parse().map_err(|_| bad())?;
    if created_at < 0 {
        return Err(bad());
    }
    let id = SessionId::parse("page_token", id).map_err(|_| bad())?;
    if bound != binding(tenant, filter) {
        return Err(AppError::invalid(
            "page_token",
            "issued for another tenant or another statuses filter",
        ));
    }
    let pos = ListPosition { created_at, id };
    // One token per position: `i64::parse` also takes `01` and `+1`.
    if encode_token(tenant, filter, &pos) != token {
        return Err(bad());
    }
    Ok(pos)
}

fn page_size(raw: u32) -> Result<usize, AppError> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n > MAX_PAGE_SIZE => Err(AppError::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

/// One page of `tenant`'s sessions (see the module's doc). `render` makes a
/// listed session into what the page holds, at the page's server time, and
/// says how many bytes that is; the page ends before it passes `max_bytes`.
pub(super) async fn page<T>(
    store: &dyn SessionStore,
    tenant: &Tenant,
    query: ListQuery,
    render: impl Fn(&Session, Micros) -> (T, usize),
    max_bytes: usize,
) -> Result<SessionsPage<T>, AppError> {
    let size = page_size(query.page_size)?;
    let filter = query.statuses;
    let mut cursor = match query.page_token.as_str() {
        "" => None,
        token => Some(decode_token(tenant, filter, token)?),
    };
    let budget = size * EXAMINED_PER_SESSION;
    let mut found: Vec<Session> = Vec::with_capacity(size);
    let (mut examined, mut more) = (0, true);
    while more && found.len() < size && examined < budget {
        let listed = store
            .list(tenant, cursor.as_ref(), size.min(budget - examined))
            .await?;
        examined += listed.examined.max(1);
        let (n, mut full_at) = (listed.sessions.len(), None);
        for (i, s) in listed.sessions.into_iter().enumerate() {
            if filter.keeps(s.status) {
                found.push(s);
                if found.len() == size {
                    full_at = Some(i);
                    break;
                }
            }
        }
        match full_at {
            // Full within this batch: resume after its last session.
            Some(i) => {
                cursor = found.last().map(ListPosition::of);
                more = i + 1 < n || listed.more;
            }
            None => {
                cursor = listed.last.or(cursor);
                more = listed.more;
            }
        }
    }
    // After every read: no listed session changed after this instant.
    let now = store.now();
    let mut sessions = Vec::with_capacity(found.len());
    let mut bytes = 0usize;
    for (i, s) in found.iter().enumerate() {
        let (item, len) = render(s, now);
        if i > 0 && bytes.saturating_add(len) > max_bytes {
            cursor = Some(ListPosition::of(&found[i - 1]));
            more = true;
            break;
        }
        bytes = bytes.saturating_add(len);
        sessions.push(item);
    }
    let next_page_token = match (more, &cursor) {
        (true, Some(pos)) => encode_token(tenant, filter, pos),
        _ => String::new(),
    };
    Ok(SessionsPage {
        sessions,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> Tenant {
        Tenant::parse("tenant", t).unwrap()
    }

    fn pos(t: Micros, id: &str) -> ListPosition {
        ListPosition {
            created_at: t,
            id: SessionId::parse("id", id).unwrap(),
        }
    }

    fn field(e: AppError) -> String {
        match e {
            AppError::InvalidArgument { field, .. } => field,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let (acme, running) = (tenant("acme"), StatusFilter::of(&[Status::Running]));
        for p in [
            pos(0, "a"),
            pos(1_800_000_000_000_000, "g:1.x_y-z"),
            pos(i64::MAX, &"x".repeat(128)),
        ] {
            let t = encode_token(&acme, running, &p);
            assert!(t.len() <= MAX_TOKEN_LEN, "{}", t.len());
            assert_eq!(decode_token(&acme, running, &t).unwrap(), p);
        }
    }

    #[test]
    fn a_filter_is_a_set() {
        use Status::*;
        assert_eq!(
            StatusFilter::of(&[Running, Paused]),
            StatusFilter::of(&[Paused, Running, Paused])
        );
        assert_ne!(StatusFilter::of(&[Running]), StatusFilter::of(&[]));
        assert!(StatusFilter::of(&[]).keeps(Cancelled));
        assert!(StatusFilter::of(&[Paused]).keeps(Paused));
        assert!(!StatusFilter::of(&[Paused]).keeps(Running));
    }

    #[test]
    fn a_page_token_is_refused_for_another_tenant_or_filter() {
        let t = encode_token(
            &tenant("acme"),
            StatusFilter::of(&[Status::Running]),
            &pos(5, "g"),
        );
        for (other, filter) in [
            (tenant("other"), StatusFilter::of(&[Status::Running])),
            (tenant("acme"), StatusFilter::of(&[])),
            (
                tenant("acme"),
                StatusFilter::of(&[Status::Running, Status::Paused]),
            ),
        ] {
            let e = decode_token(&other, filter, &t).unwrap_err();
            assert!(
                e.to_string()
                    .contains("another tenant or another statuses filter"),
                "{e}"
            );
            assert_eq!(field(e), "page_token");
        }
    }

    #[test]
    fn hostile_page_tokens_are_refused_naming_the_field_never_a_panic() {
        let (acme, all) = (tenant("acme"), StatusFilter::default());
        let b = binding(&acme, all);
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let whole = encode_token(&acme, all, &pos(7, "g"));
        let hostile: Vec<String> = vec![
            "zz".into(),
            "abc".into(),
            "a\u{0}b".into(),
            "\u{7f}\u{1b}[31m".into(),
            "aéb".into(),
            "====".into(),
            "A".repeat(100_000),
            enc(&"9".repeat(400)),
            whole[..whole.len() - 1].to_owned(),
            format!("{whole}="),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00, 0x80]),
            enc(&format!("01:g:{b}")),
            enc(&format!("+1:g:{b}")),
            enc(&format!("-1:g:{b}")),
            enc(&format!("99999999999999999999:g:{b}")),
            enc(&format!("1::{b}")),
            enc(&format!("1:a/b:{b}")),
            enc(&format!("1:{}:{b}", "x".repeat(129))),
            enc(&format!("1:g:{}", b.to_uppercase())),
            enc("1:g"),
            enc(":"),
            enc(""),
        ];
        for t in hostile {
            let e = decode_token(&acme, all, &t).unwrap_err();
            assert_eq!(field(e), "page_token", "{t:?}");
        }
    }

    #[test]
    fn page_size_defaults_and_is_bounded() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(1).unwrap(), 1);
        assert_eq!(page_size(1_000).unwrap(), 1_000);
        for bad in [1_001, u32::MAX] {
            assert_eq!(field(page_size(bad).unwrap_err()), "page_size");
        }
    }
}
