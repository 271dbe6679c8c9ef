//! The control-plane replicas a sidecar may use: the `--xds URL,URL,...`
//! list checked once at start, and each URL resolved to the addresses it
//! names at every connect (a DNS name may name several replicas).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::Uri;

/// One `--xds` URL, checked: `http` or `https`, a host, no credentials, no
/// path or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsUrl {
    /// As given; it holds no credentials, so it is safe to log.
    text: String,
    https: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
}

impl XdsUrl {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host as written (a name or an IP literal, without brackets): the
    /// name TLS verifies in the control plane's certificate.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `scheme://host:port`, the origin (`:authority`, SNI) of every stream.
    pub fn origin(&self) -> Uri {
        let scheme = if self.https { "https" } else { "http" };
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        // Built from parts that already parsed as a URI.
        format!("{scheme}://{host}:{}", self.port)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("http://invalid"))
    }

    /// True when the host is an IP literal: no DNS lookup.
    fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// True for `localhost` and loopback literals: traffic that never leaves the machine.
    pub fn is_loopback(&self) -> bool {
        match self.literal() {
            Some(ip) => ip.is_loopback(),
            None => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// A rejected `--xds` item; the message names the URL (credentials
/// redacted) and its position in the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--xds item {item} {url:?}: {reason}")]
pub struct UrlError {
    /// 1-based position in the list.
    pub item: usize,
    pub url: String,
    pub reason: String,
}

/// Parses `--xds` (`URL` or `URL,URL,...`). `tls` says whether TLS settings
/// (`--xds-ca` ...) are given: they apply to every URL, so then every URL
/// must be `https`, and `https` needs them. Every bad URL is reported.
pub fn parse_list(list: &str, tls: bool) -> Result<Vec<XdsUrl>, Vec<UrlError>> {
    let mut urls: Vec<XdsUrl> = Vec::new();
    let mut errors = Vec::new();
    for (index, item) in list.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            errors.push(UrlError {
                item: index + 1,
                url: String::new(),
                reason: "empty".into(),
            });
            continue;
        }
        match parse_one(item, tls) {
            Ok(url)
                if urls
                    .iter()
                    .any(|u| u.host == url.host && u.port == url.port) =>
            {
                errors.push(UrlError {
                    item: index + 1,
                    url: url.text,
                    reason: "named twice".into(),
                })
            }
            Ok(url) => urls.push(url),
            Err(reason) => errors.push(UrlError {
                item: index + 1,
                url: shown(item),
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(urls)
    } else {
        Err(errors)
    }
}

/// A rejected item as an error shows it: whole, unless it may carry a
/// secret (userinfo, query, fragment), which is redacted.
fn shown(item: &str) -> String {
    if item.contains(['@', '?', '#']) {
        meshgate_filters::redact::redact_url(item)
    } else {
        item.to_string()
    }
}

fn parse_one(text: &str, tls: bool) -> Result<XdsUrl, String> {
    // Without a path or query, an `@` can only be userinfo.
    if text.contains('@') {
        return Err("credentials do not belong in the URL: use --xds-token-file".into());
    }
    let uri: Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(format!("scheme {other:?}: use http or https")),
        None => return Err("no scheme: write http://host:port or https://host:port".into()),
    };
    let authority = uri.authority().ok_or("no host")?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a path or query is not allowed: give scheme://host:port only".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    match (https, tls) {
        (true, false) => {
            return Err("https needs --xds-ca, --xds-cert and --xds-key".into());
        }
        (false, true) => {
            return Err(
                "TLS settings apply to every control-plane URL, so this one must be https".into(),
            );
        }
        _ => {}
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(XdsUrl {
        text: text.to_string(),
        https,
        host: host.to_string(),
        port,
    })
}

/// One address of one URL: what a single connect attempt goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of its URL in the `--xds` list.
    pub url: usize,
    pub addr: SocketAddr,
    /// The URL as given, for logs, metrics and the config source.
    pub endpoint: String,
    /// The URL's host is a name (so `addr` is one of its addresses).
    pub resolved: bool,
}

impl Target {
    /// `(url index, address)`: what the failover policy tells targets apart by.
    pub fn key(&self) -> (usize, SocketAddr) {
        (self.url, self.addr)
    }

    /// The URL, with the address when it came from DNS.
    pub fn name(&self) -> String {
        if self.resolved {
            format!("{} ({})", self.endpoint, self.addr)
        } else {
            self.endpoint.clone()
        }
    }
}

/// The targets of `urls`, given each URL's lookup result (IP literals need
/// none); a failed lookup contributes nothing. Addresses are kept in the
/// order returned, duplicates dropped.
pub fn targets(urls: &[XdsUrl], mut lookup: impl FnMut(&XdsUrl) -> Vec<SocketAddr>) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let (addrs, resolved) = match url.literal() {
            Some(ip) => (vec![SocketAddr::new(ip, url.port)], false),
            None => (lookup(url), true),
        };
        for addr in addrs {
            if !out.iter().any(|t| t.url == index && t.addr == addr) {
                out.push(Target {
                    url: index,
                    addr,
                    endpoint: url.text.clone(),
                    resolved,
                });
            }
        }
    }
    out
}

/// How long one DNS lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves every URL now (names through the system resolver, bounded in
/// time); a failed lookup is logged and the other URLs still count.
pub async fn resolve(urls: &[XdsUrl]) -> Vec<Target> {
    // One entry per name, in order: what `targets` asks for.
    let mut found = Vec::with_capacity(urls.len());
    for url in urls.iter().filter(|u| u.literal().is_none()) {
        let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
        let addrs = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %url.text, error = %e, "cannot resolve the control plane's name");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(endpoint = %url.text, timeout = ?LOOKUP_TIMEOUT, "resolving the control plane's name timed out");
                Vec::new()
            }
        };
        found.push(addrs);
    }
    let mut found = found.into_iter();
    targets(urls, |_| found.next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(list: &str, tls: bool) -> Vec<String> {
        parse_list(list, tls)
            .expect_err("rejected")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_list_of_urls_parses_in_order() {
        let urls = parse_list(
            "http://127.0.0.1:18000, http://cp-b.mesh:18000,http://[::1]:9",
            false,
        )
        .expect("valid");
        assert_eq!(urls.len(), 3);
        assert_eq!(urls[0].as_str(), "http://127.0.0.1:18000");
        assert_eq!(urls[1].host(), "cp-b.mesh");
        assert_eq!(urls[1].port(), 18000);
        assert_eq!(urls[2].host(), "::1");
        assert_eq!(urls[2].origin().to_string(), "http://[::1]:9/");
        assert!(urls[2].is_loopback());
        assert!(!urls[1].is_loopback());
        let one = parse_list("https://cp:443", true).expect("valid");
        assert!(one[0].is_https());
        assert_eq!(parse_list("http://cp", false).expect("valid")[0].port(), 80);
    }

    #[test]
    fn every_bad_url_is_named_with_its_reason() {
        let errors = reasons("http://ok:1,ftp://cp:1,http://cp:1/xds,,http://ok:1", false);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].contains("\"ftp://cp:1\"") && errors[0].contains("scheme"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("\"http://cp:1/xds\"") && errors[1].contains("path"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("item 4 \"\"") && errors[2].contains("empty"),
            "{errors:?}"
        );
        assert!(errors[0].starts_with("--xds item 2 "), "{errors:?}");
        assert!(
            errors[3].contains("\"http://ok:1\"") && errors[3].contains("twice"),
            "{errors:?}"
        );
        let errors = reasons("cp:18000", false);
        assert!(
            errors[0].contains("\"cp:18000\"") && errors[0].contains("scheme"),
            "{errors:?}"
        );
        let errors = reasons("http://cp:1?x=1", false);
        assert!(errors[0].contains("query"), "{errors:?}");
        let errors = reasons("http://cp:0", false);
        assert!(errors[0].contains("port 0"), "{errors:?}");
        assert!(!reasons("", false).is_empty());
    }

    #[test]
    fn credentials_in_a_url_are_refused_and_not_echoed() {
        let errors = reasons(
            "http://user:S3cretPass@cp:18000,,http://cp:1?token=S3cretToken",
            false,
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("--xds-token-file"), "{errors:?}");
        for e in &errors {
            assert!(!e.contains("S3cret"), "a secret in {e:?}");
        }
    }

    #[test]
    fn tls_settings_apply_to_every_url() {
        let errors = reasons("https://a:1,http://b:1", true);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("\"http://b:1\"") && errors[0].contains("https"),
            "{errors:?}"
        );
        let errors = reasons("http://a:1,https://b:1", false);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("\"https://b:1\"") && errors[0].contains("--xds-ca"),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn resolving_keeps_literals_and_looks_up_names() {
        let urls = parse_list(
            "http://127.0.0.1:1,http://localhost:2,http://[::1]:3",
            false,
        )
        .expect("valid");
        let found = resolve(&urls).await;
        let localhost: Vec<&Target> = found.iter().filter(|t| t.url == 1).collect();
        assert!(!localhost.is_empty(), "{found:?}");
        assert!(localhost
            .iter()
            .all(|t| t.addr.ip().is_loopback() && t.addr.port() == 2));
        assert!(localhost.iter().all(|t| t.resolved));
        assert_eq!(
            found.first().map(Target::name).as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(
            found.last().map(Target::name).as_deref(),
            Some("http://[::1]:3")
        );
    }

    #[test]
    fn names_expand_to_every_address_and_literals_need_no_lookup() {
        let urls = parse_list(
            "http://10.0.0.1:18000,http://cp.mesh:18000,http://gone:1",
            false,
        )
        .expect("valid");
        let mut looked_up = Vec::new();
        let found = targets(&urls, |url| {
            looked_up.push(url.host().to_string());
            match url.host() {
                "cp.mesh" => vec![
                    "10.0.0.2:18000".parse().expect("addr"),
                    "10.0.0.3:18000".parse().expect("addr"),
                    "10.0.0.2:18000".parse().expect("addr"),
                ],
                _ => Vec::new(),
            }
        });
        assert_eq!(looked_up, ["cp.mesh", "gone"]);
        let names: Vec<String> = found.iter().map(Target::name).collect();
        assert_eq!(
            names,
            [
                "http://10.0.0.1:18000",
                "http://cp.mesh:18000 (10.0.0.2:18000)",
                "http://cp.mesh:18000 (10.0.0.3:18000)",
            ]
        );
        assert_eq!(found[1].url, 1);
        assert_ne!(found[1].key(), found[2].key());
    }
}
