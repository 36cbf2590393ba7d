//! The machine-readable description of the local protocol: a JSON Schema (draft 2020-12)
//! generated from the wire types themselves, so it cannot drift from what the daemon and the
//! Rust client encode and parse. `docs/protocol.schema.json` is its output, checked by this
//! crate's tests against the types and against every golden fixture.
//!
//! It owns the table of which params and which result belong to each method (one exhaustive
//! match, so a new method cannot be left out) and the frame shapes around them. Built only with
//! the `schema` feature; it never changes how a message is encoded or parsed.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value, json};

use crate::error::RpcError;
use crate::ids::{ActionName, JobId};
use crate::jobs::{ActionInfo, ActionList, JobList, JobRecord, JobStarted, LogChunk};
use crate::messages::*;
use crate::method::Method;
use crate::request::*;
use crate::{PROTOCOL_VERSION, envelope::MAX_ID_LEN};

impl JsonSchema for JobId {
    fn schema_name() -> Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A job's id: `job_` and 16 lowercase hex digits.",
            "type": "string",
            "pattern": "^job_[0-9a-f]{16}$"
        })
    }
}

impl JsonSchema for ActionName {
    fn schema_name() -> Cow<'static, str> {
        "ActionName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An action's name: 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter.",
            "type": "string",
            "pattern": "^[a-z][a-z0-9_-]{0,63}$"
        })
    }
}

impl JsonSchema for ClientName {
    fn schema_name() -> Cow<'static, str> {
        "ClientName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What the client calls itself: 1 to 64 characters, no control characters.",
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CLIENT_NAME,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
        })
    }
}

impl JsonSchema for FeatureName {
    fn schema_name() -> Cow<'static, str> {
        "FeatureName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A protocol feature: 1 to 64 of a-z, 0-9, `_`, `.`, `-`.",
            "type": "string",
            "pattern": "^[a-z0-9_.-]{1,64}$"
        })
    }
}

/// Params of an `event` notification (the daemon writes it as JSON; typed here for the schema).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct EventNotification {
    /// `subscribed` first (its event names the topics), then one of the topics subscribed.
    topic: String,
    /// The event, as docs/PROTOCOL.md describes it per topic.
    event: Map<String, Value>,
}

/// Params of an `events.lagged` notification.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Lagged {
    /// Events this subscriber lost by falling behind.
    dropped: u64,
}

/// The params of a method that takes none: `{}` (or no params at all).
fn no_params() -> Schema {
    json_schema!({"type": "object", "additionalProperties": false})
}

/// The params and the result of `method`. Every method is here: the match is exhaustive.
fn method_schema(method: Method, g: &mut SchemaGenerator) -> (Schema, Schema) {
    match method {
        Method::Hello => (
            g.subschema_for::<HelloParams>(),
            g.subschema_for::<HelloResult>(),
        ),
        Method::Health => (no_params(), g.subschema_for::<HealthResult>()),
        Method::Version => (no_params(), g.subschema_for::<VersionResult>()),
        Method::Whoami => (no_params(), g.subschema_for::<WhoamiResult>()),
        Method::Status => (no_params(), g.subschema_for::<StatusResult>()),
        Method::ActionsList => (
            g.subschema_for::<ActionsListParams>(),
            g.subschema_for::<ActionList>(),
        ),
        Method::ActionsDescribe => (
            g.subschema_for::<ActionParams>(),
            g.subschema_for::<ActionInfo>(),
        ),
        Method::JobStart => (
            g.subschema_for::<JobStartParams>(),
            g.subschema_for::<JobStarted>(),
        ),
        Method::JobGet | Method::JobCancel | Method::JobWatch => (
            g.subschema_for::<JobParams>(),
            g.subschema_for::<JobRecord>(),
        ),
        Method::JobList => (
            g.subschema_for::<JobListParams>(),
            g.subschema_for::<JobList>(),
        ),
        Method::JobWait => (
            g.subschema_for::<JobWaitParams>(),
            g.subschema_for::<JobRecord>(),
        ),
        Method::JobLogs => (
            g.subschema_for::<JobLogsParams>(),
            g.subschema_for::<LogChunk>(),
        ),
        Method::AuditVerify => (no_params(), g.subschema_for::<AuditVerifyResult>()),
        Method::AuditQuery => (
            g.subschema_for::<AuditQueryParams>(),
            g.subschema_for::<AuditQueryResult>(),
        ),
        Method::OpsGet => (no_params(), g.subschema_for::<OpsResult>()),
        Method::OpsSet => (
            g.subschema_for::<OpsSetParams>(),
            g.subschema_for::<OpsResult>(),
        ),
        Method::LockdownEngage => (
            g.subschema_for::<LockdownParams>(),
            g.subschema_for::<LockdownResult>(),
        ),
        Method::LockdownRelease => (no_params(), g.subschema_for::<LockdownResult>()),
        Method::AlertsList => (
            g.subschema_for::<AlertsParams>(),
            g.subschema_for::<AlertsResult>(),
        ),
        // The stream ends with an error (`unavailable`), never with a result.
        Method::EventsSubscribe => (g.subschema_for::<SubscribeParams>(), false.into()),
        Method::PolicyReload => (no_params(), g.subschema_for::<PolicyReloadResult>()),
        Method::PolicyExplain => (
            g.subschema_for::<ExplainParams>(),
            g.subschema_for::<ExplainResult>(),
        ),
        Method::Doctor => (no_params(), g.subschema_for::<DoctorResult>()),
        Method::ResourceCreate => (
            g.subschema_for::<ResourceCreateParams>(),
            g.subschema_for::<ResourceInfo>(),
        ),
        Method::ResourceDelete | Method::ResourceGet => (
            g.subschema_for::<ResourceParams>(),
            g.subschema_for::<ResourceInfo>(),
        ),
        Method::ResourceList => (
            g.subschema_for::<ResourceListParams>(),
            g.subschema_for::<ResourceList>(),
        ),
        Method::HostIdentity => (no_params(), g.subschema_for::<HostIdentityResult>()),
    }
}

/// The notifications the daemon sends and their params.
fn notifications(g: &mut SchemaGenerator) -> Vec<(&'static str, Schema)> {
    use crate::jobs::notification::*;
    vec![
        (JOB_UPDATE, g.subschema_for::<JobRecord>()),
        (JOB_OUTPUT, g.subschema_for::<LogChunk>()),
        (EVENT, g.subschema_for::<EventNotification>()),
        (LAGGED, g.subschema_for::<Lagged>()),
    ]
}

/// `if method is NAME then params is SCHEMA`, for each `(NAME, SCHEMA)`.
fn params_by_method<'a>(cases: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Vec<Value> {
    cases
        .into_iter()
        .map(|(name, params)| {
            json!({
                "if": {"properties": {"method": {"const": name}}},
                "then": {"properties": {"params": params}}
            })
        })
        .collect()
}

/// The whole description: the document `docs/protocol.schema.json` holds. The document itself
/// validates any frame (a request, an answer, an error answer or a notification); `methods`
/// names the params and the result of each method and `notifications` the params of each
/// notification, as schemas over the document's `$defs`.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12().into_generator();
    let mut methods = Map::new();
    for m in Method::ALL {
        let (params, result) = method_schema(m, &mut g);
        methods.insert(
            m.as_str().to_owned(),
            json!({"params": params, "result": result}),
        );
    }
    let mut notes = Map::new();
    for (name, params) in notifications(&mut g) {
        notes.insert(name.to_owned(), json!({"params": params}));
    }
    let error = g.subschema_for::<RpcError>();
    let mut defs = g.take_definitions(true);

    let id = json!({
        "description": format!("A request id: a number or a string, at most {MAX_ID_LEN} bytes of JSON; answers echo it byte for byte."),
        "anyOf": [{"type": "number"}, {"type": "string", "maxLength": MAX_ID_LEN - 2}]
    });
    defs.insert("Id".into(), id);
    defs.insert(
        "Request".into(),
        json!({
            "description": "A request frame. Batches and notifications from the client are not part of the protocol.",
            "type": "object",
            "required": ["jsonrpc", "id", "method"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"$ref": "#/$defs/Id"},
                "method": {"enum": Method::ALL.map(Method::as_str)},
                "params": {"type": "object"}
            },
            "additionalProperties": false,
            "allOf": params_by_method(methods.iter().map(|(k, v)| (k.as_str(), &v["params"])))
        }),
    );
    defs.insert(
        "Response".into(),
        json!({
            "description": "A successful answer; `result` is the method's result (see `methods`).",
            "type": "object",
            "required": ["jsonrpc", "id", "result"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"$ref": "#/$defs/Id"},
                "result": true
            },
            "additionalProperties": false
        }),
    );
    defs.insert(
        "ErrorResponse".into(),
        json!({
            "description": "An error answer; `id` is null when the error is not about a readable request.",
            "type": "object",
            "required": ["jsonrpc", "id", "error"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"anyOf": [{"$ref": "#/$defs/Id"}, {"type": "null"}]},
                "error": error
            },
            "additionalProperties": false
        }),
    );
    defs.insert(
        "Notification".into(),
        json!({
            "description": "A server push: a JSON-RPC notification (no `id`).",
            "type": "object",
            "required": ["jsonrpc", "method", "params"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "method": {"enum": notes.keys().collect::<Vec<_>>()},
                "params": {"type": "object"}
            },
            "additionalProperties": false,
            "allOf": params_by_method(notes.iter().map(|(k, v)| (k.as_str(), &v["params"])))
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("warden local protocol, version {PROTOCOL_VERSION}"),
        "description": "Every frame between wardend and its clients, generated from warden-proto's types (docs/PROTOCOL.md says what they mean). Results accept fields they do not name unless marked otherwise: a newer daemon may add some.",
        "x-warden-protocol": PROTOCOL_VERSION,
        "oneOf": [
            {"$ref": "#/$defs/Request"},
            {"$ref": "#/$defs/Response"},
            {"$ref": "#/$defs/ErrorResponse"},
            {"$ref": "#/$defs/Notification"}
        ],
        "methods": methods,
        "notifications": notes,
        "$defs": defs
    })
}

/// [`document`] as the committed file holds it: pretty JSON, keys sorted, a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document())
        .unwrap_or_else(|e| unreachable!("a serde_json::Value always serializes: {e}"));
    text.push('\n');
    text
}
