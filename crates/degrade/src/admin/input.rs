//! Reading a request: the operator, a bounded JSON object body, and typed fields whose errors
//! name the field.

use super::Operator;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The largest body read: every admin request is a handful of fields.
const MAX_BODY: usize = 16 * 1024;

/// A refused request: the status, the field at fault (if one is), and why.
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    field: Option<String>,
    error: String,
}

impl Refusal {
    pub(super) fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            field: Some(field.into()),
            error: error.into(),
        }
    }

    pub(super) fn status(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            field: None,
            error: error.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match &self.field {
            Some(field) => json!({ "field": field, "error": self.error }),
            None => json!({ "error": self.error }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The operator the auth layer set.
pub(super) fn operator(req: &Request<Body>) -> Result<Operator, Refusal> {
    req.extensions().get::<Operator>().cloned().ok_or_else(|| {
        Refusal::status(
            StatusCode::UNAUTHORIZED,
            "no operator: mount the admin router under an auth layer that inserts degrade::admin::Operator",
        )
    })
}

/// A change request: a JSON object with a non-empty `reason`.
#[derive(Debug)]
pub(super) struct Change {
    fields: Map<String, Value>,
    pub(super) reason: String,
}

pub(super) async fn body(req: Request<Body>, allowed: &[&str]) -> Result<Change, Refusal> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| Refusal::field("body", format!("unreadable or over {MAX_BODY} bytes")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::field("body", format!("not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(Refusal::field("body", "must be a JSON object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| k.as_str() != "reason" && !allowed.contains(&k.as_str()))
    {
        return Err(Refusal::field(
            unknown.clone(),
            format!(
                "unknown field; expected one of: reason, {}",
                allowed.join(", ")
            ),
        ));
    }
    let reason = match fields.get("reason") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => return Err(Refusal::field("reason", "must be a non-empty string")),
        None => return Err(Refusal::field("reason", "required: say why")),
    };
    Ok(Change { fields, reason })
}

impl Change {
    pub(super) fn string(&self, field: &str) -> Result<Option<&str>, Refusal> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Refusal::field(field, "must be a string")),
        }
    }

    #[cfg_attr(not(feature = "ratelimit"), allow(dead_code))]
    pub(super) fn u64(&self, field: &str) -> Result<Option<u64>, Refusal> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Refusal::field(field, "must be a non-negative integer")),
        }
    }

    /// A humantime duration (`"250ms"`, `"10m"`).
    pub(super) fn duration(&self, field: &str) -> Result<Option<Duration>, Refusal> {
        self.string(field)?
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| Refusal::field(field, format!("not a duration like \"10m\": {e}")))
            })
            .transpose()
    }
}
