//! Where the cluster is: the API URLs a client is given, from flags or from
//! the environment, as addresses to dial.
//!
//! `SPIKE_NEXUS_API_URL` stays one URL, as SPIKE's own clients read it;
//! `SPIKE_NEXUS_API_URLS` (ours) lists every replica, so a client that
//! finds the first one down moves on to the next.

use std::net::SocketAddr;

/// SPIKE's variable: one replica's API URL.
pub const API_URL_VARIABLE: &str = "SPIKE_NEXUS_API_URL";
/// Our variable: every replica's API URL, comma-separated.
pub const API_URLS_VARIABLE: &str = "SPIKE_NEXUS_API_URLS";
/// SPIKE's default API URL.
pub const API_URL_DEFAULT: &str = "https://localhost:8553";
/// Most endpoints a client takes.
pub const ENDPOINTS_MAX: usize = 64;

/// An API URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API URL {url:?} {reason}")]
pub struct EndpointError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The addresses of `urls` (each `https://HOST:PORT`, an optional trailing
/// `/`; several may be given comma-separated), in order, without
/// duplicates. Host names are looked up; every address a name has is
/// kept.
pub async fn resolve<'a>(
    urls: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<SocketAddr>, EndpointError> {
    let mut addresses = Vec::new();
    for url in urls.into_iter().flat_map(|urls| urls.split(',')) {
        let url = url.trim();
        if url.is_empty() {
            continue;
        }
        let fail = |reason: String| EndpointError {
            url: url.to_owned(),
            reason,
        };
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| fail("must start with https://".to_owned()))?
            .trim_end_matches('/');
        if authority.contains('/') {
            return Err(fail("must have no path".to_owned()));
        }
        let resolved = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| fail(format!("does not resolve: {e}")))?;
        for address in resolved {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        if addresses.len() > ENDPOINTS_MAX {
            return Err(fail(format!("makes more than {ENDPOINTS_MAX} endpoints")));
        }
    }
    if addresses.is_empty() {
        return Err(EndpointError {
            url: String::new(),
            reason: "is missing: no endpoint given".to_owned(),
        });
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_become_addresses_in_order_without_duplicates() {
        let addresses = resolve([
            "https://127.0.0.1:8553/",
            "https://127.0.0.1:8554, https://127.0.0.1:8553,,https://[::1]:9",
        ])
        .await
        .expect("resolves");
        let expected: Vec<SocketAddr> = ["127.0.0.1:8553", "127.0.0.1:8554", "[::1]:9"]
            .iter()
            .map(|text| text.parse().expect("address"))
            .collect();
        assert_eq!(addresses, expected);
    }

    #[tokio::test]
    async fn urls_that_cannot_work_are_refused_with_the_reason() {
        for url in [
            "http://127.0.0.1:1",
            "https://127.0.0.1:1/v1",
            "127.0.0.1:1",
            "",
        ] {
            assert!(resolve([url]).await.is_err(), "{url}");
        }
    }
}
