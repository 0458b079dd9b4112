use super::*;
use crate::domain::event::EventKind;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn event(id: &str, at: &str) -> Event {
    Event::new(id, EventKind::ChargeComplete, t(at))
}

fn ntfy() -> Vec<Target> {
    vec![("ntfy".into(), None)]
}

#[test]
fn an_event_handed_over_twice_is_taken_once() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    assert!(o.accept(
        &event("s1-charge_complete", "2026-01-15T09:00:00Z"),
        ntfy(),
        now
    ));
    assert!(!o.accept(
        &event("s1-charge_complete", "2026-01-15T09:00:00Z"),
        ntfy(),
        now
    ));
    assert_eq!(o.entries.len(), 1);
}

#[test]
fn the_remembered_ids_survive_the_file() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    o.accept(&event("a", "2026-01-15T09:00:00Z"), ntfy(), now);
    o.settle(1, Attempt::Delivered, now);
    let back = Outbox::decode(&o.encode()).unwrap();
    assert!(back.entries.is_empty());
    assert!(
        back.has_seen("a"),
        "a delivered event is still known after a restart"
    );
}

#[test]
fn a_channel_gets_its_events_in_order_one_at_a_time() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    o.accept(&event("started", "2026-01-15T09:00:00Z"), ntfy(), now);
    o.accept(&event("complete", "2026-01-15T09:00:00Z"), ntfy(), now);
    let due = o.due(now, &|_| false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event.id, "started");
    assert!(
        o.due(now, &|_| true).is_empty(),
        "nothing while the channel is busy"
    );
    o.settle(due[0].seq, Attempt::Delivered, now);
    assert_eq!(o.due(now, &|_| false)[0].event.id, "complete");
}

#[test]
fn a_failed_delivery_backs_off_and_a_down_channel_does_not_hold_up_another() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    let targets = vec![("ntfy".into(), None), ("webhook-1".into(), None)];
    o.accept(&event("e", "2026-01-15T09:00:00Z"), targets, now);
    let due = o.due(now, &|_| false);
    assert_eq!(due.len(), 2);
    let ntfy_seq = due.iter().find(|e| e.channel == "ntfy").unwrap().seq;
    let settled = o.settle(
        ntfy_seq,
        Attempt::Retry {
            reason: "503".into(),
            after: None,
        },
        now,
    );
    assert_eq!(settled, Some(Settled::Retrying(t("2026-01-15T09:00:10Z"))));
    let due = o.due(now, &|_| false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].channel, "webhook-1");
    assert_eq!(o.next_due(&|_| false), Some(now));
    assert_eq!(
        o.next_due(&|k| k.0 == "webhook-1"),
        Some(t("2026-01-15T09:00:10Z"))
    );
}

#[test]
fn backoff_doubles_up_to_fifteen_minutes() {
    assert_eq!(backoff(1), Duration::from_secs(10));
    assert_eq!(backoff(2), Duration::from_secs(20));
    assert_eq!(backoff(4), Duration::from_secs(80));
    assert_eq!(backoff(30), MAX_BACKOFF);
}

#[test]
fn an_event_is_given_up_six_hours_after_it_happened() {
    let mut o = Outbox::default();
    let at = t("2026-01-15T09:00:00Z");
    o.accept(&event("e", "2026-01-15T09:00:00Z"), ntfy(), at);
    let retry = || Attempt::Retry {
        reason: "connection refused".into(),
        after: None,
    };
    assert!(matches!(
        o.settle(1, retry(), t("2026-01-15T14:00:00Z")),
        Some(Settled::Retrying(_))
    ));
    match o.settle(1, retry(), t("2026-01-15T14:59:50Z")) {
        Some(Settled::Dropped(why)) => assert!(why.contains("6 hours"), "{why}"),
        other => panic!("expected the entry dropped, got {other:?}"),
    }
    assert!(o.entries.is_empty());
}

#[test]
fn a_permanent_refusal_drops_the_entry() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    o.accept(&event("e", "2026-01-15T09:00:00Z"), ntfy(), now);
    assert_eq!(
        o.settle(1, Attempt::Failed("401".into()), now),
        Some(Settled::Dropped("401".into()))
    );
    assert!(o.entries.is_empty());
}

#[test]
fn a_removed_device_takes_its_entries_with_it() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    let targets = vec![
        ("apns".into(), Some("aa".into())),
        ("apns".into(), Some("bb".into())),
    ];
    o.accept(&event("e", "2026-01-15T09:00:00Z"), targets, now);
    assert_eq!(o.drop_device("aa"), 1);
    assert_eq!(o.entries.len(), 1);
    assert_eq!(o.entries[0].device.as_deref(), Some("bb"));
}

#[test]
fn the_outbox_is_bounded_and_forgets_old_ids() {
    let mut o = Outbox::default();
    let now = t("2026-01-15T09:00:00Z");
    for i in 0..(MAX_ENTRIES + 10) {
        o.accept(
            &event(&format!("e{i}"), "2026-01-15T09:00:00Z"),
            ntfy(),
            now,
        );
    }
    assert_eq!(o.entries.len(), MAX_ENTRIES);
    assert_eq!(o.entries[0].event.id, "e10", "the oldest went first");
    assert!(!o.has_seen("e0"));
    assert!(o.has_seen(&format!("e{}", MAX_ENTRIES + 9)));
}

#[test]
fn a_newer_format_is_refused_not_misread() {
    let err = Outbox::decode(br#"{"version": 99, "entries": []}"#).unwrap_err();
    assert!(err.contains("newer version"), "{err}");
    assert!(Outbox::decode(b"{not json").is_err());
}
