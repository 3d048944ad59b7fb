//! TLS to Redis: a gateway and a worker process talk to a redis-server that only listens on TLS
//! (`rediss://`), with a throwaway CA made here. The CA reaches the processes the way an operator
//! would pass a private CA: `SSL_CERT_FILE`.

use std::process::Stdio;
use std::time::Duration;

use chatfleet::local_redis::LocalRedis;
use tokio::process::{Child, Command};

use crate::helpers::*;

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", server_cert.pem()),
        write("server.key", server_key.serialize_pem()),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(role: &str, s: &chatfleet::settings::Settings, ca: &str, listen: Option<u16>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatfleet"));
    cmd.arg(role)
        .envs(crate::procs::env_for(s))
        .env("SSL_CERT_FILE", ca)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(port) = listen {
        cmd.env("CHATFLEET__GATEWAY__LISTEN", format!("127.0.0.1:{port}"));
    }
    cmd.spawn().expect("the process starts")
}

#[tokio::test]
async fn a_gateway_and_a_worker_stream_an_answer_over_rediss() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let tls_port = free_port().to_string();
    // `--port 0` after LocalRedis's own `--port`: plain TCP off, TLS only.
    let _redis = LocalRedis::start(&[
        "--port",
        "0",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
    .await
    .expect("redis-server starts with TLS");
    let mut s = test_settings();
    s.redis.url = format!("rediss://127.0.0.1:{tls_port}");
    let gw_port = free_port();
    let mut worker = spawn("worker", &s, &ca, None);
    let mut gateway = spawn("gateway", &s, &ca, Some(gw_port));
    let ready = format!("http://127.0.0.1:{gw_port}/readyz");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while !matches!(reqwest::get(&ready).await, Ok(r) if r.status() == 200) {
        assert!(gateway.try_wait().unwrap().is_none(), "the gateway exited (TLS refused?)");
        assert!(worker.try_wait().unwrap().is_none(), "the worker exited (TLS refused?)");
        assert!(tokio::time::Instant::now() < deadline, "the gateway never became ready over TLS");
        // Polling readiness of another process, with a deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(([127, 0, 0, 1], gw_port).into(), &uid("s"), None, None).await;
    let (turn, _) = c.send_and_ack("m1", "over tls").await;
    c.until_end(&turn).await;
    let want = chatfleet::model::demo::answer_for("over tls", s.model.demo.max_tokens);
    assert_eq!(text_of(&c.events(), &turn), want);
}
