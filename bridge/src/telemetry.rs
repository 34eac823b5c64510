//! Telemetry data as the bridge keeps it: the JSON text of the device's map, `ts` taken out,
//! checked once on arrival and from then on shared as text by the history, snapshots and every
//! client's frame. Most messages are never built into a map: only `fields` projections, CBOR
//! clients and history queries by field need one, and they parse it when they do.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::payload::{self, PayloadError, MAX_DEPTH};

/// A telemetry map without its `ts`, as JSON text (the device's values as it wrote them).
#[derive(Debug)]
pub struct Data(Box<RawValue>);

impl Data {
    pub fn from_map(map: &Map<String, Value>) -> Data {
        let text = serde_json::to_string(map).unwrap_or_else(|_| "{}".into());
        Data::from_text(text)
    }

    /// `text` is JSON written by serde_json (always valid); a failure leaves an empty map.
    fn from_text(text: String) -> Data {
        Data(RawValue::from_string(text).unwrap_or_else(|_| empty()))
    }

    /// Bytes of JSON.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn is_empty(&self) -> bool {
        self.as_str() == "{}"
    }

    /// The data as a map (parsed now: for projections and CBOR, not for plain JSON clients).
    pub fn map(&self) -> Map<String, Value> {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }

    /// Whether the data has `field`, without building a map.
    pub fn has_field(&self, field: &str) -> bool {
        struct HasField<'f>(&'f str);
        impl<'de> Visitor<'de> for HasField<'_> {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                let mut found = false;
                while let Some(Key(key)) = map.next_key()? {
                    found |= key == self.0;
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(found)
            }
        }
        let mut de = serde_json::Deserializer::from_str(self.as_str());
        de.deserialize_map(HasField(field)).unwrap_or(false)
    }
}

fn empty() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("{} is JSON")
}

/// JSON serializers get the text as it is; others (CBOR) get the map.
impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            self.map().serialize(s)
        }
    }
}

/// Telemetry as one client gets it: all of it, or the fields it asked for.
#[derive(Debug, Clone)]
pub enum View<'a> {
    Whole(&'a Data),
    Fields(Map<String, Value>),
}

impl View<'_> {
    pub fn is_empty(&self) -> bool {
        match self {
            View::Whole(d) => d.is_empty(),
            View::Fields(m) => m.is_empty(),
        }
    }
}

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            View::Whole(d) => d.serialize(s),
            View::Fields(m) => m.serialize(s),
        }
    }
}

/// The fields of `map` named in `fields`.
pub fn pick(map: &Map<String, Value>, fields: &[String]) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| fields.iter().any(|f| f == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `data`, or only its `fields` when given.
pub fn project<'a>(data: &'a Data, fields: Option<&[String]>) -> View<'a> {
    match fields {
        None => View::Whole(data),
        Some(fields) => View::Fields(pick(&data.map(), fields)),
    }
}

/// Decodes a telemetry payload into its `ts` (when it has a plausible one) and the rest.
///
/// JSON is checked and copied without building a map; CBOR (first byte a map header) is decoded
/// and written as JSON once. The same limits hold as for every device map.
pub fn decode(bytes: &[u8], limit: usize) -> Result<(Option<i64>, Data), PayloadError> {
    if payload::is_cbor_map(payload::first_byte(bytes, limit)?) {
        let mut map = payload::decode_map(bytes, limit)?;
        let ts = payload::timestamp(&map);
        map.remove("ts");
        return Ok((ts, Data::from_map(&map)));
    }
    // The copy below reads values as raw text, which serde_json checks only loosely (numbers out
    // of range, lone surrogates): check strictly first, nesting included, so what is kept is
    // what a parser reads.
    // UTF-8 is checked once, here; the parser then reads a `str` and does not check it again.
    let Ok(text) = std::str::from_utf8(bytes) else {
        // Told the way the map decoder tells it, which parses bytes into values (skipping a
        // string, as `IgnoredAny` does, would not check its UTF-8).
        let refused = serde_json::from_slice::<Value>(bytes).err();
        let why = refused.map_or_else(|| "payload is not UTF-8".into(), |e| e.to_string());
        return Err(PayloadError::Json(why));
    };
    let mut check = serde_json::Deserializer::from_str(text);
    Strict {
        levels_left: MAX_DEPTH,
    }
    .deserialize(&mut check)
    .and_then(|()| check.end())
    .map_err(|e| PayloadError::Json(e.to_string()))?;
    // Valid JSON now, so its entries can be cut out of the text by their bytes alone.
    let (ts, text) = without_ts(text)?;
    Ok((ts, Data::from_text(text)))
}

/// The entries of a JSON map but `ts`, as compact text (each value exactly as the device wrote
/// it, keys in serde_json's spelling), and the value of `ts` if it is a plausible time.
///
/// `text` must be valid JSON (the strict check ran): this only finds where the top-level entries
/// begin and end, counting brackets and skipping strings; it never parses a value.
fn without_ts(text: &str) -> Result<(Option<i64>, String), PayloadError> {
    let unreadable = || PayloadError::Json("unreadable JSON".into());
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(PayloadError::NotAMap);
    }
    i += 1;
    let mut out = String::with_capacity(text.len());
    out.push('{');
    let mut ts = None;
    loop {
        i = skip_space(b, i);
        match b.get(i) {
            Some(b'}') => break,
            Some(b',') => i = skip_space(b, i + 1),
            Some(_) => {}
            None => return Err(unreadable()),
        }
        let key_end = string_end(b, i).ok_or_else(unreadable)?;
        let raw_key = &text[i..key_end];
        i = skip_space(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(unreadable());
        }
        i = skip_space(b, i + 1);
        let value_end = value_end(b, i).ok_or_else(unreadable)?;
        let value = &text[i..value_end];
        i = value_end;
        // Without a backslash a key is already in serde_json's spelling; with one, it is
        // decoded (to compare it) and written again.
        let key: Cow<'_, str> = if raw_key.contains('\\') {
            let decoded: String = serde_json::from_str(raw_key).map_err(|_| unreadable())?;
            Cow::Owned(serde_json::to_string(&decoded).map_err(|_| unreadable())?)
        } else {
            Cow::Borrowed(raw_key)
        };
        if key == "\"ts\"" {
            ts = value.parse::<i64>().ok().filter(|t| *t > 0);
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Ok((ts, out))
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just past the string that starts at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index just past the value that starts at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number or a literal: up to the next delimiter.
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Any JSON value nested at most `levels_left` deep, read strictly and thrown away: a check
/// that builds nothing.
#[derive(Clone, Copy)]
struct Strict {
    levels_left: usize,
}

impl Strict {
    fn nested<E: de::Error>(self) -> Result<Strict, E> {
        match self.levels_left {
            0 => Err(E::custom("nested too deeply")),
            n => Ok(Strict { levels_left: n - 1 }),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// A map key, borrowed from the input unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decoded(text: &str) -> (Option<i64>, Value) {
        let (ts, data) = decode(text.as_bytes(), 1 << 20).unwrap();
        (ts, serde_json::from_str(data.as_str()).unwrap())
    }

    #[test]
    fn json_keeps_every_field_but_ts_as_sent() {
        let (ts, v) =
            decoded(r#" {"t": 21.5, "ts": 1700000000000, "on": true, "n": {"a": [1, 2]}} "#);
        assert_eq!(ts, Some(1_700_000_000_000));
        assert_eq!(v, json!({"t": 21.5, "on": true, "n": {"a": [1, 2]}}));
        assert_eq!(decoded(r#"{"a\"b": "x\ny"}"#).1, json!({"a\"b": "x\ny"}));
        assert_eq!(decoded("{}").1, json!({}));
        // Numbers keep the device's spelling (no float round trip through f64).
        let (_, data) = decode(br#"{"big": 12345678901234567890.5}"#, 1024).unwrap();
        assert_eq!(data.as_str(), r#"{"big":12345678901234567890.5}"#);
    }

    #[test]
    fn implausible_ts_is_ignored_and_still_removed() {
        for text in [
            r#"{"ts": -5, "t": 1}"#,
            r#"{"ts": "soon", "t": 1}"#,
            r#"{"ts": 1.5, "t": 1}"#,
        ] {
            assert_eq!(decoded(text), (None, json!({"t": 1})), "{text}");
        }
    }

    #[test]
    fn cbor_maps_are_stored_as_json() {
        let mut cbor = Vec::new();
        ciborium::ser::into_writer(&json!({"t": 3, "ts": 99}), &mut cbor).unwrap();
        let (ts, data) = decode(&cbor, 1024).unwrap();
        assert_eq!(
            (ts, data.map()),
            (Some(99), json!({"t": 3}).as_object().cloned().unwrap())
        );
    }

    #[test]
    fn bad_payloads_are_the_same_errors_as_other_device_maps() {
        let cases: [(&[u8], PayloadError); 5] = [
            (b"", PayloadError::Empty),
            (b"  ", PayloadError::Empty),
            (b"[1, 2]", PayloadError::NotAMap),
            (b"42", PayloadError::NotAMap),
            (&[b'x'; 20], PayloadError::TooLarge(20)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes, 10).unwrap_err(), want, "{bytes:?}");
        }
        for bad in [
            &b"{\"t\": 1"[..],
            b"{\"t\": 1} x",
            b"{t: 1}",
            b"{\"t\": nul}",
        ] {
            assert!(
                matches!(decode(bad, 1024), Err(PayloadError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(16), "]".repeat(16));
        assert!(matches!(
            decode(deep.as_bytes(), 1024),
            Err(PayloadError::Json(_))
        ));
        // Refused like the map decoder refuses them, not kept as text no parser reads back.
        for bad in [
            r#"{"t": 1, "x": 1e999}"#,
            r#"{"t": 1, "x": "\ud800"}"#,
            "[1,",
            "42 x",
        ] {
            assert!(
                matches!(decode(bad.as_bytes(), 1024), Err(PayloadError::Json(_))),
                "{bad}"
            );
            assert!(
                matches!(
                    payload::decode_map(bad.as_bytes(), 1024),
                    Err(PayloadError::Json(_))
                ),
                "{bad}"
            );
        }
        // Not UTF-8: the same error as the map decoder's, in a string or outside one.
        for bad in [
            &b"{\"a\": \"\xff\"}"[..],
            b"{\"a\": 1, \xfe}",
            b"{\"\xc3\": 1}",
        ] {
            let refused = decode(bad, 1024).unwrap_err();
            assert!(matches!(refused, PayloadError::Json(_)), "{refused:?}");
            assert_eq!(Err(refused), payload::decode_map(bad, 1024).map(|_| ()));
        }
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(15), "]".repeat(15));
        assert!(decode(ok.as_bytes(), 1024).is_ok());
        // Brackets inside strings are not nesting.
        let quoted = format!("{{\"a\":\"{}\"}}", "[{".repeat(40));
        assert!(decode(quoted.as_bytes(), 1024).is_ok());
    }

    #[test]
    fn views_serialize_as_json_text_or_as_a_cbor_map() {
        let (_, data) = decode(br#"{"t": 1, "h": 2}"#, 1024).unwrap();
        assert!(data.has_field("h") && !data.has_field("x"));
        let whole = View::Whole(&data);
        assert_eq!(serde_json::to_string(&whole).unwrap(), r#"{"t":1,"h":2}"#);
        let mut cbor = Vec::new();
        ciborium::ser::into_writer(&whole, &mut cbor).unwrap();
        let back: Value = ciborium::de::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, json!({"t": 1, "h": 2}));
        let part = project(&data, Some(&["h".to_string()]));
        assert_eq!(serde_json::to_value(&part).unwrap(), json!({"h": 2}));
        assert!(project(&data, Some(&["x".to_string()])).is_empty());
    }
}
