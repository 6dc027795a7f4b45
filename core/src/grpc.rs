//! gRPC outcomes: a failed call still answers HTTP 200, with its status code in the
//! `grpc-status` trailer (or in the headers of a trailers-only response). A deployment
//! declared `"protocol": "grpc"` is counted by that code, in the same status classes
//! as HTTP, so every statistic and policy applies unchanged:
//!
//! | class | codes |
//! |---|---|
//! | `2xx` | 0 OK |
//! | `4xx` (the caller's fault) | 1 CANCELLED, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS, 7 PERMISSION_DENIED, 9 FAILED_PRECONDITION, 11 OUT_OF_RANGE, 16 UNAUTHENTICATED |
//! | `5xx` (the service's fault) | 2 UNKNOWN, 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED, 10 ABORTED, 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 15 DATA_LOSS, and any code not in this table |
//!
//! RESOURCE_EXHAUSTED and ABORTED count against the service: a canary that sheds load
//! or aborts transactions its stable version completes is a regression. A call that
//! ended without any `grpc-status` (an HTTP 200 whose trailers never came) is a
//! server error, or a reset when Envoy says the stream was reset.

use crate::metrics::{StatusClass, status_code};

/// The class of a `grpc-status` value as sent (any bytes): a code that is not a
/// decimal number is no code gRPC defines, so it counts as a server error.
pub fn grpc_status_class(value: &[u8]) -> StatusClass {
    match status_code(value) {
        Some(0) => StatusClass::Success,
        Some(1 | 3 | 5 | 6 | 7 | 9 | 11 | 16) => StatusClass::ClientError,
        _ => StatusClass::ServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_in_the_documented_classes() {
        let class = |code: u32| grpc_status_class(code.to_string().as_bytes());
        assert_eq!(class(0), StatusClass::Success);
        for code in [1, 3, 5, 6, 7, 9, 11, 16] {
            assert_eq!(class(code), StatusClass::ClientError, "{code}");
        }
        for code in [2, 4, 8, 10, 12, 13, 14, 15, 17, 99] {
            assert_eq!(class(code), StatusClass::ServerError, "{code}");
        }
        for garbage in [&b""[..], b"OK", b"-1", b"\xff", b"00000000000000"] {
            assert_eq!(grpc_status_class(garbage), StatusClass::ServerError, "{garbage:?}");
        }
        assert_eq!(grpc_status_class(b"00"), StatusClass::Success, "leading zeros are still a number");
    }
}
