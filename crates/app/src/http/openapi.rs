//! The OpenAPI 3.1 document: the contract of every route the service answers (API and ops), every status each
//! can return, every field constraint, and who may call what. Generated from the handlers' annotations (utoipa)
//! and served at `/openapi.json` (rendered for people at `/docs`), so it cannot drift from the routes:
//! - field constraints are built from the constants and patterns the parsers use (`users::fields`,
//!   `events`, the page sizes and cursors of `users`), not restated;
//! - each operation's security is set from the access table ([`super::api_routes`]), not annotated by hand;
//! - a schema fuzzer (`scripts/contract`) checks the running service against it.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Header, OpenApi as Document, RefOr};
use utoipa::{OpenApi, ToResponse, ToSchema};

use super::access::Access;
use super::problem::{FieldProblem, PROBLEM_JSON, Problem};
use super::{AppState, api_routes, docs, events, health, sessions, users};

/// The security scheme of the session cookie (its name is the configured `SESSION_COOKIE_NAME`).
pub const COOKIE_SCHEME: &str = "sessionCookie";
/// The security scheme of `Authorization: Bearer <session id>`.
pub const BEARER_SCHEME: &str = "bearerSession";

/// The API description, before the runtime details ([`document_for`]) are filled in.
#[derive(OpenApi)]
#[openapi(
    info(title = "rust-app", description = "Users, sessions and their audit trail over PostgreSQL, Redis and Kafka. \
        Every error is an RFC 9457 problem (`application/problem+json`) with a stable `code`. \
        Sign in with `POST /sessions`, then send the session cookie, or its value as `Authorization: Bearer <id>`. \
        The operational routes (`/livez`, `/readyz`, `/health`, `/metrics`, `/ops`) are never rate limited and need no \
        session; every other route is limited per client address (429 with `Retry-After`)."),
    paths(
        users::create, users::list, users::get, users::update, users::delete, users::activity,
        sessions::login, sessions::me, sessions::logout,
        events::publish, events::find,
        document, docs::page,
        health::livez, health::readyz, health::health, health::component, super::metrics,
        super::ops::page,
    ),
    components(
        schemas(Problem, FieldProblem),
        responses(BadRequest, Unauthenticated, Forbidden, BodyTooLarge, NotJson, Invalid, RateLimited, Unavailable),
    ),
    tags(
        (name = "users", description = "Registration and profiles"),
        (name = "sessions", description = "Sign in and out; the signed-in user"),
        (name = "events", description = "Publish events to the stream; read them back once recorded"),
        (name = "documentation", description = "This document, as JSON and as a page"),
        (name = "operations", description = "Probes, health, metrics and the ops page for the platform running the service \
            (the ops router: never rate limited, no session; expose it on an internal network only)"),
    ),
)]
pub struct ApiDoc;

/// The document as served: the security schemes named after the configured cookie, and every operation's
/// security set from its route's [`Access`] rule.
pub fn document_for(cookie_name: &str) -> Document {
    let mut document = ApiDoc::openapi();
    let components = document.components.get_or_insert_with(Default::default);
    let cookie = ApiKeyValue::with_description(
        cookie_name,
        "The session cookie `POST /sessions` sets (HttpOnly, SameSite=Lax).",
    );
    components.add_security_scheme(COOKIE_SCHEME, SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some("The session cookie's value as `Authorization: Bearer <session id>`, for API clients."));
    components.add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer.build()));
    for route in api_routes() {
        if route.access == Access::Public {
            // As annotated: none, or optional (`DELETE /sessions` reads a session if one is sent).
            continue;
        }
        if let Some(operation) =
            document.paths.paths.get_mut(route.path).and_then(|item| operation(item, &route.method))
        {
            operation.security = Some(signed_in());
        }
    }
    document
}

/// Either credential identifies the caller.
fn signed_in() -> Vec<SecurityRequirement> {
    let none: [&str; 0] = [];
    vec![SecurityRequirement::new(COOKIE_SCHEME, none), SecurityRequirement::new(BEARER_SCHEME, none)]
}

fn operation<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        Method::PUT => item.put.as_mut(),
        _ => None,
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "documentation",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ))]
pub async fn document(State(state): State<AppState>) -> Json<Document> {
    Json(document_for(&state.cookie.name))
}

// ------------------------------------------------------------------------------------------ field schemas --

/// A string of `min..=max` characters.
pub fn text(min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).min_length(Some(min)).max_length(Some(max))
}

/// A string of `min..=max` characters matching `pattern`, with what it means and an example.
pub fn matching(min: usize, max: usize, pattern: &str, description: &str, example: &str) -> ObjectBuilder {
    text(min, max).pattern(Some(pattern)).description(Some(description)).examples([example])
}

/// An object with exactly the given properties allowed.
pub fn closed_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

/// Marks a string as a password (UIs hide it).
pub fn password_format(schema: ObjectBuilder) -> ObjectBuilder {
    schema.format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
}

/// Marks a string as an email address.
pub fn email_format(schema: ObjectBuilder) -> ObjectBuilder {
    schema.format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
}

// ------------------------------------------------------------------------------------ shared responses --

/// A response carrying a problem, with `description`.
fn problem(description: &str) -> ResponseBuilder {
    let content =
        ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(Problem::name()))));
    ResponseBuilder::new().description(description).content(PROBLEM_JSON, content.build())
}

/// An integer response header.
fn integer_header(description: &str) -> Header {
    let schema = ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(0));
    let mut header = Header::new(schema);
    header.description = Some(description.to_string());
    header
}

fn retry_after() -> Header {
    integer_header("Seconds to wait before retrying")
}

macro_rules! problem_response {
    ($(#[$doc:meta])* $name:ident, $description:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), problem($description).build().into())
            }
        }
    };
}

problem_response!(
    /// 400: a request that cannot be read.
    BadRequest,
    "The request cannot be read: malformed JSON (`invalid-body`), a query string that does not parse \
     (`invalid-query`) or a path parameter that is not a UUID or not valid percent-encoded UTF-8 (`invalid-id`, \
     `invalid-path`)"
);
problem_response!(
    /// 401: no valid session.
    Unauthenticated,
    "No session, or an unknown or expired one (`unauthenticated`): sign in with `POST /sessions`"
);
problem_response!(
    /// 403: signed in, but not an admin.
    Forbidden,
    "Signed in, but the route is for administrators (`forbidden`)"
);
problem_response!(
    /// 413: over the body limit.
    BodyTooLarge,
    "The body is larger than `HTTP_BODY_LIMIT` (`body-too-large`)"
);
problem_response!(
    /// 415: not JSON.
    NotJson,
    "The body is not sent as `Content-Type: application/json` (`invalid-body`)"
);
problem_response!(
    /// 422: refused fields.
    Invalid,
    "Refused fields (`validation-failed`, `errors` names each field and why), or JSON that is not an object \
     (`invalid-body`)"
);

/// 429: over a rate limit, with when to retry.
pub struct RateLimited;

impl<'r> ToResponse<'r> for RateLimited {
    fn response() -> (&'r str, RefOr<Response>) {
        let response =
            problem("Too many requests from this client address (`rate-limited`): retry after `Retry-After` seconds")
                .header("Retry-After", retry_after())
                .header("RateLimit-Limit", integer_header("Requests the limit admits at once"))
                .header("RateLimit-Remaining", integer_header("Requests left now"))
                .header("RateLimit-Reset", integer_header("Seconds until the limit is whole again"));
        ("RateLimited", response.build().into())
    }
}

/// 503: a dependency is down, the service is too busy, or the request took too long.
pub struct Unavailable;

impl<'r> ToResponse<'r> for Unavailable {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = problem(
            "A required dependency is unavailable (`dependency-unavailable`), too many password checks are running \
             (`overloaded`), or the request took longer than `HTTP_REQUEST_TIMEOUT` (`timeout`): retry after \
             `Retry-After` seconds",
        )
        .header("Retry-After", retry_after());
        ("Unavailable", response.build().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_that_need_a_session_say_so_and_public_ones_do_not_demand_one() {
        let document = serde_json::to_value(document_for("the_cookie")).expect("JSON");
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes[COOKIE_SCHEME]["name"], "the_cookie");
        assert_eq!(schemes[COOKIE_SCHEME]["in"], "cookie");
        assert_eq!(schemes[BEARER_SCHEME]["scheme"], "bearer");
        for route in api_routes() {
            let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
            let security = operation["security"].as_array().cloned().unwrap_or_default();
            let optional = security.is_empty() || security.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty()));
            assert_eq!(optional, route.access == Access::Public, "{} {}: {security:?}", route.method, route.path);
        }
    }
}
