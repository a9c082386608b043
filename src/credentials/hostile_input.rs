//! Proptests over what the token endpoint and the credentials file can contain:
//! never a panic, always an outcome from the exit-code table.

use super::file::{parse_stored, read_stored};
use super::refresh::{token_answer, StoredCredentials};
use super::EXPIRY_WINDOW;
use crate::classify::ClassifyRules;
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(60),
            Just(3600),
            Just(i64::MAX),
            Just(i64::MIN)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,24}".prop_map(Value::from),
        "-?[0-9]{1,25}(\\.[0-9]{1,3})?(e[0-9]{1,3})?".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        rfc3339_ish().prop_map(Value::from),
    ]
}

/// Mostly valid RFC 3339 times over all four-digit years and offsets.
fn rfc3339_ish() -> impl Strategy<Value = String> {
    (
        0u32..10000,
        1u32..13,
        1u32..29,
        0u32..24,
        0u32..60,
        "Z|[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9]",
    )
        .prop_map(|(y, mo, d, h, mi, off)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00{off}"))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                .prop_map(|pairs| { serde_json::Value::Object(pairs.into_iter().collect()) }),
        ]
    })
}

/// An object with some of the fields that matter (and others), each of any shape.
fn json_object(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
    ];
    prop::collection::vec((key, json_value()), 0..6).prop_map(|pairs| {
        let map: serde_json::Map<_, _> = pairs.into_iter().collect();
        serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
    })
}

/// Mostly well-typed fields (so that the success path is explored too), each
/// sometimes of any shape, plus unknown fields.
fn plausible_object(
    fields: Vec<(&'static str, BoxedStrategy<serde_json::Value>)>,
) -> impl Strategy<Value = Vec<u8>> {
    let fields: Vec<_> = fields
        .into_iter()
        .map(|(key, value)| {
            prop_oneof![
                1 => Just(None),
                6 => value.prop_map(move |v| Some((key.to_string(), v))),
                1 => json_value().prop_map(move |v| Some((key.to_string(), v))),
            ]
        })
        .collect();
    (
        fields,
        prop::collection::vec(("[a-z_]{1,8}", json_value()), 0..3),
    )
        .prop_map(|(fields, extra)| {
            let mut map: serde_json::Map<_, _> = extra.into_iter().collect();
            map.extend(fields.into_iter().flatten());
            serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
        })
}

fn token_text() -> BoxedStrategy<serde_json::Value> {
    prop_oneof![
        4 => "[!-~]{1,40}",
        1 => "[ -~]{0,40}",
        1 => any::<String>(),
    ]
    .prop_map(serde_json::Value::from)
    .boxed()
}

fn plausible_token_answer() -> impl Strategy<Value = Vec<u8>> {
    plausible_object(vec![
        ("access_token", token_text()),
        (
            "expires_in",
            prop_oneof![
                4 => any::<i64>().prop_map(serde_json::Value::from),
                2 => any::<u64>().prop_map(serde_json::Value::from),
                2 => (-1e20f64..1e20).prop_map(serde_json::Value::from),
                1 => "-?[0-9]{1,25}".prop_map(serde_json::Value::from),
                2 => json_leaf(),
            ]
            .boxed(),
        ),
        ("refresh_token", token_text()),
    ])
}

fn plausible_file() -> impl Strategy<Value = Vec<u8>> {
    plausible_object(vec![
        ("access_token", token_text()),
        (
            "access_token_expiration",
            rfc3339_ish().prop_map(serde_json::Value::from).boxed(),
        ),
        ("refresh_token", token_text()),
        ("token_url", token_text()),
    ])
}

fn token_body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        2 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Some),
        2 => json_value().prop_map(|v| Some(serde_json::to_vec(&v).unwrap_or_default())),
        6 => json_object(&["access_token", "expires_in", "refresh_token", "token_type", "error"]).prop_map(Some),
        16 => plausible_token_answer().prop_map(Some),
    ]
}

fn file_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        4 => json_object(&["access_token", "access_token_expiration", "refresh_token", "token_url"]),
        6 => plausible_file(),
    ]
}

fn clock() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        Just(SystemTime::now()),
        Just(SystemTime::UNIX_EPOCH),
        (0u64..1 << 40).prop_map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
    ]
}

fn window() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(EXPIRY_WINDOW),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn before() -> StoredCredentials {
    StoredCredentials {
        access_token: "a0".into(),
        access_token_expiration: None,
        refresh_token: Some("r0".into()),
        token_url: Some("https://login.example.com/token".into()),
        other: Default::default(),
    }
}

proptest! {
    /// Any status and any body: new credentials that load again, or a failure whose
    /// class stops with 69, 75 or 77 (or refreshes).
    #[test]
    fn any_token_answer_is_credentials_or_a_classified_failure(
        status in prop_oneof![3 => Just(200u16), 1 => 100u16..600, 1 => any::<u16>()],
        body in token_body(),
        now in clock(),
        window in window(),
    ) {
        match token_answer(status, None, body.as_deref(), &before(), now) {
            Ok(stored) => {
                prop_assert!((200..300).contains(&status));
                let mut json = serde_json::to_vec_pretty(&stored).unwrap();
                json.push(b'\n');
                let again = parse_stored(&json);
                prop_assert!(again.is_ok(), "{:?}", again.err());
                let again = again.unwrap();
                prop_assert_eq!(&again.access_token, &stored.access_token);
                let _ = again.expires_within(now, window);
            }
            Err(failure) => {
                let code = ClassifyRules::default().classify(&failure).exit_code();
                prop_assert!([69, 75, 77].contains(&code), "{failure:?} -> {code}");
                let _ = failure.to_string();
            }
        }
    }

    /// Any file content: loaded (and its expiry asked about at any time, with any
    /// window) or refused with a reason, which is a usage error (2).
    #[test]
    fn any_credentials_file_loads_or_is_refused(
        bytes in file_body(),
        now in clock(),
        window in window(),
    ) {
        match parse_stored(&bytes) {
            Ok(stored) => {
                prop_assert!(!stored.access_token.is_empty());
                let _ = stored.expires_within(now, window);
                let _ = stored.expiring_soon(now);
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}

/// The same through a real file: `read_stored` agrees with `parse_stored`.
#[test]
fn reading_a_file_agrees_with_parsing_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&file_body(), |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            prop_assert_eq!(read_stored(&path).is_ok(), parse_stored(&bytes).is_ok());
            Ok(())
        })
        .unwrap();
}
