//! Tests of the human output: lines per message type, units, values, tables, clocks.

use serde_json::json;
use time::UtcOffset;

use super::*;

/// 2025-11-21 12:00:01.250 UTC.
const TS: i64 = 1_763_726_401_250;

fn formatter() -> Formatter {
    let mut f = Formatter::new(Clock::utc());
    f.learn_meta(
        "thermostat-001",
        Some(&json!({"kind":"thermostat","telemetry":{
            "temperature":{"type":"float","unit":"°C"},
            "humidity":{"type":"float","unit":"%"},
            "hvac":{"type":"enum","choices":["idle","heating"]}},
          "controls":{"setpoint":{"type":"float","unit":"°C"},"mode":{"type":"enum"}}})),
    );
    f
}

fn lines(f: &mut Formatter, raw: serde_json::Value) -> Vec<String> {
    f.lines(&Message::from_value(raw), TS)
}

#[test]
fn telemetry_line_has_time_device_seq_and_units() {
    let mut f = formatter();
    let got = lines(
        &mut f,
        json!({"type":"telemetry","device":"thermostat-001","seq":57,"ts":TS,
               "data":{"temperature":21.4,"humidity":40,"hvac":"idle"}}),
    );
    assert_eq!(
        got,
        ["12:00:01 thermostat-001 #57 temperature=21.4 °C humidity=40 % hvac=idle"]
    );
    // A device whose meta was never seen gets no units.
    let got = lines(
        &mut f,
        json!({"type":"telemetry","device":"x","seq":1,"ts":TS,"data":{"temperature":3}}),
    );
    assert_eq!(got, ["12:00:01 x #1 temperature=3"]);
}

#[test]
fn other_stream_messages() {
    let mut f = formatter();
    let cases = [
        (
            json!({"type":"state","device":"thermostat-001","ts":TS,
                   "state":{"setpoint":21.5,"mode":"heat"}}),
            "12:00:01 thermostat-001 state setpoint=21.5 °C mode=heat",
        ),
        (
            json!({"type":"presence","device":"light-1","presence":"offline"}),
            "12:00:01 light-1 presence=offline",
        ),
        (
            json!({"type":"broker","status":"down"}),
            "12:00:01 broker link down",
        ),
        (
            json!({"type":"lagging","conflated":17}),
            "12:00:01 lagging: 17 telemetry messages were replaced by newer ones",
        ),
        (
            json!({"type":"device","device":"light-1","meta":null,"removed":true}),
            "12:00:01 light-1 removed",
        ),
        (
            json!({"type":"device","device":"light-1",
                   "meta":{"kind":"light","name":"Kitchen light","room":"Kitchen"}}),
            "12:00:01 light-1 meta light \"Kitchen light\" in Kitchen",
        ),
        (
            json!({"type":"error","code":"bad_request","message":"nope"}),
            "12:00:01 error bad_request: nope",
        ),
        (
            json!({"type":"from_the_future","x":1}),
            r#"12:00:01 {"type":"from_the_future","x":1}"#,
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(lines(&mut f, raw.clone()), [want], "{raw}");
    }
}

#[test]
fn snapshot_is_one_line_per_device_and_teaches_units() {
    let mut f = Formatter::new(Clock::utc());
    let got = lines(
        &mut f,
        json!({"type":"snapshot","req":"1","devices":[
            {"id":"light-1","meta":{"controls":{"brightness":{"type":"int","unit":"%"}},
                                    "telemetry":{"power":{"type":"float","unit":"W"}}},
             "presence":"online","state":{"on":true,"brightness":80},
             "telemetry":{"power":7.5},"seq":42,"ts":TS},
            {"id":"new-1","presence":"unknown","seq":0}]}),
    );
    assert_eq!(
        got,
        [
            "12:00:01 light-1 presence=online #42 power=7.5 W | state on=true brightness=80 %",
            "12:00:01 new-1 presence=unknown #0",
        ]
    );
    let got = lines(
        &mut f,
        json!({"type":"telemetry","device":"light-1","seq":43,"ts":TS,"data":{"power":8}}),
    );
    assert_eq!(got, ["12:00:01 light-1 #43 power=8 W"]);
}

#[test]
fn values_look_like_what_one_would_type() {
    let cases = [
        (json!("heat"), "heat"),
        (json!("two words"), "\"two words\""),
        (json!(""), "\"\""),
        (json!("42"), "\"42\""),
        (json!("true"), "\"true\""),
        (json!(true), "true"),
        (json!(21.5), "21.5"),
        (json!(null), "null"),
        (json!({"a":1}), "{\"a\":1}"),
    ];
    for (value, want) in cases {
        assert_eq!(format_value(&value), want, "{value}");
    }
}

#[test]
fn command_status_lines() {
    let status = |raw| status_line(&Message::from_value(raw));
    assert_eq!(
        status(
            json!({"type":"command_status","req":"1","id":"a-1","device":"light-1",
                      "status":"ok","result":{"on":true}})
        ),
        "light-1: ok {\"on\":true}"
    );
    assert_eq!(
        status(
            json!({"type":"command_status","req":"1","id":"a-1","device":"light-1",
                      "status":"rejected","error":"brightness must be at most 100"})
        ),
        "light-1: rejected: brightness must be at most 100"
    );
    assert_eq!(
        status(
            json!({"type":"command_status","req":"1","id":"a-1","device":"light-1",
                      "status":"sent"})
        ),
        "light-1: sent"
    );
}

#[test]
fn tables_align_by_characters() {
    let devices = vec![
        ListEntry {
            id: "thermostat-001".into(),
            kind: Some("thermostat".into()),
            name: Some("Wohnzimmer Thermostat".into()),
            room: Some("Küche".into()),
            presence: "online".into(),
        },
        ListEntry {
            id: "x".into(),
            kind: None,
            name: None,
            room: None,
            presence: "unknown".into(),
        },
    ];
    let want = "\
ID              KIND        NAME                   ROOM   PRESENCE
thermostat-001  thermostat  Wohnzimmer Thermostat  Küche  online
x               -           -                      -      unknown";
    assert_eq!(list_table(&devices), want);
    assert_eq!(list_table(&[]), "ID  KIND  NAME  ROOM  PRESENCE");
}

#[test]
fn clocks_and_history_lines() {
    assert_eq!(Clock::utc().time_of_day(TS), "12:00:01");
    let cet = Clock::with_offset(UtcOffset::from_hms(1, 0, 0).unwrap());
    assert_eq!(cet.time_of_day(TS), "13:00:01");
    assert_eq!(Clock::utc().date_time(TS), "2025-11-21 12:00:01.250");
    let f = formatter();
    let sample = Sample {
        seq: 40,
        ts: TS,
        data: json!({"temperature": 21.4})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    assert_eq!(
        f.sample_line("thermostat-001", &sample),
        "2025-11-21 12:00:01.250 #40 temperature=21.4 °C"
    );
}
