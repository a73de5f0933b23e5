//! The API request path up to the VMM: raw bytes as one connection's buffer, parsed request by
//! request as the API thread does (pipelined requests, partial heads and bodies, limits),
//! routed (method and path to an `ApiRequest`, the body parsed into the resource's serde type),
//! answered by the pre-boot handler against a configuration draft, and every answer formatted.
#![no_main]

use ember::api::ApiRequest;
use ember::api::http::{Parsed, format_response, parse_request};
use ember::api::routes::route;
use ember::config::VmConfigDraft;
use ember::launch::handle_preboot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    let mut draft = VmConfigDraft::default();
    loop {
        match parse_request(buf) {
            Parsed::Complete(request, used) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "used {used} of {}",
                    buf.len()
                );
                buf = &buf[used..];
                let response = match route(&request.method, &request.target, &request.body) {
                    // These open the paths they name (the process's log and metrics files):
                    // routed and parsed, but not applied while fuzzing.
                    Ok(ApiRequest::PutLogger(_) | ApiRequest::PutMetrics(_)) => continue,
                    Ok(api) => handle_preboot(&mut draft, &api),
                    Err(response) => response,
                };
                let bytes = format_response(&response, request.close);
                assert!(bytes.starts_with(b"HTTP/1.1 "));
                if request.close {
                    break;
                }
            }
            Parsed::Incomplete { .. } => break,
            Parsed::Error(response) => {
                let _ = format_response(&response, true);
                break;
            }
        }
    }
});
