//! Outbound HTTP clients. One pooled reqwest client per distinct (destination guard, proxy,
//! client certificate, extra roots) setting, so that instances with different settings never
//! share a connection that would bypass a check or present another certificate. Redirects are
//! never followed; environment proxies are ignored. Server certificates are checked against
//! the system's roots (the platform verifier), plus an instance's `ca_file` roots.

use std::collections::HashMap;

use reqwest::Url;

use super::ssrf::GuardedResolver;
use crate::config::{Config, Delivery};
use crate::tls::client::MaterialDigest;

/// What makes two instances need different clients. TLS material is known by a hash of its
/// bytes, so the key holds no secret and a reload that re-reads unchanged files keeps the
/// client (and its pooled connections).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    allow_private: bool,
    proxy: Option<Url>,
    identity: Option<MaterialDigest>,
    extra_roots: Option<MaterialDigest>,
}

impl ClientKey {
    fn of(delivery: &Delivery) -> Self {
        ClientKey {
            allow_private: delivery.allow_private_destinations,
            proxy: delivery.proxy.clone(),
            identity: delivery.client_identity.as_ref().map(|id| id.digest()),
            extra_roots: delivery.extra_roots.as_ref().map(|roots| roots.digest()),
        }
    }
}

/// The clients of one configuration generation.
#[derive(Clone, Default)]
pub struct Clients {
    by_key: HashMap<ClientKey, reqwest::Client>,
}

impl Clients {
    /// Builds a client for every setting in `config`, reusing those of `previous` (and so their
    /// pooled connections) where a setting did not change.
    pub fn for_config(
        config: &Config,
        previous: Option<&Clients>,
    ) -> Result<Clients, reqwest::Error> {
        let mut by_key = HashMap::new();
        for instance in &config.instances {
            let key = ClientKey::of(&instance.delivery);
            if by_key.contains_key(&key) {
                continue;
            }
            let client = match previous.and_then(|p| p.by_key.get(&key)) {
                Some(client) => client.clone(),
                None => build(&key, &instance.delivery)?,
            };
            by_key.insert(key, client);
        }
        Ok(Clients { by_key })
    }

    pub fn get(&self, delivery: &Delivery) -> Option<&reqwest::Client> {
        self.by_key.get(&ClientKey::of(delivery))
    }
}

/// A client for `key`, whose TLS material comes from `delivery` (one of the settings with
/// that key).
fn build(key: &ClientKey, delivery: &Delivery) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true);
    match &key.proxy {
        Some(proxy) => {
            // The proxy resolves the destination and connects, so no connect-time check can run
            // here: unless private destinations are allowed, each attempt resolves and checks
            // the callback's host before sending (`ssrf::check_before_proxy`). The proxy host
            // itself may well be private, so it is not filtered.
            builder = builder.proxy(reqwest::Proxy::all(proxy.clone())?);
        }
        None if !key.allow_private => {
            builder = builder.dns_resolver(GuardedResolver);
        }
        None => {}
    }
    if let Some(identity) = &delivery.client_identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity.pem())?);
    }
    if let Some(roots) = &delivery.extra_roots {
        let roots = roots
            .certificates()
            .iter()
            .map(|der| reqwest::Certificate::from_der(der.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        // Merged: the system's roots stay trusted.
        builder = builder.tls_certs_merge(roots);
    }
    builder.build()
}
