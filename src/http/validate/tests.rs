//! Tests of `src/http/validate.rs`.

use super::*;

/// The 422 body the app would receive for `body`.
fn schedule_detail(body: &str) -> Value {
    let errors = parse_schedule_request(body.as_bytes()).expect_err("body should be rejected");
    json!({ "detail": errors })
}

fn enable_detail(body: &str) -> Value {
    let errors = parse_enable_request(body.as_bytes()).expect_err("body should be rejected");
    json!({ "detail": errors })
}

fn schedule(body: &str) -> ScheduleRequest {
    parse_schedule_request(body.as_bytes()).expect("body should be accepted")
}

fn soc(body_soc: &str) -> Result<u8, Vec<FieldError>> {
    parse_enable_request(format!(r#"{{"target_soc": {body_soc}}}"#).as_bytes())
        .map(|r| r.target_soc.get())
}

fn only_error(result: Result<impl std::fmt::Debug, Vec<FieldError>>) -> FieldError {
    let errors = result.expect_err("should be rejected");
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

/// The single error for a valid schedule whose `field` is set to the JSON text `value`.
fn schedule_field_error(field: &str, value: &str) -> FieldError {
    let mut body = json!({"target_soc": 80, "start_time": "02:30"});
    body[field] = serde_json::from_str(value).unwrap();
    only_error(parse_schedule_request(body.to_string().as_bytes()))
}

#[test]
fn malformed_json_is_json_invalid_at_the_byte_offset_with_the_reason() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 85 "start_time": "02:30"}"#),
        json!({"detail": [{
            "type": "json_invalid", "loc": ["body", 18], "msg": "JSON decode error",
            "input": {}, "ctx": {"error": "expected `,` or `}`"}
        }]})
    );
}

#[test]
fn truncated_json_points_just_past_the_end() {
    let body = "{\"target_soc\": 85\n  ";
    let e = only_error(parse_schedule_request(body.as_bytes()));
    assert_eq!(e.kind, "json_invalid");
    assert_eq!(e.loc, [json!("body"), json!(body.len())]);
    assert_eq!(e.ctx, Some(json!({"error": "EOF while parsing an object"})));
}

#[test]
fn errors_on_later_lines_are_located_by_byte_offset() {
    let e = only_error(parse_enable_request(b"{\n  \"target_soc\": tru\n}"));
    // The bad byte is the '\n' closing the "tru" literal.
    assert_eq!(e.loc, [json!("body"), json!(21)]);
    assert_eq!(e.kind, "json_invalid");
}

#[test]
fn an_empty_body_is_a_missing_body() {
    assert_eq!(
        enable_detail(""),
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    assert_eq!(enable_detail("null"), enable_detail(""));
}

#[test]
fn whitespace_only_body_is_invalid_json_not_missing() {
    let e = only_error(parse_enable_request(b"  "));
    assert_eq!(e.kind, "json_invalid");
    assert_eq!(e.loc, [json!("body"), json!(2)]);
}

#[test]
fn json_that_is_not_an_object_is_model_attributes_type_with_the_body_as_input() {
    assert_eq!(
        schedule_detail(r#"[85, "02:30"]"#),
        json!({"detail": [{
            "type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": [85, "02:30"]
        }]})
    );
    assert_eq!(only_error(parse_enable_request(b"85")).input, json!(85));
}

#[test]
fn a_missing_field_is_reported_with_the_whole_body_as_input() {
    assert_eq!(
        schedule_detail(r#"{"start_time": "02:30", "note": "x"}"#),
        json!({"detail": [{
            "type": "missing", "loc": ["body", "target_soc"], "msg": "Field required",
            "input": {"start_time": "02:30", "note": "x"}
        }]})
    );
}

#[test]
fn target_soc_accepts_integers_whole_floats_and_numeric_strings() {
    assert_eq!(soc("85").unwrap(), 85);
    assert_eq!(soc("85.0").unwrap(), 85);
    assert_eq!(soc("10").unwrap(), 10);
    assert_eq!(soc("100").unwrap(), 100);
    for s in [
        r#""85""#,
        r#"" 85 ""#,
        r#""+85""#,
        r#""085""#,
        r#""85.00""#,
        r#""8_5""#,
    ] {
        assert_eq!(soc(s).unwrap(), 85, "{s}");
    }
}

#[test]
fn target_soc_with_a_fraction_is_int_from_float() {
    assert_eq!(
        enable_detail(r#"{"target_soc": 85.5}"#),
        json!({"detail": [{
            "type": "int_from_float", "loc": ["body", "target_soc"],
            "msg": "Input should be a valid integer, got a number with a fractional part",
            "input": 85.5
        }]})
    );
}

#[test]
fn target_soc_as_a_non_numeric_string_is_int_parsing() {
    assert_eq!(
        enable_detail(r#"{"target_soc": "eighty"}"#),
        json!({"detail": [{
            "type": "int_parsing", "loc": ["body", "target_soc"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "eighty"
        }]})
    );
    for s in [
        r#""""#,
        r#""8 5""#,
        r#""85.5""#,
        r#""85.""#,
        r#""_85""#,
        r#""8__5""#,
        r#""+-85""#,
        r#""1e2""#,
        r#""0x55""#,
        r#""８５""#,
    ] {
        assert_eq!(only_error(soc(s)).kind, "int_parsing", "{s}");
    }
}

#[test]
fn target_soc_of_another_json_type_is_int_type() {
    assert_eq!(
        enable_detail(r#"{"target_soc": true}"#),
        json!({"detail": [{
            "type": "int_type", "loc": ["body", "target_soc"],
            "msg": "Input should be a valid integer", "input": true
        }]})
    );
    for s in ["null", "[85]", r#"{"v": 85}"#, "false"] {
        assert_eq!(only_error(soc(s)).kind, "int_type", "{s}");
    }
}

#[test]
fn target_soc_below_ten_is_greater_than_equal_with_the_original_input() {
    assert_eq!(
        enable_detail(r#"{"target_soc": "5"}"#),
        json!({"detail": [{
            "type": "greater_than_equal", "loc": ["body", "target_soc"],
            "msg": "Input should be greater than or equal to 10", "input": "5", "ctx": {"ge": 10}
        }]})
    );
    assert_eq!(only_error(soc("9")).kind, "greater_than_equal");
    assert_eq!(only_error(soc("-1")).kind, "greater_than_equal");
}

#[test]
fn target_soc_above_hundred_is_less_than_equal() {
    assert_eq!(
        enable_detail(r#"{"target_soc": 101}"#),
        json!({"detail": [{
            "type": "less_than_equal", "loc": ["body", "target_soc"],
            "msg": "Input should be less than or equal to 100", "input": 101, "ctx": {"le": 100}
        }]})
    );
}

#[test]
fn huge_target_soc_values_are_out_of_range_not_a_crash() {
    for s in [
        "256",
        "18446744073709551615",
        "99999999999999999999999999",
        "1e300",
        r#""99999999999999999999999999""#,
        r#""356""#,
    ] {
        assert_eq!(only_error(soc(s)).kind, "less_than_equal", "{s}");
    }
    for s in [
        "-99999999999999999999999999",
        "-1e300",
        r#""-99999999999999999999""#,
    ] {
        assert_eq!(only_error(soc(s)).kind, "greater_than_equal", "{s}");
    }
}

#[test]
fn start_time_that_is_not_a_string_is_string_type() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": 230}"#),
        json!({"detail": [{
            "type": "string_type", "loc": ["body", "start_time"],
            "msg": "Input should be a valid string", "input": 230
        }]})
    );
}

#[test]
fn start_time_that_is_neither_hhmm_nor_an_offset_datetime_is_a_pattern_mismatch() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "24:00"}"#),
        json!({"detail": [{
            "type": "string_pattern_mismatch", "loc": ["body", "start_time"],
            "msg": "String should match pattern '^([01][0-9]|2[0-3]):[0-5][0-9]$'",
            "input": "24:00",
            "ctx": {"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
        }]})
    );
    for bad in [
        "2:30",
        "02:60",
        "02:30:00",
        "02:30\n",
        "",
        "soon",
        "2026-03-08T02:30:00",
        "2026-03-08",
    ] {
        let e = schedule_field_error("start_time", &json!(bad).to_string());
        assert_eq!(e.kind, "string_pattern_mismatch", "{bad:?}");
    }
}

#[test]
fn start_time_accepts_hhmm_and_iso_datetimes_with_an_offset_or_z() {
    let at =
        |s: &str| schedule(&format!(r#"{{"target_soc": 80, "start_time": "{s}"}}"#)).start_time;
    assert_eq!(
        at("02:30"),
        StartTime::Daily(LocalTime::new(2, 30).unwrap())
    );
    assert_eq!(
        at("23:59"),
        StartTime::Daily(LocalTime::new(23, 59).unwrap())
    );
    let expected: jiff::Timestamp = "2026-03-08T10:30:00Z".parse().unwrap();
    assert_eq!(at("2026-03-08T02:30:00-08:00"), StartTime::At(expected));
    assert_eq!(at("2026-03-08T10:30:00Z"), StartTime::At(expected));
}

#[test]
fn unknown_mode_of_any_type_is_a_literal_error() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "02:30", "mode": "daily"}"#),
        json!({"detail": [{
            "type": "literal_error", "loc": ["body", "mode"],
            "msg": "Input should be 'once' or 'recurring'", "input": "daily",
            "ctx": {"expected": "'once' or 'recurring'"}
        }]})
    );
    for bad in [r#""ONCE""#, "1", "null", "true", "[]"] {
        assert_eq!(
            schedule_field_error("mode", bad).kind,
            "literal_error",
            "{bad}"
        );
    }
}

#[test]
fn enabled_accepts_booleans_and_pydantics_lax_spellings() {
    let enabled = |v: &str| {
        schedule(&format!(
            r#"{{"target_soc": 80, "start_time": "02:30", "enabled": {v}}}"#
        ))
        .enabled
    };
    for v in [
        "true",
        r#""true""#,
        r#""Yes""#,
        r#""ON""#,
        r#""1""#,
        r#""t""#,
        r#""Y""#,
        "1",
        "1.0",
    ] {
        assert!(enabled(v), "{v}");
    }
    for v in [
        "false",
        r#""FALSE""#,
        r#""no""#,
        r#""off""#,
        r#""0""#,
        r#""f""#,
        r#""n""#,
        "0",
    ] {
        assert!(!enabled(v), "{v}");
    }
}

#[test]
fn enabled_with_an_uninterpretable_string_or_number_is_bool_parsing() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "02:30", "enabled": "maybe"}"#),
        json!({"detail": [{
            "type": "bool_parsing", "loc": ["body", "enabled"],
            "msg": "Input should be a valid boolean, unable to interpret input", "input": "maybe"
        }]})
    );
    for bad in ["2", "-1", "0.5", r#"" true""#, r#""""#, r#""2""#] {
        assert_eq!(
            schedule_field_error("enabled", bad).kind,
            "bool_parsing",
            "{bad}"
        );
    }
}

#[test]
fn enabled_as_null_list_or_object_is_bool_type() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "02:30", "enabled": null}"#),
        json!({"detail": [{
            "type": "bool_type", "loc": ["body", "enabled"],
            "msg": "Input should be a valid boolean", "input": null
        }]})
    );
    for bad in ["[]", "{}"] {
        assert_eq!(
            schedule_field_error("enabled", bad).kind,
            "bool_type",
            "{bad}"
        );
    }
}

#[test]
fn days_that_are_not_a_list_are_list_type() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "02:30", "days": "mon"}"#),
        json!({"detail": [{
            "type": "list_type", "loc": ["body", "days"],
            "msg": "Input should be a valid list", "input": "mon"
        }]})
    );
}

#[test]
fn each_bad_day_is_a_literal_error_at_its_index() {
    let expected = "'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'";
    assert_eq!(
        schedule_detail(
            r#"{"target_soc": 80, "start_time": "02:30", "days": ["mon", "funday", "tue", 3]}"#
        ),
        json!({"detail": [
            {"type": "literal_error", "loc": ["body", "days", 1],
             "msg": format!("Input should be {expected}"), "input": "funday",
             "ctx": {"expected": expected}},
            {"type": "literal_error", "loc": ["body", "days", 3],
             "msg": format!("Input should be {expected}"), "input": 3,
             "ctx": {"expected": expected}}
        ]})
    );
    assert_eq!(
        schedule_field_error("days", r#"["Mon"]"#).loc,
        [json!("body"), json!("days"), json!(0)]
    );
}

#[test]
fn an_empty_day_list_is_too_short() {
    assert_eq!(
        schedule_detail(r#"{"target_soc": 80, "start_time": "02:30", "days": []}"#),
        json!({"detail": [{
            "type": "too_short", "loc": ["body", "days"],
            "msg": "List should have at least 1 item after validation, not 0", "input": [],
            "ctx": {"field_type": "List", "min_length": 1, "actual_length": 0}
        }]})
    );
}

#[test]
fn days_become_a_set_and_null_means_every_day() {
    let r = schedule(r#"{"target_soc": 80, "start_time": "02:30", "days": ["sun", "mon", "mon"]}"#);
    assert_eq!(r.days.unwrap().names(), ["mon", "sun"]);
    let r = schedule(r#"{"target_soc": 80, "start_time": "02:30", "days": null}"#);
    assert_eq!(r.days, None);
}

#[test]
fn three_bad_fields_yield_three_entries_in_field_order() {
    let detail = schedule_detail(r#"{"enabled": "maybe", "mode": "daily", "target_soc": 5}"#);
    let summary: Vec<(Value, Value)> = detail["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].clone(), e["loc"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("greater_than_equal"), json!(["body", "target_soc"])),
            (json!("missing"), json!(["body", "start_time"])),
            (json!("literal_error"), json!(["body", "mode"])),
            (json!("bool_parsing"), json!(["body", "enabled"])),
        ]
    );
    let three = parse_schedule_request(
        br#"{"target_soc": "x", "start_time": 1, "days": [], "extra": {"ignored": true}}"#,
    )
    .unwrap_err();
    let kinds: Vec<_> = three.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["int_parsing", "string_type", "too_short"]);
}

#[test]
fn a_minimal_schedule_gets_the_defaults() {
    assert_eq!(
        schedule(r#"{"target_soc": 85, "start_time": "02:30", "unknown": [1, 2]}"#),
        ScheduleRequest {
            target_soc: TargetSoc::new(85).unwrap(),
            start_time: StartTime::Daily(LocalTime::new(2, 30).unwrap()),
            mode: Mode::Recurring,
            enabled: true,
            days: None,
            strategy: crate::domain::schedule::Strategy::Fixed,
            ready_by: None,
        }
    );
}

#[test]
fn a_full_schedule_is_read_field_by_field() {
    let r = schedule(
        r#"{"target_soc": 100, "start_time": "00:00", "mode": "once", "enabled": false, "days": ["fri"]}"#,
    );
    assert_eq!(r.target_soc.get(), 100);
    assert_eq!(
        r.start_time,
        StartTime::Daily(LocalTime::new(0, 0).unwrap())
    );
    assert_eq!(r.mode, Mode::Once);
    assert!(!r.enabled);
    assert_eq!(r.days.unwrap().names(), ["fri"]);
}

#[test]
fn enable_request_reads_target_soc_and_ignores_extra_keys() {
    let r = parse_enable_request(br#"{"target_soc": 80, "mode": "bogus"}"#).unwrap();
    assert_eq!(r.target_soc.get(), 80);
    assert_eq!(
        enable_detail("{}"),
        json!({"detail": [{"type": "missing", "loc": ["body", "target_soc"], "msg": "Field required", "input": {}}]})
    );
}

#[test]
fn unicode_strings_are_echoed_back_intact() {
    let weird = "０２:３０ 🔋 ça\u{0301} \u{202e}ünï\u{0000}";
    let body = json!({"target_soc": 80, "start_time": weird, "mode": weird}).to_string();
    let errors = parse_schedule_request(body.as_bytes()).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].kind, "string_pattern_mismatch");
    assert_eq!(errors[0].input, json!(weird));
    assert_eq!(errors[1].input, json!(weird));
    let round_trip: Value = serde_json::from_str(&json!({ "detail": errors }).to_string()).unwrap();
    assert_eq!(round_trip["detail"][0]["input"], json!(weird));
}

#[test]
fn a_deeply_nested_array_is_json_invalid_not_a_stack_overflow() {
    let depth = 10_000;
    let bomb = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let e = only_error(parse_schedule_request(bomb.as_bytes()));
    assert_eq!(e.kind, "json_invalid");
    assert_eq!(e.ctx, Some(json!({"error": "recursion limit exceeded"})));
    let inside = format!(r#"{{"target_soc": {}}}"#, "[".repeat(depth));
    assert_eq!(
        only_error(parse_enable_request(inside.as_bytes())).kind,
        "json_invalid"
    );
}

#[test]
fn value_error_has_the_same_shape_as_pydantics_validator_errors() {
    let e = value_error(
        "start_time",
        json!("2020-01-01T00:00:00Z"),
        "start_time must be in the future",
    );
    assert_eq!(
        json!({ "detail": [e] }),
        json!({"detail": [{
            "type": "value_error", "loc": ["body", "start_time"],
            "msg": "Value error, start_time must be in the future",
            "input": "2020-01-01T00:00:00Z",
            "ctx": {"error": "start_time must be in the future"}
        }]})
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Mixes raw noise with fragments of valid bodies so that both the JSON decoder and the
    // field checks are exercised.
    const PIECES: [&str; 24] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"target_soc\"",
        "\"start_time\"",
        "\"mode\"",
        "\"enabled\"",
        "\"days\"",
        "85",
        "-1e999",
        "1e400",
        "0.5",
        "\"02:30\"",
        "null",
        "true",
        "\"mon\"",
        "\"\\ud800\"",
        "18446744073709551616",
        " ",
        "\"2026-03-08T02:30:00Z\"",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const FIELDS: [&str; 5] = ["target_soc", "start_time", "mode", "enabled", "days"];
    for round in 0..6000 {
        let mut body = Vec::new();
        match round % 3 {
            0 => (0..next() % 48).for_each(|_| body.push(next() as u8)),
            1 => (0..next() % 48).for_each(|_| {
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                body.extend_from_slice(piece.as_bytes());
            }),
            _ => {
                // Well-formed objects with a random subset of fields and random values.
                let mut fields = Vec::new();
                for f in FIELDS {
                    if next() % 4 != 0 {
                        let value = PIECES[(next() % PIECES.len() as u64) as usize];
                        fields.push(format!("\"{f}\": {value}"));
                    }
                }
                body = format!("{{{}}}", fields.join(", ")).into_bytes();
            }
        }
        for result in [
            parse_schedule_request(&body).map(|_| ()),
            parse_enable_request(&body).map(|_| ()),
        ] {
            if let Err(errors) = result {
                assert!(!errors.is_empty(), "rejected without a reason: {body:?}");
                serde_json::to_string(&json!({ "detail": errors })).unwrap();
            }
        }
    }
}
