//! Validation of network addresses and connection URLs given in configuration.

/// Checks a `host:port` pair (IPv6 hosts in brackets: `[::1]:6379`). Returns the rule broken on failure.
pub fn check_host_port(raw: &str) -> Result<(), String> {
    let rule = || "must be host:port with a port from 1 to 65535".to_string();
    let (host, port) = raw.rsplit_once(':').ok_or_else(rule)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if host_ok && port_ok { Ok(()) } else { Err(rule()) }
}

/// Checks a comma-separated list of `host:port` brokers.
pub fn check_broker_list(raw: &str) -> Result<Vec<String>, String> {
    let brokers: Vec<String> = raw.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from).collect();
    if brokers.is_empty() {
        return Err("must list at least one broker as host:port".to_string());
    }
    for broker in &brokers {
        check_host_port(broker)
            .map_err(|_| format!("must be a comma-separated list of host:port (port 1 to 65535); {broker:?} is not"))?;
    }
    Ok(brokers)
}

/// Checks a URL with one of the given schemes that names a host; a port, when present, must be valid.
pub fn check_url(raw: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let expected = format!("must be a URL like {}://user:password@host:port/name", schemes[0]);
    let parsed = url::Url::parse(raw).map_err(|err| format!("{expected} ({err})"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("{expected} (scheme must be one of {})", schemes.join(", ")));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{expected} (no host)"));
    }
    if parsed.port() == Some(0) {
        return Err(format!("{expected} (port must be from 1 to 65535)"));
    }
    if super::unambiguous_url(raw).is_none() {
        // It would connect somewhere unintended with part of the password as database or parameter.
        return Err(format!("{expected} (an '@' after the host: percent-encode '/', '?', '#' in the password)"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_ipv4_and_bracketed_ipv6() {
        for ok in ["localhost:6379", "127.0.0.1:1", "redis-1.internal:65535", "[::1]:6379"] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn host_port_rejects_missing_or_bad_parts() {
        for bad in ["localhost", ":6379", "localhost:", "localhost:0", "localhost:65536", "local host:1", "::1:6379"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_lists_are_split_and_each_checked() {
        assert_eq!(check_broker_list("a:1, b:2,"), Ok(vec!["a:1".to_string(), "b:2".to_string()]));
        assert!(check_broker_list(" , ").is_err());
        let err = check_broker_list("a:1,b").expect_err("b has no port");
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn urls_need_a_known_scheme_and_a_host() {
        assert!(check_url("postgres://u:p@h:5432/db", &["postgres", "postgresql"]).is_ok());
        assert!(check_url("mysql://u:p@h/db", &["postgres"]).is_err());
        assert!(check_url("postgres://u:p@h:99999/db", &["postgres"]).is_err());
        assert!(check_url("not a url", &["postgres"]).is_err());
        let err = check_url("postgres://u:12#pw@h/db", &["postgres"]).expect_err("password cut at '#'");
        assert!(err.contains("percent-encode"), "{err}");
        assert!(check_url("postgres://u:12%23pw@h/db", &["postgres"]).is_ok());
    }
}
