//! amqps://: a CA file, a client certificate, SNI, and broker credentials read
//! from files. RabbitMQ here listens in plain text, so a TLS proxy in the test
//! (rustls, client certificates required) terminates TLS in front of it and
//! records what each client presented.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::chaos::rabbit_addr;
use common::process::{GatewayProcess, run};
use common::{Backend, TestGateway, client, eventually, unique};
use longpoll_gateway::config::{BrokerTls, BrokerUrl};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

struct Pki {
    dir: tempfile::TempDir,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    server_cert: rustls::pki_types::CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["longpoll-gateway".to_owned()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
            server_cert: server.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// What one TLS client presented to the proxy.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    client_certificate: bool,
}

/// A TLS proxy to RabbitMQ that requires a client certificate signed by the CA.
async fn tls_proxy(pki: &Pki) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![pki.server_cert.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // no client certificate, or not our CA
                };
                let (_, conn) = tls.get_ref();
                record.lock().unwrap().push(Seen {
                    sni: conn.server_name().map(str::to_owned),
                    client_certificate: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                });
                if let Ok(mut upstream) = TcpStream::connect(rabbit_addr()).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A RabbitMQ user of the test's own (tests run in parallel), so that its
/// password is a unique string. It goes when the test ends.
async fn broker_user() -> (String, String) {
    let user = format!("lp-tls-{}", uuid::Uuid::new_v4().simple());
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let (added, _) = common::amqp::rabbitmqctl(&["add_user", &user, &password]).await;
    if !added {
        common::amqp::rabbitmqctl_ok(&["change_password", &user, &password]).await;
    }
    common::amqp::rabbitmqctl_ok(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    (user, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_ca_file_a_client_certificate_and_credential_files_works() {
    let pki = Pki::new();
    let (proxy, seen) = tls_proxy(&pki).await;
    let (user, password) = broker_user().await;
    let tls = BrokerTls {
        ca_file: Some(pki.path("ca.pem")),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        username_file: Some(pki.write("username", &format!("{user}\n"))),
        password_file: Some(pki.write("password", &format!("{password}\n"))),
        ..BrokerTls::default()
    };
    // No credentials in the URL: they come from the files.
    let url = format!("amqps://localhost:{}/%2f", proxy.port());
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&url).unwrap();
        s.broker_tls = tls;
    })
    .await;
    let event = unique("longpoll.event.tls");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"over": "tls"})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["over"], "tls");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(
            s.sni.as_deref(),
            Some("localhost"),
            "SNI names the broker host"
        );
        assert!(s.client_certificate, "the client certificate was presented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_reached_by_address_is_verified_and_named_by_the_tls_server_name() {
    let pki = Pki::new();
    let (proxy, seen) = tls_proxy(&pki).await;
    let (user, password) = broker_user().await;
    // The URL names an IP address (no SNI, and the certificate is for "localhost"):
    // the TLS server name supplies both.
    let url = format!("amqps://{user}:{password}@127.0.0.1:{}/%2f", proxy.port());
    let tls = BrokerTls {
        ca_file: Some(pki.path("ca.pem")),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        server_name: Some("localhost".into()),
        ..BrokerTls::default()
    };
    let gw = TestGateway::start_with(Backend::Rabbit, |s| {
        s.broker = BrokerUrl::parse(&url).unwrap();
        s.broker_tls = tls;
    })
    .await;
    let event = unique("longpoll.event.tls-name");
    let key = gw.subscribe(&[&event]).await;
    gw.emit(&event, json!({"named": true})).await;
    let r = gw.poll(&key, 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["named"], true);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(
            s.sni.as_deref(),
            Some("localhost"),
            "SNI is the server name"
        );
        assert!(s.client_certificate);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_client_certificate_the_broker_refuses_and_the_password_stays_secret() {
    let pki = Pki::new();
    let (proxy, seen) = tls_proxy(&pki).await;
    let (user, password) = broker_user().await;
    let username_file = pki.write("username", &user);
    let password_file = pki.write("password", &password);
    let url = format!("amqps://localhost:{}/%2f", proxy.port());
    let gw = GatewayProcess::start(
        &[
            "--broker",
            &url,
            "--broker-ca-file",
            pki.path("ca.pem").to_str().unwrap(),
            "--broker-username-file",
            username_file.to_str().unwrap(),
            "--broker-password-file",
            password_file.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let http = client();
    eventually(
        Duration::from_secs(10),
        "a failed connection attempt",
        || async {
            let logs = gw.logs();
            common::saw(
                logs.contains("cannot reach the broker"),
                common::last_lines(&logs, 5),
            )
        },
    )
    .await;
    let ready = http
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        seen.lock().unwrap().is_empty(),
        "no TLS session without a client certificate"
    );
    assert!(
        !gw.logs().contains(&password),
        "the password is never logged"
    );
}

#[tokio::test]
async fn tls_settings_that_cannot_work_are_refused_with_one_line() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--broker".into(),
                "amqps://localhost/%2f".into(),
                "--broker-cert-file".into(),
                cert.display().to_string(),
            ],
            "--broker-key-file",
        ),
        (
            vec![
                "--broker".into(),
                "amqp://localhost/%2f".into(),
                "--broker-ca-file".into(),
                ca.display().to_string(),
            ],
            "amqps",
        ),
        (
            vec![
                "--broker".into(),
                "amqps://localhost/%2f".into(),
                "--broker-ca-file".into(),
                "/nonexistent/ca.pem".into(),
            ],
            "--broker-ca-file",
        ),
        (
            vec![
                "--broker".into(),
                "amqp://localhost/%2f".into(),
                "--broker-tls-server-name".into(),
                "localhost".into(),
            ],
            "--broker-tls-server-name (or LONGPOLL_BROKER_TLS_SERVER_NAME): TLS settings need an amqps://",
        ),
        (
            vec![
                "--broker".into(),
                "amqps://localhost/%2f".into(),
                "--broker-tls-server-name".into(),
                "not a name!".into(),
            ],
            "--broker-tls-server-name",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["serve".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, _, err) = run(&all, &[]).await;
        assert_ne!(code, 0, "{all:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{all:?}: {err}");
    }
}
