use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::{ManualClock, Mono};

const LEGACY: &str = "dongle-40:4C:CA:12:34:56";
const MODERN: &str = "dongle-40:4C:CA:AB:CD:EF";

fn live<'a>(topic: &'a str, payload: &'a str) -> (&'a str, &'a [u8], bool) {
    (topic, payload.as_bytes(), false)
}

fn retained<'a>(topic: &'a str, payload: &'a str) -> (&'a str, &'a [u8], bool) {
    (topic, payload.as_bytes(), true)
}

fn only(findings: &Findings) -> &Found {
    assert_eq!(findings.dongles.len(), 1, "{findings:#?}");
    &findings.dongles[0]
}

#[test]
fn legacy_banks_give_the_generation_the_soc_the_version_and_the_firmware_code() {
    let topics = [
        format!("{LEGACY}/inputbank1"),
        format!("{LEGACY}/inputbank2"),
        format!("{LEGACY}/holdbank1"),
        format!("{LEGACY}/status"),
    ];
    let f = collect(
        "dongle-other",
        [
            live(
                &topics[0],
                r#"{"Serialnumber":"BA1","payload":{"SOC":57,"Pcharge":0},"events":{}}"#,
            ),
            // A later bank without SOC keeps the SOC already seen.
            live(
                &topics[1],
                r#"{"Serialnumber":"BA1","payload":{"Vbat":"52.1"}}"#,
            ),
            live(
                &topics[2],
                r#"{"Serialnumber":"BA1","payload":{"FWCode":"FAAB","ACCharge":0}}"#,
            ),
            live(&topics[3], r#"{"version":"4.2.1.98S3","uptime":12}"#),
        ],
    );
    let d = only(&f);
    assert_eq!(d.prefix, LEGACY);
    assert_eq!(d.generation, Generation::Legacy);
    assert_eq!(d.version.as_deref(), Some("4.2.1.98S3"));
    assert_eq!(d.soc.map(Soc::get), Some(57));
    assert_eq!(d.firmware_code.as_deref(), Some("FAAB"));
    assert_eq!(d.messages, 4);
    assert!(!d.configured && !d.retained_only);
}

#[test]
fn firmware_4_3_topics_give_the_generation_the_last_soc_and_the_version() {
    let input = format!("{MODERN}/input");
    let status = format!("{MODERN}/status");
    let code = format!("{MODERN}/firmwarecode/response");
    let snap = format!("{MODERN}/snap/hold");
    let f = collect(
        MODERN,
        [
            live(
                &input,
                r#"{"event":"input_state","ts":1717000000,"payload":{"SOC":"61","Pcharge":3000}}"#,
            ),
            live(
                &input,
                r#"{"event":"input_delta","ts":1717000005,"payload":{"SOC":62}}"#,
            ),
            live(
                &input,
                r#"{"event":"input_delta","ts":1717000010,"payload":{"Pcharge":2900}}"#,
            ),
            live(&status, r#"{"version":"4.3.0.111S3"}"#),
            live(&code, r#"[{"FWCode":"EAAB"}]"#),
            live(
                &snap,
                r#"{"event":"hold_state","payload":{"ACChgSOCLimit":90}}"#,
            ),
        ],
    );
    let d = only(&f);
    assert_eq!(d.generation, Generation::Modern);
    assert_eq!(d.version.as_deref(), Some("4.3.0.111S3"));
    assert_eq!(d.soc.map(Soc::get), Some(62));
    assert_eq!(d.firmware_code.as_deref(), Some("EAAB"));
    assert_eq!(d.messages, 6);
    assert!(d.configured, "the configured prefix is marked");
    assert!(f.configured_seen());
}

#[test]
fn a_status_version_alone_tells_the_generation() {
    let f = collect(
        "x",
        [live("dongle-1/status", r#"{"version":"4.3.0.111S3"}"#)],
    );
    assert_eq!(only(&f).generation, Generation::Modern);
    let f = collect("x", [live("dongle-1/status", r#"{"version":"3.9.5"}"#)]);
    assert_eq!(only(&f).generation, Generation::Legacy);
    let f = collect("x", [live("dongle-1/response", r#"{"status":"success"}"#)]);
    assert_eq!(only(&f).generation, Generation::Unknown);
}

#[test]
fn other_programs_topics_and_the_services_own_publishes_are_not_dongles() {
    let f = collect(
        "dongle-40:4C:CA:12:34:56",
        [
            // Home Assistant's birth message and a discovery config.
            live("homeassistant/status", "online"),
            retained(
                "homeassistant/sensor/solar/soc/config",
                r#"{"name":"SOC","state_topic":"solar_charging/solar/state"}"#,
            ),
            // This service's own Home Assistant topics.
            retained("solar_charging/solar/availability", "online"),
            retained("solar_charging/solar/state", r#"{"soc":57}"#),
            // Other devices with an availability or a status of their own.
            retained("zigbee2mqtt/Kitchen lamp/availability", "online"),
            live("esphome-garage/status", "online"),
            live("shellies/plug/status", r#"{"relay":"on"}"#),
            // What the service publishes under a prefix, even a wrong one.
            live("dongle-wrong/update", r#"{"setting":"ACCharge","value":1}"#),
            live("dongle-wrong/snapshot/request", r#"{"what":"all"}"#),
            live("dongle-wrong/firmwarecode/request", "{}"),
            live("no-slash-at-all", "{}"),
            live("/inputbank1", r#"{"SOC":1}"#),
        ],
    );
    assert!(f.dongles.is_empty(), "{:#?}", f.dongles);
    assert_eq!(f.other_messages, 12);
    let (lines, seen) = report(&f, Duration::from_secs(30));
    assert!(!seen);
    let text = lines.join("\n");
    assert!(
        text.contains("no dongle published on this broker in 30 s (12 messages on other topics)"),
        "{text}"
    );
    assert!(
        text.contains(
            "mqtt.dongle_prefix is \"dongle-40:4C:CA:12:34:56\", which nothing published under."
        ),
        "{text}"
    );
}

#[test]
fn an_impossible_soc_is_not_shown_and_garbage_does_not_make_a_dongle() {
    let f = collect(
        "x",
        [
            live("dongle-1/inputbank1", r#"{"payload":{"SOC":250}}"#),
            live("dongle-2/inputbank1", "SOC=75"),
        ],
    );
    let d = only(&f);
    assert_eq!(d.prefix, "dongle-1");
    assert_eq!(d.soc, None);
    assert_eq!(f.other_messages, 1, "the garbage is counted, not listed");
}

#[test]
fn the_longest_known_suffix_decides_the_prefix_even_one_with_slashes() {
    let f = collect(
        "x",
        [
            live("site/dongle-1/inputbank1", r#"{"SOC":40}"#),
            live("dongle-2/snap/input", r#"{"payload":{"SOC":41}}"#),
            live(
                "dongle-3/setting/updated",
                r#"{"setting":"ACCharge","value":"1"}"#,
            ),
        ],
    );
    let prefixes: Vec<&str> = f.dongles.iter().map(|d| d.prefix.as_str()).collect();
    assert_eq!(prefixes, ["dongle-2", "dongle-3", "site/dongle-1"]);
    assert_eq!(f.get("dongle-2").unwrap().generation, Generation::Modern);
}

#[test]
fn the_configured_prefix_is_listed_on_any_message_and_a_retained_one_says_the_dongle_is_quiet() {
    // Only a retained availability under the configured prefix: listed, marked, but the
    // dongle itself said nothing during the listen.
    let f = collect(
        LEGACY,
        [
            retained(&format!("{LEGACY}/availability"), "offline"),
            live(&format!("{MODERN}/inputbank1"), r#"{"SOC":80}"#),
        ],
    );
    let configured = f.get(LEGACY).expect("listed");
    assert!(configured.configured && configured.retained_only);
    assert_eq!(configured.online, Some(false));
    assert!(f.configured_seen());
    let (lines, seen) = report(&f, Duration::from_secs(30));
    assert!(seen, "the prefix is right, the dongle offline");
    let text = lines.join("\n");
    assert!(text.contains("says it is offline"), "{text}");
    assert!(
        text.contains(&format!(
            "the dongle published nothing new in 30 s (is it offline, or renamed to {MODERN:?}?)"
        )),
        "{text}"
    );
}

#[test]
fn the_suggestion_is_the_same_id_in_another_case_else_the_closest_spelling() {
    let f = collect(
        "dongle-40:4c:ca:12:34:56",
        [
            live(&format!("{MODERN}/input"), r#"{"SOC":1}"#),
            live(&format!("{LEGACY}/inputbank1"), r#"{"SOC":2}"#),
        ],
    );
    assert!(!f.configured_seen());
    assert_eq!(f.suggestion().map(|d| d.prefix.as_str()), Some(LEGACY));
    let (lines, seen) = report(&f, Duration::from_secs(30));
    assert!(!seen);
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "mqtt.dongle_prefix is \"dongle-40:4c:ca:12:34:56\", which nothing published under; did you mean {LEGACY:?}?"
        )
    );
    // A live dongle is a better guess than a name the broker only remembers.
    let f = collect(
        "dongle-40:4C:CA:12:34:57",
        [
            retained(&format!("{LEGACY}/inputbank1"), r#"{"SOC":2}"#),
            live(&format!("{MODERN}/input"), r#"{"SOC":1}"#),
        ],
    );
    assert_eq!(f.suggestion().map(|d| d.prefix.as_str()), Some(MODERN));
}

#[test]
fn the_report_lists_each_dongle_on_one_line_and_says_when_the_configured_one_publishes() {
    let f = collect(
        LEGACY,
        [
            live(&format!("{LEGACY}/inputbank1"), r#"{"payload":{"SOC":57}}"#),
            live(&format!("{LEGACY}/status"), r#"{"version":"4.2.1.98S3"}"#),
            live(&format!("{MODERN}/input"), r#"{"payload":{"SOC":90}}"#),
        ],
    );
    let (lines, seen) = report(&f, Duration::from_secs(30));
    assert!(seen);
    assert_eq!(
        lines,
        [
            format!(
                "{LEGACY}  legacy firmware (inputbankN/holdbankN), version 4.2.1.98S3, SOC 57 %, 2 messages  <- mqtt.dongle_prefix"
            ),
            format!("{MODERN}  firmware 4.3+ (input/hold/status), SOC 90 %, 1 message"),
            format!("mqtt.dongle_prefix is {LEGACY:?}: the dongle publishes under it"),
        ]
    );
}

#[test]
fn the_number_of_prefixes_kept_apart_is_bounded() {
    let mut c = Collector::new("x");
    for i in 0..MAX_PREFIXES + 10 {
        c.offer(&format!("device-{i}/availability"), b"online", true);
    }
    assert_eq!(c.seen.len(), MAX_PREFIXES);
    let f = c.findings();
    assert!(f.dongles.is_empty());
    assert_eq!(f.other_messages, (MAX_PREFIXES + 10) as u64);
}

#[test]
fn edit_distance_counts_single_character_edits() {
    assert_eq!(edit_distance("", ""), 0);
    assert_eq!(edit_distance("abc", "abc"), 0);
    assert_eq!(edit_distance("abc", "abd"), 1);
    assert_eq!(edit_distance("abc", "ab"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn the_services_warning_names_the_dongles_that_publish_or_says_none_does() {
    let f = collect(
        "dongle-wrong",
        [
            live(&format!("{MODERN}/input"), r#"{"payload":{"SOC":57}}"#),
            live(&format!("{MODERN}/status"), r#"{"version":"4.3.0.111S3"}"#),
        ],
    );
    let text = warning("dongle-wrong", FIRST_LOOK, &f);
    assert!(
        text.starts_with(
            "nothing has arrived under mqtt.dongle_prefix \"dongle-wrong\" in the 1 minute since the service connected to the broker, but this dongle publishes on the broker: "
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("{MODERN} (firmware 4.3.0.111S3, SOC 57 %)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("did you mean {MODERN:?}?")),
        "{text}"
    );

    let silent = collect("dongle-wrong", []);
    let text = warning("dongle-wrong", FIRST_LOOK + LOOK_AGAIN, &silent);
    assert!(text.contains("in the 61 minutes since"), "{text}");
    assert!(
        text.contains(
            "no dongle published on the broker in a 5 s listen (nothing at all was published)"
        ),
        "{text}"
    );
    assert!(text.contains("broker address and port"), "{text}");
}

// ---- the watch -------------------------------------------------------------------------------

struct Watch {
    clock: ManualClock,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
    /// The clock's reading at each probe.
    probes: mpsc::UnboundedReceiver<Mono>,
    task: tokio::task::JoinHandle<WatchEnd>,
}

/// A watch whose probes record when they ran and answer `answer`, or never answer.
fn watch_with(answer: Option<Probe>) -> Watch {
    let clock = ManualClock::new("2026-01-15T09:00:00Z".parse().unwrap());
    let (status, rx) = watch::channel(Status::new(clock.clock().now()));
    let shutdown = CancellationToken::new();
    let (probe_tx, probes) = mpsc::unbounded_channel();
    let c = clock.clock();
    let probe = move || {
        let _ = probe_tx.send(c.mono());
        let answer = answer.clone();
        async move {
            match answer {
                Some(a) => a,
                None => std::future::pending().await,
            }
        }
    };
    let token = shutdown.clone();
    let watch_clock = clock.clock();
    let task =
        tokio::spawn(
            async move { watch_prefix("dongle-wrong", &watch_clock, rx, token, probe).await },
        );
    Watch {
        clock,
        status,
        shutdown,
        probes,
        task,
    }
}

/// Lets the watch task run until it waits again.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn elsewhere() -> Probe {
    Probe::Listened(collect(
        "dongle-wrong",
        [live(&format!("{MODERN}/input"), r#"{"SOC":57}"#)],
    ))
}

async fn ended(task: tokio::task::JoinHandle<WatchEnd>) -> WatchEnd {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the watch ended")
        .expect("the watch did not panic")
}

#[tokio::test]
async fn the_broker_is_looked_at_a_minute_after_the_first_connection_then_hourly_until_the_dongle_is_heard()
 {
    let mut w = watch_with(Some(elsewhere()));
    // Not connected yet: no minute is counted.
    w.clock.advance(Duration::from_secs(600));
    settle().await;
    assert!(w.probes.try_recv().is_err());

    w.status.send_modify(|s| s.mqtt_connected = true);
    settle().await;
    w.clock.advance(Duration::from_secs(59));
    settle().await;
    assert!(w.probes.try_recv().is_err(), "not before the minute");
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(w.probes.recv().await, Some(Mono(Duration::from_secs(660))));

    w.clock.advance(LOOK_AGAIN - Duration::from_secs(1));
    settle().await;
    assert!(w.probes.try_recv().is_err(), "not before the hour");
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(
        w.probes.recv().await,
        Some(Mono(Duration::from_secs(660) + LOOK_AGAIN))
    );

    w.status
        .send_modify(|s| s.last_message = Some(Timestamp::UNIX_EPOCH));
    assert_eq!(ended(w.task).await, WatchEnd::Heard);
    assert!(
        w.probes.try_recv().is_err(),
        "no look after the dongle is heard"
    );
}

#[tokio::test]
async fn a_dongle_heard_within_the_minute_ends_the_watch_without_a_look() {
    let mut w = watch_with(Some(elsewhere()));
    w.status.send_modify(|s| s.mqtt_connected = true);
    settle().await;
    w.clock.advance(Duration::from_secs(30));
    w.status
        .send_modify(|s| s.last_message = Some(Timestamp::UNIX_EPOCH));
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(ended(w.task).await, WatchEnd::Heard);
    assert!(w.probes.try_recv().is_err());
}

#[tokio::test]
async fn a_message_arriving_during_a_look_ends_the_watch() {
    let mut w = watch_with(None);
    w.status.send_modify(|s| s.mqtt_connected = true);
    settle().await;
    w.clock.advance(FIRST_LOOK);
    assert!(w.probes.recv().await.is_some());
    w.status
        .send_modify(|s| s.last_message = Some(Timestamp::UNIX_EPOCH));
    assert_eq!(ended(w.task).await, WatchEnd::Heard);
}

#[tokio::test]
async fn a_look_that_finds_the_configured_prefix_ends_the_watch() {
    let found = Probe::Listened(collect(
        "dongle-wrong",
        [live("dongle-wrong/input", r#"{"SOC":57}"#)],
    ));
    let mut w = watch_with(Some(found));
    w.status.send_modify(|s| s.mqtt_connected = true);
    settle().await;
    w.clock.advance(FIRST_LOOK);
    assert!(w.probes.recv().await.is_some());
    assert_eq!(ended(w.task).await, WatchEnd::Heard);
}

#[tokio::test]
async fn shutdown_ends_the_watch_at_any_point() {
    let w = watch_with(Some(elsewhere()));
    w.shutdown.cancel();
    assert_eq!(ended(w.task).await, WatchEnd::Shutdown);

    let mut w = watch_with(None);
    w.status.send_modify(|s| s.mqtt_connected = true);
    settle().await;
    w.clock.advance(FIRST_LOOK);
    assert!(w.probes.recv().await.is_some());
    w.shutdown.cancel();
    assert_eq!(ended(w.task).await, WatchEnd::Shutdown);

    let w = watch_with(None);
    drop(w.status);
    assert_eq!(ended(w.task).await, WatchEnd::EngineGone);
}
