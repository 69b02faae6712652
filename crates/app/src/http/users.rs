//! The users API: `POST /users`, `GET /users`, `GET|PATCH|DELETE /users/{id}`, `GET /users/{id}/activity`.

// The helpers return a ready response (or problem) as their error: built once per refused request, boxing it
// would buy nothing.
#![allow(clippy::result_large_err)]

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::AppState;
use super::access::Caller;
use super::body::object;
use super::extract::IdPath;
use super::openapi::{closed_object, email_format, matching, password_format, text};
use super::problem::{FieldProblem, Problem, user_problem};
use crate::users::fields::{
    EMAIL_PATTERN, MAX_EMAIL_CHARS, MAX_NAME_CHARS, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, NAME_PATTERN,
    SIGN_IN_EMAIL_PATTERN,
};
use crate::users::{
    ACTIVITY_CURSOR_PATTERN, Activity, Credentials, MAX_PAGE_SIZE, Page, USERS_CURSOR_PATTERN, User, UserChanges,
    UserError, parse_registration,
};
use uuid::Uuid;

/// A user as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// The user's id (a UUIDv7).
    id: Uuid,
    /// Display name.
    #[schema(example = "Ada Lovelace")]
    name: String,
    /// Email address as registered.
    #[schema(example = "ada@example.com")]
    email: String,
    /// When the user registered (RFC 3339).
    #[serde(serialize_with = "super::timestamp::serialize")]
    created_at: OffsetDateTime,
    /// When the user last changed (RFC 3339).
    #[serde(serialize_with = "super::timestamp::serialize")]
    updated_at: OffsetDateTime,
}

impl From<User> for UserBody {
    fn from(user: User) -> Self {
        UserBody {
            id: user.id,
            name: user.name.into(),
            email: user.email.into(),
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// What anyone signed in may see of another user: no email.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicProfile {
    /// The user's id.
    id: Uuid,
    /// Display name.
    name: String,
    /// When the user registered (RFC 3339).
    #[serde(serialize_with = "super::timestamp::serialize")]
    created_at: OffsetDateTime,
}

impl From<User> for PublicProfile {
    fn from(user: User) -> Self {
        PublicProfile { id: user.id, name: user.name.into(), created_at: user.created_at }
    }
}

/// The one of `GET /users/{id}` answers: the whole record or the public profile.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Documents the response; the handler serializes one of the two.
pub enum UserView {
    /// For the user themself and admins.
    Whole(UserBody),
    /// For anyone else signed in.
    Public(PublicProfile),
}

/// A display name, as the parser (`users::fields::Name`) accepts it.
pub fn name_schema() -> ObjectBuilder {
    let description = "Display name: not only spaces, no control characters; surrounding spaces are trimmed";
    matching(1, MAX_NAME_CHARS, NAME_PATTERN, description, "Ada Lovelace")
}

/// A new email address, as the parser (`users::fields::Email::parse_new`) accepts it.
pub fn email_schema() -> ObjectBuilder {
    let description = "Email address: letters, digits and ``!#$%&'*+/=?^_`{|}~.-`` before the `@` (no `..`), a \
                       host name after it (no label with `--` as its 3rd and 4th characters); unique ignoring case";
    email_format(matching(1, MAX_EMAIL_CHARS, EMAIL_PATTERN, description, "ada@example.com"))
}

/// An email address to sign in with, as the parser (`users::fields::Email::try_from`) accepts it: also the
/// addresses registered before the stricter rule for new ones.
pub fn sign_in_email_schema() -> ObjectBuilder {
    let description = "The registered email (any case; surrounding spaces are trimmed)";
    matching(1, MAX_EMAIL_CHARS, SIGN_IN_EMAIL_PATTERN, description, "ada@example.com")
}

/// A new password: 8 to 1024 characters, kept as sent.
pub fn new_password_schema() -> ObjectBuilder {
    password_format(text(MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS)).examples(["correct horse battery staple"])
}

/// A password offered to prove who one is: only the length bound applies.
pub fn password_schema() -> ObjectBuilder {
    password_format(text(1, MAX_PASSWORD_CHARS)).examples(["correct horse battery staple"])
}

/// The body of `POST /users`; read field by field by the handler, so that each problem is reported.
pub struct CreateUser;

impl PartialSchema for CreateUser {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .property("name", name_schema())
            .property("email", email_schema().description(Some("Not registered yet (compared ignoring case)")))
            .property("password", new_password_schema())
            .required("name")
            .required("email")
            .required("password")
            .into()
    }
}

impl ToSchema for CreateUser {}

/// The body of `PATCH /users/{id}`: a new name, email or password (at least one); a new email or password
/// needs the signed-in user's `current_password`.
pub struct UpdateUser;

impl PartialSchema for UpdateUser {
    fn schema() -> RefOr<Schema> {
        let current = || password_schema().description(Some("The signed-in user's current password"));
        let rename = closed_object()
            .title(Some("New name"))
            .property("name", name_schema())
            .property("current_password", current())
            .required("name");
        let sensitive = |title: &str, field: &str| {
            closed_object()
                .title(Some(title))
                .property("name", name_schema())
                .property("email", email_schema())
                .property("password", new_password_schema())
                .property("current_password", current())
                .required(field)
                .required("current_password")
        };
        AnyOfBuilder::new()
            .item(rename)
            .item(sensitive("New email", "email"))
            .item(sensitive("New password", "password"))
            .description(Some(
                "At least one of `name`, `email`, `password`; `email` and `password` need `current_password` \
                 (and end every session of the user)",
            ))
            .into()
    }
}

impl ToSchema for UpdateUser {}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// Users in creation order.
    items: Vec<UserBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl From<Page> for UserPage {
    fn from(page: Page) -> Self {
        UserPage { items: page.items.into_iter().map(UserBody::from).collect(), next_cursor: page.next_cursor }
    }
}

/// Paging through a list (users, a user's activity).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Entries per page, 1–100 (default 20).
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The query of `GET /users`.
pub struct UsersQuery;

impl IntoParams for UsersQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        paging_params(USERS_CURSOR_PATTERN)
    }
}

/// The query of `GET /users/{id}/activity`.
pub struct ActivityQuery;

impl IntoParams for ActivityQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        paging_params(ACTIVITY_CURSOR_PATTERN)
    }
}

/// `limit` and `cursor`, the cursor matching `cursor_pattern`.
fn paging_params(cursor_pattern: &str) -> Vec<Parameter> {
    let limit =
        ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(1)).maximum(Some(MAX_PAGE_SIZE));
    let cursor = ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).pattern(Some(cursor_pattern));
    let param = |name: &str, description: &str, schema: ObjectBuilder| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build()
    };
    vec![
        param("limit", "Entries per page (default 20)", limit),
        param("cursor", "The `next_cursor` of the previous page", cursor),
    ]
}

/// An entry of a user's audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityBody {
    /// The event that caused it.
    event_id: uuid::Uuid,
    /// `user_created`, `user_updated` or `user_deleted`.
    #[serde(rename = "type")]
    kind: String,
    /// When it happened (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    /// What changed: for an update, the names of the changed fields (never their values); `{}` otherwise.
    details: Value,
}

/// A page of a user's audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityPage {
    /// Entries, newest first.
    items: Vec<ActivityBody>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl From<Page<Activity>> for ActivityPage {
    fn from(page: Page<Activity>) -> Self {
        ActivityPage { items: page.items.into_iter().map(ActivityBody::from).collect(), next_cursor: page.next_cursor }
    }
}

impl From<Activity> for ActivityBody {
    fn from(entry: Activity) -> Self {
        ActivityBody {
            event_id: entry.event_id,
            kind: entry.kind,
            occurred_at: entry.occurred_at,
            details: entry.details,
        }
    }
}

/// Registers a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, description = "Registered", body = UserBody,
            headers(("location" = String, description = "/users/{id}"))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 409, description = "Email already registered (`email-taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::BodyTooLarge),
        (status = 415, response = super::openapi::NotJson),
        (status = 422, response = super::openapi::Invalid),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn create(State(state): State<AppState>, body: Result<Json<Value>, JsonRejection>) -> Response {
    let mut fields = match object(body, &["name", "email", "password"]) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let input =
        Credentials { name: fields.take("name"), email: fields.take("email"), password: fields.take("password") };
    let registration_problems = || {
        let errors = parse_registration(input.clone()).err().unwrap_or_default();
        errors.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect()
    };
    if let Some(problem) = fields.problem_with(registration_problems) {
        return problem.into_response();
    }
    match state.users.register(input).await {
        Ok(user) => {
            let location = HeaderValue::from_str(&format!("/users/{}", user.id)).ok();
            let mut response = (StatusCode::CREATED, Json(UserBody::from(user))).into_response();
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(err) => user_problem(err).into_response(),
    }
}

/// A user, served from the Redis cache when it holds it: the whole record for the user themself and admins,
/// the public profile (id, name, registration time; no email) for anyone else signed in.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user (the owner and admins) or their public profile (anyone else signed in)", body = UserView),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 404, description = "No such user (`user-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn get(State(state): State<AppState>, caller: Caller, IdPath(id): IdPath) -> Response {
    let user = match state.users.get(id).await {
        Ok(user) => user,
        Err(err) => return user_problem(err).into_response(),
    };
    if caller.actor().manages(id) {
        Json(UserBody::from(user)).into_response()
    } else {
        Json(PublicProfile::from(user)).into_response()
    }
}

/// Changes a user's name, email or password (the user themself or an admin); the cached copy is dropped. A
/// new email or password needs the caller's `current_password` and ends every session of the user.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", request_body = UpdateUser,
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The changed user", body = UserBody),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 403, description = "Wrong current password (`wrong-current-password`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or not the caller's and the caller is no admin (`user-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email already registered (`email-taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::BodyTooLarge),
        (status = 415, response = super::openapi::NotJson),
        (status = 422, response = super::openapi::Invalid),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let mut fields = match object(body, &["name", "email", "password", "current_password"]) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let changes = UserChanges {
        name: fields.take("name"),
        email: fields.take("email"),
        password: fields.take("password"),
        current_password: fields.take("current_password"),
    };
    if let Some(problem) = fields.problem() {
        return problem.into_response();
    }
    respond(state.users.update(caller.actor(), id, changes).await.map(|user| Json(UserBody::from(user))))
}

/// Deletes a user (the user themself or an admin); the cached copy is dropped and every session ended.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 404, description = "No such user, or not the caller's and the caller is no admin (`user-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn delete(State(state): State<AppState>, IdPath(id): IdPath) -> Response {
    respond(state.users.delete(id).await.map(|()| StatusCode::NO_CONTENT))
}

/// Users in creation order, a page at a time (keyset pagination: stable under concurrent inserts). Admins only.
#[utoipa::path(get, path = "/users", tag = "users", params(UsersQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 403, response = super::openapi::Forbidden),
        (status = 422, response = super::openapi::Invalid),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn list(State(state): State<AppState>, query: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let (limit, cursor) = match paging(query) {
        Ok(paging) => paging,
        Err(response) => return response,
    };
    respond(state.users.list(limit, cursor.as_deref()).await.map(|page| Json(UserPage::from(page))))
}

/// The user's audit trail, newest first, a page at a time (keyset pagination), as recorded by the event
/// consumer (so it lags writes slightly). Entries hold ids, types, times and changed field names only.
#[utoipa::path(get, path = "/users/{id}/activity", tag = "users",
    params(("id" = Uuid, Path, description = "User id"), ActivityQuery),
    responses(
        (status = 200, description = "A page of the audit trail, newest first", body = ActivityPage),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 404, description = "No such user and no trail, or not the caller's and the caller is no admin (`user-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = super::openapi::Invalid),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn activity(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (limit, cursor) = match paging(query) {
        Ok(paging) => paging,
        Err(response) => return response,
    };
    let trail = state.users.activity(id, limit, cursor.as_deref()).await;
    respond(trail.map(|page| Json(ActivityPage::from(page))))
}

/// The page size and cursor of a paging query. A limit that is not a number is passed on as 0, so the domain
/// reports it as out of range together with the cursor's problem, if any.
fn paging(query: Result<Query<ListQuery>, QueryRejection>) -> Result<(Option<u32>, Option<String>), Response> {
    let Ok(Query(query)) = query else {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query string").into_response());
    };
    let limit = query.limit.as_deref().map(|raw| raw.parse::<u32>().unwrap_or(0));
    Ok((limit, query.cursor))
}

/// A domain result as a response.
fn respond(result: Result<impl IntoResponse, UserError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(err) => user_problem(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;
    use crate::http::problem::PROBLEM_JSON;

    #[test]
    fn an_unavailable_dependency_is_a_503_with_retry_after_and_no_cause() {
        let problem = user_problem(UserError::Unavailable("connection refused at 10.0.0.5".into()));
        assert!(!problem.detail.clone().unwrap_or_default().contains("10.0.0.5"), "internals stay in the logs");
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
