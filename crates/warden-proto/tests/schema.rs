//! The JSON Schema of the protocol (`docs/protocol.schema.json`): the committed file is what the
//! types generate, and every golden fixture is valid against the schema of what it is. A failing
//! first test means a wire type changed: re-bless with `WARDEN_BLESS=1` after checking the
//! change is intended (and compatible, or the protocol version bumped).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::{Value, json};
use warden_proto::Method;
use warden_proto::schema::{document, document_text};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A validator for `schema`, a schema over the document's `$defs`.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let wrapped = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": doc["$defs"],
        "allOf": [schema],
    });
    jsonschema::draft202012::new(&wrapped).unwrap()
}

fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

fn assert_invalid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    assert!(!validator(doc, schema).is_valid(instance), "{what} passed");
}

/// Pins: `docs/protocol.schema.json` is exactly what the wire types generate now.
#[test]
fn the_committed_schema_is_what_the_types_generate() {
    let path = root().join("docs/protocol.schema.json");
    let text = document_text();
    if std::env::var_os("WARDEN_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is out of date: regenerate it with WARDEN_BLESS=1 cargo test -p warden-proto --test schema",
        path.display()
    );
}

/// Which method a result fixture answers.
fn result_method(name: &str) -> Method {
    match name {
        "actions_list" => Method::ActionsList,
        "alerts" => Method::AlertsList,
        "audit_query" => Method::AuditQuery,
        "audit_verify_broken" | "audit_verify_intact" | "audit_verify_retained" => {
            Method::AuditVerify
        }
        "doctor" => Method::Doctor,
        "health" => Method::Health,
        "hello" => Method::Hello,
        "host_identity" | "host_identity_degraded" => Method::HostIdentity,
        "job" | "job_fleet" => Method::JobGet,
        "job_list" | "job_list_fleet" => Method::JobList,
        "job_logs" => Method::JobLogs,
        "job_started" => Method::JobStart,
        "lockdown_engage" => Method::LockdownEngage,
        "lockdown_release" => Method::LockdownRelease,
        "ops" => Method::OpsGet,
        "policy_explain" => Method::PolicyExplain,
        "policy_reload" => Method::PolicyReload,
        "resource" => Method::ResourceGet,
        "resource_list" => Method::ResourceList,
        "status" => Method::Status,
        "version" => Method::Version,
        "whoami" => Method::Whoami,
        other => panic!("result.{other}.json: say which method it answers"),
    }
}

/// Pins: every golden fixture is a valid frame of the document, and its params, result or
/// error is valid against the schema of its method (or notification); none is left unchecked.
#[test]
fn every_golden_fixture_is_valid_against_its_schema() {
    let doc = document();
    let frame = json!({"$ref": "#/$defs/Frame"});
    let whole = {
        let mut d = doc.clone();
        d["$defs"]["Frame"] = json!({"oneOf": doc["oneOf"]});
        d
    };
    let mut checked = 0;
    let dir = root().join("crates/warden-proto/tests/golden");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let (kind, rest) = name.split_once('.').unwrap();
        match kind {
            "request" => {
                assert_valid(&whole, &frame, &fixture, &name);
                let method = fixture["method"].as_str().unwrap();
                assert_valid(
                    &doc,
                    &doc["methods"][method]["params"],
                    &fixture["params"],
                    &name,
                );
            }
            "result" => {
                assert_valid(&whole, &frame, &fixture, &name);
                let method = result_method(rest).as_str();
                assert_valid(
                    &doc,
                    &doc["methods"][method]["result"],
                    &fixture["result"],
                    &name,
                );
            }
            "error" => {
                assert_valid(&whole, &frame, &fixture, &name);
                assert_valid(
                    &doc,
                    &json!({"$ref": "#/$defs/ErrorResponse"}),
                    &fixture,
                    &name,
                );
            }
            "notification" => {
                assert_valid(&whole, &frame, &fixture, &name);
                let method = fixture["method"].as_str().unwrap();
                assert_valid(
                    &doc,
                    &doc["notifications"][method]["params"],
                    &fixture["params"],
                    &name,
                );
            }
            "grant" => assert_valid(&doc, &json!({"$ref": "#/$defs/Grant"}), &fixture, &name),
            other => panic!("{name}: no schema for fixtures of kind {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 70, "only {checked} fixtures");
}

/// Pins: the schema refuses what the daemon refuses: unknown params, malformed ids and names,
/// a method that does not exist, an error without its stable kind; so the fixture test above
/// can fail.
#[test]
fn the_schema_refuses_what_the_protocol_refuses() {
    let doc = document();
    for m in Method::ALL {
        assert!(doc["methods"][m.as_str()]["params"].is_object(), "{m:?}");
    }
    let params = |m: &str| doc["methods"][m]["params"].clone();
    assert_invalid(
        &doc,
        &params("hello"),
        &json!({"protocol": 1, "client": "x", "extra": true}),
        "an unknown hello field",
    );
    assert_invalid(
        &doc,
        &params("hello"),
        &json!({"protocol": 1, "client": "a\u{7}b"}),
        "a control character in the client name",
    );
    assert_invalid(
        &doc,
        &params("status"),
        &json!({"verbose": true}),
        "status params",
    );
    assert_invalid(
        &doc,
        &params("job.get"),
        &json!({"job_id": "job_ABABABABABABABAB"}),
        "an uppercase job id",
    );
    assert_invalid(
        &doc,
        &params("job.start"),
        &json!({"action": "Restart", "params": {}}),
        "an action name with a capital",
    );
    let request = json!({"$ref": "#/$defs/Request"});
    assert_valid(
        &doc,
        &request,
        &json!({"jsonrpc": "2.0", "id": "a", "method": "health"}),
        "a request without params",
    );
    assert_invalid(
        &doc,
        &request,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "no.such"}),
        "an unknown method",
    );
    assert_invalid(
        &doc,
        &request,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "job.get", "params": {"job_id": "x"}}),
        "job.get with a bad id, seen through the request frame",
    );
    assert_invalid(
        &doc,
        &json!({"$ref": "#/$defs/ErrorResponse"}),
        &json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "no", "data": {}}}),
        "an error without its kind",
    );
    assert_invalid(
        &doc,
        &doc["methods"]["events.subscribe"]["result"],
        &json!({}),
        "a result of events.subscribe",
    );
}
