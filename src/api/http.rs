//! The little HTTP/1.1 the API needs: one request parsed from a connection's buffer (httparse
//! for the head, Content-Length bodies only), and responses written with Content-Length.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::ApiResponse;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body by default (Firecracker's default payload limit).
pub const MAX_BODY: usize = 51_200;

/// The body limit in force (`--http-api-max-payload-size`; one API server per process).
static BODY_LIMIT: AtomicUsize = AtomicUsize::new(MAX_BODY);

/// Sets the largest request body the API accepts (`--http-api-max-payload-size`).
pub fn set_max_body(limit: usize) {
    BODY_LIMIT.store(limit, Ordering::Relaxed);
}

/// The largest request body the API accepts.
pub fn max_body() -> usize {
    BODY_LIMIT.load(Ordering::Relaxed)
}
/// Most headers in one request.
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `PUT`.
    pub method: String,
    /// Request target, e.g. `/drives/rootfs`.
    pub target: String,
    /// Body bytes (empty without Content-Length).
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request (or speaks HTTP/1.0).
    pub close: bool,
}

/// What the buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes needed; `continue_needed` when the client waits for `100 Continue`.
    Incomplete {
        /// The head asked for `Expect: 100-continue` and the body has not arrived.
        continue_needed: bool,
    },
    /// One request, and how many bytes of the buffer it used.
    Complete(Request, usize),
    /// A request that cannot be served; answer and close.
    Error(ApiResponse),
}

fn header_is(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .map(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
        .unwrap_or(false)
}

/// Parses the first request in `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Error(ApiResponse::error(431, "The request head is too large."));
        }
        Ok(httparse::Status::Partial) => {
            return Parsed::Incomplete {
                continue_needed: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(ApiResponse::error(431, "The request has too many headers."));
        }
        Err(e) => {
            return Parsed::Error(ApiResponse::bad_request(&format!(
                "Malformed HTTP request: {e}."
            )));
        }
    };
    if head_len > MAX_HEAD {
        return Parsed::Error(ApiResponse::error(431, "The request head is too large."));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let mut close = req.version == Some(0);
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match (parsed, content_length) {
                (None, _) => {
                    return Parsed::Error(ApiResponse::bad_request("Invalid Content-Length."));
                }
                // RFC 9112 6.3: differing lengths make the message's framing unknowable.
                (Some(n), Some(earlier)) if n != earlier => {
                    return Parsed::Error(ApiResponse::bad_request(&format!(
                        "Conflicting Content-Length headers ({earlier} and {n})."
                    )));
                }
                (Some(n), _) => content_length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(ApiResponse::error(
                501,
                "Transfer-Encoding is not supported; send a Content-Length.",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if header_is(h.value, "close") {
                close = true;
            } else if header_is(h.value, "keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("expect") && header_is(h.value, "100-continue") {
            expect_continue = true;
        }
    }
    let content_length = content_length.unwrap_or(0);
    let limit = max_body();
    if content_length > limit {
        return Parsed::Error(ApiResponse::error(
            413,
            &format!(
                "The request body of {content_length} bytes is larger than the limit of {limit}."
            ),
        ));
    }
    let total = head_len + content_length;
    if buf.len() < total {
        return Parsed::Incomplete {
            continue_needed: expect_continue && buf.len() == head_len,
        };
    }
    Parsed::Complete(
        Request {
            method,
            target,
            body: buf[head_len..total].to_vec(),
            close,
        },
        total,
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a response; `close` adds `Connection: close`.
pub fn format_response(response: &ApiResponse, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: Ember\r\n",
        response.status,
        reason(response.status)
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    match &response.body {
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None if response.status == 204 => out.push_str("\r\n"),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out.into_bytes()
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_request_with_body() {
        let raw = b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdGET";
        let Parsed::Complete(req, used) = parse_request(raw) else {
            panic!("complete")
        };
        assert_eq!(req.method, "PUT");
        assert_eq!(req.target, "/actions");
        assert_eq!(req.body, b"abcd");
        assert!(!req.close);
        assert_eq!(used, raw.len() - 3);
    }

    #[test]
    fn test_parse_request_partial_head_and_body_incomplete() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHo"),
            Parsed::Incomplete { .. }
        ));
        assert!(matches!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            Parsed::Incomplete {
                continue_needed: false
            }
        ));
    }

    #[test]
    fn test_parse_request_expect_continue() {
        let raw = b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            parse_request(raw),
            Parsed::Incomplete {
                continue_needed: true
            }
        );
    }

    #[test]
    fn test_parse_request_oversized_body_is_413() {
        let raw = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        let Parsed::Error(r) = parse_request(raw.as_bytes()) else {
            panic!("error")
        };
        assert_eq!(r.status, 413);
    }

    #[test]
    fn test_parse_request_garbage_is_400() {
        let Parsed::Error(r) = parse_request(b"\x00\x01 nonsense\r\n\r\n") else {
            panic!("error")
        };
        assert_eq!(r.status, 400);
    }

    #[test]
    fn test_parse_request_endless_head_is_431() {
        let raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        let Parsed::Error(r) = parse_request(raw.as_bytes()) else {
            panic!("error")
        };
        assert_eq!(r.status, 431);
    }

    #[test]
    fn test_parse_request_connection_close_and_http10() {
        let Parsed::Complete(req, _) =
            parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        else {
            panic!("complete")
        };
        assert!(req.close);
        let Parsed::Complete(req, _) = parse_request(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!("complete")
        };
        assert!(req.close);
    }

    #[test]
    fn test_parse_request_bad_content_length_and_chunked_rejected() {
        assert!(matches!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Error(ApiResponse { status: 400, .. })
        ));
        assert!(matches!(
            parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Error(ApiResponse { status: 501, .. })
        ));
    }

    #[test]
    fn test_parse_request_conflicting_content_length_is_400() {
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc";
        let Parsed::Error(r) = parse_request(raw) else {
            panic!("error")
        };
        assert_eq!(r.status, 400);
        assert!(r.body.expect("body").contains("Conflicting Content-Length"));
    }

    #[test]
    fn test_parse_request_repeated_equal_content_length_accepted() {
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        let Parsed::Complete(req, _) = parse_request(raw) else {
            panic!("complete")
        };
        assert_eq!(req.body, b"abc");
    }

    #[test]
    fn test_format_response_json_and_no_content() {
        let text = String::from_utf8(format_response(&ApiResponse::bad_request("x"), false))
            .expect("utf8");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"x\"}"));
        let text =
            String::from_utf8(format_response(&ApiResponse::no_content(), true)).expect("utf8");
        assert_eq!(
            text,
            "HTTP/1.1 204 No Content\r\nServer: Ember\r\nConnection: close\r\n\r\n"
        );
    }
}
