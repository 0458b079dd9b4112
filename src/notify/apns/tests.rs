use super::*;

use jsonwebtoken::{DecodingKey, Validation};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + secs).unwrap()
}

fn mins(m: i64) -> i64 {
    m * 60
}

/// A provider key: the PKCS#8 PEM of a fresh P-256 key, and the PEM of its public half.
fn p256_key() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (key.serialize_pem(), key.public_key_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tokens(private_pem: &str) -> ProviderTokens {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "AuthKey_ABC123DEFG.p8", private_pem);
    let key = load_key(&path).unwrap();
    ProviderTokens::new(key, "ABC123DEFG".into(), "TEAM123456".into())
}

fn settings(key_path: PathBuf) -> ApnsSettings {
    ApnsSettings {
        key_path,
        key_id: "ABC123DEFG".into(),
        team_id: "TEAM123456".into(),
        bundle_id: "com.generouscorp.Solar".into(),
        use_sandbox: false,
        endpoint: None,
        ca_file: None,
    }
}

/// The claims of a token, after checking its signature against `public_pem`.
fn verified(jwt: &str, public_pem: &str) -> Claims {
    let key = DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .unwrap()
        .claims
}

fn retry(reason: &str) -> ApnsOutcome {
    ApnsOutcome::Retry {
        reason: reason.into(),
        after: None,
    }
}

fn drop_token(reason: &str) -> ApnsOutcome {
    ApnsOutcome::DropToken {
        reason: reason.into(),
    }
}

fn failed(status: u16, reason: &str) -> ApnsOutcome {
    ApnsOutcome::Failed {
        status,
        reason: reason.into(),
    }
}

fn apple(reason: &str) -> Vec<u8> {
    serde_json::json!({ "reason": reason })
        .to_string()
        .into_bytes()
}

#[test]
fn success_is_delivered_with_apples_id() {
    let id = Some("4A9C5B1E-2F3D-4E5A-8B7C-1D2E3F4A5B6C".to_owned());
    assert_eq!(
        classify(200, id.clone(), b"", None),
        ApnsOutcome::Delivered { apns_id: id }
    );
    assert_eq!(
        classify(200, None, b"{}", None),
        ApnsOutcome::Delivered { apns_id: None }
    );
}

#[test]
fn dead_tokens_are_dropped() {
    let gone = br#"{"reason":"Unregistered","timestamp":1767225600000}"#;
    assert_eq!(classify(410, None, gone, None), drop_token("Unregistered"));
    assert_eq!(
        classify(410, None, &apple("ExpiredToken"), None),
        drop_token("ExpiredToken")
    );
    assert_eq!(
        classify(400, None, &apple("BadDeviceToken"), None),
        drop_token("BadDeviceToken")
    );
    assert_eq!(
        classify(400, None, &apple("DeviceTokenNotForTopic"), None),
        drop_token("DeviceTokenNotForTopic")
    );
}

#[test]
fn transient_answers_are_retried_with_apples_reason() {
    assert_eq!(
        classify(503, None, &apple("ServiceUnavailable"), None),
        retry("ServiceUnavailable")
    );
    assert_eq!(
        classify(500, None, &apple("InternalServerError"), None),
        retry("InternalServerError")
    );
    assert_eq!(
        classify(429, None, &apple("TooManyRequests"), None),
        retry("TooManyRequests")
    );
    assert_eq!(
        classify(429, None, &apple("TooManyProviderTokenUpdates"), None),
        retry("TooManyProviderTokenUpdates")
    );
    assert_eq!(
        classify(403, None, &apple("ExpiredProviderToken"), None),
        retry("ExpiredProviderToken")
    );
    assert_eq!(
        classify(403, None, &apple("InvalidProviderToken"), None),
        retry("InvalidProviderToken")
    );
    assert_eq!(
        classify(
            429,
            None,
            &apple("TooManyRequests"),
            Some(Duration::from_secs(30))
        ),
        ApnsOutcome::Retry {
            reason: "TooManyRequests".into(),
            after: Some(Duration::from_secs(30)),
        }
    );
}

#[test]
fn refused_messages_fail_for_good_and_keep_the_token() {
    assert_eq!(
        classify(413, None, &apple("PayloadTooLarge"), None),
        failed(413, "PayloadTooLarge")
    );
    assert_eq!(
        classify(400, None, &apple("BadTopic"), None),
        failed(400, "BadTopic")
    );
    assert_eq!(
        classify(400, None, &apple("BadPriority"), None),
        failed(400, "BadPriority")
    );
    assert_eq!(
        classify(403, None, &apple("MissingProviderToken"), None),
        failed(403, "MissingProviderToken")
    );
    assert_eq!(
        classify(404, None, &apple("BadPath"), None),
        failed(404, "BadPath")
    );
    assert_eq!(
        classify(405, None, &apple("MethodNotAllowed"), None),
        failed(405, "MethodNotAllowed")
    );
}

#[test]
fn a_body_that_is_not_apples_json_still_gives_a_reason() {
    let html = b"<html>\n  <body>Bad Gateway</body>\n</html>";
    assert_eq!(
        classify(502, None, html, None),
        retry("HTTP 502: <html> <body>Bad Gateway</body> </html>")
    );
    assert_eq!(classify(503, None, b"", None), retry("HTTP 503"));
    assert_eq!(
        classify(400, None, b"{\"reason\":\"\"}", None),
        failed(400, "HTTP 400: {\"reason\":\"\"}")
    );
    assert_eq!(
        classify(400, None, b"[1,2]", None),
        failed(400, "HTTP 400: [1,2]")
    );
    assert_eq!(
        classify(400, None, &[0xff, 0xfe], None),
        failed(400, "HTTP 400: \u{fffd}\u{fffd}")
    );
    let long = "x".repeat(1000);
    let ApnsOutcome::Failed { reason, .. } = classify(400, None, long.as_bytes(), None) else {
        panic!("a 400 fails");
    };
    assert_eq!(reason.len(), "HTTP 400: ".len() + BODY_EXCERPT_CHARS);
}

#[test]
fn answers_apple_does_not_give_are_retried() {
    assert_eq!(classify(302, None, b"", None), retry("HTTP 302"));
    assert_eq!(classify(408, None, b"", None), retry("HTTP 408"));
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = Timestamp::from_second(784_111_717).unwrap(); // Sun, 06 Nov 1994 08:48:37 GMT
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

#[test]
fn the_provider_token_is_apples_es256_jwt() {
    let (private, public) = p256_key();
    let tokens = tokens(&private);
    let jwt = tokens.bearer(t(0)).unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
    assert_eq!(header.typ, None);
    let claims = verified(&jwt, &public);
    assert_eq!(claims.iss, "TEAM123456");
    assert_eq!(claims.iat, t(0).as_second());
    // Only iss and iat in the claims; the header has alg and kid alone.
    let raw = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&jwt).unwrap();
    assert_eq!(
        raw.claims,
        serde_json::json!({"iss": "TEAM123456", "iat": t(0).as_second()})
    );
    assert_eq!(
        serde_json::to_value(&raw.header).unwrap(),
        serde_json::json!({"alg": "ES256", "kid": "ABC123DEFG"})
    );
}

#[test]
fn the_signature_is_jws_fixed_form_and_checked_against_the_public_key() {
    let (private, public) = p256_key();
    let jwt = tokens(&private).bearer(t(0)).unwrap();
    let (signed, sig) = jwt.rsplit_once('.').unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    assert_eq!(
        raw.len(),
        64,
        "r || s, 32 bytes each, as JWS wants (not DER)"
    );
    let key = DecodingKey::from_ec_pem(public.as_bytes()).unwrap();
    assert!(jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &key, Algorithm::ES256).unwrap());
    // Another key's public half does not verify it, nor does a changed claim.
    let (_, other) = p256_key();
    let other = DecodingKey::from_ec_pem(other.as_bytes()).unwrap();
    assert!(
        !jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &other, Algorithm::ES256).unwrap()
    );
    let tampered = signed.replacen('e', "f", 1);
    assert!(
        !jsonwebtoken::crypto::verify(sig, tampered.as_bytes(), &key, Algorithm::ES256).unwrap()
    );
}

#[test]
fn algorithms_other_than_es256_are_refused_not_faked() {
    let (private, public) = p256_key();
    let dir = tempfile::tempdir().unwrap();
    let key = load_key(&write(dir.path(), "k.p8", &private)).unwrap();
    for alg in [
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::HS256,
        Algorithm::EdDSA,
    ] {
        assert!(
            jsonwebtoken::crypto::sign(b"x", &key, alg).is_err(),
            "{alg:?}"
        );
    }
    let public = DecodingKey::from_ec_pem(public.as_bytes()).unwrap();
    assert!(jsonwebtoken::crypto::verify("AAAA", b"x", &public, Algorithm::ES384).is_err());
}

#[test]
fn the_token_is_reused_until_it_is_fifty_minutes_old() {
    let (private, public) = p256_key();
    let tokens = tokens(&private);
    let first = tokens.bearer(t(0)).unwrap();
    assert_eq!(tokens.bearer(t(1)).unwrap(), first);
    assert_eq!(tokens.bearer(t(mins(49) + 59)).unwrap(), first);
    let second = tokens.bearer(t(mins(50))).unwrap();
    assert_ne!(second, first);
    assert_eq!(verified(&second, &public).iat, t(mins(50)).as_second());
    assert_eq!(tokens.bearer(t(mins(99))).unwrap(), second);
}

#[test]
fn the_tokens_iat_is_whole_seconds_and_its_age_counts_from_them() {
    let (private, public) = p256_key();
    let tokens = tokens(&private);
    let now = t(0) + SignedDuration::from_millis(999);
    let first = tokens.bearer(now).unwrap();
    assert_eq!(verified(&first, &public).iat, t(0).as_second());
    assert_eq!(tokens.bearer(t(mins(50) - 1)).unwrap(), first);
    assert_ne!(tokens.bearer(t(mins(50))).unwrap(), first);
}

#[test]
fn a_token_from_the_future_is_replaced() {
    let (private, public) = p256_key();
    let tokens = tokens(&private);
    let first = tokens.bearer(t(mins(30))).unwrap();
    let after_clock_set_back = tokens.bearer(t(0)).unwrap();
    assert_ne!(after_clock_set_back, first);
    assert_eq!(
        verified(&after_clock_set_back, &public).iat,
        t(0).as_second()
    );
}

#[test]
fn a_rejected_token_is_renewed_only_when_at_least_twenty_minutes_old() {
    let (private, _) = p256_key();
    let tokens = tokens(&private);
    let first = tokens.bearer(t(0)).unwrap();
    assert!(!tokens.rejected(t(mins(19) + 59)), "too young to replace");
    assert_eq!(tokens.bearer(t(mins(20) - 1)).unwrap(), first);
    assert!(tokens.rejected(t(mins(20))));
    let second = tokens.bearer(t(mins(21))).unwrap();
    assert_ne!(second, first);
    assert!(!tokens.rejected(t(mins(22))));
    assert_eq!(tokens.bearer(t(mins(23))).unwrap(), second);
}

#[test]
fn a_rejection_without_a_token_changes_nothing() {
    let (private, _) = p256_key();
    assert!(!tokens(&private).rejected(t(0)));
}

#[test]
fn a_p256_pkcs8_key_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = p256_key();
    let path = write(dir.path(), "AuthKey_ABC123DEFG.p8", &private);
    assert_eq!(check_key(&path), Ok(()));
}

#[test]
fn a_missing_key_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("AuthKey_NOPE.p8");
    let err = check_key(&path).unwrap_err();
    assert!(err.contains("AuthKey_NOPE.p8"), "{err}");
    assert!(err.contains("cannot read it"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn garbage_is_not_a_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "key.p8", "this is not a key\n");
    let err = check_key(&path).unwrap_err();
    assert!(err.contains("not a PEM file"), "{err}");
    let path = write(
        dir.path(),
        "broken.p8",
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    );
    let err = check_key(&path).unwrap_err();
    assert!(err.contains("not a valid PEM file"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn a_pem_without_a_private_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = p256_key();
    let path = write(dir.path(), "public.pem", &public);
    let err = check_key(&path).unwrap_err();
    assert!(err.contains("without a private key"), "{err}");
}

#[test]
fn keys_of_other_curves_and_kinds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, alg) in [
        ("p384.p8", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519.p8", &rcgen::PKCS_ED25519),
    ] {
        let pem = rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem();
        let path = write(dir.path(), name, &pem);
        let err = check_key(&path).unwrap_err();
        assert!(err.contains("not a P-256 EC private key"), "{name}: {err}");
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn pkcs1_and_sec1_forms_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Only the PEM labels matter here: the key is refused before its content is read.
    let body = "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n";
    let rsa = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\n");
    let err = check_key(&write(dir.path(), "rsa.pem", &rsa)).unwrap_err();
    assert!(err.contains("an RSA key"), "{err}");
    let sec1 = format!("-----BEGIN EC PRIVATE KEY-----\n{body}-----END EC PRIVATE KEY-----\n");
    let err = check_key(&write(dir.path(), "sec1.pem", &sec1)).unwrap_err();
    assert!(err.contains("SEC1"), "{err}");
}

#[test]
fn the_host_follows_endpoint_then_use_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = p256_key();
    let key = write(dir.path(), "AuthKey_ABC123DEFG.p8", &private);
    let production = ApnsClient::new(settings(key.clone())).unwrap();
    assert_eq!(production.host(), PRODUCTION_HOST);
    let sandbox = ApnsClient::new(ApnsSettings {
        use_sandbox: true,
        ..settings(key.clone())
    })
    .unwrap();
    assert_eq!(sandbox.host(), SANDBOX_HOST);
    let gateway = ApnsClient::new(ApnsSettings {
        use_sandbox: true,
        endpoint: Some("https://127.0.0.1:8443//".into()),
        ..settings(key.clone())
    })
    .unwrap();
    assert_eq!(gateway.host(), "https://127.0.0.1:8443");
    let debug = format!("{gateway:?}");
    assert!(
        debug.contains("127.0.0.1:8443") && !debug.contains("BEGIN"),
        "{debug}"
    );
}

#[test]
fn bad_settings_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = p256_key();
    let key = write(dir.path(), "AuthKey_ABC123DEFG.p8", &private);
    let cases = [
        (
            ApnsSettings {
                endpoint: Some("not a url".into()),
                ..settings(key.clone())
            },
            "not a URL",
        ),
        (
            ApnsSettings {
                endpoint: Some("ftp://example.test".into()),
                ..settings(key.clone())
            },
            "not https",
        ),
        (
            ApnsSettings {
                ca_file: Some(dir.path().join("missing-ca.pem")),
                ..settings(key.clone())
            },
            "missing-ca.pem",
        ),
        (
            ApnsSettings {
                ca_file: Some(write(dir.path(), "public.pem", &public)),
                ..settings(key.clone())
            },
            "no PEM certificate",
        ),
        (settings(dir.path().join("nokey.p8")), "cannot read it"),
    ];
    for (settings, expected) in cases {
        let err = ApnsClient::new(settings).unwrap_err();
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[tokio::test]
async fn a_token_that_is_not_hex_is_dropped_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = p256_key();
    let key = write(dir.path(), "AuthKey_ABC123DEFG.p8", &private);
    // Nothing listens there: an attempt would answer Retry, not DropToken.
    let client = ApnsClient::new(ApnsSettings {
        endpoint: Some("https://127.0.0.1:9".into()),
        ..settings(key)
    })
    .unwrap();
    let push = ApnsPush::alert(serde_json::json!({"aps": {}}));
    for token in ["", "abc/../x", "zz00"] {
        let outcome = client.send(token, &push, t(0)).await;
        assert!(
            matches!(outcome, ApnsOutcome::DropToken { .. }),
            "{token}: {outcome:?}"
        );
    }
}

#[test]
fn push_types_set_their_headers() {
    assert_eq!(PushType::Alert.header_value(), "alert");
    assert_eq!(PushType::Alert.priority(), "10");
    assert_eq!(PushType::Background.header_value(), "background");
    assert_eq!(PushType::Background.priority(), "5");
    let payload = serde_json::json!({"aps": {"content-available": 1}});
    assert_eq!(
        ApnsPush::background(payload.clone()).push_type,
        PushType::Background
    );
    assert_eq!(ApnsPush::alert(payload).push_type, PushType::Alert);
}

#[test]
fn only_a_tokens_first_eight_characters_are_shown() {
    assert_eq!(token_prefix("0123456789abcdef"), "01234567");
    assert_eq!(token_prefix("ab"), "ab");
}

#[test]
fn a_transport_error_reads_as_one_line_of_causes() {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let e = Outer(std::io::Error::other(
        "invalid peer certificate: UnknownIssuer",
    ));
    assert_eq!(
        crate::notify::https::error_chain(&e),
        "client error (Connect): invalid peer certificate: UnknownIssuer"
    );
}

#[test]
fn the_client_and_its_sends_can_move_between_tasks() {
    fn is_send_and_sync<T: Send + Sync>(_: &T) {}
    fn is_send<T: Send>(_: T) {}
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = p256_key();
    let client = ApnsClient::new(settings(write(dir.path(), "k.p8", &private))).unwrap();
    is_send_and_sync(&client);
    let push = ApnsPush::alert(serde_json::json!({"aps": {}}));
    // Built, never polled.
    is_send(client.send("00", &push, t(0)));
}
