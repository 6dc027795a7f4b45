//! Words for refusals of a policy: the nearest valid names to a misspelt one ("did
//! you mean `check_interval`?") and the unit each number field is written in ("a
//! fraction: 0.1 for 10 %"), so an error says what to write instead, not only what
//! the parser expected.

/// The largest edit distance still suggested: two edits catch a doubled, dropped or
/// swapped letter (`check_intervall`, `critcal`) without offering unrelated names.
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// The candidates nearest to `name` (all of those at the smallest distance, in their
/// order), none when even the nearest is more than [`MAX_SUGGESTION_DISTANCE`] edits away.
pub(super) fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Vec<&'a str> {
    let distances: Vec<(usize, &str)> = candidates.iter().map(|c| (strsim::damerau_levenshtein(name, c), *c)).collect();
    let Some(best) = distances.iter().map(|(d, _)| *d).min() else {
        return Vec::new();
    };
    if best > MAX_SUGGESTION_DISTANCE {
        return Vec::new();
    }
    distances.into_iter().filter(|(d, _)| *d == best).map(|(_, c)| c).collect()
}

/// `; did you mean `a` or `b`?`, or nothing.
pub(super) fn did_you_mean(name: &str, candidates: &[&str]) -> String {
    let names: Vec<String> = nearest(name, candidates).iter().map(|c| format!("`{c}`")).collect();
    if names.is_empty() { String::new() } else { format!("; did you mean {}?", names.join(" or ")) }
}

/// How a number field of the policy is written, by its name (the last segment of its
/// path): shown when a value is not a number or out of range.
pub(super) fn unit_of(field: &str) -> Option<&'static str> {
    let name = field.rsplit('.').next().unwrap_or(field);
    Some(match name {
        "share" => "a share in percent, a number without `%`: 5 for 5 %",
        "alpha" => "a fraction: 0.05 for 5 %",
        "max_relative_increase" | "max_relative_decrease" | "max_relative_deviation" => {
            "a fraction, without `%`: 0.1 for 10 %"
        }
        "max_increase_ms" => "milliseconds, a number without a unit: 50 for 50 ms",
        "max_absolute_increase" => "a number in the unit of the metric's query",
        "min_requests_per_cohort" => "a whole number of requests, e.g. 1000",
        "stall_after_windows" => "a whole number of windows, e.g. 3",
        "window" | "default_window" | "check_interval" | "fleet_deadline" => {
            "a duration with a unit, like \"30s\", \"5m\" or \"1h30m\""
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_names_within_two_edits() {
        let spec = ["deployment", "ladder", "check_interval", "alpha"];
        assert_eq!(nearest("check_intervall", &spec), ["check_interval"]);
        assert_eq!(nearest("alhpa", &spec), ["alpha"]);
        assert!(nearest("notify_me_please", &spec).is_empty());
        let latency = ["latency_p50", "latency_p90", "latency_p99"];
        assert_eq!(did_you_mean("latency_p95", &latency), "; did you mean `latency_p90` or `latency_p99`?");
        assert_eq!(did_you_mean("zzz", &latency), "");
        assert_eq!(unit_of("spec.metrics[0].max_relative_increase"), Some("a fraction, without `%`: 0.1 for 10 %"));
        assert_eq!(unit_of("spec.deployment"), None);
    }
}
