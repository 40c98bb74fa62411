//! CreateSession refuses combinations that make no sense, naming the field:
//! byo-yomi with a delay, hourglass with an increment, a delay without its
//! kind, stages out of order, time controls or cycle time in a mode without
//! them, a per-cycle session without a cycle time, SKIP on a global clock, a
//! participant without a group in a group session.

use super::*;

#[test]
fn nonsense_combinations_are_rejected_naming_the_fields() {
    fn field_of(new: NewSession) -> String {
        match create(new, T0) {
            Err(RuleError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    let byo_delay = NewTimeControl {
        byoyomi_periods: 3,
        byoyomi_period_ms: 1_000,
        delay_ms: 1_000,
        delay_kind: Some(DelayKind::Simple),
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, byo_delay)),
        "time_control.byoyomi_periods"
    );
    let hourglass_inc = NewTimeControl {
        hourglass: true,
        increment_ms: 1_000,
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, hourglass_inc)),
        "time_control.hourglass"
    );
    let cycle_in_pp = NewSession {
        cycle_time_ms: 1_000,
        ..chess(1_000, NewTimeControl::default())
    };
    assert_eq!(field_of(cycle_in_pp), "cycle_time_ms");
    let delay_without_kind = NewTimeControl {
        delay_ms: 1_000,
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, delay_without_kind)),
        "time_control.delay_kind"
    );
    let per_cycle_without_time = new_session(Mode::PerCycle, &["a"]);
    assert_eq!(field_of(per_cycle_without_time), "cycle_time_ms");
    let global_skip = NewSession {
        global_time_ms: 1_000,
        timeout_action: Some(TimeoutAction::Skip),
        ..new_session(Mode::Global, &["a"])
    };
    assert_eq!(field_of(global_skip), "timeout_action");
    let mut group_missing = new_session(Mode::PerGroup, &["a"]);
    group_missing.groups = vec![NewGroup {
        id: gid("A"),
        initial_time_ms: 1_000,
    }];
    assert_eq!(field_of(group_missing), "participants[0].group_id");
    let controls_in_cycle = NewSession {
        cycle_time_ms: 1_000,
        time_control: NewTimeControl {
            increment_ms: 1,
            ..Default::default()
        },
        ..new_session(Mode::PerCycle, &["a"])
    };
    assert_eq!(field_of(controls_in_cycle), "time_control");
    let stages_out_of_order = NewTimeControl {
        stages: vec![
            NewStage {
                after_cycles: 40,
                add_ms: 1,
                increment_ms: None,
            },
            NewStage {
                after_cycles: 20,
                add_ms: 1,
                increment_ms: None,
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        field_of(chess(1_000, stages_out_of_order)),
        "time_control.stages[1].after_cycles"
    );
}
