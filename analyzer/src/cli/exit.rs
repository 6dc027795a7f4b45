//! The CLI's exit codes, which pipelines branch on, and which failure gets which.
//!
//! 0 and 1 are `wait`'s verdicts. The rest tell a pipeline whether to fix its
//! invocation (2: nothing will change by running it again), to wait longer (3), or to
//! look at the analyzer or the network (4: running it again later may work).
//! `--help` and the README list them; [`for_error`] is the one place that maps a
//! failure to its code.

use super::ErrorAnswer;
use reqwest::StatusCode;

/// `wait`: the canary was promoted (and every other command: success).
pub const PROMOTED: i32 = 0;
/// `wait`: the canary was rolled back.
pub const ROLLED_BACK: i32 = 1;
/// A usage error, a refused request (400, 401, 403, 404, 409: a bad flag, no or a
/// wrong token, a role that may not, an unknown deployment, a rollout in progress),
/// or an invalid policy file: running it again unchanged gives the same answer.
/// The same code as clap's own usage errors.
pub const USAGE: i32 = 2;
/// `wait`: `--timeout` passed while the analyzer answered and the rollout went on.
pub const TIMED_OUT: i32 = 3;
/// The analyzer could not be reached, did not answer in time, failed (5xx) or
/// answered something this client cannot read (another version).
pub const UNREACHABLE: i32 = 4;

/// The lines `--help` shows under "Exit codes".
pub const HELP: &str = "Exit codes:
  0  success; `wait`: promoted
  1  `wait`: rolled back
  2  usage error, invalid policy, or a refusal (400, 401, 403, 404, 409): fix the call
  3  `wait`: --timeout passed without a verdict (the analyzer answered)
  4  the analyzer is unreachable, timed out, failed (5xx) or answered unreadably";

/// Whether asking again may get another answer than `status`: a server error or
/// overload (5xx), a request timeout (408) or too many requests (429) can pass. A
/// 404 (no such deployment), 401 (no or a wrong token), 403 (a role that may not)
/// or any other refusal is the same on every try: a typo must not block a pipeline
/// until `--timeout`.
pub fn worth_asking_again(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// The exit code of a command that failed with `error`: an analyzer's answer by its
/// status ([`worth_asking_again`] ones are [`UNREACHABLE`], other refusals [`USAGE`]),
/// a transport error or an unreadable answer [`UNREACHABLE`], anything else (a file
/// that cannot be read, an invalid policy, a bad flag) [`USAGE`].
pub fn for_error(error: &anyhow::Error) -> i32 {
    if let Some(answer) = error.downcast_ref::<ErrorAnswer>() {
        return if worth_asking_again(answer.status) { UNREACHABLE } else { USAGE };
    }
    let from_the_analyzer = error.chain().any(|cause| cause.is::<reqwest::Error>() || cause.is::<UnreadableAnswer>());
    if from_the_analyzer { UNREACHABLE } else { USAGE }
}

/// An answer of the analyzer that this client cannot read (another version of it).
#[derive(Debug, thiserror::Error)]
#[error("the analyzer's answer to {what} is not what this client expects (another version?): {source}")]
pub struct UnreadableAnswer {
    pub what: &'static str,
    pub source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: StatusCode) -> anyhow::Error {
        ErrorAnswer { status, message: "x".into() }.into()
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        for status in [400, 401, 403, 404, 409, 422] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(for_error(&answered(status)), USAGE, "{status}");
        }
        for status in [500, 502, 503, 504, 408, 429] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(for_error(&answered(status)), UNREACHABLE, "{status}");
        }
        let unreadable = serde_json::from_str::<u8>("{}").unwrap_err();
        let unreadable = anyhow::Error::new(UnreadableAnswer { what: "status", source: unreadable });
        assert_eq!(for_error(&unreadable.context("status")), UNREACHABLE);
        let missing_file = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(for_error(&missing_file.context("reading policy.yaml")), USAGE);
        // Distinct codes, the verdicts as pipelines already use them.
        let codes = [PROMOTED, ROLLED_BACK, USAGE, TIMED_OUT, UNREACHABLE];
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        for code in codes {
            assert!(HELP.contains(&format!("  {code}  ")), "{code} documented in --help");
        }
    }
}
