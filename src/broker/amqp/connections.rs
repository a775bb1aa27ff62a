//! The pooled AMQP connections: one deadpool manager opens plain (`amqp://`)
//! and TLS (`amqps://`) connections alike, each from a recipe that holds what
//! its endpoint needs — a CA file, a client certificate, a TLS server name
//! other than the URL's host. (deadpool-lapin's manager takes only a URL: none
//! of the TLS material, so it could serve plain URLs alone.)
//!
//! Reconnecting is the pool's: a connection checked out that is no longer
//! connected fails the recycle check and a fresh one is opened; lapin's
//! auto-recovery stays off (the two fight each other).
//!
//! Broker credentials may come from files (a Kubernetes Secret mount): they are
//! read at each new connection, so a rotated password is picked up without a
//! restart, and never appear in the URL that is printed.
//!
//! Must not: open channels (`channels` does) or decide connectivity (the
//! supervisor does, from what the pool hands out).

use std::path::PathBuf;
use std::time::Duration;

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use lapin::auth::AuthProvider;
use lapin::tcp::{AMQPUriTcpExt, OwnedIdentity, OwnedTLSConfig, TLSConfig};
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};

use super::errors::from_pool;
use crate::broker::{BrokerError, BrokerErrorKind};
use crate::config::{BrokerTls, SecretUrl};

/// How long a caller waits for a pooled connection, or for one to open.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The settings every pool of ours shares (connections and operation
/// channels): `size` objects at most, bounded waits, tokio's timers.
pub(crate) fn pool_settings<M: managed::Manager>(
    builder: managed::PoolBuilder<M>,
    size: usize,
) -> managed::PoolBuilder<M> {
    builder
        .max_size(size.max(1))
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .runtime(deadpool::Runtime::Tokio1)
}

/// SASL PLAIN with the username and/or password read from files at each
/// connection (what is not in a file comes from the URL).
#[derive(Clone)]
pub(crate) struct FileCredentials {
    username_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    url_username: String,
    url_password: String,
}

impl FileCredentials {
    fn read(path: &Option<PathBuf>, fallback: &str) -> Result<String, String> {
        match path {
            Some(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            None => Ok(fallback.to_owned()),
        }
    }
}

impl AuthProvider for FileCredentials {
    fn mechanism(&self) -> ShortString {
        "PLAIN".into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        let user = Self::read(&self.username_file, &self.url_username)?;
        let password = Self::read(&self.password_file, &self.url_password)?;
        Ok(format!("\0{user}\0{password}").into())
    }
}

/// The largest AMQP frame asked for when the URL does not say (`?frame_max=`).
/// lapin gives each connection a send and a receive buffer of 32 frames, filled
/// with zeros, so at RabbitMQ's default (128 KiB) a connection holds 8 MiB of
/// resident memory before it carries anything; at 32 KiB, 2 MiB. A body larger
/// than a frame is sent as several, as AMQP does for any body.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// `url` with `frame_max=DEFAULT_FRAME_MAX` added to its query, unless it names one.
pub(crate) fn with_default_frame_max(url: &str) -> String {
    // `BrokerUrl::parse` has checked it is a URL. One with a fragment is left
    // alone too: nothing could be appended after it.
    let Ok(parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.fragment().is_some() || parsed.query_pairs().any(|(k, _)| k == "frame_max") {
        return url.to_owned();
    }
    let sep = match parsed.query() {
        None => "?",
        Some("") => "",
        Some(_) => "&",
    };
    format!("{url}{sep}frame_max={DEFAULT_FRAME_MAX}")
}

/// How to open a connection to one broker endpoint: the URL (with the default
/// `frame_max`), the name shown in `rabbitmqctl`, the credential files, and the
/// TLS material for `amqps://` (the system's roots unless a CA file is given, a
/// client certificate, a server name other than the URL's host). Complete in
/// itself, so that each node of a cluster can have its own behind one manager.
struct ConnectionRecipe {
    url: String,
    name: String,
    credentials: Option<FileCredentials>,
    tls: OwnedTLSConfig,
    server_name: Option<String>,
}

impl ConnectionRecipe {
    /// Reads the TLS files once (a missing one is a configuration error); the
    /// credential files are read at each connection.
    fn new(url: &SecretUrl, name: String, tls: &BrokerTls) -> Result<Self, BrokerError> {
        let credentials = (tls.username_file.is_some() || tls.password_file.is_some()).then(|| {
            let parsed = url::Url::parse(url.expose()).ok();
            FileCredentials {
                username_file: tls.username_file.clone(),
                password_file: tls.password_file.clone(),
                url_username: parsed
                    .as_ref()
                    .map(|u| u.username().to_owned())
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "guest".into()),
                url_password: parsed
                    .as_ref()
                    .and_then(|u| u.password().map(str::to_owned))
                    .unwrap_or_default(),
            }
        });
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                BrokerError::new(
                    BrokerErrorKind::InvalidInput,
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let cert_chain = match &tls.ca_file {
            Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
            None => None,
        };
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert)?,
                key: read(key)?,
            }),
            _ => None,
        };
        Ok(ConnectionRecipe {
            url: with_default_frame_max(url.expose()),
            name,
            credentials,
            tls: OwnedTLSConfig {
                identity,
                cert_chain,
            },
            server_name: tls.server_name.clone(),
        })
    }

    /// lapin's auto-recovery stays off (the default): the pool's recycle check
    /// is the one reconnection strategy.
    fn properties(&self) -> lapin::ConnectionProperties {
        let props =
            lapin::ConnectionProperties::default().with_connection_name(self.name.clone().into());
        match &self.credentials {
            Some(c) => props.with_auth_provider(c.clone()),
            None => props,
        }
    }

    /// Opens a connection (TLS for `amqps://`, with this recipe's material).
    async fn connect(&self) -> Result<lapin::Connection, lapin::Error> {
        let Some(server_name) = self.server_name.clone() else {
            return lapin::Connection::connect_with_config(
                &self.url,
                self.properties(),
                self.tls.clone(),
                async_rs::Runtime::tokio_current(),
            )
            .await;
        };
        // lapin takes the TLS name from the URL's host; to send another one, the
        // TCP connection is made to the URL's host and TLS started with the name.
        let uri: AMQPUri = self
            .url
            .parse()
            .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
        let tls = self.tls.clone();
        lapin::Connection::connector(
            uri,
            async_rs::Runtime::tokio_current(),
            async move |uri: AMQPUri, runtime| {
                let mut plain = uri.clone();
                plain.scheme = AMQPScheme::AMQP;
                let stream = plain
                    .connect_with_config_async(TLSConfig::default(), &runtime)
                    .await?;
                Ok(stream.into_tls(&server_name, tls.as_ref()).await?)
            },
            self.properties(),
        )
        .await
    }
}

/// The one deadpool manager of AMQP connections, plain and TLS alike: it opens
/// each from its recipe and keeps a pooled one only while it is connected.
pub(crate) struct ConnectionManager {
    recipe: ConnectionRecipe,
}

impl managed::Manager for ConnectionManager {
    type Type = lapin::Connection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<lapin::Connection, lapin::Error> {
        self.recipe.connect().await
    }

    async fn recycle(
        &self,
        conn: &mut lapin::Connection,
        _: &PoolMetrics,
    ) -> RecycleResult<lapin::Error> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("connection lost"))
        }
    }
}

/// A pool of AMQP connections.
#[derive(Clone)]
pub(crate) struct Connections(managed::Pool<ConnectionManager>);

/// A connection checked out of [`Connections`].
pub(crate) struct Connection(managed::Object<ConnectionManager>);

impl std::ops::Deref for Connection {
    type Target = lapin::Connection;
    fn deref(&self) -> &lapin::Connection {
        &self.0
    }
}

impl Connection {
    /// Takes the connection out of its pool (to close it for good).
    pub(crate) fn detach(self) -> lapin::Connection {
        managed::Object::take(self.0)
    }
}

impl Connections {
    /// A pool of `size` connections to `url`, named `name` in `rabbitmqctl`.
    pub(crate) fn new(
        url: &SecretUrl,
        name: String,
        size: usize,
        tls: &BrokerTls,
    ) -> Result<Self, BrokerError> {
        let manager = ConnectionManager {
            recipe: ConnectionRecipe::new(url, name, tls)?,
        };
        pool_settings(managed::Pool::builder(manager), size)
            .build()
            .map(Connections)
            .map_err(|e| BrokerError::new(BrokerErrorKind::Internal, e.to_string()))
    }

    /// A connected connection (a new one when the pooled ones are gone).
    pub(crate) async fn get(&self) -> Result<Connection, BrokerError> {
        self.0
            .get()
            .await
            .map(Connection)
            .map_err(|e| from_pool(e, "connection"))
    }

    /// Connections idle in the pool now.
    pub(crate) fn available(&self) -> usize {
        self.0.status().available
    }

    pub(crate) fn close(&self) {
        self.0.close();
    }

    /// Closes the idle connections with an AMQP `connection.close` (each
    /// waiting at most `step` for the broker's reply), then the pool.
    pub(crate) async fn close_idle(&self, step: Duration) {
        for _ in 0..self.available() {
            match tokio::time::timeout(Duration::from_secs(1), self.get()).await {
                Ok(Ok(conn)) => {
                    let conn = conn.detach();
                    if conn.status().connected() {
                        let _ =
                            tokio::time::timeout(step, conn.close(200, "shutdown".into())).await;
                    }
                }
                _ => break,
            }
        }
        self.close();
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("status", &self.0.status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{Connections, DEFAULT_FRAME_MAX, with_default_frame_max};
    use crate::config::{BrokerTls, BrokerUrl};

    /// Against the real RabbitMQ, on a plain URL: the password file is read
    /// at each new connection, so a rotated password is used without a restart.
    #[tokio::test]
    async fn the_password_file_is_read_at_each_new_connection() {
        let url = std::env::var("LONGPOLL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let Ok(BrokerUrl::Amqp(url)) = BrokerUrl::parse(&url) else {
            panic!("LONGPOLL_TEST_AMQP_URL is not an AMQP URL");
        };
        let password = url::Url::parse(url.expose())
            .expect("a URL")
            .password()
            .expect("the test URL has a password")
            .to_owned();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("password");
        std::fs::write(&file, "not-the-password\n").expect("written");
        let tls = BrokerTls {
            password_file: Some(file.clone()),
            ..BrokerTls::default()
        };
        let pool = Connections::new(&url, "connections test".into(), 1, &tls).expect("a pool");
        assert!(
            pool.get().await.is_err(),
            "the broker took the file's wrong password"
        );
        std::fs::write(&file, format!("{password}\n")).expect("written");
        let conn = pool.get().await.expect("connected with the new password");
        assert!(conn.status().connected());
        let _ = conn.detach().close(200, "test done".into()).await;
    }

    #[test]
    fn a_url_without_frame_max_asks_for_the_default() {
        let fm = DEFAULT_FRAME_MAX;
        assert_eq!(
            with_default_frame_max("amqp://u:p@h:5672/%2f"),
            format!("amqp://u:p@h:5672/%2f?frame_max={fm}")
        );
        assert_eq!(
            with_default_frame_max("amqps://h/vh?heartbeat=10"),
            format!("amqps://h/vh?heartbeat=10&frame_max={fm}")
        );
        assert_eq!(
            with_default_frame_max("amqp://h?"),
            format!("amqp://h?frame_max={fm}")
        );
        let parsed: lapin::uri::AMQPUri = with_default_frame_max("amqp://u:p@h:5672/%2f")
            .parse()
            .expect("still an AMQP URI");
        assert_eq!(parsed.query.frame_max, Some(fm));
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn a_url_that_names_a_frame_max_keeps_it() {
        for url in [
            "amqp://h:5672/%2f?frame_max=131072",
            "amqp://h/?heartbeat=5&frame_max=4096",
        ] {
            assert_eq!(with_default_frame_max(url), url);
        }
    }
}
