use super::*;

#[test]
fn a_channel_sends_a_burst_then_one_a_minute() {
    let t0 = Mono(Duration::from_secs(100));
    let mut b = Bucket::new(t0);
    for _ in 0..BURST {
        assert!(b.take(t0).is_ok());
    }
    let next = b.take(t0).unwrap_err();
    assert_eq!(next, t0 + REFILL);
    assert!(b.take(t0 + Duration::from_secs(59)).is_err());
    assert!(b.take(t0 + REFILL).is_ok());
    assert!(
        b.take(t0 + REFILL).is_err(),
        "one token per minute, not a new burst"
    );
}

#[test]
fn names_shown_in_the_api_hold_the_host_only() {
    assert_eq!(host_of("https://ntfy.sh/secret-topic"), "ntfy.sh");
    assert_eq!(
        host_of("http://user:pass@homeassistant.local:8123/api/webhook/x?y=1"),
        "homeassistant.local:8123"
    );
}

#[test]
fn push_is_off_without_a_section_and_when_disabled() {
    assert!(matches!(push_setup(None), Push::NotConfigured));
    let off = ApnsConfig::default();
    assert!(matches!(push_setup(Some(&off)), Push::NotEnabled));
    let missing = ApnsConfig {
        enabled: true,
        ..ApnsConfig::default()
    };
    assert!(matches!(push_setup(Some(&missing)), Push::NotConfigured));
}
