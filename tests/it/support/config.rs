//! `TestConfig`: builds the daemon's TOML (docs/configuration.md) for a test.
//!
//! Defaults suit loopback tests: ports picked free, `storage.path = "./data"` (next to the
//! config file), callbacks on loopback allowed, a fast retry schedule (200 ms × 2, at most 2 s).
//! Clone a config and change it to get the file for a reload or a restart (same ports).

use std::net::{SocketAddr, TcpListener};

use super::dropbox::App;

/// A value rendered as TOML.
pub trait ToToml {
    fn to_toml(&self) -> String;
}

impl ToToml for &str {
    fn to_toml(&self) -> String {
        // A JSON string literal is a valid TOML basic string.
        serde_json::to_string(self).expect("string to JSON")
    }
}

impl ToToml for String {
    fn to_toml(&self) -> String {
        self.as_str().to_toml()
    }
}

impl ToToml for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl ToToml for i64 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl ToToml for u32 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl ToToml for f64 {
    fn to_toml(&self) -> String {
        // Always with a fraction, so TOML reads a float.
        format!("{self:?}")
    }
}

impl ToToml for &[&str] {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| s.to_toml()).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A free loopback TCP address (bound to port 0, then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("picking a free port")
}

/// Sets `key = value` in a list of rendered key/values, replacing an earlier value.
fn set(list: &mut Vec<(String, String)>, key: &str, value: String) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => list.push((key.to_owned(), value)),
    }
}

/// The whole configuration file of a test daemon.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub server_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `[server]` keys other than `listen` (rendered values).
    pub server: Vec<(String, String)>,
    /// `[storage]` keys (rendered values); `path` included.
    pub storage: Vec<(String, String)>,
    /// `[delivery]` defaults (rendered values).
    pub delivery: Vec<(String, String)>,
    pub instances: Vec<InstanceConfig>,
    /// Raw TOML appended at the end (after every table).
    pub extra: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    pub fn new() -> Self {
        let mut c = TestConfig {
            server_listen: free_addr(),
            admin_listen: free_addr(),
            server: Vec::new(),
            storage: Vec::new(),
            delivery: Vec::new(),
            instances: Vec::new(),
            extra: String::new(),
        };
        c = c
            .server("shutdown_timeout", "5s")
            .storage("path", "./data")
            .delivery("allow_private_destinations", true)
            .delivery("timeout", "5s")
            .delivery("retry_initial", "200ms")
            .delivery("retry_multiplier", 2.0)
            .delivery("retry_max_interval", "2s");
        c
    }

    /// Sets a `[server]` key.
    pub fn server(mut self, key: &str, value: impl ToToml) -> Self {
        set(&mut self.server, key, value.to_toml());
        self
    }

    /// Sets a `[storage]` key.
    pub fn storage(mut self, key: &str, value: impl ToToml) -> Self {
        set(&mut self.storage, key, value.to_toml());
        self
    }

    /// Sets a `[delivery]` default.
    pub fn delivery(mut self, key: &str, value: impl ToToml) -> Self {
        set(&mut self.delivery, key, value.to_toml());
        self
    }

    pub fn max_body_bytes(self, size: &str) -> Self {
        self.server("max_body_bytes", size)
    }

    pub fn shutdown_timeout(self, duration: &str) -> Self {
        self.server("shutdown_timeout", duration)
    }

    pub fn instance(mut self, instance: InstanceConfig) -> Self {
        self.instances.push(instance);
        self
    }

    /// The instance named `name` (panics if there is none).
    pub fn instance_mut(&mut self, name: &str) -> &mut InstanceConfig {
        self.instances
            .iter_mut()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no instance {name:?} in the test config"))
    }

    /// Appends raw TOML at the end of the file.
    pub fn raw(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str("[server]\n");
        out.push_str(&format!(
            "listen = {}\n",
            self.server_listen.to_string().to_toml()
        ));
        push_keys(&mut out, &self.server);
        out.push_str("\n[admin]\n");
        out.push_str(&format!(
            "listen = {}\n",
            self.admin_listen.to_string().to_toml()
        ));
        out.push_str("\n[storage]\n");
        push_keys(&mut out, &self.storage);
        out.push_str("\n[delivery]\n");
        push_keys(&mut out, &self.delivery);
        for instance in &self.instances {
            out.push('\n');
            instance.render(&mut out);
        }
        if !self.extra.is_empty() {
            out.push('\n');
            out.push_str(&self.extra);
        }
        out
    }
}

fn push_keys(out: &mut String, keys: &[(String, String)]) {
    for (k, v) in keys {
        out.push_str(&format!("{k} = {v}\n"));
    }
}

/// One `[[instance]]` in notify mode.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub name: String,
    pub id: u64,
    pub tags: Vec<String>,
    /// `None`: every account of the app.
    pub accounts: Option<Vec<String>>,
    pub app_key: String,
    pub app_secret: String,
    pub enabled: bool,
    pub callback_url: Option<String>,
    pub signature_key: Option<String>,
    pub previous_signature_key: Option<String>,
    /// `[instance.configuration]` keys beyond the ones above (rendered values).
    pub configuration: Vec<(String, String)>,
    /// `[instance.delivery]` overrides (rendered values).
    pub delivery: Vec<(String, String)>,
    /// Raw TOML lines placed in the `[[instance]]` table itself.
    pub extra: String,
}

impl InstanceConfig {
    /// An enabled instance of `app` for every account, without a callback yet.
    pub fn new(name: &str, id: u64, app: &App) -> Self {
        InstanceConfig {
            name: name.to_owned(),
            id,
            tags: Vec::new(),
            accounts: None,
            app_key: app.key.clone(),
            app_secret: app.secret.clone(),
            enabled: true,
            callback_url: None,
            signature_key: None,
            previous_signature_key: None,
            configuration: Vec::new(),
            delivery: Vec::new(),
            extra: String::new(),
        }
    }

    pub fn callback(mut self, url: &str) -> Self {
        self.callback_url = Some(url.to_owned());
        self
    }

    pub fn signature_key(mut self, key: &str) -> Self {
        self.signature_key = Some(key.to_owned());
        self
    }

    pub fn previous_signature_key(mut self, key: &str) -> Self {
        self.previous_signature_key = Some(key.to_owned());
        self
    }

    pub fn accounts(mut self, accounts: &[&str]) -> Self {
        self.accounts = Some(accounts.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets an `[instance.configuration]` key (quoted as written).
    pub fn configuration(mut self, key: &str, value: impl ToToml) -> Self {
        set(&mut self.configuration, key, value.to_toml());
        self
    }

    /// Sets an `[instance.delivery]` override.
    pub fn delivery(mut self, key: &str, value: impl ToToml) -> Self {
        set(&mut self.delivery, key, value.to_toml());
        self
    }

    pub fn paused(self, paused: bool) -> Self {
        self.delivery("paused", paused)
    }

    pub fn coalesce(self, coalesce: bool) -> Self {
        self.delivery("coalesce", coalesce)
    }

    /// Raw TOML lines in the `[[instance]]` table.
    pub fn raw(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("[[instance]]\n");
        out.push_str(&format!("name = {}\n", self.name.to_toml()));
        out.push_str(&format!("id = {}\n", self.id));
        out.push_str("element = \"dropbox\"\n");
        let tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        out.push_str(&format!("tags = {}\n", tags.as_slice().to_toml()));
        if let Some(accounts) = &self.accounts {
            let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
            out.push_str(&format!("accounts = {}\n", accounts.as_slice().to_toml()));
        }
        out.push_str(&self.extra);
        out.push_str("[instance.configuration]\n");
        let mut conf = vec![
            ("oauth.api.key".to_owned(), self.app_key.to_toml()),
            ("oauth.api.secret".to_owned(), self.app_secret.to_toml()),
            (
                "event.notification.enabled".to_owned(),
                self.enabled.to_toml(),
            ),
        ];
        if let Some(url) = &self.callback_url {
            conf.push(("event.notification.callback.url".into(), url.to_toml()));
        }
        if let Some(key) = &self.signature_key {
            conf.push(("event.notification.signature.key".into(), key.to_toml()));
        }
        if let Some(key) = &self.previous_signature_key {
            conf.push((
                "event.notification.signature.previous_key".into(),
                key.to_toml(),
            ));
        }
        conf.extend(self.configuration.iter().cloned());
        for (k, v) in &conf {
            out.push_str(&format!("{} = {v}\n", k.as_str().to_toml()));
        }
        if !self.delivery.is_empty() {
            out.push_str("[instance.delivery]\n");
            push_keys(out, &self.delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_toml_with_the_spec_layout() {
        let app = App::new("app-a");
        let cfg = TestConfig::new()
            .max_body_bytes("1KiB")
            .delivery("rate_limit", "5/s")
            .instance(
                InstanceConfig::new("a \"quoted\"", 7, &app)
                    .tags(&["prod"])
                    .accounts(&["dbid:x"])
                    .callback("http://127.0.0.1:1/h")
                    .signature_key("whsec_abc")
                    .paused(true)
                    .coalesce(false),
            )
            .instance(InstanceConfig::new("b", 8, &app).enabled(false))
            .raw("[dropbox]\napi_url = \"http://127.0.0.1:2\"");
        let text = cfg.to_toml();
        let t: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            t["server"]["listen"].as_str(),
            Some(cfg.server_listen.to_string().as_str())
        );
        assert_eq!(t["server"]["max_body_bytes"].as_str(), Some("1KiB"));
        assert_eq!(t["storage"]["path"].as_str(), Some("./data"));
        assert_eq!(t["delivery"]["retry_multiplier"].as_float(), Some(2.0));
        assert_eq!(
            t["delivery"]["allow_private_destinations"].as_bool(),
            Some(true)
        );
        let instances = t["instance"].as_array().unwrap();
        assert_eq!(instances.len(), 2);
        let a = &instances[0];
        assert_eq!(a["name"].as_str(), Some("a \"quoted\""));
        assert_eq!(a["id"].as_integer(), Some(7));
        assert_eq!(a["element"].as_str(), Some("dropbox"));
        let conf = a["configuration"].as_table().unwrap();
        assert_eq!(conf["oauth.api.key"].as_str(), Some("app-a"));
        assert_eq!(conf["oauth.api.secret"].as_str(), Some(app.secret.as_str()));
        assert_eq!(conf["event.notification.enabled"].as_bool(), Some(true));
        assert_eq!(
            conf["event.notification.callback.url"].as_str(),
            Some("http://127.0.0.1:1/h")
        );
        assert_eq!(
            conf["event.notification.signature.key"].as_str(),
            Some("whsec_abc")
        );
        assert_eq!(a["delivery"]["paused"].as_bool(), Some(true));
        assert_eq!(a["delivery"]["coalesce"].as_bool(), Some(false));
        let b = &instances[1];
        assert!(b.get("accounts").is_none());
        assert!(b.get("delivery").is_none());
        assert_eq!(
            b["configuration"]["event.notification.enabled"].as_bool(),
            Some(false)
        );
        assert_eq!(t["dropbox"]["api_url"].as_str(), Some("http://127.0.0.1:2"));
    }

    #[test]
    fn setting_a_key_twice_replaces_it() {
        let cfg = TestConfig::new()
            .delivery("timeout", "1s")
            .delivery("timeout", "2s");
        let text = cfg.to_toml();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("timeout = "))
            .collect();
        assert_eq!(lines, ["timeout = \"2s\""]);
    }
}
