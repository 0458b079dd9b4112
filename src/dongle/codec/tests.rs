//! Tests of `src/dongle/codec.rs`.

use super::*;

const PREFIX: &str = "dongle-40:4C:CA:AB:CD:EF";

fn dec(suffix: &str, payload: &str) -> Result<Message, DecodeError> {
    decode(PREFIX, &format!("{PREFIX}/{suffix}"), payload.as_bytes())
}

fn fields(pairs: &[(&str, RawValue)]) -> Fields {
    let mut f = Fields::default();
    for (k, v) in pairs {
        f.insert(k, v.clone());
    }
    f
}

fn num(n: f64) -> RawValue {
    RawValue::Num(n)
}

fn text(s: &str) -> RawValue {
    RawValue::Text(s.to_owned())
}

/// The same content in each of the three envelopes the firmware uses.
fn envelopes(inner: &str) -> [String; 3] {
    [
        inner.to_owned(),
        format!(r#"{{"Serialnumber":"BA12345678","payload":{inner},"events":{{}}}}"#),
        format!(r#"{{"event":"input_delta","ts":1717000000,"payload":{inner}}}"#),
    ]
}

fn telemetry_of(msg: Result<Message, DecodeError>) -> Fields {
    match msg {
        Ok(Message::Telemetry(f)) => f,
        other => panic!("expected telemetry, got {other:?}"),
    }
}

fn settings_of(msg: Result<Message, DecodeError>) -> Fields {
    match msg {
        Ok(Message::Settings(f)) => f,
        other => panic!("expected settings, got {other:?}"),
    }
}

fn updated_of(msg: Result<Message, DecodeError>) -> Fields {
    match msg {
        Ok(Message::SettingUpdated(f)) => f,
        other => panic!("expected setting/updated, got {other:?}"),
    }
}

#[test]
fn inputbank1_decodes_as_telemetry_in_every_envelope() {
    for payload in envelopes(r#"{"SOC":75,"Pcharge":1200,"Vbat":53.2}"#) {
        let f = telemetry_of(dec("inputbank1", &payload));
        assert_eq!(f.get_f64("soc"), Some(75.0), "{payload}");
        assert_eq!(f.get_f64("pcharge"), Some(1200.0), "{payload}");
        assert_eq!(f.get_f64("vbat"), Some(53.2), "{payload}");
        // The envelope's own keys are not telemetry.
        assert_eq!(f.get("serialnumber"), None, "{payload}");
        assert_eq!(f.get("event"), None, "{payload}");
        assert_eq!(f.len(), 3, "{payload}");
    }
}

#[test]
fn every_input_bank_and_the_4_3_input_topics_decode_as_telemetry() {
    let topics = [
        "inputbank1",
        "inputbank2",
        "inputbank3",
        "inputbank4",
        "inputbank5",
        "inputbank6",
        "input",
        "snap/input",
    ];
    for topic in topics {
        for payload in envelopes(r#"{"SOC":40}"#) {
            let f = telemetry_of(dec(topic, &payload));
            assert_eq!(f.get_f64("SOC"), Some(40.0), "{topic} {payload}");
        }
    }
}

#[test]
fn every_hold_bank_and_the_4_3_hold_topics_decode_as_settings() {
    let topics = [
        "holdbank1",
        "holdbank2",
        "holdbank3",
        "holdbank4",
        "holdbank5",
        "holdbank6",
        "hold",
        "snap/hold",
    ];
    for topic in topics {
        for payload in envelopes(r#"{"ACChgSOCLimit":"90","ACChgStart":"02:30:00","ACCharge":1}"#) {
            let f = settings_of(dec(topic, &payload));
            assert_eq!(f.get_f64("ACChgSOCLimit"), Some(90.0), "{topic} {payload}");
            assert_eq!(
                f.get("acchgstart").and_then(RawValue::as_time),
                Some((2, 30))
            );
            assert_eq!(f.get_f64("ACCHARGE"), Some(1.0), "{topic} {payload}");
        }
    }
}

#[test]
fn the_payload_key_is_found_in_any_case_but_only_when_it_holds_an_object() {
    let f = telemetry_of(dec("input", r#"{"PAYLOAD":{"SOC":12},"Serialnumber":"x"}"#));
    assert_eq!(f.get_f64("soc"), Some(12.0));
    assert_eq!(f.len(), 1);

    // A non-object `payload` is just another field of a flat message.
    let f = telemetry_of(dec("input", r#"{"payload":"n/a","SOC":13}"#));
    assert_eq!(f.get_f64("soc"), Some(13.0));
    assert_eq!(f.get("payload"), Some(&text("n/a")));
}

#[test]
fn keys_are_matched_in_any_case() {
    for key in ["soc", "SOC", "Soc", "sOc"] {
        let f = telemetry_of(dec("inputbank1", &format!(r#"{{"{key}":55}}"#)));
        for lookup in ["soc", "SOC", "Soc"] {
            assert_eq!(f.get_f64(lookup), Some(55.0), "{key} via {lookup}");
        }
        assert_eq!(f.iter().next().map(|(k, _)| k), Some("soc"));
    }
}

#[test]
fn numeric_strings_and_booleans_are_read_as_numbers_and_other_text_is_kept() {
    let f = settings_of(dec(
        "hold",
        r#"{"a":"90","b":" 1.00","c":true,"d":false,"e":"FAAB","f":"02:30"}"#,
    ));
    assert_eq!(f.get("a"), Some(&text("90")));
    assert_eq!(f.get_f64("a"), Some(90.0));
    assert_eq!(f.get_f64("b"), Some(1.0));
    assert_eq!(f.get_f64("c"), Some(1.0));
    assert_eq!(f.get_f64("d"), Some(0.0));
    assert_eq!(f.get("e"), Some(&text("FAAB")));
    assert_eq!(f.get_f64("e"), None);
    assert_eq!(f.get_f64("f"), None);
}

#[test]
fn nested_objects_arrays_and_nulls_inside_a_bank_are_skipped() {
    let f = telemetry_of(dec(
        "inputbank2",
        r#"{"SOC":60,"cells":[3.3,3.4],"bms":{"t":20},"Vbat":null}"#,
    ));
    assert_eq!(f.len(), 1);
    assert_eq!(f.get_f64("soc"), Some(60.0));
}

#[test]
fn merging_a_delta_overwrites_present_keys_and_keeps_absent_ones() {
    let mut cache = telemetry_of(dec("snap/input", r#"{"SOC":50,"Pcharge":3000,"Vbat":52}"#));
    let delta = telemetry_of(dec("input", r#"{"soc":51}"#));
    cache.merge(&delta);
    assert_eq!(cache.get_f64("SOC"), Some(51.0));
    assert_eq!(cache.get_f64("Pcharge"), Some(3000.0));
    assert_eq!(cache.get_f64("Vbat"), Some(52.0));
    assert_eq!(cache.len(), 3);

    cache.merge(&Fields::default());
    assert_eq!(cache.len(), 3);
}

#[test]
fn inserting_a_key_in_another_case_replaces_the_old_value() {
    let mut f = Fields::default();
    f.insert("SOC", num(1.0));
    f.insert("soc", num(2.0));
    assert_eq!(f.len(), 1);
    assert_eq!(f.get("Soc"), Some(&num(2.0)));
    assert!(!f.is_empty());
}

#[test]
fn soc_outside_0_to_100_or_not_a_number_is_rejected_and_reported() {
    for (value, note) in [
        (num(101.0), "SOC=101"),
        (num(-1.0), "SOC=-1"),
        (text("abc"), "SOC=\"abc\""),
        (text("NaN"), "SOC=\"NaN\""),
        (RawValue::Bool(true), "SOC=true"),
    ] {
        let t = telemetry(&fields(&[("soc", value.clone()), ("Vbat", num(53.0))]));
        assert_eq!(t.soc, None, "{value:?}");
        assert_eq!(t.rejected, [note], "{value:?}");
        assert_eq!(t.vbat, Some(53.0), "other values survive a bad SOC");
    }
}

#[test]
fn soc_at_the_bounds_and_as_text_is_accepted() {
    for (value, soc) in [
        (num(0.0), 0),
        (num(100.0), 100),
        (text("75"), 75),
        (text(" 80.00"), 80),
    ] {
        let t = telemetry(&fields(&[("SOC", value.clone())]));
        assert_eq!(t.soc, Soc::new(soc), "{value:?}");
        assert!(t.rejected.is_empty(), "{value:?}");
    }
}

#[test]
fn negative_or_non_numeric_power_and_voltage_are_rejected_and_reported() {
    let t = telemetry(&fields(&[
        ("Pcharge", num(-5.0)),
        ("Pdischarge", text("inf")),
        ("Vbat", num(-1.0)),
    ]));
    assert_eq!(t.charge_power_w, None);
    assert_eq!(t.battery_power_w, None);
    assert_eq!(t.vbat, None);
    assert_eq!(t.rejected, ["Pcharge=-5", "Pdischarge=\"inf\"", "Vbat=-1"]);
}

#[test]
fn missing_telemetry_keys_are_absent_not_rejected() {
    let t = telemetry(&Fields::default());
    assert_eq!(t, Telemetry::default());
}

#[test]
fn battery_power_is_minus_discharge_while_discharging_and_charge_power_otherwise() {
    let t = telemetry(&fields(&[
        ("Pcharge", num(0.0)),
        ("Pdischarge", num(800.0)),
    ]));
    assert_eq!(t.battery_power_w, Some(-800.0));
    assert_eq!(t.charge_power_w, Some(0.0));

    let t = telemetry(&fields(&[
        ("Pcharge", num(2500.0)),
        ("Pdischarge", num(0.0)),
    ]));
    assert_eq!(t.battery_power_w, Some(2500.0));

    let t = telemetry(&fields(&[("Pcharge", text("1500"))]));
    assert_eq!(t.battery_power_w, Some(1500.0));

    let t = telemetry(&fields(&[("Pdischarge", num(0.0))]));
    assert_eq!(
        t.battery_power_w, None,
        "no charge reading, not discharging"
    );
}

#[test]
fn a_response_with_status_success_in_any_case_is_a_success() {
    for status in ["success", "SUCCESS", "Success"] {
        for payload in envelopes(&format!(
            r#"{{"status":"{status}","setting":"ACChgSOCLimit"}}"#
        )) {
            assert_eq!(
                dec("response", &payload),
                Ok(Message::WriteResponse {
                    setting: Some("ACChgSOCLimit".into()),
                    success: true,
                    status: status.into(),
                }),
                "{payload}"
            );
        }
    }
}

#[test]
fn a_response_with_success_true_is_a_success() {
    assert_eq!(
        dec("response", r#"{"success":true,"setting":"ACCharge"}"#),
        Ok(Message::WriteResponse {
            setting: Some("ACCharge".into()),
            success: true,
            status: "success".into(),
        })
    );
    assert_eq!(
        dec("response", r#"{"Success":false}"#),
        Ok(Message::WriteResponse {
            setting: None,
            success: false,
            status: String::new(),
        })
    );
}

#[test]
fn a_response_with_any_other_status_is_a_rejection_that_keeps_the_status() {
    for payload in [
        r#"{"status":"failed","setting":"ACCharge"}"#,
        r#"{"status":"failed","success":true,"setting":"ACCharge"}"#,
    ] {
        assert_eq!(
            dec("response", payload),
            Ok(Message::WriteResponse {
                setting: Some("ACCharge".into()),
                success: false,
                status: "failed".into(),
            }),
            "{payload}"
        );
    }
    assert_eq!(
        dec("response", r#"{"setting":"ACCharge"}"#),
        Ok(Message::WriteResponse {
            setting: Some("ACCharge".into()),
            success: false,
            status: String::new(),
        })
    );
}

#[test]
fn a_response_names_the_setting_it_answers_so_replies_for_others_can_be_told_apart() {
    let Ok(Message::WriteResponse { setting, .. }) =
        dec("response", r#"{"status":"success","SETTING":"ACChgStart"}"#)
    else {
        panic!("expected a write response");
    };
    assert_eq!(setting.as_deref(), Some("ACChgStart"));
    assert_ne!(setting.as_deref(), Some("ACChgSOCLimit"));
}

#[test]
fn setting_updated_accepts_the_setting_value_shape_in_every_envelope() {
    for payload in envelopes(r#"{"setting":"ACCharge","value":"1.00","from":"app"}"#) {
        let f = updated_of(dec("setting/updated", &payload));
        assert_eq!(f, fields(&[("ACCharge", text("1.00"))]), "{payload}");
        assert!(read_back_matches(
            SettingValue::Int(1),
            f.get("accharge").unwrap_or(&num(-1.0))
        ));
    }
}

#[test]
fn setting_updated_accepts_a_plain_map_in_every_envelope() {
    for payload in envelopes(r#"{"ACChgSOCLimit":"90.00","ACCharge":"1.00"}"#) {
        let f = updated_of(dec("setting/updated", &payload));
        assert_eq!(f.get_f64("acchgsoclimit"), Some(90.0), "{payload}");
        assert_eq!(f.get_f64("ACCharge"), Some(1.0), "{payload}");
        assert_eq!(f.len(), 2, "{payload}");
    }
}

#[test]
fn setting_updated_without_a_usable_value_confirms_nothing() {
    assert!(updated_of(dec("setting/updated", r#"{"setting":"ACCharge"}"#)).is_empty());
    assert!(updated_of(dec("setting/updated", r#"{"setting":"","value":1}"#)).is_empty());
    assert!(updated_of(dec("setting/updated", r#"{"setting":"X","value":[1]}"#)).is_empty());
}

#[test]
fn availability_is_online_or_offline_in_any_case_with_blanks_trimmed() {
    for (payload, online) in [
        ("online", true),
        ("Online\n", true),
        (" ONLINE ", true),
        ("offline", false),
        ("OFFLINE\r\n", false),
    ] {
        assert_eq!(
            dec("availability", payload),
            Ok(Message::Availability { online }),
            "{payload:?}"
        );
    }
}

#[test]
fn availability_garbage_is_an_error_that_quotes_it() {
    for payload in ["", "on line", "1", "{\"state\":\"online\"}"] {
        let err = dec("availability", payload).expect_err(payload);
        assert_eq!(
            err,
            DecodeError::BadAvailability {
                text: payload.into()
            }
        );
    }
    let long = "x".repeat(10_000);
    let err = dec("availability", &long).expect_err("garbage");
    assert!(
        err.to_string().len() < 300,
        "the log line stays short: {err}"
    );
}

#[test]
fn firmware_code_response_comes_as_an_object_or_a_one_element_list() {
    for payload in [
        r#"{"FWCode":"FAAB"}"#,
        r#"[{"FWCode":"FAAB"}]"#,
        r#"{"fwcode":" FAAB "}"#,
        r#"{"event":"fw","payload":{"FWCode":"FAAB"}}"#,
    ] {
        assert_eq!(
            dec("firmwarecode/response", payload),
            Ok(Message::FirmwareCode("FAAB".into())),
            "{payload}"
        );
    }
}

#[test]
fn firmware_code_response_without_a_code_is_an_error() {
    let topic = "firmwarecode/response".to_owned();
    assert_eq!(
        dec("firmwarecode/response", r#"{"other":1}"#),
        Err(DecodeError::MissingField {
            topic: topic.clone(),
            field: "FWCode"
        })
    );
    assert_eq!(
        dec("firmwarecode/response", "[]"),
        Err(DecodeError::NotAnObject {
            topic: topic.clone(),
            found: "an empty array"
        })
    );
    assert_eq!(
        dec("firmwarecode/response", r#"["FAAB"]"#),
        Err(DecodeError::NotAnObject {
            topic,
            found: "a string"
        })
    );
}

#[test]
fn firmware_code_is_read_from_hold_data_in_any_case() {
    let f = settings_of(dec("holdbank1", r#"{"FWCode":"EAAB","ACCharge":0}"#));
    assert_eq!(firmware_code(&f), Some("EAAB".into()));
    assert_eq!(firmware_code(&fields(&[("fwcode", text("  "))])), None);
    assert_eq!(firmware_code(&fields(&[("fwcode", num(1.0))])), None);
    assert_eq!(firmware_code(&Fields::default()), None);
}

#[test]
fn status_carries_the_firmware_version_when_present() {
    for payload in envelopes(r#"{"version":"4.3.0.111S3","uptime":100}"#) {
        assert_eq!(
            dec("status", &payload),
            Ok(Message::Status {
                version: Some("4.3.0.111S3".into())
            }),
            "{payload}"
        );
    }
    assert_eq!(
        dec("status", r#"{"uptime":100}"#),
        Ok(Message::Status { version: None })
    );
}

#[test]
fn our_own_topics_and_unknown_sub_topics_are_ignored_without_reading_the_payload() {
    let huge = vec![0xff; MAX_PAYLOAD + 1];
    for suffix in [
        "update",
        "snapshot/request",
        "firmwarecode/request",
        "inputbank7",
        "inputbank",
        "holdbank0",
        "inputbank1/extra",
        "Input",
        "something/else",
        "",
    ] {
        let topic = format!("{PREFIX}/{suffix}");
        for payload in [&br#"{"setting":"ACCharge","value":1}"#[..], &huge, b"\xff"] {
            assert_eq!(
                decode(PREFIX, &topic, payload),
                Ok(Message::Ignored),
                "{suffix}"
            );
        }
    }
}

#[test]
fn a_topic_outside_the_prefix_is_rejected_with_the_prefix_compared_exactly() {
    let lower = PREFIX.to_lowercase();
    for topic in [
        format!("{lower}/inputbank1"),
        format!("{PREFIX}inputbank1"),
        PREFIX.to_owned(),
        "dongle-other/inputbank1".to_owned(),
        "inputbank1".to_owned(),
    ] {
        assert_eq!(
            decode(PREFIX, &topic, br#"{"SOC":50}"#),
            Err(DecodeError::NotOurPrefix {
                topic: topic.clone(),
                prefix: PREFIX.into()
            }),
            "{topic}"
        );
    }
}

#[test]
fn a_payload_that_is_not_utf8_is_rejected() {
    for suffix in ["inputbank1", "response", "availability"] {
        let topic = format!("{PREFIX}/{suffix}");
        assert_eq!(
            decode(PREFIX, &topic, b"{\"SOC\":\xff}"),
            Err(DecodeError::NotUtf8 {
                topic: suffix.into()
            })
        );
    }
}

#[test]
fn a_payload_that_is_not_json_is_rejected_naming_the_topic() {
    for payload in ["", "SOC=50", "{\"SOC\":50", "{'SOC':50}", "{\"SOC\":1e400}"] {
        let err = dec("inputbank1", payload).expect_err(payload);
        assert!(
            matches!(&err, DecodeError::NotJson { topic, .. } if topic == "inputbank1"),
            "{payload}: {err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("inputbank1: payload is not JSON")
        );
    }
}

#[test]
fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
    let payload = "[".repeat(MAX_PAYLOAD);
    assert!(matches!(
        dec("input", &payload),
        Err(DecodeError::NotJson { .. })
    ));
    let nested = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    assert!(matches!(
        dec("input", &nested),
        Err(DecodeError::NotJson { .. })
    ));
}

#[test]
fn a_bank_whose_top_level_is_an_array_number_or_string_is_not_an_object() {
    for (payload, found) in [
        ("[1,2]", "an array"),
        ("75", "a number"),
        ("\"SOC\"", "a string"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        assert_eq!(
            dec("inputbank1", payload),
            Err(DecodeError::NotAnObject {
                topic: "inputbank1".into(),
                found
            }),
            "{payload}"
        );
    }
    assert!(matches!(
        dec("snap/hold", "[]"),
        Err(DecodeError::NotAnObject { .. })
    ));
}

#[test]
fn a_one_megabyte_payload_is_too_large() {
    let payload = vec![b' '; 1024 * 1024];
    let topic = format!("{PREFIX}/inputbank1");
    assert_eq!(
        decode(PREFIX, &topic, &payload),
        Err(DecodeError::TooLarge {
            topic: "inputbank1".into(),
            size: 1024 * 1024
        })
    );
}

#[test]
fn a_payload_of_exactly_the_limit_is_still_parsed() {
    let mut payload = r#"{"SOC":50}"#.to_owned();
    payload.push_str(&" ".repeat(MAX_PAYLOAD - payload.len()));
    let f = telemetry_of(dec("input", &payload));
    assert_eq!(f.get_f64("soc"), Some(50.0));
}

#[test]
fn encode_update_writes_an_integer_as_a_json_number() {
    let bytes = encode_update(
        "ACChgSOCLimit",
        SettingValue::Int(90),
        TimeFormat::default(),
    );
    let json: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    assert_eq!(
        json,
        serde_json::json!({"setting": "ACChgSOCLimit", "value": 90, "from": "solar-backend"})
    );
}

#[test]
fn encode_update_writes_times_in_the_configured_format() {
    let time = SettingValue::Time(LocalTime::new(2, 5).unwrap());
    for (format, expected) in [
        (TimeFormat::HhMmSs, "02:05:00"),
        (TimeFormat::HhMm, "02:05"),
    ] {
        let bytes = encode_update("ACChgStart", time, format);
        let json: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({"setting": "ACChgStart", "value": expected, "from": "solar-backend"})
        );
    }
    assert_eq!(TimeFormat::default(), TimeFormat::HhMmSs);
}

#[test]
fn encode_update_escapes_the_setting_name() {
    let bytes = encode_update("a\"b\\c", SettingValue::Int(-1), TimeFormat::HhMm);
    let json: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    assert_eq!(json["setting"], "a\"b\\c");
    assert_eq!(json["value"], -1);
}

#[test]
fn the_snapshot_request_asks_for_everything() {
    let json: Value = serde_json::from_slice(&encode_snapshot_request()).expect("valid JSON");
    assert_eq!(json, serde_json::json!({"what": "all"}));
}

#[test]
fn time_formats_are_named_as_in_the_config_file() {
    assert_eq!(
        serde_json::to_string(&TimeFormat::HhMmSs).ok().as_deref(),
        Some("\"HH:MM:SS\"")
    );
    assert_eq!(
        serde_json::from_str::<TimeFormat>("\"HH:MM\"").ok(),
        Some(TimeFormat::HhMm)
    );
    assert!(serde_json::from_str::<TimeFormat>("\"hh:mm\"").is_err());
}

#[test]
fn an_integer_write_matches_any_read_back_of_the_same_number() {
    let one = SettingValue::Int(1);
    for read in [
        num(1.0),
        text("1"),
        text("1.00"),
        text(" 1.0 "),
        RawValue::Bool(true),
    ] {
        assert!(read_back_matches(one, &read), "{read:?}");
    }
    for read in [
        num(0.0),
        num(1.5),
        text("1.01"),
        text("one"),
        text(""),
        text("01:00"),
    ] {
        assert!(!read_back_matches(one, &read), "{read:?}");
    }
    assert!(read_back_matches(SettingValue::Int(90), &text("90.00")));
    assert!(read_back_matches(
        SettingValue::Int(0),
        &RawValue::Bool(false)
    ));
}

#[test]
fn a_time_write_matches_a_read_back_at_hour_and_minute() {
    let t = SettingValue::Time(LocalTime::new(2, 30).unwrap());
    for read in [
        text("02:30:00"),
        text("02:30"),
        text("2:30"),
        text("02:30:59"),
        text(" 02:30 "),
    ] {
        assert!(read_back_matches(t, &read), "{read:?}");
    }
    for read in [
        text("02:31"),
        text("14:30"),
        text("0230"),
        num(230.0),
        text("02:30:60"),
    ] {
        assert!(!read_back_matches(t, &read), "{read:?}");
    }
}

#[test]
fn write_values_display_as_the_log_shows_them() {
    assert_eq!(SettingValue::Int(90).to_string(), "90");
    assert_eq!(
        SettingValue::Time(LocalTime::new(2, 30).unwrap()).to_string(),
        "02:30"
    );
}

#[test]
fn times_are_validated() {
    for good in ["00:00", "23:59", "7:05", "23:59:59", "00:00:00"] {
        assert!(text(good).as_time().is_some(), "{good}");
    }
    for bad in [
        "24:00",
        "12:60",
        "123:00",
        "12:5",
        "12:005",
        "12:00:5",
        "12:00:00:00",
        ":",
        "",
        "ab:cd",
        "+1:30",
        "1:-3",
        "12:30:",
        "１２:３０",
    ] {
        assert_eq!(text(bad).as_time(), None, "{bad}");
    }
    assert_eq!(text("02:30:00").as_time(), Some((2, 30)));
}

#[test]
fn numbers_are_read_only_when_finite() {
    assert_eq!(text(" 1.00 ").as_f64(), Some(1.0));
    assert_eq!(text("-3").as_f64(), Some(-3.0));
    assert_eq!(num(f64::NAN).as_f64(), None);
    assert_eq!(num(f64::INFINITY).as_f64(), None);
    for bad in ["NaN", "inf", "-infinity", "", "1,5", "12 V"] {
        assert_eq!(text(bad).as_f64(), None, "{bad}");
    }
}

#[test]
fn errors_name_the_topic_for_the_log_reader() {
    let err = dec("holdbank3", "[]").expect_err("not an object");
    assert_eq!(
        err.to_string(),
        "holdbank3: expected a JSON object, got an array"
    );
    let err = decode(PREFIX, "x/input", b"{}").expect_err("wrong prefix");
    assert!(err.to_string().contains("\"x/input\""), "{err}");
    let err = decode(PREFIX, &format!("{PREFIX}/input"), &[b' '; MAX_PAYLOAD + 1])
        .expect_err("too large");
    assert!(
        err.to_string().starts_with("input: payload of 65537 bytes"),
        "{err}"
    );
}

/// Deterministic pseudo-random source (xorshift64), so a failure reproduces exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn decode_never_panics_on_arbitrary_input_on_any_topic() {
    const TOPICS: [&str; 17] = [
        "inputbank1",
        "inputbank6",
        "holdbank1",
        "input",
        "hold",
        "snap/input",
        "snap/hold",
        "setting/updated",
        "response",
        "status",
        "availability",
        "firmwarecode/response",
        "update",
        "snapshot/request",
        "firmwarecode/request",
        "unknown",
        "",
    ];
    // Fragments that steer random input towards the parser's interesting paths, mixed with
    // raw bytes that are often not UTF-8.
    const TOKENS: [&str; 32] = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        " ",
        "\"payload\"",
        "\"PAYLOAD\"",
        "\"SOC\"",
        "\"status\"",
        "\"success\"",
        "\"setting\"",
        "\"value\"",
        "\"FWCode\"",
        "\"version\"",
        "true",
        "null",
        "1.00",
        "-1",
        "1e400",
        "\"02:30:00\"",
        "\"9:99\"",
        "online",
        "offline",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "é",
        "\u{1F50B}",
        "\\",
        "99999999999999999999",
    ];
    // Values for generated objects: every JSON type, numeric and odd strings, nesting.
    const VALUES: [&str; 14] = [
        "75",
        "-1",
        "1.5e3",
        "\"90\"",
        "\" 1.00\"",
        "\"abc\"",
        "\"02:30:00\"",
        "\"25:99\"",
        "true",
        "false",
        "null",
        "[1,{}]",
        "{\"SOC\":1}",
        "\"success\"",
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut typed = 0;
    for round in 0..4000 {
        let mut payload = Vec::new();
        match round % 3 {
            // Raw bytes, mostly not UTF-8.
            0 => payload.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            // Token soup, sometimes broken by a raw byte.
            1 => {
                for _ in 0..rng.below(32) {
                    if rng.below(8) == 0 {
                        payload.push(rng.next() as u8);
                    } else {
                        payload.extend_from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes());
                    }
                }
            }
            // Well-formed objects with random keys and values, sometimes in an envelope or
            // a list, to reach the code behind the JSON parser.
            _ => {
                let entries: Vec<String> = (0..rng.below(6))
                    .map(|_| {
                        let key = TOKENS[rng.below(TOKENS.len())].trim_matches('"');
                        let value = VALUES[rng.below(VALUES.len())];
                        format!("{}:{value}", Value::from(key))
                    })
                    .collect();
                let object = format!("{{{}}}", entries.join(","));
                let wrapped = match rng.below(3) {
                    0 => object,
                    1 => format!(r#"{{"event":"x","payload":{object}}}"#),
                    _ => format!("[{object}]"),
                };
                payload.extend_from_slice(wrapped.as_bytes());
            }
        }
        for suffix in TOPICS {
            let topic = format!("{PREFIX}/{suffix}");
            let Ok(msg) = decode(PREFIX, &topic, &payload) else {
                continue;
            };
            if msg != Message::Ignored {
                typed += 1;
            }
            if let Message::Telemetry(f) | Message::Settings(f) | Message::SettingUpdated(f) = &msg
            {
                let _ = telemetry(f);
                let _ = firmware_code(f);
                for (_, value) in f.iter() {
                    let _ = (value.as_f64(), value.as_time());
                    let _ = read_back_matches(SettingValue::Int(1), value);
                }
            }
        }
        // The same bytes as a topic must not upset prefix handling either.
        let topic = String::from_utf8_lossy(&payload);
        let _ = decode(PREFIX, &topic, &payload);
        let _ = decode(&topic, &topic, &payload);
    }
    assert!(
        typed > 1000,
        "the generator should reach the decoders, not only the errors: {typed}"
    );
}
