use super::*;

fn now() -> Timestamp {
    "2026-01-15T09:00:00Z".parse().unwrap()
}

#[test]
fn tokens_are_whole_bytes_of_hex() {
    assert_eq!(parse_token("A1b2").as_deref(), Some("a1b2"));
    assert_eq!(parse_token(""), None);
    assert_eq!(parse_token("abc"), None, "half a byte");
    assert_eq!(parse_token("zz"), None);
    assert_eq!(parse_token("ab cd"), None);
}

#[test]
fn registering_again_updates_the_preferences_and_keeps_one_entry() {
    let mut d = Devices::default();
    d.register("aa".into(), None, now());
    let mut prefs = Map::new();
    prefs.insert(CHARGE_PREFERENCE.into(), Value::Bool(false));
    prefs.insert("future_key".into(), Value::Bool(true));
    d.register("aa".into(), Some(prefs), now());
    assert_eq!(d.devices.len(), 1);
    assert!(!d.devices[0].wants(EventKind::ChargeComplete));
    assert!(
        d.devices[0].wants(EventKind::Test),
        "a test reaches every phone"
    );
    assert_eq!(d.devices[0].preferences["future_key"], Value::Bool(true));
    let back = Devices::decode(&d.encode()).unwrap();
    assert_eq!(back.devices, d.devices);
}

#[test]
fn a_device_without_preferences_wants_everything() {
    let mut d = Devices::default();
    d.register("aa".into(), None, now());
    assert!(EventKind::ALL.iter().all(|k| d.devices[0].wants(*k)));
}

#[test]
fn unregistering_says_whether_the_token_was_known() {
    let mut d = Devices::default();
    d.register("aa".into(), None, now());
    assert!(d.unregister("aa"));
    assert!(!d.unregister("aa"));
}
