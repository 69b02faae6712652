//! The deployment files agree with the code: `.env.example` lists exactly the variables the configuration
//! reads, docker-compose.yml references only what it defines, the Kubernetes manifests load as a valid
//! configuration with secrets kept out of the ConfigMap, and the Dockerfile keeps its promises. No Docker engine
//! or cluster is needed (none exists where this project is built): these are parse and consistency checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use app::settings::Settings;
use infra::config::Sources;
use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

fn yaml_docs(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&repo_file(path)).unwrap_or_else(|err| panic!("{path} is not valid YAML: {err}"))
}

/// Every variable the configuration reads, from the effective configuration of an empty environment.
fn known_variables() -> BTreeSet<String> {
    let settings = Settings::from_sources(&Sources::from_env_pairs(&[])).expect("defaults are valid");
    settings.config.effective().iter().map(|entry| entry.name.to_string()).collect()
}

/// Variables whose values are secrets: they belong in a Secret, never a ConfigMap.
const SECRETS: [&str; 4] = ["POSTGRES_DSN", "REDIS_PASSWORD", "KAFKA_SASL_PASSWORD", "OTEL_EXPORTER_OTLP_HEADERS"];

fn hash_keys(yaml: &Yaml) -> Vec<String> {
    yaml.as_hash().map(|h| h.keys().filter_map(|k| k.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// A YAML scalar as text (numbers and booleans too, as an environment would see them).
fn scalar(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[test]
fn env_example_lists_exactly_the_known_variables_and_its_values_are_valid() {
    let text = repo_file(".env.example");
    let mut listed = BTreeSet::new();
    let mut set = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let assignment =
            line.strip_prefix("# ").filter(|rest| rest.contains('=') && !rest.contains(' ')).unwrap_or(line);
        if assignment.starts_with('#') {
            continue;
        }
        let (name, value) = assignment.split_once('=').unwrap_or_else(|| panic!("not NAME=value: {line}"));
        assert!(listed.insert(name.to_string()), "{name} listed twice");
        if !line.starts_with('#') {
            set.push((name.to_string(), value.to_string()));
        }
    }
    let known = known_variables();
    let unknown: Vec<_> = listed.difference(&known).collect();
    let missing: Vec<_> = known.difference(&listed).collect();
    assert!(unknown.is_empty(), ".env.example lists variables the configuration does not read: {unknown:?}");
    assert!(missing.is_empty(), ".env.example misses variables: {missing:?}");
    let pairs: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(err) = Settings::from_sources(&Sources::from_env_pairs(&pairs)) {
        panic!(".env.example's values are refused: {err}");
    }
}

#[test]
fn compose_defines_the_seeds_stack_with_healthchecks_and_references_only_what_exists() {
    let docs = yaml_docs("docker-compose.yml");
    let compose = &docs[0];
    let services = &compose["services"];
    let expected = [
        ("rust-app", "rust-app", "8080:8080"),
        ("postgres", "rust-app-postgres", "5432:5432"),
        ("redis", "rust-app-redis", "6379:6379"),
        ("kafka", "rust-app-kafka", "9092:9092"),
        ("adminer", "rust-app-adminer", "8081:8080"),
        ("kafka-ui", "rust-app-kafka-ui", "8090:8080"),
        ("minio", "rust-app-minio", "9001:9001"),
        ("jaeger", "rust-app-jaeger", "16686:16686"),
        ("prometheus", "rust-app-prometheus", "9090:9090"),
        ("grafana", "rust-app-grafana", "3000:3000"),
    ];
    let names = hash_keys(services);
    for (service, container, port) in expected {
        let s = &services[service];
        assert!(!s.is_badvalue(), "service {service} missing; have {names:?}");
        assert_eq!(s["container_name"].as_str(), Some(container), "{service}");
        let ports: Vec<String> = s["ports"].as_vec().map(|p| p.iter().filter_map(scalar).collect()).unwrap_or_default();
        assert!(ports.iter().any(|p| p == port), "{service} publishes {port}: {ports:?}");
        assert!(!s["healthcheck"]["test"].is_badvalue(), "{service} has a healthcheck");
    }
    for (service, spec) in services.as_hash().expect("services") {
        let image = spec["image"].as_str().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
        assert!(!tag.is_empty() && tag != "latest" && !tag.contains('/'), "{service:?}: pin the image tag: {image:?}");
    }
    assert!(
        services["kafka-ui"]["image"].as_str().is_some_and(|image| image.starts_with("kafbat/kafka-ui:")),
        "the maintained Kafka UI (provectuslabs/kafka-ui is continued as kafbat/kafka-ui)"
    );
    assert_eq!(services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str(), Some("broker,controller"), "KRaft");
    assert_eq!(services["postgres"]["environment"]["POSTGRES_DB"].as_str(), Some("rust_app"));
    assert_eq!(services["postgres"]["environment"]["POSTGRES_USER"].as_str(), Some("rust_app_user"));

    // Dependencies: the service waits for healthy PostgreSQL, Redis and Kafka; every dependency exists.
    for (service, spec) in services.as_hash().expect("services") {
        let service = service.as_str().unwrap_or_default();
        for dependency in hash_keys(&spec["depends_on"]) {
            assert!(names.contains(&dependency), "{service} depends on undefined {dependency}");
        }
    }
    for dependency in ["postgres", "redis", "kafka"] {
        let condition = services["rust-app"]["depends_on"][dependency]["condition"].as_str();
        assert_eq!(condition, Some("service_healthy"), "rust-app waits for a healthy {dependency}");
    }

    // Named volumes: used ones are declared.
    let declared: BTreeSet<String> = hash_keys(&compose["volumes"]).into_iter().collect();
    for (service, spec) in services.as_hash().expect("services") {
        for volume in spec["volumes"].as_vec().into_iter().flatten().filter_map(Yaml::as_str) {
            let source = volume.split(':').next().unwrap_or_default();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(declared.contains(source), "{service:?} uses undeclared volume {source}");
            }
        }
    }

    // rust-app's environment: only variables the configuration reads, and they form a valid configuration.
    let known = known_variables();
    let env = &services["rust-app"]["environment"];
    let mut pairs = Vec::new();
    for name in hash_keys(env) {
        assert!(known.contains(&name), "rust-app is given {name}, which the configuration does not read");
        pairs.push((name.clone(), substitute_defaults(&scalar(&env[name.as_str()]).unwrap_or_default())));
    }
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(err) = Settings::from_sources(&Sources::from_env_pairs(&pairs)) {
        panic!("rust-app's compose environment is refused: {err}");
    }
}

/// `${NAME:-default}` → `default`; a `${NAME}` without a default would need a value in `.env`.
fn substitute_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).unwrap_or_else(|| panic!("unclosed ${{ in {value}"));
        let inner = &rest[start + 2..end];
        let (_, default) = inner.split_once(":-").unwrap_or_else(|| panic!("{inner} has no default: {value}"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The ConfigMap's and the Secret's data, by name.
fn k8s_data(path: &str, field: &str) -> BTreeMap<String, String> {
    let docs = yaml_docs(path);
    let data = &docs[0][field];
    hash_keys(data).into_iter().map(|k| (k.clone(), scalar(&data[k.as_str()]).unwrap_or_default())).collect()
}

#[test]
fn kubernetes_manifests_probe_the_right_endpoints_and_keep_secrets_out_of_the_configmap() {
    let config_map = k8s_data("deploy/k8s/configmap.yaml", "data");
    let secret = k8s_data("deploy/k8s/secret.yaml", "stringData");
    let known = known_variables();
    for name in config_map.keys().chain(secret.keys()) {
        assert!(known.contains(name), "{name} is not a variable the configuration reads");
    }
    for name in SECRETS {
        assert!(!config_map.contains_key(name), "{name} is a secret: it belongs in the Secret, not the ConfigMap");
    }
    assert!(config_map.keys().all(|k| !secret.contains_key(k)), "a variable set twice");
    // Together they are a valid configuration.
    let pairs: Vec<(&str, &str)> =
        config_map.iter().chain(secret.iter()).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings =
        Settings::from_sources(&Sources::from_env_pairs(&pairs)).unwrap_or_else(|err| panic!("refused: {err}"));
    let config = settings.config;

    let docs = yaml_docs("deploy/k8s/deployment.yaml");
    let deployment = &docs[0];
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/livez"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(!container["startupProbe"]["httpGet"]["path"].is_badvalue(), "a startup probe");
    assert!(!container["resources"]["requests"]["cpu"].is_badvalue(), "resource requests");
    assert!(!container["resources"]["requests"]["memory"].is_badvalue(), "resource requests");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().expect("a preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    // The service's worst case: SHUTDOWN_TIMEOUT, plus the 1 s each of the consumer, the producer and the pool
    // get past it, plus the trace flush.
    let shutdown = config.server.shutdown_timeout.as_secs() as i64 + 3;
    let flush = config.service.otlp.as_ref().map_or(1, |otlp| otlp.timeout.as_secs() as i64);
    assert!(
        grace > pre_stop + shutdown + flush,
        "grace {grace}s must exceed preStop {pre_stop}s + shutdown {shutdown}s + trace flush {flush}s"
    );
    let env_from: Vec<String> = container["envFrom"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|source| source["configMapRef"]["name"].as_str().or(source["secretRef"]["name"].as_str()))
        .map(String::from)
        .collect();
    assert_eq!(env_from, ["rust-app", "rust-app"], "the ConfigMap and the Secret both feed the environment");

    let service = &yaml_docs("deploy/k8s/service.yaml")[0];
    assert_eq!(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]);
}

#[test]
fn the_dockerfile_builds_in_stages_runs_unprivileged_and_receives_sigterm() {
    let dockerfile = repo_file("Dockerfile");
    let instructions: Vec<&str> =
        dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let froms = instructions.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 3, "multi-stage: dependencies, build, runtime");
    let user = instructions.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as {user}");
    assert!(instructions.iter().any(|l| l.starts_with("HEALTHCHECK")), "a HEALTHCHECK");
    assert!(dockerfile.contains("/livez"), "the HEALTHCHECK probes /livez");
    let entrypoint = instructions.iter().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    assert!(entrypoint.starts_with('['), "exec form, so SIGTERM reaches rust-app: {entrypoint}");
    assert!(instructions.contains(&"EXPOSE 8080"));
    let ignored = repo_file(".dockerignore");
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "the build context leaves target/ out");
}

#[test]
fn compose_runs_the_observability_stack_and_gives_rust_app_the_env_file() {
    let compose = &yaml_docs("docker-compose.yml")[0];
    let services = &compose["services"];
    let app = &services["rust-app"];
    // `cp .env.example .env` (README) reaches the container; without a .env the stack still starts.
    let env_files = app["env_file"].as_vec().expect("rust-app has an env_file list");
    assert!(
        env_files.iter().any(|file| file["path"].as_str() == Some(".env") && file["required"].as_bool() == Some(false)),
        "rust-app reads an optional .env: {env_files:?}"
    );
    // Traces go to Jaeger's OTLP gRPC receiver, listening beyond the container's loopback.
    assert_eq!(app["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(), Some("http://jaeger:4317"));
    let jaeger_args: Vec<&str> =
        services["jaeger"]["command"].as_vec().expect("jaeger command").iter().filter_map(Yaml::as_str).collect();
    assert!(jaeger_args.contains(&"--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317"), "{jaeger_args:?}");

    // Prometheus reads deploy/prometheus: its configuration scrapes rust-app and loads the alert rules.
    let mounts = |service: &str| -> Vec<String> {
        services[service]["volumes"].as_vec().into_iter().flatten().filter_map(Yaml::as_str).map(String::from).collect()
    };
    assert!(mounts("prometheus").contains(&"./deploy/prometheus:/etc/prometheus:ro".to_string()));
    let prometheus = &yaml_docs("deploy/prometheus/prometheus.yml")[0];
    let rule_files: Vec<&str> =
        prometheus["rule_files"].as_vec().expect("rule_files").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(rule_files, ["alerts.yml"]);
    let job = prometheus["scrape_configs"].as_vec().and_then(|jobs| jobs.first()).expect("a scrape job");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(job["static_configs"][0]["targets"][0].as_str(), Some("rust-app:8080"));

    // Grafana is provisioned from deploy/grafana, its dashboard provider reading where the dashboards are mounted.
    let grafana = mounts("grafana");
    assert!(grafana.contains(&"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro".to_string()), "{grafana:?}");
    let provider = &yaml_docs("deploy/grafana/provisioning/dashboards/dashboards.yml")[0]["providers"][0];
    let dashboards_at = provider["options"]["path"].as_str().expect("the provider's path");
    assert!(grafana.contains(&format!("./deploy/grafana/dashboards:{dashboards_at}:ro")), "{grafana:?}");
}

/// The metrics docs/metrics.md documents, by name, with their type.
fn documented_metrics() -> BTreeMap<String, String> {
    let mut metrics = BTreeMap::new();
    for line in repo_file("docs/metrics.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, name, kind, ..] = cells.as_slice()
            && let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`'))
        {
            metrics.insert(name.to_string(), kind.to_string());
        }
    }
    metrics
}

/// The metric names a PromQL expression selects: identifiers outside label matchers, ranges, strings and
/// `by (...)`-style label lists that are neither functions, aggregations, keywords nor numbers.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 22] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "group",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_next_group = false;
    while i < chars.len() {
        let c = chars[i];
        let closing = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' => Some(c),
            '(' if skip_next_group => Some(')'),
            _ => None,
        };
        if let Some(closing) = closing {
            skip_next_group = false;
            i += 1;
            while i < chars.len() && chars[i] != closing {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let preceded_by_dollar = start > 0 && chars[start - 1] == '$';
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LISTS.contains(&word.as_str()) {
                skip_next_group = true;
            } else if !preceded_by_dollar && next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn promql_metric_names_finds_the_series_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (operation, le) (rate(postgres_query_duration_seconds_bucket{outcome="ok"}[$__rate_interval])))
        / on (instance) group_left max without (state) (postgres_pool_max_connections) > 0.5 and up offset 5m"#;
    let names: Vec<String> = promql_metric_names(expr).into_iter().collect();
    assert_eq!(names, ["postgres_pool_max_connections", "postgres_query_duration_seconds_bucket", "up"]);
}

#[test]
fn the_grafana_dashboard_queries_documented_metrics_through_the_provisioned_datasource() {
    let datasources = &yaml_docs("deploy/grafana/provisioning/datasources/datasources.yml")[0]["datasources"];
    let prometheus_uid = datasources
        .as_vec()
        .into_iter()
        .flatten()
        .find(|source| source["type"].as_str() == Some("prometheus"))
        .and_then(|source| source["uid"].as_str())
        .expect("a provisioned Prometheus datasource with a uid");
    let documented = documented_metrics();
    assert!(documented.len() > 20, "docs/metrics.md's tables were read: {documented:?}");
    let is_documented = |name: &str| {
        documented.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix).is_some_and(|base| documented.get(base).is_some_and(|k| k == "histogram"))
            })
    };

    let dashboard: serde_json::Value = serde_json::from_str(&repo_file("deploy/grafana/dashboards/rust-app.json"))
        .expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "rust-app");
    let panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| std::iter::once(panel).chain(panel["panels"].as_array().into_iter().flatten()))
        .filter(|panel| panel["type"] != "row")
        .collect();
    let mut titles = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_i64().expect("a panel id")), "{title}: panel ids are unique");
        titles.insert(title);
        assert_eq!(panel["datasource"]["uid"], prometheus_uid, "{title}: the provisioned datasource");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).expect("queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], prometheus_uid, "{title}: the provisioned datasource");
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let names = promql_metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} selects no metric");
            for name in names {
                assert!(is_documented(&name), "{title}: {name} (in {expr}) is not in docs/metrics.md");
            }
        }
    }
    for expected in [
        "Request rate by route",
        "Errors",
        "Latency",
        "PostgreSQL pool",
        "Cache hit rate",
        "Circuit breakers",
        "Consumer lag per partition",
        "Outbox backlog",
        "Dead-lettered records",
    ] {
        assert!(titles.contains(expected), "the dashboard has a {expected:?} panel: {titles:?}");
    }
}
