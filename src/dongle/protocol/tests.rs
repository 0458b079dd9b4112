//! Tests of the verified-write protocol, message by message and second by second.

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn proto() -> WriteProtocol {
    let mut p = WriteProtocol::new(ProtocolConfig {
        write_timeout: Duration::from_secs(15),
        min_write_interval: SEC,
        readback_timeout: Duration::from_secs(10),
        max_retries: 1,
        time_format: TimeFormat::HhMmSs,
    });
    p.set_connected(true);
    p
}

fn write(setting: &str, v: i64) -> Request {
    Request::Write {
        setting: setting.into(),
        value: SettingValue::Int(v),
    }
}

fn fields(pairs: &[(&str, f64)]) -> Fields {
    let mut f = Fields::default();
    for (k, v) in pairs {
        f.insert(k, RawValue::Num(*v));
    }
    f
}

fn response(setting: &str, success: bool) -> Message {
    Message::WriteResponse {
        setting: Some(setting.into()),
        success,
        status: if success { "success" } else { "error" }.into(),
    }
}

fn on(p: &mut WriteProtocol, suffix: &str, m: &Message, now: Duration) -> Vec<Out> {
    p.on_message(
        Inbound {
            suffix,
            retained: false,
            message: m,
        },
        now,
    )
}

fn published(out: &[Out]) -> Vec<&'static str> {
    out.iter()
        .filter_map(|o| match o {
            Out::Publish { suffix, .. } => Some(*suffix),
            _ => None,
        })
        .collect()
}

fn done(out: &[Out]) -> Option<&WriteResult> {
    out.iter().find_map(|o| match o {
        Out::WriteDone(r) => Some(r),
        _ => None,
    })
}

#[test]
fn a_write_is_published_at_once_and_confirmed_by_its_response() {
    let mut p = proto();
    let out = p.request(write("ACChgSOCLimit", 80), SEC);
    assert_eq!(published(&out), ["update"]);
    let out = on(
        &mut p,
        "response",
        &response("ACChgSOCLimit", true),
        2 * SEC,
    );
    assert_eq!(done(&out), Some(&WriteResult::Confirmed));
    assert!(p.next_deadline().is_none());
}

#[test]
fn a_refusal_is_reported_as_rejected() {
    let mut p = proto();
    p.request(write("ACCharge", 1), SEC);
    let out = on(&mut p, "response", &response("ACCharge", false), 2 * SEC);
    assert!(matches!(done(&out), Some(WriteResult::Rejected(_))));
}

#[test]
fn writes_are_a_second_apart_and_one_at_a_time() {
    let mut p = proto();
    p.request(write("ACChgSOCLimit", 80), Duration::ZERO);
    let out = p.request(write("ACChargeType", 2), Duration::ZERO);
    assert!(published(&out).is_empty(), "the first is still in flight");
    let out = on(
        &mut p,
        "response",
        &response("ACChgSOCLimit", true),
        SEC / 10,
    );
    assert_eq!(done(&out), Some(&WriteResult::Confirmed));
    assert!(published(&out).is_empty(), "waits for the spacing");
    assert_eq!(p.next_deadline(), Some(SEC));
    assert_eq!(published(&p.on_timer(SEC)), ["update"]);
}

#[test]
fn a_response_for_another_setting_or_a_retained_one_is_not_the_answer() {
    let mut p = proto();
    p.request(write("ACCharge", 1), SEC);
    let out = on(
        &mut p,
        "response",
        &response("ACChgSOCLimit", true),
        2 * SEC,
    );
    assert!(done(&out).is_none());
    let out = p.on_message(
        Inbound {
            suffix: "response",
            retained: true,
            message: &response("ACCharge", true),
        },
        2 * SEC,
    );
    assert!(done(&out).is_none());
}

#[test]
fn a_setting_updated_with_the_value_confirms_the_write() {
    let mut p = proto();
    p.request(write("ACCharge", 1), SEC);
    let m = Message::SettingUpdated(fields(&[("ACCharge", 1.0)]));
    let out = on(&mut p, "setting/updated", &m, 2 * SEC);
    assert_eq!(done(&out), Some(&WriteResult::Confirmed));
}

#[test]
fn an_unanswered_write_is_read_back_and_confirmed_when_the_value_appears_late() {
    let mut p = proto();
    // 4.3 firmware: a snapshot request is the read-back.
    on(
        &mut p,
        "hold",
        &Message::Settings(fields(&[("ACCharge", 0.0)])),
        SEC,
    );
    p.request(write("ACCharge", 1), SEC);
    let out = p.on_timer(16 * SEC);
    assert_eq!(published(&out), ["snapshot/request"]);
    assert!(done(&out).is_none());
    // The first read still shows the old value; it applies a few seconds later.
    let old = Message::Settings(fields(&[("ACCharge", 0.0)]));
    assert!(done(&on(&mut p, "snap/hold", &old, 17 * SEC)).is_none());
    let new = Message::Settings(fields(&[("ACCharge", 1.0)]));
    let out = on(&mut p, "snap/hold", &new, 20 * SEC);
    assert_eq!(done(&out), Some(&WriteResult::Confirmed));
}

#[test]
fn a_read_back_that_still_differs_at_its_end_is_retried_then_reported_unknown() {
    let mut p = proto();
    on(
        &mut p,
        "hold",
        &Message::Settings(fields(&[("ACCharge", 0.0)])),
        SEC,
    );
    p.request(write("ACCharge", 1), SEC);
    p.on_timer(16 * SEC);
    let old = Message::Settings(fields(&[("ACCharge", 0.0)]));
    on(&mut p, "snap/hold", &old, 17 * SEC);
    let out = p.on_timer(26 * SEC);
    assert_eq!(published(&out), ["update"], "one retry");
    p.on_timer(41 * SEC);
    on(&mut p, "snap/hold", &old, 42 * SEC);
    let out = p.on_timer(51 * SEC);
    assert!(matches!(done(&out), Some(WriteResult::Unknown(w)) if w.contains("reads back")));
}

#[test]
fn no_read_back_at_all_leaves_the_outcome_unknown_without_a_retry() {
    let mut p = proto();
    p.request(write("ACCharge", 1), SEC);
    p.on_timer(16 * SEC);
    let out = p.on_timer(26 * SEC);
    assert!(
        matches!(done(&out), Some(WriteResult::Unknown(w)) if w.contains("could not be read back"))
    );
    assert_eq!(published(&out), Vec::<&str>::new());
}

#[test]
fn without_a_broker_a_write_is_not_sent() {
    let mut p = proto();
    p.set_connected(false);
    let out = p.request(write("ACCharge", 1), SEC);
    assert!(matches!(done(&out), Some(WriteResult::NotSent(_))));
    assert!(published(&out).is_empty());
}

#[test]
fn a_snapshot_on_legacy_firmware_is_answered_from_the_banks_without_a_request() {
    let mut p = proto();
    let bank = Message::Settings(fields(&[("ACChgSOCLimit", 90.0), ("ACCharge", 0.0)]));
    on(&mut p, "holdbank1", &bank, SEC);
    let out = p.request(
        Request::Snapshot {
            settings: vec!["ACChgSOCLimit".into(), "ACCharge".into()],
            fresh: Freshness::Read,
        },
        2 * SEC,
    );
    assert!(published(&out).is_empty());
    let Some(Out::SnapshotDone(Some(snap))) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(snap["ACChgSOCLimit"], SettingValue::Int(90));
}

#[test]
fn a_snapshot_on_4_3_asks_and_waits_for_the_dump_up_to_the_read_back_timeout() {
    let mut p = proto();
    on(
        &mut p,
        "status",
        &Message::Status {
            version: Some("4.3.0.1".into()),
        },
        SEC,
    );
    let want = Request::Snapshot {
        settings: vec!["ACCharge".into(), "ACChgSOCLimit".into()],
        fresh: Freshness::Read,
    };
    let out = p.request(want.clone(), SEC);
    assert_eq!(published(&out), ["snapshot/request"]);
    let dump = Message::Settings(fields(&[("ACCharge", 1.0), ("ACChgSOCLimit", 80.0)]));
    let out = on(&mut p, "snap/hold", &dump, 2 * SEC);
    assert!(matches!(out.first(), Some(Out::SnapshotDone(Some(s))) if s.len() == 2));
    // Nothing answers: it gives what it has when the time is up.
    let mut p = proto();
    on(
        &mut p,
        "status",
        &Message::Status {
            version: Some("4.3.0.1".into()),
        },
        SEC,
    );
    assert!(
        p.request(want, SEC)
            .iter()
            .all(|o| !matches!(o, Out::SnapshotDone(_)))
    );
    let out = p.on_timer(11 * SEC);
    assert_eq!(out, [Out::SnapshotDone(None)]);
}

#[test]
fn a_cached_snapshot_is_answered_at_once_with_what_the_banks_and_confirmed_writes_said() {
    let mut p = proto();
    on(
        &mut p,
        "holdbank1",
        &Message::Settings(fields(&[("ACCharge", 0.0)])),
        SEC,
    );
    p.request(write("ACChgSOCLimit", 70), SEC);
    on(
        &mut p,
        "response",
        &response("ACChgSOCLimit", true),
        2 * SEC,
    );
    let out = p.request(
        Request::Snapshot {
            settings: vec!["ACCharge".into(), "ACChgSOCLimit".into()],
            fresh: Freshness::Cached,
        },
        2 * SEC,
    );
    let Some(Out::SnapshotDone(Some(snap))) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(snap["ACChgSOCLimit"], SettingValue::Int(70));
    assert_eq!(snap["ACCharge"], SettingValue::Int(0));
}

#[test]
fn firmware_versions_from_4_3_on_are_modern() {
    assert!(version_at_least_4_3("4.3.0.111S3"));
    assert!(version_at_least_4_3("5.0"));
    assert!(!version_at_least_4_3("4.2.9"));
    assert!(!version_at_least_4_3("garbage"));
}
