//! JSON request bodies read field by field, so that one answer lists every refused field (wrong type, unknown
//! name) instead of serde's first complaint.

// `object` returns a ready response as its error: built once per refused request, boxing it
// would buy nothing.
#![allow(clippy::result_large_err)]

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::problem::{FieldProblem, Problem};

/// The fields of a JSON object body, taken one by one; wrong types and unknown fields are collected as
/// field problems.
pub struct Fields {
    map: Map<String, Value>,
    problems: Vec<FieldProblem>,
}

impl Fields {
    /// The string field `name`, if present; any other value, `null` included, is a problem (to leave a field
    /// unchanged, leave it out).
    pub fn take(&mut self, name: &str) -> Option<String> {
        match self.map.remove(name) {
            None => None,
            Some(Value::String(value)) => Some(value),
            Some(_) => {
                self.problems.push(FieldProblem { field: name.to_string(), message: "must be a string".into() });
                None
            }
        }
    }

    /// The 422 for the problems found so far, if any.
    pub fn problem(self) -> Option<Problem> {
        (!self.problems.is_empty()).then(|| Problem::invalid(self.problems))
    }

    /// Like [`Fields::problem`], adding the problems `more` checks found in the other fields, so one round trip
    /// shows everything to fix (a field already refused here is not reported twice).
    pub fn problem_with(mut self, more: impl FnOnce() -> Vec<FieldProblem>) -> Option<Problem> {
        if self.problems.is_empty() {
            return None;
        }
        let more: Vec<FieldProblem> =
            more().into_iter().filter(|e| !self.problems.iter().any(|p| p.field == e.field)).collect();
        self.problems.extend(more);
        Some(Problem::invalid(self.problems))
    }
}

/// The body as a JSON object with only `allowed` keys, or the response refusing it.
pub fn object(body: Result<Json<Value>, JsonRejection>, allowed: &[&str]) -> Result<Fields, Response> {
    let body = body.map_err(|rejection| Problem::from_rejection(&rejection).into_response())?;
    let Value::Object(map) = body.0 else {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body")
            .detail("the body must be a JSON object")
            .into_response());
    };
    let problems = map
        .keys()
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| FieldProblem { field: key.clone(), message: "is not a known field".into() })
        .collect();
    Ok(Fields { map, problems })
}
