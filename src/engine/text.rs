//! Free text a client sends (metadata keys and values, a Subscribe `epoch`, a
//! page token): any string is accepted except one holding a Unicode control
//! character (`char::is_control`, general category Cc: U+0000–U+001F and
//! U+007F–U+009F). Why: PostgreSQL's `jsonb` refuses U+0000 outright (the
//! audit row could never be written), and the others (escape sequences,
//! NEL, DEL) only ever reach a log line or a terminal to do harm there. Ids
//! need no check of their own: they are already restricted to
//! `[A-Za-z0-9._:-]` (`ids.rs`).

use super::RuleError;

/// The first control character of `s` and its byte offset, if any.
pub fn first_control(s: &str) -> Option<(char, usize)> {
    s.char_indices()
        .find(|(_, c)| c.is_control())
        .map(|(i, c)| (c, i))
}

/// The reason a string holding `c` at byte `at` is refused, e.g.
/// `must not contain control characters (U+0000 at byte 3)`.
pub(crate) fn control_reason(c: char, at: usize) -> String {
    format!(
        "must not contain control characters (U+{:04X} at byte {at})",
        c as u32
    )
}

/// Refuses `raw` if it holds a control character; the error names `field`:
/// `{field}: must not contain control characters (U+001B at byte 0)`.
pub fn check_text(field: &str, raw: &str) -> Result<(), RuleError> {
    match first_control(raw) {
        Some((c, at)) => Err(RuleError::invalid(field, control_reason(c, at))),
        None => Ok(()),
    }
}
