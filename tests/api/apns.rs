//! The APNs provider against the stand-in for Apple: real TLS, real HTTP/2, tokens verified
//! with the provider key's public half.

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use solar_charging_backend::notify::apns::*;

use crate::apns_stand_in::{Answer, ApnsStandIn};

const TOKEN: &str = "3f1e9a0c2b4d6e8f00112233445566778899aabbccddeeff0123456789abcdef";
const OTHER_TOKEN: &str = "aa00bb11cc22dd33ee44ff5566778899aabbccddeeff00112233445566778899";

fn t0() -> Timestamp {
    "2026-01-03T03:12:10Z".parse().unwrap()
}

fn at(minutes: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(minutes)
}

fn settings(stand_in: &ApnsStandIn) -> ApnsSettings {
    ApnsSettings {
        key_path: stand_in.key_path.clone(),
        key_id: stand_in.key_id.clone(),
        team_id: stand_in.team_id.clone(),
        bundle_id: stand_in.bundle_id.clone(),
        use_sandbox: false,
        endpoint: Some(stand_in.url.clone()),
        ca_file: Some(stand_in.ca_file.clone()),
    }
}

fn client(stand_in: &ApnsStandIn) -> ApnsClient {
    ApnsClient::new(settings(stand_in)).unwrap()
}

fn charge_complete() -> serde_json::Value {
    json!({
        "aps": {
            "content-available": 1,
            "alert": {"title": "Charging Complete", "body": "Battery reached 80% (target: 80%)"},
            "sound": "default"
        },
        "type": "charge_complete", "target_soc": 80, "final_soc": 80
    })
}

fn delivered(outcome: &ApnsOutcome) -> bool {
    matches!(outcome, ApnsOutcome::Delivered { .. })
}

#[tokio::test]
async fn a_push_is_delivered_with_every_header_verified() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = client(&stand_in);
    assert_eq!(client.host(), stand_in.url);

    let id = "6F1C2A4B-9D3E-4F5A-8B7C-0D1E2F3A4B5C";
    let push = ApnsPush {
        apns_id: Some(id.to_owned()),
        collapse_id: Some("charge".to_owned()),
        ..ApnsPush::alert(charge_complete())
    };
    let outcome = client.send(TOKEN, &push, t0()).await;
    assert_eq!(
        outcome,
        ApnsOutcome::Delivered {
            apns_id: Some(id.to_owned())
        }
    );
    let background = ApnsPush::background(json!({"aps": {"content-available": 1}}));
    let outcome = client.send(OTHER_TOKEN, &background, t0()).await;
    let ApnsOutcome::Delivered { apns_id: Some(_) } = outcome else {
        panic!("a background push is delivered with Apple's id: {outcome:?}");
    };

    let received = stand_in.wait_received(2).await;
    assert_eq!(stand_in.violations(), Vec::<String>::new());
    assert_eq!(stand_in.attempts(), 2);
    assert_eq!(received[0].token, TOKEN);
    assert_eq!(received[0].payload, charge_complete());
    assert_eq!(received[0].push_type, "alert");
    assert_eq!(received[0].priority, "10");
    assert_eq!(received[0].apns_id.as_deref(), Some(id));
    assert_eq!(received[0].collapse_id.as_deref(), Some("charge"));
    assert_eq!(received[0].iat, t0().as_second());
    assert_eq!(received[1].token, OTHER_TOKEN);
    assert_eq!(received[1].push_type, "background");
    assert_eq!(received[1].priority, "5");
    assert_eq!(received[1].apns_id, None);
    assert_eq!(received[1].collapse_id, None);
}

#[tokio::test]
async fn unregistered_and_bad_device_tokens_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = client(&stand_in);
    stand_in.answer(TOKEN, Answer::Unregistered);
    stand_in.answer(OTHER_TOKEN, Answer::BadDeviceToken);
    let push = ApnsPush::alert(charge_complete());

    assert_eq!(
        client.send(TOKEN, &push, t0()).await,
        ApnsOutcome::DropToken {
            reason: "Unregistered".into()
        }
    );
    assert_eq!(
        client.send(OTHER_TOKEN, &push, t0()).await,
        ApnsOutcome::DropToken {
            reason: "BadDeviceToken".into()
        }
    );
    assert_eq!(stand_in.attempts(), 2);
    assert!(stand_in.received().is_empty());
    assert_eq!(stand_in.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_service_that_is_down_is_retried_then_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = client(&stand_in);
    let push = ApnsPush::alert(charge_complete());

    stand_in.set_down(true);
    assert_eq!(
        client.send(TOKEN, &push, t0()).await,
        ApnsOutcome::Retry {
            reason: "ServiceUnavailable".into(),
            after: None
        }
    );
    assert_eq!(stand_in.attempts(), 1);
    assert!(stand_in.received().is_empty());

    stand_in.set_down(false);
    assert!(delivered(&client.send(TOKEN, &push, at(1)).await));
    assert_eq!(stand_in.wait_received(1).await[0].token, TOKEN);
    assert_eq!(stand_in.attempts(), 2);

    // One token scripted as down is retried while others still deliver.
    stand_in.answer(OTHER_TOKEN, Answer::Down);
    let outcome = client.send(OTHER_TOKEN, &push, at(2)).await;
    assert!(matches!(outcome, ApnsOutcome::Retry { .. }), "{outcome:?}");
    assert_eq!(stand_in.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn an_expired_provider_token_is_retried_and_renewed_only_once_twenty_minutes_old() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = client(&stand_in);
    let push = ApnsPush::alert(charge_complete());
    let expired = ApnsOutcome::Retry {
        reason: "ExpiredProviderToken".into(),
        after: None,
    };

    stand_in.answer(TOKEN, Answer::ExpiredProviderToken);
    assert_eq!(client.send(TOKEN, &push, at(0)).await, expired);
    // Too young to replace: Apple would refuse a new one as TooManyProviderTokenUpdates.
    stand_in.answer(TOKEN, Answer::Ok);
    assert!(delivered(&client.send(TOKEN, &push, at(1)).await));

    stand_in.answer(TOKEN, Answer::ExpiredProviderToken);
    assert_eq!(client.send(TOKEN, &push, at(25)).await, expired);
    stand_in.answer(TOKEN, Answer::Ok);
    assert!(delivered(&client.send(TOKEN, &push, at(26)).await));

    let received = stand_in.wait_received(2).await;
    assert_eq!(
        received[0].iat,
        at(0).as_second(),
        "the young token was kept"
    );
    assert_eq!(
        received[1].iat,
        at(26).as_second(),
        "the old token was renewed"
    );
    assert_eq!(stand_in.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_stand_in_rejects_a_token_signed_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_path = dir
        .path()
        .join(format!("other-AuthKey_{}.p8", stand_in.key_id));
    std::fs::write(&other_path, other_key.serialize_pem()).unwrap();
    let client = ApnsClient::new(ApnsSettings {
        key_path: other_path,
        ..settings(&stand_in)
    })
    .unwrap();

    let outcome = client
        .send(TOKEN, &ApnsPush::alert(charge_complete()), t0())
        .await;
    assert_eq!(
        outcome,
        ApnsOutcome::Retry {
            reason: "InvalidProviderToken".into(),
            after: None
        }
    );
    let violations = stand_in.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("signature"), "{violations:?}");
    assert!(stand_in.received().is_empty());
}

#[tokio::test]
async fn the_stand_in_rejects_a_wrong_topic_and_the_message_fails_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = ApnsClient::new(ApnsSettings {
        bundle_id: "com.example.Other".into(),
        ..settings(&stand_in)
    })
    .unwrap();

    let outcome = client
        .send(TOKEN, &ApnsPush::alert(charge_complete()), t0())
        .await;
    assert_eq!(
        outcome,
        ApnsOutcome::Failed {
            status: 400,
            reason: "BadTopic".into()
        }
    );
    assert_eq!(
        stand_in.violations(),
        vec!["apns-topic com.example.Other".to_owned()]
    );
}

#[tokio::test]
async fn the_jwt_is_reused_within_fifty_minutes_and_renewed_after() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let client = client(&stand_in);
    let push = ApnsPush::alert(charge_complete());

    for now in [at(0), at(49), at(51)] {
        assert!(delivered(&client.send(TOKEN, &push, now).await));
    }
    let received = stand_in.wait_received(3).await;
    assert_eq!(received[0].iat, at(0).as_second());
    assert_eq!(received[1].iat, received[0].iat, "reused at 49 minutes");
    assert_eq!(received[2].iat, at(51).as_second(), "renewed at 51 minutes");
    assert_eq!(stand_in.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_endpoint_is_trusted_only_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let push = ApnsPush::alert(charge_complete());

    let untrusting = ApnsClient::new(ApnsSettings {
        ca_file: None,
        ..settings(&stand_in)
    })
    .unwrap();
    let outcome = untrusting.send(TOKEN, &push, t0()).await;
    let ApnsOutcome::Retry {
        reason,
        after: None,
    } = &outcome
    else {
        panic!("an untrusted certificate is retried: {outcome:?}");
    };
    assert!(reason.contains("certificate"), "{reason}");
    assert!(!reason.contains(TOKEN), "{reason}");
    assert_eq!(stand_in.attempts(), 0);

    assert!(delivered(&client(&stand_in).send(TOKEN, &push, t0()).await));
    assert_eq!(stand_in.wait_received(1).await.len(), 1);
    assert_eq!(stand_in.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_config_section_points_at_the_stand_in() {
    #[derive(serde::Deserialize)]
    struct File {
        apns: ApnsSettings,
    }
    let dir = tempfile::tempdir().unwrap();
    let stand_in = ApnsStandIn::start(dir.path()).await;
    let yaml = stand_in.config_yaml();
    assert!(yaml.starts_with("apns:\n  enabled: true\n"), "{yaml}");
    let file: File = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(file.apns, settings(&stand_in));
    assert_eq!(check_key(&file.apns.key_path), Ok(()));

    let client = ApnsClient::new(file.apns).unwrap();
    let push = ApnsPush::alert(charge_complete());
    assert!(delivered(&client.send(TOKEN, &push, t0()).await));
    assert_eq!(stand_in.wait_received(1).await[0].token, TOKEN);
}
