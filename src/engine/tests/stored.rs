//! `check_stored`: what a session read back from storage must be. Every
//! session the rules make passes; the shapes the stored_session fuzz target
//! crashed on (fuzz/regressions/stored_session/) and their relatives fail,
//! each with a reason for the log line.

use super::*;

#[test]
fn every_session_the_rules_make_passes() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2_000, 0));
    assert_eq!(check_stored(&s), Ok(()));
    let a = ok(&s, switch(), T0 + 3 * SEC);
    for e in &a.events {
        assert_eq!(check_stored_event(e), Ok(()));
    }
    let done = ok(&a.session, Command::Complete, T0 + 4 * SEC).session;
    assert_eq!(check_stored(&done), Ok(()));
}

#[test]
fn shapes_the_rules_cannot_run_on_are_refused() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let bad = |f: &dyn Fn(&mut Session)| {
        let mut t = s.clone();
        f(&mut t);
        check_stored(&t).expect_err("refused")
    };
    // The fuzz target's first crash: `active` past the participants.
    assert!(bad(&|t| t.participants.clear()).contains("0 participants"));
    assert!(bad(&|t| t.active = Some(2)).contains("active"));
    assert!(bad(&|t| t.participants[0].clock.remaining = i64::MAX).contains("outside"));
    assert!(bad(&|t| t.updated_at = i64::MIN).contains("updated_at"));
    assert!(bad(&|t| t.version = u64::MAX).contains("version"));
    assert!(bad(&|t| t.participants[1].clock.periods_left = u32::MAX).contains("periods"));
    assert!(bad(&|t| t.participants.swap(0, 1)).contains("sorted"));
    assert!(bad(&|t| t.time_control.byoyomi_periods = 5_000).contains("1000"));
    assert!(bad(&|t| t.unattended_timeouts = 3).contains("unattended"));
    assert!(
        bad(&|t| t.participants[0].group = Some(GroupId::parse("g", "nope").unwrap()))
            .contains("unknown group")
    );
}
