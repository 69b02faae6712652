//! Access control against the real stack: every API route of the router called by {anonymous, owner, other
//! user, admin} and checked against its declared [`Access`]; the ops routes open to anyone; the API routes
//! against the OpenAPI document; what another user sees of a user and of an event; and the command that makes
//! the first admin, `rust-app users create-admin`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use app::http::access::Access;
use app::http::openapi::{BEARER_SCHEME, COOKIE_SCHEME};
use app::http::{ApiRoute, api_routes, ops_routes};
use reqwest::Method;
use serde_json::{Value, json};
use test_support::postgres::TestDb;

use crate::helpers::{Account, PASSWORD, TempDir, TestApp, binary, expect_problem, spawn_admin_app, spawn_app, unique};

/// Bound on waiting for the consumer to record an event: its group join on tansu alone takes a few seconds.
const RECORDED_WITHIN: Duration = Duration::from_secs(60);

/// Who calls a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    /// The user whose id is the path's `{id}` (for an event: its publisher).
    Owner,
    /// Another signed-in user.
    Other,
    Admin,
}

const CALLERS: [Caller; 4] = [Caller::Anonymous, Caller::Owner, Caller::Other, Caller::Admin];

/// The accounts a route is called with, and the event the owner published.
#[derive(Clone)]
struct Cast {
    owner: Account,
    other: Account,
    admin: Account,
    event_id: String,
}

impl Cast {
    /// Fresh accounts; `event_id` stands for the `{id}` of event routes.
    async fn new(app: &TestApp, event_id: &str) -> Cast {
        let (owner, other, admin) = (app.sign_up("Owner").await, app.sign_up("Other").await, app.sign_up_admin().await);
        Cast { owner, other, admin, event_id: event_id.to_string() }
    }

    fn account(&self, caller: Caller) -> Option<&Account> {
        match caller {
            Caller::Anonymous => None,
            Caller::Owner => Some(&self.owner),
            Caller::Other => Some(&self.other),
            Caller::Admin => Some(&self.admin),
        }
    }

    /// The route's path with its `{id}` filled: the owner's event for event routes, the owner's id otherwise.
    fn path(&self, route: &ApiRoute) -> String {
        let id = if route.path.starts_with("/events/") { &self.event_id } else { &self.owner.id };
        route.path.replace("{id}", id)
    }
}

/// Routes that can end the caller's session or delete the owner get a fresh cast for every call, so that one
/// caller's call does not decide the next one's answer.
fn consumes_the_cast(route: &ApiRoute) -> bool {
    route.method == Method::DELETE || route.path == "/sessions"
}

/// A valid body for the route, so that its answer is about access rather than input.
fn body_for(route: &ApiRoute, caller: Option<&Account>, cast: &Cast) -> Option<Value> {
    match (route.method.as_str(), route.path) {
        ("GET" | "DELETE", _) => None,
        ("POST", "/users") => {
            let email = format!("{}@example.com", unique("matrix"));
            Some(json!({"name": "Matrix", "email": email, "password": PASSWORD}))
        }
        ("PATCH", "/users/{id}") => Some(json!({"name": "Renamed by the matrix"})),
        ("POST", "/sessions") => Some(json!({"email": caller.unwrap_or(&cast.owner).email, "password": PASSWORD})),
        ("POST", "/events") => Some(json!({"type": "matrix.checked", "key": "matrix"})),
        _ => Some(json!({})),
    }
}

/// Status, content type and body of `route` called by `caller`.
async fn call(app: &TestApp, route: &ApiRoute, caller: Caller, cast: &Cast) -> (u16, String, Value) {
    let account = cast.account(caller);
    let mut request = app.request_as(account, route.method.clone(), &cast.path(route));
    if let Some(body) = body_for(route, account, cast) {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, content_type, body)
}

/// The refusal `access` demands for `caller` (status and problem code), or `None` when the caller is let in.
fn expected_refusal(access: Access, caller: Caller) -> Option<(u16, &'static str)> {
    match (access, caller) {
        (Access::Public, _) => None,
        (_, Caller::Anonymous) => Some((401, "unauthenticated")),
        (Access::OwnerOrAdmin, Caller::Other) => Some((404, "user-not-found")),
        (Access::Admin, Caller::Owner | Caller::Other) => Some((403, "forbidden")),
        (Access::SignedIn | Access::OwnerOrAdmin | Access::Admin, _) => None,
    }
}

/// Why the answer breaks the route's rule, if it does.
fn violation(access: Access, caller: Caller, (status, content_type, body): &(u16, String, Value)) -> Option<String> {
    if *status >= 500 {
        return Some(format!("answered {status}: {body}"));
    }
    if let Some((refused, code)) = expected_refusal(access, caller) {
        let problem = content_type == "application/problem+json" && body["code"] == code && body["status"] == refused;
        return (*status != refused || !problem)
            .then(|| format!("expected {refused} {code} (problem+json), got {status} {content_type}: {body}"));
    }
    if *status == 401 || *status == 403 {
        return Some(format!("let in by its rule, refused with {status}: {body}"));
    }
    let owns = access == Access::OwnerOrAdmin && matches!(caller, Caller::Owner | Caller::Admin);
    (owns && *status == 404).then(|| format!("the owner's id answered 404 to the {caller:?}: {body}"))
}

/// Publishes an event as `publisher`; its id.
async fn publish(app: &TestApp, publisher: &Account) -> String {
    let event = json!({"type": "access.checked", "key": unique("key")});
    let response = app.request_as(Some(publisher), Method::POST, "/events").json(&event).send().await.expect("sent");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("an event id").to_string()
}

/// Waits (bounded) until `reader` can read the event: the consumer records it asynchronously.
async fn wait_until_recorded(app: &TestApp, reader: &Account, id: &str) {
    let deadline = Instant::now() + RECORDED_WITHIN;
    let path = format!("/events/{id}");
    loop {
        let response = app.request_as(Some(reader), Method::GET, &path).send().await.expect("sent");
        if response.status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "event {id} not readable within {RECORDED_WITHIN:?}: {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "Public",
        Access::SignedIn => "SignedIn",
        Access::OwnerOrAdmin => "OwnerOrAdmin",
        Access::Admin => "Admin",
    }
}

#[tokio::test]
async fn every_api_route_answers_each_caller_as_its_access_rule_says() {
    let app = spawn_app(&[]).await;
    let owner = app.sign_up("Owner").await;
    let event_id = publish(&app, &owner).await;
    wait_until_recorded(&app, &owner, &event_id).await;
    let mut shared = Cast::new(&app, &event_id).await;
    shared.owner = owner;

    let mut matrix =
        format!("{:<28} {:<13} {:>9} {:>5} {:>5} {:>5}\n", "route", "access", "anonymous", "owner", "other", "admin");
    let mut violations = Vec::new();
    for route in api_routes() {
        let name = format!("{} {}", route.method, route.path);
        let mut cells = Vec::new();
        for caller in CALLERS {
            let cast = if consumes_the_cast(&route) { Cast::new(&app, &event_id).await } else { shared.clone() };
            let answer = call(&app, &route, caller, &cast).await;
            if let Some(why) = violation(route.access, caller, &answer) {
                violations.push(format!("{name} as {caller:?}: {why}"));
            }
            cells.push(answer.0);
        }
        let access = access_name(route.access);
        matrix += &format!("{name:<28} {access:<13} {:>9} {:>5} {:>5} {:>5}\n", cells[0], cells[1], cells[2], cells[3]);
    }
    println!("route × caller → status\n{matrix}");
    assert!(violations.is_empty(), "{}\n{matrix}", violations.join("\n"));
    app.stop().await;
}

#[tokio::test]
async fn the_ops_routes_answer_anyone() {
    let app = spawn_app(&[]).await;
    for path in ["/livez", "/readyz", "/health", "/health/postgres", "/metrics", "/ops"] {
        assert_eq!(app.get(path).await.status(), 200, "{path} anonymously");
        // Not behind the API's access control: a stale credential changes nothing.
        let response = app.client.get(format!("{}{path}", app.address)).bearer_auth("stale").send().await;
        assert_eq!(response.expect("sent").status(), 200, "{path} with a junk Bearer token");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_nothing_else() {
    let app = spawn_app(&[]).await;
    let (status, document) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let api = api_routes().into_iter().map(|route| (route.method.to_string(), route.path.to_string()));
    let ops = ops_routes().into_iter().map(|route| ("GET".to_string(), route.path.to_string()));
    let routed: BTreeSet<(String, String)> = api.chain(ops).collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from /openapi.json: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
    app.stop().await;
}

/// The security requirements of the operation `method path` in `document`, as JSON.
fn security_of(document: &Value, method: &str, path: &str) -> Vec<Value> {
    let operation = &document["paths"][path][method.to_lowercase()];
    operation["security"].as_array().cloned().unwrap_or_default()
}

/// Whether an operation's security admits a caller without credentials (none, or an empty requirement).
fn admits_anyone(security: &[Value]) -> bool {
    security.is_empty() || security.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty()))
}

#[tokio::test]
async fn the_openapi_document_states_each_routes_access_rule_and_its_refusals() {
    let app = spawn_app(&[("SESSION_COOKIE_NAME", "contract_cookie")]).await;
    let (_, document) = app.get_json("/openapi.json").await;
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(
        schemes[COOKIE_SCHEME],
        json!({"type": "apiKey", "in": "cookie", "name": "contract_cookie", "description": schemes[COOKIE_SCHEME]["description"]})
    );
    assert_eq!(schemes[BEARER_SCHEME]["type"], "http");
    assert_eq!(schemes[BEARER_SCHEME]["scheme"], "bearer");
    let session = json!([{COOKIE_SCHEME: []}, {BEARER_SCHEME: []}]);
    for route in api_routes() {
        let (method, path) = (route.method.as_str(), route.path);
        let security = security_of(&document, method, path);
        let responses = &document["paths"][path][method.to_lowercase()]["responses"];
        let documents = |status: &str| responses.get(status).is_some();
        assert!(documents("429"), "{method} {path}: every API route is rate limited");
        match route.access {
            Access::Public => assert!(admits_anyone(&security), "{method} {path}: {security:?}"),
            access => {
                assert_eq!(Value::Array(security), session, "{method} {path}");
                assert!(documents("401"), "{method} {path}");
                assert_eq!(documents("403"), access == Access::Admin || path == "/users/{id}" && method == "PATCH");
            }
        }
        if route.access == Access::OwnerOrAdmin {
            assert!(documents("404"), "{method} {path}: someone else's account is answered 404");
        }
    }
    for route in ops_routes() {
        assert!(admits_anyone(&security_of(&document, "GET", route.path)), "{}", route.path);
        let responses = &document["paths"][route.path]["get"]["responses"];
        assert!(responses.get("429").is_none(), "{}: the ops routes are never rate limited", route.path);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_docs_page_is_served_to_anyone_with_no_external_url() {
    let app = spawn_app(&[]).await;
    let response = app.get("/docs").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let html = response.text().await.expect("HTML");
    for external in ["http://", "https://", "src=", "<script", "<link", "@import", "url("] {
        assert!(!html.contains(external), "the page must work offline: it contains {external:?}");
    }
    let (_, document) = app.get_json("/openapi.json").await;
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            let slug: String = path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            assert!(html.contains(&format!("id=\"{method}{slug}\"")), "{method} {path} has its section");
        }
    }
    assert!(html.contains("No other fields are accepted"), "the schemas' constraints are shown");
    app.stop().await;
}

#[tokio::test]
async fn another_signed_in_user_sees_the_public_profile_without_the_email() {
    let app = spawn_app(&[]).await;
    let (owner, other, admin) =
        (app.sign_up("Profiled").await, app.sign_up("Curious").await, app.sign_up_admin().await);
    let path = format!("/users/{}", owner.id);
    let read = |account: Option<&Account>| {
        let request = app.request_as(account, Method::GET, &path);
        async move { request.send().await.expect("sent") }
    };

    let response = read(Some(&other)).await;
    assert_eq!(response.status(), 200);
    let profile: Value = response.json().await.expect("JSON");
    let fields: BTreeSet<&str> = profile.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(fields, BTreeSet::from(["id", "name", "created_at"]), "{profile}");
    assert_eq!(profile["id"], owner.id.as_str());
    assert_eq!(profile["name"], "Profiled");

    for (who, account) in [("owner", &owner), ("admin", &admin)] {
        let response = read(Some(account)).await;
        assert_eq!(response.status(), 200, "{who}");
        let user: Value = response.json().await.expect("JSON");
        assert_eq!(user["email"], owner.email.as_str(), "the {who} sees the whole record: {user}");
    }
    expect_problem(read(None).await, 401, "unauthenticated").await;
    app.stop().await;
}

#[tokio::test]
async fn an_event_is_readable_by_its_publisher_and_admins_only() {
    // The app's own client is an admin's.
    let app = spawn_admin_app(&[]).await;
    let (publisher, other) = (app.sign_up("Publisher").await, app.sign_up("Other").await);
    let id = publish(&app, &publisher).await;
    wait_until_recorded(&app, &publisher, &id).await;
    let path = format!("/events/{id}");

    let response = app.request_as(Some(&publisher), Method::GET, &path).send().await.expect("sent");
    assert_eq!(response.status(), 200, "the publisher reads their event");
    let event: Value = response.json().await.expect("JSON");
    assert_eq!(event["id"], id.as_str());
    assert_eq!(app.get(&path).await.status(), 200, "an admin reads any event");

    let response = app.request_as(Some(&other), Method::GET, &path).send().await.expect("sent");
    let refused = expect_problem(response, 404, "event-not-found").await;
    let unknown = format!("/events/{}", uuid::Uuid::now_v7());
    let response = app.request_as(Some(&other), Method::GET, &unknown).send().await.expect("sent");
    let missing = expect_problem(response, 404, "event-not-found").await;
    assert_eq!(refused, missing, "someone else's event is answered like one that does not exist");
    let response = app.request_as(None, Method::GET, &path).send().await.expect("sent");
    expect_problem(response, 401, "unauthenticated").await;
    app.stop().await;
}

/// Runs `rust-app users create-admin` with `args` against `db`, `stdin` written to its standard input.
async fn create_admin(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    let (dsn, args, stdin) = (db.dsn(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), stdin.to_string());
    tokio::task::spawn_blocking(move || {
        let workdir = TempDir::new();
        let mut child = binary(&[("POSTGRES_DSN", &dsn)], &workdir.0)
            .args(["users", "create-admin"])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rust-app users create-admin");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("password written");
        child.wait_with_output().expect("rust-app users create-admin finishes")
    })
    .await
    .expect("command thread")
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `GET /users` with the session `token`: its status.
async fn list_users_status(app: &TestApp, token: &str) -> u16 {
    let response = reqwest::Client::new().get(format!("{}/users", app.address)).bearer_auth(token).send().await;
    response.expect("sent").status().as_u16()
}

#[tokio::test]
async fn create_admin_takes_the_password_from_stdin_and_that_admin_lists_users() {
    let db = TestDb::create();
    let email = format!("{}@example.com", unique("first-admin"));
    let password = "Stdin-Only-Secret-42";
    let output = create_admin(&db, &["--email", &email, "--name", "First Admin"], &format!("{password}\n")).await;
    let all = printed(&output);
    assert!(output.status.success(), "{all}");
    let id = String::from_utf8_lossy(&output.stdout).trim().strip_prefix("admin ").expect("`admin <id>`").to_string();
    id.parse::<uuid::Uuid>().expect("the admin's id");
    assert!(!all.contains(password), "the password is never printed: {all}");

    let app = spawn_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    let token = app.sign_in(&email, password).await.expect("the admin signs in with the password from stdin");
    let response = reqwest::Client::new().get(format!("{}/users", app.address)).bearer_auth(&token).send().await;
    let response = response.expect("sent");
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("JSON");
    assert!(page["items"].as_array().expect("items").iter().any(|u| u["id"] == id.as_str()), "{page}");

    let again = create_admin(&db, &["--email", &email], &format!("{password}\n")).await;
    assert_ne!(again.status.code(), Some(0), "an email registered already is refused");
    assert!(printed(&again).contains("--promote"), "{}", printed(&again));
    assert!(!printed(&again).contains(password), "{}", printed(&again));
    app.stop().await;
}

#[tokio::test]
async fn create_admin_promote_makes_a_registered_user_an_admin() {
    let db = TestDb::create();
    let app = spawn_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    let user = app.sign_up("Promoted").await;
    // Read once through the user cache, so a promotion that does not drop the cached copy would show.
    assert_eq!(list_users_status(&app, &user.token).await, 403, "not an admin yet");

    let output = create_admin(&db, &["--promote", "--email", &user.email.to_uppercase()], "").await;
    assert!(output.status.success(), "{}", printed(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("admin {}", user.id));
    assert_eq!(list_users_status(&app, &user.token).await, 200, "an admin now, in the same session");

    let nobody = format!("{}@example.com", unique("nobody"));
    let output = create_admin(&db, &["--promote", "--email", &nobody], "").await;
    assert_ne!(output.status.code(), Some(0));
    assert!(printed(&output).contains("no user has this email"), "{}", printed(&output));
    app.stop().await;
}

#[tokio::test]
async fn create_admin_refuses_an_empty_stdin_with_a_clear_message() {
    let db = TestDb::create();
    let email = format!("{}@example.com", unique("no-password"));
    for stdin in ["", "\n"] {
        let output = create_admin(&db, &["--email", &email], stdin).await;
        let all = printed(&output);
        assert_ne!(output.status.code(), Some(0), "{stdin:?}: {all}");
        assert!(all.contains("give the password on standard input"), "{stdin:?}: {all}");
        assert!(output.stdout.is_empty(), "{stdin:?}: {all}");
    }
    // A password that is refused is not echoed in the refusal either.
    let output = create_admin(&db, &["--email", &email], "Short7\n").await;
    assert_ne!(output.status.code(), Some(0));
    assert!(printed(&output).contains("password"), "{}", printed(&output));
    assert!(!printed(&output).contains("Short7"), "{}", printed(&output));
    assert_eq!(db.query(&format!("SELECT count(*) FROM users WHERE email = '{email}'")), "0", "nobody was created");
}
