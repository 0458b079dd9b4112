//! Telling the owner, end to end: a real HTTP/2 TLS stand-in for Apple that verifies the
//! provider token, a real HTTP server for ntfy and a signed webhook, the service on a manual
//! clock and the simulated dongle.

use std::time::Duration;

use serde_json::{Value, json};
use solar_charging_backend::sim::dongle::Fault;

use crate::apns_stand_in::{Answer, ApnsStandIn};
use crate::harness::{BrokerKind, GUARD, Setup, World, ac_on};
use crate::hooks_stand_in::HooksStandIn;

const MIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const OTHER_TOKEN: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const SECRET: &str = "s3cret-hmac-key";
const NTFY_TOKEN: &str = "tk_ntfy_private";

struct Channels {
    apns: ApnsStandIn,
    hooks: HooksStandIn,
    _dir: tempfile::TempDir,
}

impl Channels {
    async fn start() -> Channels {
        let dir = tempfile::tempdir().unwrap();
        Channels {
            apns: ApnsStandIn::start(dir.path()).await,
            hooks: HooksStandIn::start(Some(SECRET)).await,
            _dir: dir,
        }
    }

    /// The `apns:` and `notifications:` sections pointing at the stand-ins.
    fn sections(&self) -> String {
        format!(
            "{}notifications:\n  ntfy:\n    url: \"{url}/ntfy/battery-topic\"\n    token: {NTFY_TOKEN}\n  \
             webhooks:\n    - url: \"{url}/hook/1\"\n      secret: {SECRET}\n",
            self.apns.config_yaml(),
            url = self.hooks.url,
        )
    }

    fn no_violations(&self) {
        assert_eq!(self.apns.violations(), Vec::<String>::new(), "APNs checks");
        assert_eq!(
            self.hooks.violations(),
            Vec::<String>::new(),
            "webhook checks"
        );
    }
}

async fn world(c: &Channels) -> World {
    World::start(Setup {
        sections: c.sections(),
        ..Setup::default()
    })
    .await
}

async fn register(w: &World, token: &str, preferences: Value) {
    let (code, body) = w
        .post(
            "/api/device/register",
            json!({"device_token": token, "preferences": preferences}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
}

/// Charges now to 52 % and waits until the charge is over (the simulated battery climbs a
/// point every few minutes).
async fn charge_to_52(w: &World) {
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 52}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    w.run_until(MIN, Duration::from_secs(3600), |s| !ac_on(s))
        .await;
    w.wait_status(|s| s.session.is_none()).await;
}

/// Lets `d` pass in steps short enough that the dongle never counts as silent.
async fn pass(w: &World, d: Duration) {
    let step = 2 * MIN;
    let mut gone = Duration::ZERO;
    while gone < d {
        w.tick(step).await;
        gone += step;
    }
}

/// Waits until no channel has anything pending: from then on nothing more can be sent.
async fn settled(w: &World) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (_, body) = w.get("/api/notifications").await;
        let channels = body["channels"].as_array().cloned().unwrap_or_default();
        if channels.iter().all(|c| c["pending"] == 0) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {body}"
        );
        tokio::task::yield_now().await;
    }
}

fn types(apns: &ApnsStandIn) -> Vec<String> {
    apns.received()
        .iter()
        .map(|r| r.payload["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_charge_now_run_tells_each_channel_of_its_start_and_end_exactly_once() {
    let c = Channels::start().await;
    let w = world(&c).await;
    register(&w, TOKEN, json!({"ac_charging_notifications": true})).await;
    charge_to_52(&w).await;

    let pushes = c.apns.wait_received(2).await;
    let ntfy = c.hooks.wait_received("/ntfy/", 2).await;
    let hooks = c.hooks.wait_received("/hook/", 2).await;
    settled(&w).await;
    // An hour later nothing more has gone out.
    pass(&w, 60 * MIN).await;
    settled(&w).await;
    assert_eq!(types(&c.apns), ["charging_started", "charge_complete"]);
    assert_eq!(c.hooks.received("/ntfy/").len(), 2);
    assert_eq!(c.hooks.received("/hook/").len(), 2);
    c.no_violations();

    // The app gets the old backend's payloads, as alerts.
    assert_eq!(pushes[0].token, TOKEN);
    assert_eq!(pushes[0].push_type, "alert");
    assert_eq!(pushes[0].priority, "10");
    assert_eq!(
        pushes[0].payload,
        json!({"aps": {"content-available": 1,
                       "alert": {"title": "Charging Started", "body": "Charging from 50% to 52%"}},
               "type": "charging_started", "target_soc": 52, "current_soc": 50})
    );
    assert_eq!(
        pushes[1].payload,
        json!({"aps": {"content-available": 1,
                       "alert": {"title": "Charging Complete", "body": "Battery reached 52% (target: 52%)"},
                       "sound": "default"},
               "type": "charge_complete", "target_soc": 52, "final_soc": 52})
    );

    // ntfy: title, body, priority, tags and the token.
    assert_eq!(ntfy[1].header("title"), Some("Charging Complete"));
    assert_eq!(ntfy[1].text(), "Battery reached 52% (target: 52%)");
    assert_eq!(ntfy[1].header("priority"), Some("3"));
    assert_eq!(
        ntfy[1].header("authorization"),
        Some(format!("Bearer {NTFY_TOKEN}").as_str())
    );
    assert!(ntfy[1].header("tags").unwrap().contains("battery"));

    // The webhook: signed (checked by the stand-in), every field, a stable id.
    let start = hooks[0].json();
    let end = hooks[1].json();
    assert_eq!(start["event"], "charge_started");
    assert_eq!(end["event"], "charge_complete");
    assert_eq!(end["stop_reason"], "target_reached");
    assert_eq!(end["soc"], 52);
    assert_eq!(end["target_soc"], 52);
    assert_eq!(end["started_at"], start["started_at"]);
    assert!(end["energy_wh"].as_f64().unwrap() > 0.0, "{end}");
    // One charge's events share its id, so a receiver can tell them apart and drop a repeat.
    let session = start["id"]
        .as_str()
        .unwrap()
        .strip_suffix("-charge_started");
    assert_eq!(
        end["id"].as_str().unwrap().strip_suffix("-charge_complete"),
        session,
        "{start} {end}"
    );
}

#[tokio::test]
async fn a_crash_between_the_event_and_its_delivery_still_delivers_it_once() {
    let c = Channels::start().await;
    let mut w = world(&c).await;
    register(&w, TOKEN, json!({})).await;
    c.apns.set_down(true);
    c.hooks.set_down(true);
    charge_to_52(&w).await;
    // Tried and failed on every channel: the events wait in the outbox.
    let (_, body) = w.get("/api/notifications").await;
    for ch in body["channels"].as_array().unwrap() {
        assert!(ch["pending"].as_u64().unwrap() >= 1, "{body}");
    }
    assert!(c.hooks.attempts() >= 2, "ntfy and the webhook were tried");
    w.kill();
    c.apns.set_down(false);
    c.hooks.set_down(false);
    w.boot().await;
    w.tick(MIN).await;
    c.apns.wait_received(2).await;
    c.hooks.wait_received("/ntfy/", 2).await;
    c.hooks.wait_received("/hook/", 2).await;
    settled(&w).await;
    pass(&w, 30 * MIN).await;
    settled(&w).await;
    assert_eq!(types(&c.apns), ["charging_started", "charge_complete"]);
    let events: Vec<Value> = c
        .hooks
        .received("/hook/")
        .iter()
        .map(|h| h.json()["event"].clone())
        .collect();
    assert_eq!(events, ["charge_started", "charge_complete"]);
    assert_eq!(c.hooks.received("/ntfy/").len(), 2);
    c.no_violations();
}

#[tokio::test]
async fn a_channel_that_is_down_gets_its_events_once_it_is_back_and_holds_up_no_other() {
    let c = Channels::start().await;
    let w = world(&c).await;
    register(&w, TOKEN, json!({})).await;
    c.hooks.set_down(true);
    charge_to_52(&w).await;
    c.apns.wait_received(2).await;
    let (_, body) = w.get("/api/notifications").await;
    let ntfy = body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["kind"] == "ntfy")
        .unwrap()
        .clone();
    assert_eq!(ntfy["last_delivery"]["ok"], false, "{body}");
    assert!(
        ntfy["last_delivery"]["detail"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{body}"
    );
    assert!(ntfy["pending"].as_u64().unwrap() >= 1);

    c.hooks.set_down(false);
    // The backoff has grown while the charge ran; it is at most 15 minutes.
    pass(&w, 30 * MIN).await;
    c.hooks.wait_received("/ntfy/", 2).await;
    c.hooks.wait_received("/hook/", 2).await;
    let body = settled(&w).await;
    assert_eq!(c.hooks.received("/ntfy/").len(), 2);
    assert_eq!(c.hooks.received("/hook/").len(), 2);
    for ch in body["channels"].as_array().unwrap() {
        assert_eq!(ch["last_delivery"]["ok"], true, "{body}");
    }
    c.no_violations();
}

#[tokio::test]
async fn a_token_apple_calls_unregistered_is_removed_with_what_waited_for_it() {
    let c = Channels::start().await;
    let w = world(&c).await;
    register(&w, TOKEN, json!({})).await;
    register(&w, OTHER_TOKEN, json!({})).await;
    c.apns.answer(TOKEN, Answer::Unregistered);
    charge_to_52(&w).await;
    c.apns.wait_received(2).await;
    settled(&w).await;
    let (_, status) = w.get("/api/device/status").await;
    assert_eq!(
        status,
        json!({"apns_enabled": true, "registered_devices": 1})
    );
    let file = std::fs::read_to_string(w.data_path("devices.json")).unwrap();
    assert!(
        !file.contains(TOKEN) && file.contains(OTHER_TOKEN),
        "{file}"
    );
    assert!(
        c.apns.received().iter().all(|r| r.token == OTHER_TOKEN),
        "the live phone got both"
    );
    assert_eq!(
        c.apns.attempts(),
        3,
        "the dead token was tried once, not again for the second event"
    );
    c.no_violations();
}

#[tokio::test]
async fn registrations_and_preferences_survive_a_restart() {
    let c = Channels::start().await;
    let mut w = world(&c).await;
    register(&w, TOKEN, json!({"ac_charging_notifications": true})).await;
    register(
        &w,
        OTHER_TOKEN,
        json!({"ac_charging_notifications": false, "future": true}),
    )
    .await;
    w.shutdown().await;
    w.boot().await;
    let (_, status) = w.get("/api/device/status").await;
    assert_eq!(status["registered_devices"], 2);
    charge_to_52(&w).await;
    c.apns.wait_received(2).await;
    settled(&w).await;
    assert!(
        c.apns.received().iter().all(|r| r.token == TOKEN),
        "the phone that switched charge notifications off gets none"
    );
    let file = std::fs::read_to_string(w.data_path("devices.json")).unwrap();
    assert!(
        file.contains("\"future\": true"),
        "unknown preferences are kept: {file}"
    );
}

/// The raw answer of a request, for byte-for-byte comparisons.
async fn raw(w: &World, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
    let mut req = w.http.request(method, format!("{}{path}", w.base));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = tokio::time::timeout(GUARD, req.send())
        .await
        .expect("answered")
        .expect("sent");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_device_endpoints_answer_as_the_old_backend_byte_for_byte() {
    use reqwest::Method;
    let reg = |t: &str| Some(json!({"device_token": t}));

    // No `apns:` section at all.
    let w = World::start(Setup::default()).await;
    assert_eq!(
        raw(&w, Method::POST, "/api/device/register", reg(TOKEN)).await,
        (
            200,
            r#"{"success":false,"message":"Push notifications not configured on server"}"#.into()
        )
    );
    assert_eq!(
        raw(&w, Method::DELETE, "/api/device/unregister", reg(TOKEN)).await,
        (
            200,
            r#"{"success":false,"message":"Push notifications not configured"}"#.into()
        )
    );
    assert_eq!(
        raw(&w, Method::GET, "/api/device/status", None).await,
        (
            200,
            r#"{"apns_enabled":false,"registered_devices":0}"#.into()
        )
    );

    // The old file's section, switched off.
    let off = World::start(Setup {
        sections: "apns:\n  enabled: false\n  key_path: /nowhere.p8\n  key_id: ABCDEFGHIJ\n  team_id: ABCDEFGHIJ\n  bundle_id: com.generouscorp.Solar\n".into(),
        ..Setup::default()
    })
    .await;
    assert_eq!(
        raw(&off, Method::POST, "/api/device/register", reg(TOKEN)).await,
        (
            200,
            r#"{"success":false,"message":"Push notifications not enabled"}"#.into()
        )
    );

    // Set up and on.
    let c = Channels::start().await;
    let on = world(&c).await;
    for bad in ["", "xyz", "abc"] {
        assert_eq!(
            raw(&on, Method::POST, "/api/device/register", reg(bad)).await,
            (
                200,
                r#"{"success":false,"message":"Invalid device token format"}"#.into()
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        raw(&on, Method::POST, "/api/device/register", reg(TOKEN)).await,
        (
            200,
            r#"{"success":true,"message":"Device registered for push notifications"}"#.into()
        )
    );
    assert_eq!(
        raw(&on, Method::POST, "/api/device/register", reg(TOKEN)).await,
        (
            200,
            r#"{"success":true,"message":"Device registered for push notifications"}"#.into()
        ),
        "registering again succeeds"
    );
    assert_eq!(
        raw(&on, Method::GET, "/api/device/status", None).await,
        (
            200,
            r#"{"apns_enabled":true,"registered_devices":1}"#.into()
        )
    );
    assert_eq!(
        raw(&on, Method::DELETE, "/api/device/unregister", reg(TOKEN)).await,
        (
            200,
            r#"{"success":true,"message":"Device unregistered"}"#.into()
        )
    );
    assert_eq!(
        raw(&on, Method::DELETE, "/api/device/unregister", reg(TOKEN)).await,
        (
            200,
            r#"{"success":false,"message":"Device token not found"}"#.into()
        )
    );

    // A body without a string token is a 422 in FastAPI's shape.
    let (code, body) = on.post("/api/device/register", json!({})).await;
    assert_eq!(code, 422);
    assert_eq!(body["detail"][0]["type"], "missing");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "device_token"]));
    let (code, body) = on
        .post("/api/device/register", json!({"device_token": 1234}))
        .await;
    assert_eq!(code, 422);
    assert_eq!(body["detail"][0]["type"], "string_type");
    let (code, body) = on
        .post(
            "/api/device/register",
            json!({"device_token": TOKEN, "preferences": {"ac_charging_notifications": "maybe"}}),
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "preferences", "ac_charging_notifications"])
    );
}

#[tokio::test]
async fn the_channels_are_shown_without_secrets_and_a_test_reaches_each_one() {
    let c = Channels::start().await;
    let w = world(&c).await;
    let (_, body) = w.post_empty("/api/notifications/test").await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{body}");
    let apns = &results[0];
    assert_eq!(apns["ok"], false, "no phone registered yet: {body}");
    assert!(apns["detail"].as_str().unwrap().contains("register"));
    assert_eq!(results[1]["ok"], true, "{body}");
    assert_eq!(results[2]["ok"], true, "{body}");
    assert_eq!(c.hooks.received("/hook/")[0].json()["event"], "test");

    register(&w, TOKEN, json!({})).await;
    c.hooks.set_down(true);
    let (_, body) = w.post_empty("/api/notifications/test").await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], true, "{body}");
    assert_eq!(c.apns.received()[0].payload["type"], "test");
    for r in &results[1..] {
        assert_eq!(r["ok"], false, "{body}");
        assert!(r["detail"].as_str().unwrap().contains("503"), "{body}");
    }

    let (code, text) = w.get_text("/api/notifications").await;
    assert_eq!(code, 200);
    let view: Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<&str> = view["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["apns", "ntfy", "webhook"]);
    assert_eq!(view["channels"][1]["events"].as_array().unwrap().len(), 9);
    assert_eq!(view["channels"][1]["last_delivery"]["event"], "test");
    for secret in [SECRET, NTFY_TOKEN, "battery-topic", TOKEN, "/hook/1"] {
        assert!(!text.contains(secret), "{secret} shown in {text}");
    }
    c.no_violations();
}

#[tokio::test]
async fn a_dongle_gone_silent_is_told_once_and_its_return_too() {
    let c = Channels::start().await;
    let w = world(&c).await;
    w.silence_dongle().await;
    // Past the stale limit (90 s) and the minute a brief silence is let pass.
    w.clock.advance(4 * MIN);
    let told = c.hooks.wait_received("/hook/", 1).await;
    assert_eq!(told[0].json()["event"], "dongle_offline");
    assert!(
        told[0].json()["detail"]
            .as_str()
            .unwrap()
            .contains("nothing has been heard")
    );
    let ntfy = c.hooks.wait_received("/ntfy/", 1).await;
    assert_eq!(
        ntfy[0].header("priority"),
        Some("4"),
        "a problem is sent loud"
    );
    for _ in 0..10 {
        w.clock.advance(MIN);
    }
    w.sim.set_fault(Fault::None);
    w.tick(MIN).await;
    settled(&w).await;
    let events: Vec<String> = c
        .hooks
        .received("/hook/")
        .iter()
        .map(|h| h.json()["event"].as_str().unwrap().to_string())
        .collect();
    // Told once per change: offline and online alternate, and it ends heard again.
    assert!(events.len() >= 2, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        let want = if i % 2 == 0 {
            "dongle_offline"
        } else {
            "dongle_online"
        };
        assert_eq!(e, want, "{events:?}");
    }
    assert_eq!(events.last().unwrap(), "dongle_online", "{events:?}");
}

#[tokio::test]
async fn the_inverter_settings_are_shown_as_last_read() {
    // Nothing heard yet: every value unknown.
    let mut down = World::start(Setup {
        broker: BrokerKind::Down,
        ..Setup::default()
    })
    .await;
    let (_, before) = down.get("/api/inverter/status").await;
    assert_eq!(
        before,
        json!({"ac_charge_enabled": null, "ac_charge_mode": null, "ac_charge_mode_name": null,
               "ac_charge_soc_limit": null, "time_windows": [], "data_available": false})
    );
    down.shutdown().await;

    let w = World::start(Setup::default()).await;
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 80}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    let (_, st) = w.get("/api/inverter/status").await;
    assert_eq!(st["data_available"], true, "{st}");
    assert_eq!(st["ac_charge_enabled"], true, "{st}");
    assert_eq!(st["ac_charge_soc_limit"], 80, "{st}");
    assert_eq!(st["ac_charge_mode"], 2, "{st}");
    assert_eq!(st["ac_charge_mode_name"], "Time + SOC", "{st}");
    assert_eq!(st["time_windows"][0]["window"], 1, "{st}");
    assert_eq!(st["time_windows"][0]["start"], "01:00", "{st}");
}
