//! `GET /docs`: the OpenAPI document rendered as one HTML page on the server — every operation with who may
//! call it, its parameters, body and answers, then every schema with its constraints. No script, no external
//! asset (styles are inline): it works offline and behind any proxy, and reads as plain text.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use super::openapi::document_for;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}\
code{font:13px ui-monospace,monospace;background:#f3f3f3;padding:0 .2em}\
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;\
vertical-align:top}th{background:#f7f7f7}section{border-top:1px solid #ccc;margin-top:1.5em}\
.method{font-weight:bold;text-transform:uppercase;margin-right:.5em}.muted{color:#666}";

/// The API documentation page.
#[utoipa::path(get, path = "/docs", tag = "documentation",
    responses(
        (status = 200, description = "This document as an HTML page (no script, no external asset)", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn page(State(state): State<AppState>) -> Response {
    let document = serde_json::to_value(document_for(&state.cookie.name)).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], render(&document)).into_response()
}

/// The page for `document` (an OpenAPI document as JSON).
pub fn render(document: &Value) -> String {
    let mut html = String::with_capacity(64 * 1024);
    let title = text(&document["info"]["title"]);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} API</title>\
         <style>{STYLE}</style></head><body><h1>{title} API <span class=\"muted\">{}</span></h1><p>{}</p>\
         <p>The same as JSON: <a href=\"/openapi.json\"><code>/openapi.json</code></a> (OpenAPI {}).</p>",
        text(&document["info"]["version"]),
        prose(&document["info"]["description"]),
        text(&document["openapi"]),
    );
    let operations = operations(document);
    html.push_str("<h2>Operations</h2><ul>");
    for (method, path, operation) in &operations {
        let _ = write!(
            html,
            "<li><a href=\"#{}\"><span class=\"method\">{method}</span><code>{}</code></a> {}</li>",
            anchor(method, path),
            escape(path),
            first_line(&operation["summary"]),
        );
    }
    html.push_str("</ul>");
    for (method, path, operation) in &operations {
        render_operation(&mut html, document, method, path, operation);
    }
    html.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = document["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(html, "<section id=\"schema-{}\"><h3>{}</h3>", escape(name), escape(name));
            render_schema(&mut html, schema);
            html.push_str("</section>");
        }
    }
    html.push_str("</body></html>");
    html
}

/// Every operation of the document, in its order.
fn operations(document: &Value) -> Vec<(&'static str, &str, &Value)> {
    let Some(paths) = document["paths"].as_object() else { return Vec::new() };
    let mut found = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method, path.as_str(), operation));
            }
        }
    }
    found
}

fn render_operation(html: &mut String, document: &Value, method: &str, path: &str, operation: &Value) {
    let _ = write!(
        html,
        "<section id=\"{}\"><h3><span class=\"method\">{method}</span><code>{}</code></h3><p>{}</p><p>{}</p>\
         <p>Who may call it: {}</p>",
        anchor(method, path),
        escape(path),
        prose(&operation["summary"]),
        prose(&operation["description"]),
        who(&operation["security"]),
    );
    if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str("<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Required</th><th>Value</th><th>Meaning</th></tr>");
        for parameter in parameters {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&parameter["name"]),
                text(&parameter["in"]),
                if parameter["required"] == true { "yes" } else { "no" },
                constraints(&parameter["schema"]),
                prose(&parameter["description"]),
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        html.push_str("<h4>Body</h4>");
        for (media_type, body) in content {
            let _ = write!(html, "<p><code>{}</code>: {}</p>", escape(media_type), constraints(&body["schema"]));
        }
    }
    html.push_str("<h4>Answers</h4><table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>");
    if let Some(responses) = operation["responses"].as_object() {
        for (status, response) in responses {
            let response = resolve_response(document, response);
            let bodies: Vec<String> = response["content"]
                .as_object()
                .map(|content| {
                    content
                        .iter()
                        .map(|(media, body)| format!("<code>{}</code> {}", escape(media), constraints(&body["schema"])))
                        .collect()
                })
                .unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(status),
                prose(&response["description"]),
                bodies.join("<br>"),
            );
        }
    }
    html.push_str("</table></section>");
}

/// A shared response (`#/components/responses/...`) is shown by its content; the page has no section for it.
fn resolve_response<'a>(document: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/responses/")) {
        Some(name) => &document["components"]["responses"][name],
        None => response,
    }
}

/// A schema's properties as a table; a composite one variant by variant.
fn render_schema(html: &mut String, schema: &Value) {
    if let Some(variants) = schema["anyOf"].as_array().or_else(|| schema["oneOf"].as_array()) {
        let _ = write!(html, "<p>{} One of:</p>", prose(&schema["description"]));
        for variant in variants {
            if variant["$ref"].is_string() {
                let _ = write!(html, "<p>{}</p>", constraints(variant));
            } else {
                let _ = write!(html, "<p><b>{}</b></p>", text(&variant["title"]));
                render_schema(html, variant);
            }
        }
        return;
    }
    let _ = write!(html, "<p>{}</p>", prose(&schema["description"]));
    let Some(properties) = schema["properties"].as_object() else {
        let _ = write!(html, "<p>{}</p>", constraints(schema));
        return;
    };
    let required: Vec<&str> =
        schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    html.push_str("<table><tr><th>Field</th><th>Required</th><th>Value</th><th>Meaning</th></tr>");
    for (name, property) in properties {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            if required.contains(&name.as_str()) { "yes" } else { "no" },
            constraints(property),
            prose(&property["description"]),
        );
    }
    html.push_str("</table>");
    if schema["additionalProperties"] == false {
        html.push_str("<p class=\"muted\">No other fields are accepted.</p>");
    }
}

/// A schema in one line: its type (or the schema it refers to) and every constraint.
fn constraints(schema: &Value) -> String {
    if let Some(name) = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    if let Some(variants) = schema["oneOf"].as_array().or_else(|| schema["anyOf"].as_array()) {
        return variants.iter().map(constraints).collect::<Vec<_>>().join(" or ");
    }
    let mut parts = vec![match &schema["type"] {
        Value::String(kind) => escape(kind),
        Value::Array(kinds) => kinds.iter().map(text).collect::<Vec<_>>().join(" or "),
        _ => "any JSON".to_string(),
    }];
    if let Some(items) = schema.get("items") {
        parts.push(format!("of {}", constraints(items)));
    }
    for (keyword, label) in [
        ("format", "format"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("pattern", "pattern"),
        ("enum", "one of"),
    ] {
        if let Some(value) = schema.get(keyword) {
            let shown = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            parts.push(format!("{label} <code>{}</code>", escape(&shown)));
        }
    }
    parts.join(", ")
}

/// Who the security requirements admit.
fn who(security: &Value) -> &'static str {
    match security.as_array() {
        None => "anyone",
        Some(requirements) if requirements.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty())) => {
            "anyone; a session is used if sent"
        }
        Some(_) => {
            "a signed-in user (session cookie, or <code>Authorization: Bearer &lt;session id&gt;</code>); \
                    the route's own rule is in the answers (403, 404)"
        }
    }
}

fn anchor(method: &str, path: &str) -> String {
    let slug: String = path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("{method}{slug}")
}

/// A string value, escaped.
fn text(value: &Value) -> String {
    escape(value.as_str().unwrap_or_default())
}

/// The first line of a description.
fn first_line(value: &Value) -> String {
    escape(value.as_str().unwrap_or_default().lines().next().unwrap_or_default())
}

/// A description, escaped, with `code` spans kept.
fn prose(value: &Value) -> String {
    let escaped = text(value);
    let mut html = String::with_capacity(escaped.len());
    for (index, part) in escaped.split('`').enumerate() {
        if index % 2 == 1 {
            let _ = write!(html, "<code>{part}</code>");
        } else {
            html.push_str(part);
        }
    }
    html
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_every_operation_and_escapes_what_it_shows() {
        let document = serde_json::to_value(document_for("rust_app_session")).expect("JSON");
        let html = render(&document);
        for (method, path, _) in operations(&document) {
            assert!(html.contains(&format!("id=\"{}\"", anchor(method, path))), "{method} {path}");
        }
        assert!(html.contains("pattern <code>"), "constraints are shown");
        assert!(!html.contains("<script"), "no script");
        assert_eq!(escape("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
