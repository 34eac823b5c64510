//! Shared checks for the fuzz targets: reference definitions the bridge's decoders are held to.
//!
//! The references are written independently of `bridge/src` on purpose: a target that reused the
//! code under test would only check that the code agrees with itself.

use iot_bridge::protocol::{DecodeError, ErrorCode, Request};
use serde_json::Value;

/// The nesting a device payload may have (`MAX_DEPTH` in `payload.rs`, private there).
pub const PAYLOAD_DEPTH: usize = 16;

/// Nesting of arrays and objects: a scalar is 0, `{"a":1}` is 1.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// CBOR encoding of a JSON value, as a client or device library would produce it.
pub fn to_cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a JSON value (string keys, finite numbers) into a Vec cannot fail; if it ever
    // does, that is a finding worth the panic.
    ciborium::ser::into_writer(v, &mut out).expect("a JSON value encodes as CBOR");
    out
}

/// A `req` the bridge may echo: absent, a string of at most 64 bytes, or a number.
pub fn check_req(req: Option<&Value>) {
    match req {
        None | Some(Value::Number(_)) => {}
        Some(Value::String(s)) => assert!(s.len() <= 64, "echoed req longer than 64 bytes"),
        Some(other) => panic!("echoed req of the wrong shape: {other}"),
    }
}

/// What every decode error must carry: a message to show, and no `req` on a frame that
/// could not be read as an object at all.
pub fn check_error(e: &DecodeError) {
    assert!(!e.message.is_empty(), "error without a message: {e:?}");
    if e.code == ErrorCode::BadFrame {
        assert!(e.req.is_none(), "bad_frame error with a req: {e:?}");
    }
    check_req(e.req.as_ref());
}

/// Checks one decode outcome on its own.
pub fn check_outcome(outcome: &Result<Request, DecodeError>) {
    match outcome {
        Ok(r) => check_req(r.req.as_ref()),
        Err(e) => check_error(e),
    }
}

/// The JSON and CBOR subprotocols carry the same messages: the same request, or an error with
/// the same code and the same echoed `req` (messages may name the format, so they may differ).
pub fn assert_same_outcome(
    first: &Result<Request, DecodeError>,
    second: &Result<Request, DecodeError>,
    what: &str,
) {
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: formats decode to different requests"),
        (Err(a), Err(b)) => assert_eq!(
            (a.code, &a.req),
            (b.code, &b.req),
            "{what}: formats fail differently: {:?} vs {:?}",
            a.message,
            b.message
        ),
        (a, b) => panic!("{what}: formats disagree: {a:?} vs {b:?}"),
    }
}

/// Reference glob: `*` is any run of characters (even none), `?` exactly one character,
/// everything else itself. Plain dynamic programming over characters, quadratic but obvious.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // row[j]: does the pattern so far match the first j characters of the text?
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        if pc == '*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && (pc == '?' || pc == t[j - 1]);
            }
        }
        row = next;
    }
    row[t.len()]
}

/// Reference device id: `[A-Za-z0-9_-]{1,64}`.
pub fn is_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_glob() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b", "ab") && glob_matches("a*b", "axxb"));
        assert!(!glob_matches("a*b", "axxc"));
        assert!(glob_matches("t?", "tö") && !glob_matches("t?", "t"));
        assert!(glob_matches("*?*", "x") && !glob_matches("*?*", ""));
        assert!(!glob_matches("abc", "abcd"));
    }
}
