//! What stands between a night's charge and the ways it was lost: a graceful restart at any
//! step, another app (or a rebooted dongle) switching AC charging off on any firmware, one wild
//! SOC reading, a refused start, a restore that keeps failing, a slow legacy dongle at the
//! scheduled minute, and an engine that hangs or dies.

use std::time::Duration;

use serde_json::{Value, json};
use solar_charging_backend::domain::session::Phase;
use solar_charging_backend::engine::EngineFault;
use solar_charging_backend::sim::dongle::{Fault, Firmware, HoldValue};

use crate::harness::{GUARD, World, ac_on};
use crate::sessions::{
    Knobs, Peer, answer, assert_left_as_found, charge_now, history, minutes, once_at_0130, phase,
    post_later, run_to_the_end, spaced_writes_and_a_once_charge_at_0130, the_one_session_ended_for,
    world, written,
};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Writes of an uninterrupted charge from 50 to 55 % on the test inverter: five to start
/// (SOC limit, charge type, window start and end, `ACCharge = 1`; the rest already had the
/// wanted value) and five to stop (`ACCharge = 0`, then the four back as found).
const WRITES_OF_A_CHARGE: usize = 10;

/// Stops the service as systemd or Docker does (SIGTERM: a graceful stop) and starts it again
/// on the same data. A write waiting for its second of spacing gets it, so that the stop has
/// a write in flight to finish.
async fn graceful_restart(w: &mut World) {
    let app = w.app.take().expect("running");
    let stopping = tokio::spawn(app.shutdown());
    tokio::task::yield_now().await;
    w.clock.advance(SEC);
    tokio::time::timeout(GUARD, stopping)
        .await
        .expect("the graceful stop ends")
        .expect("the stop task");
    w.boot().await;
}

/// Moves the clock until the dongle has received `n` writes: a second at a time while writes
/// go out (one each second), a minute at a time while the charge only watches the SOC.
async fn drive_until_writes(w: &World, n: usize) {
    for _ in 0..600 {
        let len = w.sim.state().borrow().writes.len();
        if len >= n {
            return;
        }
        if phase(&w.status()) == Some(Phase::Charging) {
            w.tick(MIN).await;
        } else {
            // Each second lets one write out, unless the start has just ended.
            w.tick(SEC).await;
            tokio::select! {
                _ = w.wait_sim(|s| s.writes.len() > len) => {}
                _ = w.wait_status(|s| phase(s) == Some(Phase::Charging)) => {}
            }
        }
    }
    panic!("the dongle never received {n} writes");
}

/// A once charge at 01:30 to 55 %, writes a second apart, stopped gracefully when the dongle
/// has received `n` writes (the next one in flight) and started again: it must end exactly as
/// an uninterrupted charge does.
async fn restart_after_writes(n: usize) {
    let (mut w, before) = spaced_writes_and_a_once_charge_at_0130(55).await;
    w.tick(29 * MIN).await;
    w.tick(MIN).await;
    drive_until_writes(&w, n).await;

    graceful_restart(&mut w).await;

    let end = run_to_the_end(&w, HOUR).await;
    assert!(
        (55..=56).contains(&end.reported_soc),
        "restart after {n} writes: stopped at the target, SOC {}",
        end.reported_soc
    );
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "target_reached").await;
    assert_eq!(entry["origin"], "schedule", "{entry}");
    assert_eq!(
        end.writes.len(),
        WRITES_OF_A_CHARGE,
        "restart after {n} writes: no write was lost or repeated: {:?}",
        written(&end)
    );
}

#[tokio::test]
async fn a_graceful_restart_as_the_schedule_fires_still_charges_to_the_target() {
    restart_after_writes(0).await;
}

#[tokio::test]
async fn a_graceful_restart_at_each_start_write_finishes_that_write_and_then_the_charge() {
    for n in 1..=4 {
        restart_after_writes(n).await;
    }
}

#[tokio::test]
async fn a_graceful_restart_while_charging_goes_on_to_the_target() {
    restart_after_writes(5).await;
}

#[tokio::test]
async fn a_graceful_restart_at_the_stop_and_at_each_restore_write_still_leaves_the_inverter_as_found()
 {
    for n in 6..WRITES_OF_A_CHARGE {
        restart_after_writes(n).await;
    }
}

#[tokio::test]
async fn a_graceful_stop_with_an_unanswered_write_waits_one_write_timeout_then_the_restart_sends_it_again()
 {
    let (mut w, before) = world(Knobs::default()).await;
    once_at_0130(&w, 55).await;
    let asked = w.sim.state().borrow().snapshots_answered;
    w.tick(29 * MIN).await;
    // The settings read a minute ahead are answered before the dongle falls silent.
    w.wait_sim(|s| s.snapshots_answered > asked).await;
    w.sim.set_fault(Fault::Silent);
    w.clock.advance(MIN);
    let s = w.wait_sim(|s| !s.writes.is_empty()).await;
    assert_eq!(s.writes[0].setting, "ACChgSOCLimit");

    let app = w.app.take().unwrap();
    let mut stopping = tokio::spawn(app.shutdown());
    tokio::task::yield_now().await;
    // The stop waits for the write's answer up to its timeout (15 s), not less.
    w.clock.advance(Duration::from_secs(14));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut stopping)
            .await
            .is_err(),
        "the stop waits for the write in flight"
    );
    w.clock.advance(Duration::from_secs(3));
    tokio::time::timeout(GUARD, stopping)
        .await
        .expect("the stop ends after one write timeout")
        .unwrap();

    w.sim.set_fault(Fault::None);
    w.boot().await;
    let end = run_to_the_end(&w, HOUR).await;
    assert_eq!(
        end.writes
            .iter()
            .filter(|r| r.setting == "ACChgSOCLimit")
            .count(),
        3,
        "the unanswered write again after the restart, then the restore: {:?}",
        written(&end)
    );
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

// --- another app, on every firmware ---

#[tokio::test]
async fn on_legacy_firmware_ac_charge_switched_off_by_another_app_ends_the_charge_at_the_next_hold_bank()
 {
    let (w, before) = world(Knobs {
        firmware: Firmware::Legacy,
        ..Knobs::default()
    })
    .await;
    w.tick(MIN).await; // the first hold bank
    charge_now(&w, 90).await;
    minutes(&w, 3).await;
    assert!(w.status().is_charging());

    // Another app switches AC charging off; a legacy dongle says so only in its next bank.
    w.sim.set_hold("ACCharge", HoldValue::Int(0)).unwrap();
    w.tick(MIN).await;
    let st = w.wait_status(|s| !s.is_charging()).await;
    assert_eq!(
        st.session.as_ref().map(|s| s.phase),
        Some(Phase::Stopping),
        "the session puts its other settings back"
    );
    let end = run_to_the_end(&w, 5 * MIN).await;
    let entry = the_one_session_ended_for(&w, "external_override").await;
    assert!(
        entry["detail"].as_str().unwrap().contains("ACCharge"),
        "{entry}"
    );
    assert_eq!(
        end.writes
            .iter()
            .filter(|r| r.setting == "ACCharge")
            .count(),
        1,
        "ACCharge is not written again against the other app: {:?}",
        written(&end)
    );
    assert_left_as_found(&w, &before);
}

#[tokio::test]
async fn a_dongle_back_from_silence_with_ac_charge_off_ends_the_charge_as_an_override() {
    let (w, before) = world(Knobs::default()).await;
    charge_now(&w, 90).await;
    // Reports 20 s apart, so that only the silence below counts as one.
    for _ in 0..9 {
        w.tick(20 * SEC).await;
    }

    // The dongle goes quiet (a reboot); it comes back with AC charging off and says nothing
    // of it until asked.
    w.sim.set_fault(Fault::Silent);
    w.clock.advance(50 * SEC);
    w.sim.set_hold("ACCharge", HoldValue::Int(0)).unwrap();
    w.sim.set_fault(Fault::None);
    w.tick(SEC).await;
    w.wait_status(|s| !s.is_charging()).await;
    run_to_the_end(&w, 5 * MIN).await;
    the_one_session_ended_for(&w, "external_override").await;
    assert_left_as_found(&w, &before);
}

#[tokio::test]
async fn hold_banks_that_echo_the_sessions_own_writes_never_end_it() {
    let (w, _) = world(Knobs {
        firmware: Firmware::Legacy,
        ..Knobs::default()
    })
    .await;
    w.tick(MIN).await; // the first hold bank
    charge_now(&w, 60).await;
    // A new target mid-charge moves the SOC limit; banks keep reporting every minute.
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 58}))
        .await;
    assert_eq!((code, &body["success"]), (200, &json!(true)), "{body}");
    let end = run_to_the_end(&w, HOUR).await;
    assert!((58..=59).contains(&end.reported_soc));
    the_one_session_ended_for(&w, "target_reached").await;
}

// --- the status follows the stop ---

#[tokio::test]
async fn the_target_and_a_once_schedule_are_gone_as_soon_as_ac_charge_is_off() {
    let (w, _) = spaced_writes_and_a_once_charge_at_0130(53).await;
    w.tick(29 * MIN).await;
    w.tick(MIN).await;
    drive_until_writes(&w, 6).await;
    // ACCharge = 0 is written; four restore writes are still to come, a second apart.
    let st = w.wait_status(|s| !s.is_charging()).await;
    assert_eq!(st.session.as_ref().map(|s| s.phase), Some(Phase::Stopping));
    let (_, status) = w.get("/api/charge/status").await;
    assert_eq!(status["is_charging"], false, "{status}");
    assert_eq!(status["target_soc"], Value::Null, "{status}");
    assert_eq!(status["scheduled_next"], Value::Null, "{status}");
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched, Value::Null, "the once schedule is gone");
    let (_, status) = w.get("/api/charging/status").await;
    assert_eq!(status["target_soc"], Value::Null, "{status}");
    assert_eq!(status["mode"], Value::Null, "{status}");
    run_to_the_end(&w, MIN).await;
}

// --- SOC plausibility ---

#[tokio::test]
async fn a_single_soc_spike_does_not_end_the_charge_but_two_consistent_readings_do() {
    let (w, _) = world(Knobs {
        soc: 30.0,
        ..Knobs::default()
    })
    .await;
    let peer = Peer::connect(&w).await;
    charge_now(&w, 80).await;
    // Reports 20 s apart: a dongle heard again after longer is asked for its settings, and
    // the (true) SOC in that answer would come at a moment of its own.
    for _ in 0..6 {
        w.tick(20 * SEC).await;
    }

    let spike = json!({"event": "input_delta", "ts": 1, "payload": {"SOC": 100}});
    let asked = w.sim.state().borrow().snapshots_answered;
    w.clock.advance(SEC);
    peer.publish("input", spike.clone()).await;
    let now = w.clock.clock().now();
    let st = w.wait_status(|s| s.last_telemetry == Some(now)).await;
    assert!(st.is_charging(), "one reading of 100 % does not end it");
    assert_ne!(st.soc.map(|s| s.get()), Some(100), "nor is it shown");
    // The doubt makes the service ask the dongle for its readings; the answer comes before
    // the dongle's next report (one connection keeps its order), so the spikes below are not
    // split by it.
    w.wait_sim(|s| s.snapshots_answered > asked).await;
    // The next real reading is believed, and the charge goes on.
    w.tick(20 * SEC).await;
    assert!(w.status().is_charging());
    assert!(history(&w).await.is_empty());

    // Two readings that agree are the battery's word, however far they jump.
    for _ in 0..2 {
        w.clock.advance(SEC);
        peer.publish("input", spike.clone()).await;
        let now = w.clock.clock().now();
        w.wait_status(|s| s.last_telemetry == Some(now)).await;
    }
    let st = w.wait_status(|s| !s.is_charging()).await;
    assert_eq!(st.soc.map(|s| s.get()), Some(100));
    run_to_the_end(&w, MIN).await;
    the_one_session_ended_for(&w, "target_reached").await;
}

// --- refused starts and restores ---

#[tokio::test]
async fn a_refused_charge_now_is_followed_at_once_by_one_that_succeeds() {
    let (w, before) = world(Knobs::default()).await;
    w.sim.set_fault(Fault::RejectWrites);
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 60}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], false, "{body}");
    let s = w.sim.state().borrow().clone();
    assert_eq!(
        s.writes.len(),
        1,
        "the refused write is not 'restored': {:?}",
        written(&s)
    );

    w.sim.set_fault(Fault::None);
    charge_now(&w, 60).await;
    let end = run_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&end.reported_soc));
    assert_left_as_found(&w, &before);
    let h = history(&w).await;
    assert_eq!(h.len(), 2, "{h:#?}");
}

#[tokio::test]
async fn a_charge_now_during_a_failing_restore_takes_over_and_still_leaves_the_inverter_as_found() {
    let (w, before) = world(Knobs::default()).await;
    charge_now(&w, 53).await;
    // The charge reaches its target; the dongle then refuses the restore writes.
    loop {
        w.tick(MIN).await;
        if !w.status().is_charging() {
            break;
        }
        if w.status().session.is_none() {
            panic!("the session ended before its restore");
        }
    }
    w.sim.set_fault(Fault::RejectWrites);
    w.tick(SEC).await;
    w.wait_sim(|s| {
        s.writes
            .iter()
            .any(|r| r.reply != solar_charging_backend::sim::dongle::Reply::Success)
    })
    .await;
    assert!(w.status().session.is_some(), "the restore is being retried");

    w.sim.set_fault(Fault::None);
    let enable = post_later(&w, "/api/charging/enable", json!({"target_soc": 56}));
    let (code, body) = answer(enable).await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
    assert!(ac_on(&w.sim.state().borrow()));

    let end = run_to_the_end(&w, HOUR).await;
    assert!((56..=57).contains(&end.reported_soc));
    assert_left_as_found(&w, &before);
    let h = history(&w).await;
    assert_eq!(h.len(), 2, "{h:#?}");
    assert!(
        h.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("restores them at its end"))),
        "the first says it handed its restore over: {h:#?}"
    );
}

// --- the first write on time ---

#[tokio::test]
async fn a_scheduled_charge_on_a_slow_legacy_dongle_writes_at_the_minute() {
    let (w, _) = world(Knobs {
        firmware: Firmware::Legacy,
        // Like much real firmware, the bank lacks a register the start needs to read.
        bank_omits: &["ubBatChgcontrol"],
        ..Knobs::default()
    })
    .await;
    w.tick(MIN).await; // the first hold bank
    once_at_0130(&w, 60).await;
    w.tick(28 * MIN).await;
    // The read ahead waits its 10 s for the missing register a minute before the start...
    w.tick(10 * SEC).await;
    w.tick(50 * SEC).await;
    // ...so at 01:30:00, with no more time passing, the first write is out.
    let s = w.wait_sim(|s| !s.writes.is_empty()).await;
    assert_eq!(s.writes[0].setting, "ACChgSOCLimit");
    w.wait_sim(ac_on).await;
}

// --- health and supervision ---

#[tokio::test]
async fn health_answers_503_degraded_with_a_reason_when_the_engine_hangs() {
    let (w, _) = world(Knobs::default()).await;
    let (code, body) = w.get("/api/health").await;
    assert_eq!((code, &body["status"]), (200, &json!("ok")), "{body}");
    assert!(body.get("reason").is_none());

    w.app
        .as_ref()
        .unwrap()
        .engine
        .inject(EngineFault::Hang)
        .await;
    let http = w.http.clone();
    let url = format!("{}/api/health", w.base);
    let mut health = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    // The ping waits 2 s of the service's clock: move it until the answer comes.
    let (code, body) = tokio::time::timeout(GUARD, async {
        loop {
            w.clock.advance(SEC);
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), &mut health).await {
                return r.unwrap();
            }
        }
    })
    .await
    .expect("health answers");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert!(
        body["reason"].as_str().unwrap().contains("engine"),
        "{body}"
    );
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["mqtt_connected"].is_boolean());
}

#[tokio::test]
async fn the_service_stops_with_an_error_naming_the_engine_when_the_engine_panics() {
    let (mut w, _) = world(Knobs::default()).await;
    let app = w.app.take().unwrap();
    let engine = app.engine.clone();
    let running = tokio::spawn(app.run_until(std::future::pending()));
    engine.inject(EngineFault::Panic).await;
    let result = tokio::time::timeout(GUARD, running)
        .await
        .expect("the service stops")
        .unwrap();
    let err = result.expect_err("a dead engine is an error, so the process exits non-zero");
    let msg = err.to_string();
    assert!(msg.contains("engine task panicked"), "{msg}");
    assert!(msg.contains("made to panic"), "{msg}");
}
