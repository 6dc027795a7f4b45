use super::*;
use crate::ladder::{Actor, OverrideAction, decide, human_override};
use crate::stats::{ComparisonRow, DifferenceScale, Verdict};
use crate::step_evidence::StepEvidence;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 300_000;

/// The overrides' caller, as the API authenticates it.
fn alice() -> crate::ladder::ActedBy {
    Actor::human("alice").unwrap().into()
}

/// A fresh directory per test under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "canary-audit-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        );
        let path = std::env::temp_dir().join(unique);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn policy() -> RolloutPolicy {
    RolloutPolicy::from_yaml(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
         deployment: checkout\n  metrics: [{name: error_rate}]\n",
    )
    .unwrap()
}

fn rows(verdict: Verdict) -> Vec<ComparisonRow> {
    vec![ComparisonRow {
        metric: "error_rate".into(),
        canary: Some(0.01),
        control: Some(0.005),
        absolute_difference: Some(0.005),
        relative_difference: Some(1.0),
        interval: None,
        interval_scale: DifferenceScale::Relative,
        p_value: Some(0.01),
        verdict,
        unit: crate::stats::ValueUnit::Fraction,
        origin: crate::stats::RowOrigin::BuiltIn,
    }]
}

/// Registers a rollout and commits `promotions` automatic promotions; returns its state.
fn run(store: &mut RolloutStore, policy: &RolloutPolicy, promotions: u64) -> RolloutState {
    let mut state = RolloutState::start(policy, 0, T0);
    store.commit(T0, policy, &Decision::start(&state, Actor::Human("ci".into()), "deploy 42"), None, &state).unwrap();
    for i in 1..=promotions {
        let now = T0 + i * WINDOW_MS;
        let decision = decide(policy, &state, &rows(Verdict::NoDifference), &StepEvidence::ample(), now);
        let after = state.next(&decision, now).unwrap();
        let committed = store.commit(now, policy, &decision, Some(&state), &after).unwrap();
        assert!(committed.state_error.is_none());
        state = after;
    }
    state
}

fn sequences(path: &Path) -> Vec<u64> {
    AuditLog::read_all(path).unwrap().iter().map(|r| r.sequence).collect()
}

#[test]
fn a_restarted_store_resumes_the_same_step() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert!(rollouts.is_empty());
    let state = run(&mut store, &policy, 2);
    assert_eq!(state.share_bp, 2_500);
    drop(store);
    let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    let resumed = &rollouts["checkout"];
    assert_eq!(resumed.state, state);
    assert_eq!(resumed.policy, policy);
    assert_eq!(resumed.last_applied_sequence, 3);
    let records = AuditLog::read_all(store.audit_path()).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].before, None);
    assert_eq!(records[0].decision.actor, Actor::Human("ci".into()));
    assert_eq!(records[2].before.as_ref().map(|s| s.share_bp), Some(500));
    assert_eq!(records[2].after, state);
    assert_eq!(records[2].decision.rows, rows(Verdict::NoDifference));
    assert_eq!(records[2].policy_hash, policy.fingerprint());
    assert_eq!(records[2].policy_name, "p");
}

#[test]
fn a_torn_last_line_is_cut_off_and_its_sequence_reused() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 1);
    let audit_path = store.audit_path().to_path_buf();
    drop(store);
    // A crash mid-append: half of a third record, no newline.
    let complete = fs::read(&audit_path).unwrap();
    let first_line_len = complete.iter().position(|&b| b == b'\n').unwrap();
    let torn = &complete[..first_line_len / 2];
    OpenOptions::new().append(true).open(&audit_path).unwrap().write_all(torn).unwrap();

    let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, state, "the torn record never took effect");
    assert_eq!(fs::read(&audit_path).unwrap(), complete, "the torn bytes are cut off the log");
    let aside = audit_path.with_file_name("audit.jsonl.torn-1");
    assert_eq!(fs::read(&aside).unwrap(), torn, "and set aside, not dropped");
    let rollback = human_override(&policy, &state, &OverrideAction::Rollback, &alice(), "bad", vec![]).unwrap();
    let after = state.next(&rollback, T0 + 2 * WINDOW_MS).unwrap();
    let committed = store.commit(T0 + 2 * WINDOW_MS, &policy, &rollback, Some(&state), &after).unwrap();
    assert_eq!(committed.record.sequence, 3);
    assert_eq!(sequences(&audit_path), [1, 2, 3]);
}

#[test]
fn a_complete_but_garbled_last_line_is_torn_too() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    run(&mut store, &policy(), 1);
    let audit_path = store.audit_path().to_path_buf();
    drop(store);
    // Delayed allocation can leave zeros where the last write's data never landed.
    OpenOptions::new().append(true).open(&audit_path).unwrap().write_all(b"{\"sequence\":3,\0\0\0\n").unwrap();
    let (log, recovery) = AuditLog::open(&audit_path).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes), (2, 18));
    assert_eq!(log.next_sequence(), 3);
}

#[test]
fn a_crash_between_log_and_state_is_replayed_once() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 1);
    drop(store);
    // The decision reached the log but the process died before the state file was replaced.
    let (mut log, _) = AuditLog::open(&dir.0.join(AUDIT_FILE)).unwrap();
    let now = T0 + 2 * WINDOW_MS;
    let promote = decide(&policy, &state, &rows(Verdict::NoDifference), &StepEvidence::ample(), now);
    let after = state.next(&promote, now).unwrap();
    log.append(now, &policy, &promote, Some(&state), &after).unwrap();
    drop(log);
    let stale = StateStore::open(&dir.0.join(STATE_DIR)).unwrap().load_all().unwrap();
    assert_eq!(stale.0["checkout"].state, state);

    for _ in 0..2 {
        let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, after);
        assert_eq!(rollouts["checkout"].last_applied_sequence, 3);
        assert_eq!(sequences(store.audit_path()), [1, 2, 3], "no record lost or duplicated");
    }
    let persisted = StateStore::open(&dir.0.join(STATE_DIR)).unwrap().load_all().unwrap();
    assert_eq!(persisted.0["checkout"].state, after, "the state file caught up");
}

#[test]
fn a_rollout_registered_just_before_a_crash_is_recovered_from_the_log() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut log, _) = AuditLog::open(&dir.0.join(AUDIT_FILE)).unwrap();
    let state = RolloutState::start(&policy, 0, T0);
    log.append(T0, &policy, &Decision::start(&state, Actor::Analyzer, "policy file"), None, &state).unwrap();
    drop(log);
    let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, state);
    assert_eq!(rollouts["checkout"].policy, policy);
}

#[test]
fn sequences_never_go_back_below_what_a_state_file_remembers() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy(), 2);
    drop(store);
    // The audit log is gone (rotated away, say): the state still knows sequence 3.
    fs::remove_file(dir.0.join(AUDIT_FILE)).unwrap();
    let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, state);
    let pause = human_override(&policy(), &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let after = state.next(&pause, T0).unwrap();
    assert_eq!(store.commit(T0, &policy(), &pause, Some(&state), &after).unwrap().record.sequence, 4);
}

/// Keeps only the records with sequence numbers in `keep` (a log rotated or cut by hand).
fn keep_records(path: &Path, keep: RangeInclusive<u64>) {
    let kept: String = fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| keep.contains(&serde_json::from_str::<AuditRecord>(line).unwrap().sequence))
        .map(|line| format!("{line}\n"))
        .collect();
    fs::write(path, kept).unwrap();
}

#[test]
fn a_deleted_audit_log_does_not_stop_the_next_start() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 2);
    drop(store);
    fs::remove_file(dir.0.join(AUDIT_FILE)).unwrap();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let paused = state.next(&pause, T0).unwrap();
    assert_eq!(store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap().record.sequence, 4);
    drop(store);
    // The log now starts at 4: records 1..=3 went with the deleted file.
    for _ in 0..2 {
        let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, paused);
        assert_eq!(store.audit.next_sequence(), 5);
        assert_eq!(sequences(store.audit_path()), [4]);
    }
}

#[test]
fn a_log_rotated_after_its_second_record_opens_from_sequence_3() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    run(&mut store, &policy(), 4);
    let audit_path = store.audit_path().to_path_buf();
    drop(store);
    keep_records(&audit_path, 3..=5);
    let (log, recovery) = AuditLog::open(&audit_path).unwrap();
    assert_eq!(recovery.records, 3);
    assert_eq!(recovery.missing, [1..=2]);
    assert_eq!(recovery.latest_by_deployment["checkout"].sequence, 5);
    assert_eq!(log.next_sequence(), 6);
}

#[test]
fn state_files_ahead_of_a_rotated_log_are_skipped_past_and_reopen() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 3);
    let audit_path = store.audit_path().to_path_buf();
    drop(store);
    // Rotated before record 2, and record 4 lost (an older copy restored): the state file remembers 4.
    keep_records(&audit_path, 2..=3);
    let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, state, "the state file is newer than the log: kept");
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let paused = state.next(&pause, T0).unwrap();
    assert_eq!(store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap().record.sequence, 5);
    drop(store);
    for _ in 0..2 {
        let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
        assert_eq!(rollouts["checkout"].state, paused);
        assert_eq!(store.audit.next_sequence(), 6);
    }
    let (_, recovery) = AuditLog::open(&audit_path).unwrap();
    assert_eq!(recovery.missing, [1..=1, 4..=4]);
}

#[test]
fn a_second_open_of_a_locked_store_is_refused_with_the_holders_pid() {
    let dir = TempDir::new();
    let (first, _) = RolloutStore::open(&dir.0).unwrap();
    let pid = std::process::id();
    assert_eq!(fs::read_to_string(dir.0.join(LOCK_FILE)).unwrap(), format!("{pid}\n"));
    // The owner is mid-save: the refused open must not clean up its temporary file.
    let temp = dir.0.join(STATE_DIR).join("checkout.json.tmp");
    fs::write(&temp, b"{\"half\":").unwrap();

    let error = RolloutStore::open(&dir.0).unwrap_err();
    assert!(matches!(error, AuditError::Locked { holder_pid: Some(p), .. } if p == pid), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "store directory {} is in use by another process (pid {pid}, lock {}): one analyzer per state \
             directory",
            dir.0.display(),
            dir.0.join(LOCK_FILE).display()
        )
    );
    assert!(temp.exists());
    assert_eq!(fs::read_to_string(dir.0.join(LOCK_FILE)).unwrap(), format!("{pid}\n"), "pid kept");

    drop(first);
    let (_second, _) = RolloutStore::open(&dir.0).unwrap();
    assert!(!temp.exists(), "the new owner cleaned up");
}

#[test]
fn a_poisoned_log_reports_the_store_unhealthy() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 0);
    let health = store.health();
    assert!(health.is_recording());
    assert_eq!(health.failure(), None);
    // A real fault on both steps: write(2) and ftruncate(2) on a read-only descriptor of the log both fail.
    store.audit.file = File::open(store.audit_path()).unwrap();
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let paused = state.next(&pause, T0).unwrap();
    let error = store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
    assert!(matches!(error, AuditError::Io { action: "append to audit log", .. }), "{error:?}");

    assert!(!health.is_recording(), "the handle taken before the failure sees it");
    assert!(!store.health().is_recording());
    let failure = health.failure().unwrap();
    assert!(failure.contains("could not be cut off"), "{failure}");
    assert!(failure.contains(AUDIT_FILE), "{failure}");
    let error = store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
    assert!(matches!(error, AuditError::Poisoned(_)), "{error:?}");
    drop(store);
    // Reopening is the cure: the log holds only the complete record.
    let (store, _) = RolloutStore::open(&dir.0).unwrap();
    assert!(store.health().is_recording());
    assert_eq!(sequences(store.audit_path()), [1]);
}

#[test]
fn a_failed_state_save_still_commits_the_logged_decision() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 0);
    // The state directory disappears under the store: the save fails, the log does not.
    let state_dir = dir.0.join(STATE_DIR);
    fs::remove_dir_all(&state_dir).unwrap();
    fs::write(&state_dir, b"not a directory").unwrap();
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let after = state.next(&pause, T0).unwrap();
    let committed = store.commit(T0, &policy, &pause, Some(&state), &after).unwrap();
    assert!(committed.state_error.is_some());
    assert_eq!(committed.record.sequence, 2);
    drop(store);
    fs::remove_file(&state_dir).unwrap();
    let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, after, "recovered from the log");
}

#[test]
fn corruption_before_the_last_line_is_refused() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    run(&mut store, &policy(), 2);
    let audit_path = store.audit_path().to_path_buf();
    drop(store);
    let text = fs::read_to_string(&audit_path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "garbage";
    fs::write(&audit_path, format!("{}\n", lines.join("\n"))).unwrap();
    let error = RolloutStore::open(&dir.0).unwrap_err();
    assert!(matches!(error, AuditError::Corrupt { line: 2, .. }), "{error}");
    // A duplicated record is corruption too.
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&audit_path, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[1])).unwrap();
    let error = AuditLog::open(&audit_path).unwrap_err();
    assert!(error.to_string().contains("sequence 2 follows 2"), "{error}");
    // So is one that goes back: missing numbers are accepted, reordered ones are not.
    fs::write(&audit_path, format!("{}\n{}\n", lines[1], lines[0])).unwrap();
    let error = AuditLog::open(&audit_path).unwrap_err();
    assert!(error.to_string().contains("sequence 1 follows 2"), "{error}");
}

#[test]
fn left_over_temporary_state_files_are_ignored_and_removed() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy(), 1);
    drop(store);
    let temp = dir.0.join(STATE_DIR).join("checkout.json.tmp");
    fs::write(&temp, b"{\"half\":").unwrap();
    let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, state);
    assert!(!temp.exists());
}

/// A rollback decided against `state` at `now`.
fn rollback_of(policy: &RolloutPolicy, state: &RolloutState) -> Decision {
    human_override(policy, state, &OverrideAction::Rollback, &alice(), "canary fails 41 %", vec![]).unwrap()
}

#[test]
fn a_failed_append_cut_back_cleanly_still_stops_recording_until_an_append_succeeds() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 1);
    let audit_path = store.audit_path().to_path_buf();
    let logged = fs::read(&audit_path).unwrap();
    let health = store.health();
    store.set_disk_full_for_test(true);
    let now = T0 + 2 * WINDOW_MS;
    let promote = decide(&policy, &state, &rows(Verdict::NoDifference), &StepEvidence::ample(), now);
    let after = state.next(&promote, now).unwrap();
    let error = store.commit(now, &policy, &promote, Some(&state), &after).unwrap_err();
    assert!(matches!(error, AuditError::Io { action: "append to audit log", .. }), "{error:?}");
    assert_eq!(fs::read(&audit_path).unwrap(), logged, "the partial line is cut off");
    assert!(!health.is_recording(), "a failed append stops recording even when it was cut back cleanly");
    let failure = health.failure().unwrap();
    assert!(failure.contains("No space left on device") && failure.contains(AUDIT_FILE), "{failure}");
    assert_eq!(health.pending_records(), 0, "a refused promotion is not in effect: nothing waits");

    store.set_disk_full_for_test(false);
    let committed = store.commit(now, &policy, &promote, Some(&state), &after).unwrap();
    assert_eq!(committed.record.sequence, 3);
    assert!(health.is_recording(), "an append that succeeds ends it");
    assert_eq!(health.failure(), None);
}

#[test]
fn a_rollback_the_log_cannot_take_is_deferred_and_recorded_once_the_disk_has_room() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 1);
    let health = store.health();
    store.set_disk_full_for_test(true);
    let decided_at = T0 + 2 * WINDOW_MS;
    let rollback = rollback_of(&policy, &state);
    let rolled_back = state.next(&rollback, decided_at).unwrap();
    let recorded = store.commit_or_defer(decided_at, &policy, &rollback, Some(&state), &rolled_back).unwrap();
    assert!(matches!(recorded, Recorded::Deferred { error: AuditError::Io { .. } }), "{recorded:?}");
    assert_eq!((health.is_recording(), health.pending_records()), (false, 1));
    assert!(health.failure().unwrap().starts_with("1 decision(s) in effect are not in the audit log yet"));
    assert_eq!(sequences(store.audit_path()), [1, 2]);

    // Still full: retries fail, at most one per interval, and nothing else is logged ahead of the rollback.
    assert!(store.retry_deferred(decided_at + RETRY_INTERVAL_MS).is_err());
    assert_eq!(store.retry_deferred(decided_at + RETRY_INTERVAL_MS + 1).unwrap(), 0, "not due yet");
    let pause = human_override(&policy, &rolled_back, &OverrideAction::Pause, &alice(), "why", vec![]);
    assert!(pause.is_err(), "a rolled-back rollout takes no more overrides");
    assert_eq!(health.pending_records(), 1);

    store.set_disk_full_for_test(false);
    let recovered_at = decided_at + 3 * RETRY_INTERVAL_MS;
    assert_eq!(store.retry_deferred(recovered_at).unwrap(), 1);
    assert!(health.is_recording());
    let records = AuditLog::read_all(store.audit_path()).unwrap();
    let last = records.last().unwrap();
    assert_eq!(sequences(store.audit_path()), [1, 2, 3]);
    assert_eq!((last.at_ms, last.recorded_late_at_ms), (decided_at, Some(recovered_at)));
    assert_eq!((last.after.clone(), last.decision.action), (rolled_back.clone(), crate::ladder::Action::Rollback));
    assert_eq!(store.retry_deferred(recovered_at + RETRY_INTERVAL_MS).unwrap(), 0, "nothing left");
    drop(store);
    let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, rolled_back, "a restart resumes rolled back");
    assert_eq!(rollouts["checkout"].last_applied_sequence, 3);
}

#[test]
fn a_deferred_rollback_is_logged_before_any_later_decision() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 0);
    store.set_disk_full_for_test(true);
    let rollback = rollback_of(&policy, &state);
    let rolled_back = state.next(&rollback, T0 + 1).unwrap();
    store.commit_or_defer(T0 + 1, &policy, &rollback, Some(&state), &rolled_back).unwrap();
    store.set_disk_full_for_test(false);
    // The next rollout of the deployment, registered before any retry: the rollback goes first.
    let next = RolloutState::start(&policy, rolled_back.generation, T0 + 2);
    let start = Decision::start(&next, Actor::Human("ci".into()), "deploy 43");
    let committed = store.commit(T0 + 2, &policy, &start, Some(&rolled_back), &next).unwrap();
    assert_eq!(committed.record.sequence, 3);
    let records = AuditLog::read_all(store.audit_path()).unwrap();
    assert_eq!(records[1].after, rolled_back);
    assert_eq!(records[1].recorded_late_at_ms, Some(T0 + 2));
    assert!(store.health().is_recording());
}

#[test]
fn a_probe_ends_a_failure_that_no_decision_repeats() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 0);
    store.set_disk_full_for_test(true);
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let paused = state.next(&pause, T0).unwrap();
    store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
    assert!(store.retry_deferred(T0).is_err(), "still full: the probe fails too");
    assert!(!store.health().is_recording());
    store.set_disk_full_for_test(false);
    assert_eq!(store.retry_deferred(T0 + RETRY_INTERVAL_MS).unwrap(), 0);
    assert!(store.health().is_recording(), "the disk takes writes again");
    assert!(!dir.0.join("write-probe").exists(), "the probe cleans up");
    assert_eq!(sequences(store.audit_path()), [1], "a probe is not a record");
}

#[test]
fn a_partial_line_that_could_not_be_cut_off_is_cut_off_by_the_next_append() {
    let dir = TempDir::new();
    let policy = policy();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let state = run(&mut store, &policy, 0);
    let audit_path = store.audit_path().to_path_buf();
    let append_handle = std::mem::replace(&mut store.audit.file, File::open(&audit_path).unwrap());
    let pause = human_override(&policy, &state, &OverrideAction::Pause, &alice(), "why", vec![]).unwrap();
    let paused = state.next(&pause, T0).unwrap();
    store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap_err();
    assert!(store.audit.poisoned);
    // Garbage where the cut failed, then a descriptor that can cut and write again.
    OpenOptions::new().append(true).open(&audit_path).unwrap().write_all(b"{\"sequence\":2,\"at").unwrap();
    store.audit.file = append_handle;
    let committed = store.commit(T0, &policy, &pause, Some(&state), &paused).unwrap();
    assert_eq!(committed.record.sequence, 2);
    assert!(store.health().is_recording());
    assert_eq!(sequences(&audit_path), [1, 2]);
    let (_, recovery) = AuditLog::open(&audit_path).unwrap();
    assert_eq!(recovery.truncated_bytes, 0, "no torn line left behind");
}

/// `policy()` for another deployment.
fn policy_of(deployment: &str) -> RolloutPolicy {
    RolloutPolicy::from_yaml(&format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: p}}\nspec:\n  \
         deployment: {deployment}\n  metrics: [{{name: error_rate}}]\n"
    ))
    .unwrap()
}

/// Edits `<deployment>.json` as a human or a newer analyzer might.
fn edit_state_file(dir: &Path, deployment: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let path = dir.join(STATE_DIR).join(format!("{deployment}.json"));
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut value);
    fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    path
}

#[test]
fn a_state_file_that_does_not_validate_is_recovered_from_its_latest_audit_record() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let checkout = run(&mut store, &policy(), 2);
    let search_policy = policy_of("search");
    let search = RolloutState::start(&search_policy, 0, T0);
    let start = Decision::start(&search, Actor::Human("ci".into()), "deploy 7");
    store.commit(T0, &search_policy, &start, None, &search).unwrap();
    drop(store);
    // A field from a newer version in one, a policy value edited out of range in the other.
    let path = edit_state_file(&dir.0, "checkout", |v| v["policy"]["spec"]["newer_field"] = true.into());
    let bad = fs::read(&path).unwrap();
    edit_state_file(&dir.0, "search", |v| v["policy"]["spec"]["ladder"][0]["share"] = 250.into());

    let (store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts["checkout"].state, checkout);
    assert_eq!(rollouts["checkout"].policy, policy());
    assert_eq!(rollouts["checkout"].last_applied_sequence, 3);
    assert_eq!(rollouts["search"].state, search);
    assert!(store.unreadable_states().is_empty());
    assert_eq!(fs::read(path.with_file_name("checkout.json.invalid-1")).unwrap(), bad, "set aside byte for byte");
    drop(store);
    let persisted = StateStore::open(&dir.0.join(STATE_DIR)).unwrap().load_all().unwrap();
    assert_eq!((persisted.0.len(), persisted.1.len()), (2, 0), "both state files were rewritten");
}

#[test]
fn a_state_file_no_record_recovers_stops_only_its_own_rollout() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    run(&mut store, &policy(), 2);
    let search_policy = policy_of("search");
    let search = RolloutState::start(&search_policy, 0, T0);
    store.commit(T0, &search_policy, &Decision::start(&search, Actor::Analyzer, "file"), None, &search).unwrap();
    drop(store);
    let path = edit_state_file(&dir.0, "checkout", |v| v["policy"]["spec"]["newer_field"] = true.into());
    // The log was rotated after checkout's last record: only search's record is left.
    keep_records(&dir.0.join(AUDIT_FILE), 4..=4);

    let (mut store, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts.keys().collect::<Vec<_>>(), ["search"]);
    let unreadable = store.unreadable_states();
    assert_eq!(unreadable.len(), 1);
    assert_eq!((unreadable[0].deployment.as_str(), &unreadable[0].path), ("checkout", &path));
    assert_eq!(unreadable[0].last_applied_sequence, Some(3));
    assert!(unreadable[0].reason.contains("newer_field"), "{}", unreadable[0].reason);
    assert!(path.exists(), "left in place for a human");
    // Registering it again replaces the file and sets the old one aside.
    let state = RolloutState::start(&policy(), 0, T0 + 1);
    let committed = store.commit(T0 + 1, &policy(), &Decision::start(&state, Actor::Analyzer, "again"), None, &state);
    assert_eq!(committed.unwrap().record.sequence, 5, "numbering continues after what the bad file remembered");
    assert!(store.unreadable_states().is_empty());
    assert!(path.with_file_name("checkout.json.invalid-1").exists());
    drop(store);
    let (_, rollouts) = RolloutStore::open(&dir.0).unwrap();
    assert_eq!(rollouts.len(), 2);
}

#[test]
fn a_reader_pages_what_opening_found_and_what_was_appended_since() {
    let dir = TempDir::new();
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    run(&mut store, &policy(), 2);
    drop(store);
    let (mut store, _) = RolloutStore::open(&dir.0).unwrap();
    let search_policy = policy_of("search");
    let search = RolloutState::start(&search_policy, 0, T0);
    store.commit(T0, &search_policy, &Decision::start(&search, Actor::Analyzer, "file"), None, &search).unwrap();
    let reader = store.reader();
    let all = AuditLog::read_all(store.audit_path()).unwrap();
    assert_eq!(reader.read("checkout", AuditPage::all()).unwrap(), all[..3]);
    assert_eq!(reader.read("checkout", AuditPage::newest(2)).unwrap(), all[1..3]);
    assert_eq!(reader.read("search", AuditPage::all()).unwrap(), all[3..]);
    assert_eq!(reader.read("nobody", AuditPage::all()).unwrap(), []);
    // A log rewritten under the running analyzer is refused, not misread.
    let text = fs::read_to_string(store.audit_path()).unwrap();
    fs::write(store.audit_path(), text.replacen("\"sequence\":1,", "\"sequence\":9,", 1)).unwrap();
    let error = store.reader().read("checkout", AuditPage::newest(3)).unwrap_err();
    assert!(error.to_string().contains("record 1 at byte 0 no longer reads back"), "{error}");
}
