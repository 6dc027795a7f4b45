//! The state machine's rules, one test each: windows, rollbacks, data, overrides,
//! stale decisions and the records' serialised form.

use super::*;
use crate::stats::{DifferenceScale, RowOrigin, Verdict};
use crate::step_evidence::CheckOutcome;
use crate::step_evidence::StepEvidence;

const MINUTE_MS: u64 = 60_000;

/// A caller authenticated as `name`, with no note.
fn by(name: &str) -> ActedBy {
    ActedBy { actor: Actor::Human(name.into()), note: None }
}
/// A start time far from zero so that "elapsed" arithmetic is exercised.
const T0: u64 = 1_700_000_000_000;

/// Ladder 1, 5, 25, 50, 100 % with 5-minute windows; error_rate and latency_p99
/// critical, latency_p50 not.
fn policy() -> RolloutPolicy {
    RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
         deployment: checkout\n  metrics:\n    - {name: error_rate}\n    \
         - {name: latency_p99, max_increase_ms: 50}\n    \
         - {name: latency_p50, max_increase_ms: 5, critical: false}\n",
    )
    .unwrap()
}

fn row(metric: &str, verdict: Verdict) -> ComparisonRow {
    ComparisonRow {
        metric: metric.to_string(),
        canary: Some(0.02),
        control: Some(0.01),
        absolute_difference: Some(0.01),
        relative_difference: Some(1.0),
        interval: None,
        interval_scale: DifferenceScale::Relative,
        p_value: Some(0.001),
        verdict,
        unit: crate::stats::ValueUnit::ByName,
        origin: crate::stats::RowOrigin::ByName,
    }
}

fn healthy() -> Vec<ComparisonRow> {
    vec![
        row("error_rate", Verdict::NoDifference),
        row("latency_p99_us", Verdict::NoDifference),
        row("latency_p50_us", Verdict::Better),
    ]
}

fn started() -> RolloutState {
    RolloutState::start(&policy(), 0, T0)
}

fn step(state: &mut RolloutState, decision: &Decision, now_ms: u64) {
    state.apply(decision, now_ms).unwrap();
}

#[test]
fn a_rollout_starts_on_its_first_step() {
    let state = started();
    assert_eq!((state.step, state.share_bp, state.phase), (0, 100, RolloutPhase::Progressing));
    assert_eq!(state.generation, T0, "generation starts at the clock");
    let again = RolloutState::start(&policy(), T0 + 5_000, T0);
    assert_eq!(again.generation, T0 + 5_001, "and above the previous rollout's");
    let config = state.config();
    assert_eq!(
        config,
        RolloutConfig {
            deployment: "checkout".into(),
            generation: T0,
            share_bp: 100,
            state: RolloutPhase::Progressing
        }
    );
    // The filter's own parser accepts what we serve.
    let body = serde_json::to_vec(&config).unwrap();
    assert_eq!(canary_core::rollout::parse_answer(&body, "checkout").unwrap(), config);
}

#[test]
fn promotes_after_the_window_and_not_before() {
    let (policy, state) = (policy(), started());
    let early = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS - 1);
    assert_eq!(early.action, Action::Hold);
    assert!(early.reason.contains("window"), "{}", early.reason);
    let due = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
    assert_eq!(due.action, Action::Promote { to_step: 1, share_bp: 500 });
    assert_eq!(due.actor, Actor::Analyzer);
    assert_eq!(due.rows, healthy());
    let mut state = state;
    step(&mut state, &due, T0 + 5 * MINUTE_MS);
    assert_eq!((state.step, state.share_bp, state.step_started_at_ms), (1, 500, T0 + 5 * MINUTE_MS));
    // The new step's window starts over.
    assert_eq!(decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 6 * MINUTE_MS).action, Action::Hold);
    assert_eq!(state.window_remaining(&policy, T0 + 6 * MINUTE_MS), Some(Duration::from_secs(240)));
}

#[test]
fn rolls_back_mid_window_on_a_critical_regression() {
    let (policy, mut state) = (policy(), started());
    let mut rows = healthy();
    rows.insert(0, row("latency_p99_us", Verdict::Worse));
    rows.remove(2);
    let decision = decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + MINUTE_MS);
    assert_eq!(decision.action, Action::Rollback);
    assert!(decision.reason.contains("latency_p99_us"), "{}", decision.reason);
    let before = state.generation;
    step(&mut state, &decision, T0 + MINUTE_MS);
    assert_eq!((state.share_bp, state.phase), (0, RolloutPhase::RolledBack));
    assert!(state.generation > before);
    // Finished: nothing more is decided.
    let after = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 60 * MINUTE_MS);
    assert_eq!(after.action, Action::Hold);
}

#[test]
fn a_non_critical_regression_neither_rolls_back_nor_blocks_promotion() {
    let (policy, state) = (policy(), started());
    let mut rows = healthy();
    rows[2] = row("latency_p50_us", Verdict::Worse);
    assert_eq!(decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + MINUTE_MS).action, Action::Hold);
    let due = decide(&policy, &state, &rows, &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
    assert_eq!(due.action, Action::Promote { to_step: 1, share_bp: 500 });
    assert!(due.reason.contains("non-critical regressions: latency_p50_us"), "{}", due.reason);
    // A row for a metric the policy does not list at all is not critical either.
    let unknown = vec![row("error_rate", Verdict::NoDifference), row("latency_p99_us", Verdict::NoDifference)];
    let mut with_unknown = unknown.clone();
    with_unknown.push(row("something_else", Verdict::Worse));
    assert!(matches!(
        decide(&policy, &state, &with_unknown, &StepEvidence::ample(), T0 + 5 * MINUTE_MS).action,
        Action::Promote { .. }
    ));
}

/// The default policy plus two outcomes named like built-in rows, as a policy an older
/// analyzer recorded can be: critical `non_success_rate`, non-critical `latency_p99_us`.
fn policy_with_look_alike_outcomes() -> RolloutPolicy {
    let mut policy = RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
         deployment: checkout\n  metrics:\n    - {name: error_rate}\n    \
         - {name: latency_p99, max_increase_ms: 50}\n    \
         - {name: a, outcome: a, direction: higher_is_worse}\n    \
         - {name: b, outcome: b, direction: higher_is_worse, critical: false}\n",
    )
    .unwrap();
    for (metric, name) in policy.metrics.iter_mut().skip(2).zip(["non_success_rate", "latency_p99_us"]) {
        if let crate::policy::Metric::Outcome(outcome) = &mut metric.metric {
            outcome.name = name.to_string();
        }
    }
    policy
}

fn policy_row(metric: &str, verdict: Verdict) -> ComparisonRow {
    ComparisonRow { origin: RowOrigin::Policy, ..row(metric, verdict) }
}

fn built_in_row(metric: &str, verdict: Verdict) -> ComparisonRow {
    ComparisonRow { origin: RowOrigin::BuiltIn, ..row(metric, verdict) }
}

#[test]
fn rows_are_matched_by_identity_not_by_name() {
    let (policy, state) = (policy_with_look_alike_outcomes(), started());
    let late = T0 + 50 * MINUTE_MS;
    let report = |outcome_verdicts: [Verdict; 2], p99: Verdict| {
        vec![
            built_in_row("error_rate", Verdict::NoDifference),
            built_in_row("non_success_rate", Verdict::NoDifference),
            built_in_row("latency_p99_us", p99),
            policy_row("non_success_rate", outcome_verdicts[0]),
            policy_row("latency_p99_us", outcome_verdicts[1]),
        ]
    };
    // The critical outcome has no data: the built-in row of its name does not stand in for it.
    let no_data = decide(
        &policy,
        &state,
        &report([Verdict::NotEnoughData, Verdict::NoDifference], Verdict::NoDifference),
        &StepEvidence::ample(),
        late,
    );
    assert_eq!(no_data.action, Action::Hold, "{}", no_data.reason);
    assert!(no_data.reason.contains("not enough data on critical metric(s): non_success_rate"), "{}", no_data.reason);
    // The non-critical outcome is worse: reported, not a rollback.
    let worse = report([Verdict::NoDifference, Verdict::Worse], Verdict::NoDifference);
    let promoted = decide(&policy, &state, &worse, &StepEvidence::ample(), late);
    assert!(matches!(promoted.action, Action::Promote { .. }), "{}", promoted.reason);
    assert!(promoted.reason.contains("non-critical regressions: latency_p99_us"), "{}", promoted.reason);
    // The built-in row of the same name still rolls back, and so does the critical outcome.
    let p99_worse = report([Verdict::NoDifference, Verdict::NoDifference], Verdict::Worse);
    assert_eq!(decide(&policy, &state, &p99_worse, &StepEvidence::ample(), late).action, Action::Rollback);
    let outcome_worse = report([Verdict::Worse, Verdict::NoDifference], Verdict::NoDifference);
    assert_eq!(decide(&policy, &state, &outcome_worse, &StepEvidence::ample(), late).action, Action::Rollback);
}

#[test]
fn holds_without_enough_data_on_a_critical_metric() {
    let (policy, state) = (policy(), started());
    let late = T0 + 50 * MINUTE_MS;
    let mut rows = healthy();
    rows[1] = row("latency_p99_us", Verdict::NotEnoughData);
    let decision = decide(&policy, &state, &rows, &StepEvidence::ample(), late);
    assert_eq!(decision.action, Action::Hold);
    assert!(decision.reason.contains("not enough data") && decision.reason.contains("latency_p99_us"));
    // A missing row is no data either.
    let missing = vec![row("error_rate", Verdict::NoDifference)];
    assert_eq!(decide(&policy, &state, &missing, &StepEvidence::ample(), late).action, Action::Hold);
    assert_eq!(decide(&policy, &state, &[], &StepEvidence::ample(), late).action, Action::Hold);
    // Not enough data on a non-critical metric does not hold.
    let mut rows = healthy();
    rows[2] = row("latency_p50_us", Verdict::NotEnoughData);
    assert!(matches!(decide(&policy, &state, &rows, &StepEvidence::ample(), late).action, Action::Promote { .. }));
}

#[test]
fn a_step_without_its_own_data_is_held_even_on_earlier_steps_evidence() {
    // Healthy rows carried over from an earlier step, but every check at this step failed.
    let (policy, state) = (policy(), started());
    let mut outage = StepEvidence::new(state.generation);
    for _ in 0..20 {
        outage
            .record(CheckOutcome { had_data: false, canary_requests: 0, control_requests: 0, fleet_lagging: None }, 2);
    }
    let held = decide(&policy, &state, &healthy(), &outage, T0 + 50 * MINUTE_MS);
    assert_eq!(held.action, Action::Hold);
    assert!(held.reason.contains("latest check found no data (20 of 20"), "{}", held.reason);
    // A critical regression still rolls back without this step's data.
    let mut worse = healthy();
    worse[0] = row("error_rate", Verdict::Worse);
    assert_eq!(decide(&policy, &state, &worse, &outage, T0 + MINUTE_MS).action, Action::Rollback);
}

#[test]
fn climbing_the_whole_ladder_ends_promoted_with_growing_generations() {
    let policy = policy();
    let mut state = started();
    let mut now = T0;
    let mut generations = vec![state.generation];
    let mut shares = vec![state.share_bp];
    while !state.is_finished() {
        now += 5 * MINUTE_MS;
        let decision = decide(&policy, &state, &healthy(), &StepEvidence::ample(), now);
        assert!(matches!(decision.action, Action::Promote { .. }), "{decision:?}");
        step(&mut state, &decision, now);
        generations.push(state.generation);
        shares.push(state.share_bp);
    }
    assert_eq!(shares, [100, 500, 2_500, 5_000, 10_000]);
    assert!(generations.windows(2).all(|w| w[1] > w[0]), "{generations:?}");
    assert_eq!(state.phase, RolloutPhase::Promoted);
    assert!(decide(&policy, &state, &healthy(), &StepEvidence::ample(), now + 60 * MINUTE_MS).reason.contains("ended"));
    // A critical regression after the end changes nothing.
    let worse = vec![row("error_rate", Verdict::Worse)];
    assert_eq!(decide(&policy, &state, &worse, &StepEvidence::ample(), now + MINUTE_MS).action, Action::Hold);
}

#[test]
fn holds_never_change_the_state() {
    let (policy, state) = (policy(), started());
    let hold = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + MINUTE_MS);
    assert!(!hold.changes_state());
    assert_eq!(state.next(&hold, T0 + MINUTE_MS).unwrap(), state);
}

#[test]
fn a_paused_rollout_never_promotes_but_still_rolls_back() {
    let policy = policy();
    let mut state = started();
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &by("alice"), "investigating", vec![]).unwrap();
    assert_eq!(pause.actor, Actor::Human("alice".into()));
    let generation = state.generation;
    step(&mut state, &pause, T0 + MINUTE_MS);
    assert_eq!((state.phase, state.share_bp), (RolloutPhase::Paused, 100));
    assert_eq!(state.generation, generation + 1, "the phase is served too");
    assert_eq!(state.window_remaining(&policy, T0 + MINUTE_MS), None);
    let long_after = T0 + 60 * MINUTE_MS;
    let held = decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after);
    assert_eq!(held.action, Action::Hold);
    assert!(held.reason.contains("paused"));
    let worse = vec![row("error_rate", Verdict::Worse)];
    assert_eq!(decide(&policy, &state, &worse, &StepEvidence::ample(), long_after).action, Action::Rollback);
    // Resuming restarts the window.
    let resume = human_override(&policy, &state, &OverrideAction::Resume, &by("alice"), "fine", vec![]).unwrap();
    step(&mut state, &resume, long_after);
    assert_eq!((state.phase, state.step_started_at_ms), (RolloutPhase::Progressing, long_after));
    assert_eq!(
        decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after + MINUTE_MS).action,
        Action::Hold
    );
    assert!(matches!(
        decide(&policy, &state, &healthy(), &StepEvidence::ample(), long_after + 5 * MINUTE_MS).action,
        Action::Promote { .. }
    ));
}

#[test]
fn human_overrides_move_the_state_with_actor_and_reason() {
    let policy = policy();
    let mut state = started();
    let evidence = healthy();
    let promote =
        human_override(&policy, &state, &OverrideAction::Promote, &by("bob"), "  looks good  ", evidence.clone())
            .unwrap();
    assert_eq!(promote.action, Action::Promote { to_step: 1, share_bp: 500 });
    assert_eq!((promote.reason.as_str(), &promote.rows), ("looks good", &evidence));
    step(&mut state, &promote, T0 + MINUTE_MS);
    assert_eq!(state.share_bp, 500, "a human may promote before the window");

    let set = OverrideAction::SetShare { share_bp: 1_000 };
    let decision = human_override(&policy, &state, &set, &by("bob"), "hold at 10 %", vec![]).unwrap();
    assert_eq!(decision.action, Action::SetShare { to_step: 1, share_bp: 1_000 });
    step(&mut state, &decision, T0 + 2 * MINUTE_MS);
    assert_eq!((state.step, state.share_bp, state.step_started_at_ms), (1, 1_000, T0 + 2 * MINUTE_MS));
    // The next automatic promotion goes to the first ladder step above the share.
    let next = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 7 * MINUTE_MS);
    assert_eq!(next.action, Action::Promote { to_step: 2, share_bp: 2_500 });

    let full =
        human_override(&policy, &state, &OverrideAction::SetShare { share_bp: 10_000 }, &by("bob"), "ship", vec![]);
    let mut finished = state.clone();
    step(&mut finished, &full.unwrap(), T0 + 3 * MINUTE_MS);
    assert_eq!(finished.phase, RolloutPhase::Promoted, "100 % ends the rollout however it is reached");

    let rollback = human_override(&policy, &state, &OverrideAction::Rollback, &by("carol"), "pager", vec![]).unwrap();
    step(&mut state, &rollback, T0 + 4 * MINUTE_MS);
    assert_eq!((state.share_bp, state.phase), (0, RolloutPhase::RolledBack));
}

#[test]
fn overrides_are_refused_when_they_make_no_sense() {
    let policy = policy();
    let state = started();
    let over = |action: OverrideAction, actor: &str, reason: &str| {
        human_override(&policy, &state, &action, &by(actor), reason, vec![]).unwrap_err()
    };
    assert_eq!(over(OverrideAction::Promote, "alice", " "), OverrideError::MissingReason);
    assert_eq!(over(OverrideAction::Promote, "", "why"), OverrideError::InvalidActor(String::new()));
    assert_eq!(over(OverrideAction::Promote, "analyzer", "why"), OverrideError::InvalidActor("analyzer".into()));
    assert!(matches!(over(OverrideAction::Resume, "alice", "why"), OverrideError::NotPaused(_)));
    assert_eq!(over(OverrideAction::SetShare { share_bp: 10_001 }, "a", "b"), OverrideError::ShareOutOfRange(10_001));
    let mut paused = state.clone();
    paused.phase = RolloutPhase::Paused;
    let again = human_override(&policy, &paused, &OverrideAction::Pause, &by("alice"), "why", vec![]);
    assert!(matches!(again, Err(OverrideError::AlreadyPaused(_))));
    let mut ended = state.clone();
    ended.phase = RolloutPhase::RolledBack;
    let late = human_override(&policy, &ended, &OverrideAction::Promote, &by("alice"), "why", vec![]);
    assert!(matches!(late, Err(OverrideError::Finished { .. })));
    assert!(OverrideError::MissingReason.to_string().starts_with("an override"));
}

#[test]
fn stale_or_misplaced_decisions_are_refused() {
    let policy = policy();
    let mut state = started();
    let promote = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
    let rollback = human_override(&policy, &state, &OverrideAction::Rollback, &by("alice"), "bad", vec![]).unwrap();
    step(&mut state, &promote, T0 + 5 * MINUTE_MS);
    let stale = state.next(&rollback, T0 + 5 * MINUTE_MS).unwrap_err();
    assert_eq!(stale, TransitionError::Stale { decided: T0, current: T0 + 1 });
    let start = Decision::start(&state, Actor::Analyzer, "again");
    assert_eq!(state.next(&start, T0).unwrap_err(), TransitionError::NotApplicable(Action::Start));
    let mut ended = state.clone();
    ended.phase = RolloutPhase::Promoted;
    let late = Decision { action: Action::Rollback, ..Decision::start(&ended, Actor::Analyzer, "x") };
    assert!(matches!(ended.next(&late, T0).unwrap_err(), TransitionError::Finished { .. }));
}

#[test]
fn a_resync_serves_the_same_state_above_the_generation_the_proxies_hold() {
    let state = started();
    let ahead = state.generation + 7;
    assert_eq!(resync(&state, state.generation, &healthy(), T0), None, "nobody ahead");
    assert_eq!(resync(&state, state.generation - 1, &healthy(), T0), None, "behind is lagging, not ahead");
    let decision = resync(&state, ahead, &healthy(), T0).unwrap();
    assert_eq!(
        (decision.action, decision.actor.clone()),
        (Action::Resync { above_generation: ahead }, Actor::Analyzer)
    );
    assert!(decision.reason.contains(&format!("proxies apply generation {ahead}")), "{}", decision.reason);
    assert_eq!(decision.rows, healthy());
    let after = state.next(&decision, T0 + MINUTE_MS).unwrap();
    assert_eq!(after.generation, ahead + 1);
    let unchanged = |s: &RolloutState| (s.step, s.share_bp, s.phase, s.step_started_at_ms);
    assert_eq!(unchanged(&after), unchanged(&state), "only the generation moves");
    assert_eq!(after.updated_at_ms, T0 + MINUTE_MS);
    let json = serde_json::to_value(decision.action).unwrap();
    assert_eq!((json["kind"].as_str(), json["above_generation"].as_u64()), (Some("resync"), Some(ahead)));
    // A paused rollout is re-served as paused; a finished one is not re-served at all.
    let mut paused = state.clone();
    paused.phase = RolloutPhase::Paused;
    let decision = resync(&paused, ahead, &[], T0).unwrap();
    assert_eq!(paused.next(&decision, T0).unwrap().phase, RolloutPhase::Paused);
    for phase in [RolloutPhase::Promoted, RolloutPhase::RolledBack] {
        let ended = RolloutState { phase, ..state.clone() };
        assert_eq!(resync(&ended, ahead, &[], T0), None, "{phase:?}");
        let forced = Decision { action: Action::Resync { above_generation: ahead }, ..decision.clone() };
        assert!(matches!(ended.next(&forced, T0), Err(TransitionError::Finished { .. })), "{phase:?}");
    }
}

#[test]
fn a_generation_far_beyond_the_clock_is_not_followed() {
    let state = started();
    assert_eq!(resync(&state, u64::MAX, &[], T0), None);
    let year_ms = 365 * 24 * 3_600 * 1_000;
    assert!(resync(&state, T0 + year_ms, &[], T0).is_some(), "a clock a year behind is still believed");
    assert_eq!(resync(&state, T0 + year_ms + 1, &[], T0), None);
    assert!(believable_generation(T0 + year_ms, T0) && !believable_generation(T0 + year_ms + 1, T0));
}

#[test]
fn decisions_and_actors_serialise_readably() {
    let decision =
        human_override(&policy(), &started(), &OverrideAction::SetShare { share_bp: 42 }, &by("dana"), "r", vec![])
            .unwrap();
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["actor"], "dana");
    assert!(json.get("actor_note").is_none(), "no note, no field: {json}");
    assert_eq!(json["action"]["kind"], "set_share");
    assert_eq!(json["action"]["share_bp"], 42);
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, decision);
    assert_eq!(serde_json::to_value(Actor::Analyzer).unwrap(), "analyzer");
    assert_eq!(serde_json::from_value::<Actor>("analyzer".into()).unwrap(), Actor::Analyzer);
    assert!(serde_json::from_value::<Actor>("".into()).is_err());
    // A caller's declared name rides beside the authenticated one, never in its place.
    let noted = ActedBy { actor: Actor::Human("token".into()), note: Some("dana".into()) };
    let decision = human_override(&policy(), &started(), &OverrideAction::Pause, &noted, "look", vec![]).unwrap();
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!((json["actor"].as_str(), json["actor_note"].as_str()), (Some("token"), Some("dana")));
    assert_eq!(decision.actor_text(), "token (note: dana)");
    assert_eq!(serde_json::from_value::<Decision>(json).unwrap(), decision);
    // A record written before notes existed still reads, with none.
    let old = r#"{"action":{"kind":"pause"},"reason":"r","actor":"dana","rows":[],"based_on_generation":3}"#;
    let old: Decision = serde_json::from_str(old).unwrap();
    assert_eq!((old.actor_note, old.actor), (None, Actor::Human("dana".into())));
    let state = started();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<RolloutState>(&json).unwrap(), state);
}

#[test]
fn reasons_count_steps_from_1_like_every_header() {
    let state = started();
    assert_eq!(state.step, 0, "stored 0-based");
    let early = decide(&policy(), &state, &healthy(), &StepEvidence::ample(), T0 + MINUTE_MS);
    assert!(early.reason.starts_with("step 1 at 1 %: 1m of its 5m window"), "{}", early.reason);
    let promoted = decide(&policy(), &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
    assert!(promoted.reason.starts_with("step 1 at 1 % ran its 5m window"), "{}", promoted.reason);
}

/// The default ladder with `approval: required` on its 5 % step (the second).
fn policy_with_approval() -> RolloutPolicy {
    RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
         deployment: checkout\n  ladder:\n    - {share: 1, window: 5m}\n    \
         - {share: 5, window: 5m, approval: required}\n    - {share: 100, window: 5m}\n",
    )
    .unwrap()
}

#[test]
fn a_rollout_registered_held_serves_share_0_until_deployed() {
    let policy = policy();
    let mut state = RolloutState::start_held(&policy, 0, T0);
    assert_eq!((state.step, state.share_bp, state.phase), (0, 0, RolloutPhase::Pending));
    assert_eq!(state.config().share_bp, 0, "the filter routes everyone to stable");
    // Held however long and however healthy: nothing decides before the canary is deployed.
    let held = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 60 * MINUTE_MS);
    assert_eq!(held.action, Action::Hold);
    assert!(held.reason.contains("marks the canary deployed"), "{}", held.reason);
    for refused in [OverrideAction::Promote, OverrideAction::Pause, OverrideAction::SetShare { share_bp: 500 }] {
        let error = human_override(&policy, &state, &refused, &by("alice"), "go", vec![]).unwrap_err();
        assert_eq!(error, OverrideError::AwaitingDeployment("checkout".into()), "{refused:?}");
    }
    let deployed = human_override(&policy, &state, &OverrideAction::Deployed, &by("ci"), "image v2", vec![]).unwrap();
    assert_eq!(deployed.action, Action::Deployed { share_bp: 100 });
    let generation = state.generation;
    step(&mut state, &deployed, T0 + 7 * MINUTE_MS);
    assert_eq!(
        (state.share_bp, state.phase, state.step_started_at_ms),
        (100, RolloutPhase::Progressing, T0 + 7 * MINUTE_MS)
    );
    assert!(state.generation > generation, "the filter must take the new share");
    let again = human_override(&policy, &state, &OverrideAction::Deployed, &by("ci"), "again", vec![]).unwrap_err();
    assert_eq!(again, OverrideError::NotAwaitingDeployment("checkout".into()));
    // The window counts from the deployment, not from the registration.
    let early = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 11 * MINUTE_MS);
    assert_eq!(early.action, Action::Hold, "{}", early.reason);
}

#[test]
fn a_held_registration_can_be_rolled_back_when_the_deploy_fails() {
    let policy = policy();
    let state = RolloutState::start_held(&policy, 0, T0);
    let rollback =
        human_override(&policy, &state, &OverrideAction::Rollback, &by("ci"), "deploy failed", vec![]).unwrap();
    assert_eq!(state.next(&rollback, T0 + 1).unwrap().phase, RolloutPhase::RolledBack);
}

#[test]
fn a_step_with_approval_required_waits_for_an_operator_then_promotes() {
    let policy = policy_with_approval();
    let mut state = started_on(&policy);
    let first = decide(&policy, &state, &healthy(), &StepEvidence::ample(), T0 + 5 * MINUTE_MS);
    assert_eq!(first.action, Action::Promote { to_step: 1, share_bp: 500 }, "the 1 % step needs no approval");
    step(&mut state, &first, T0 + 5 * MINUTE_MS);
    // Window of the 5 % step passed cleanly: recorded once as awaiting approval, then held.
    let due = T0 + 10 * MINUTE_MS;
    let awaiting = decide(&policy, &state, &healthy(), &StepEvidence::ample(), due);
    assert_eq!(awaiting.action, Action::AwaitApproval { step: 1 });
    assert!(awaiting.reason.contains("needs an operator's approval"), "{}", awaiting.reason);
    let generation = state.generation;
    step(&mut state, &awaiting, due);
    assert!(state.awaiting_approval && state.generation == generation, "the filter is served the same");
    let held = decide(&policy, &state, &healthy(), &StepEvidence::ample(), due + MINUTE_MS);
    assert_eq!(held.action, Action::Hold, "hours later still held: {}", held.reason);
    // A regression still rolls back while it waits.
    let worse = vec![row("error_rate", Verdict::Worse)];
    assert_eq!(decide(&policy, &state, &worse, &StepEvidence::ample(), due + MINUTE_MS).action, Action::Rollback);
    // An operator approves: recorded, then the next clean check promotes.
    let approve = human_override(&policy, &state, &OverrideAction::Approve, &by("alice"), "dashboards ok", vec![]);
    let approve = approve.unwrap();
    assert_eq!(approve.action, Action::Approve { step: 1 });
    step(&mut state, &approve, due + 2 * MINUTE_MS);
    assert_eq!((state.approved_step, state.awaiting_approval), (Some(1), false));
    let twice = human_override(&policy, &state, &OverrideAction::Approve, &by("alice"), "again", vec![]).unwrap_err();
    assert_eq!(twice, OverrideError::AlreadyApproved { deployment: "checkout".into(), step: 2 });
    let promote = decide(&policy, &state, &healthy(), &StepEvidence::ample(), due + 3 * MINUTE_MS);
    assert_eq!(promote.action, Action::Promote { to_step: 2, share_bp: 10_000 });
    step(&mut state, &promote, due + 3 * MINUTE_MS);
    assert_eq!((state.phase, state.approved_step), (RolloutPhase::Promoted, None));
}

#[test]
fn approving_a_step_that_needs_no_approval_is_refused() {
    let policy = policy_with_approval();
    let state = started_on(&policy);
    let error = human_override(&policy, &state, &OverrideAction::Approve, &by("alice"), "ok", vec![]).unwrap_err();
    assert_eq!(error, OverrideError::NoApprovalNeeded { deployment: "checkout".into(), step: 1 });
    assert!(error.to_string().contains("approval: required"), "{error}");
}

fn started_on(policy: &RolloutPolicy) -> RolloutState {
    RolloutState::start(policy, 0, T0)
}
