//! Proxies against a real, independent proxy: tinyproxy (Debian package `tinyproxy`),
//! started per test with its own configuration on a free loopback port, in the
//! foreground. `ws://` and `wss://` (TLS to the server inside the tunnel) through it, and
//! its `BasicAuth`: 407 without credentials (exit 77), through with them.
//!
//! Where tinyproxy is not installed the tests print a loud SKIPPED line and pass; CI
//! (`.ci/run`) installs it and sets `WSUP_REQUIRE_TINYPROXY`, so there a missing
//! tinyproxy fails instead.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::{fixture, serve, serve_tls, stop_serve, Wsup, BOUND, FAST};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The tinyproxy binary, on PATH or where Debian puts it.
fn tinyproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join("tinyproxy"))
        .find(|candidate| candidate.is_file())
}

/// A running tinyproxy, killed on drop.
struct Tinyproxy {
    _child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url_with_userinfo(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@127.0.0.1:{}", self.port)
    }
}

/// Starts tinyproxy (with `BasicAuth user pass` when `basic_auth`), or says SKIPPED and
/// returns `None` when it is not installed.
async fn tinyproxy(test: &str, basic_auth: bool) -> Option<Tinyproxy> {
    let Some(binary) = tinyproxy_binary() else {
        if std::env::var_os("WSUP_REQUIRE_TINYPROXY").is_some() {
            panic!(
                "tinyproxy is missing but WSUP_REQUIRE_TINYPROXY is set: apt-get install tinyproxy"
            );
        }
        eprintln!(
            "SKIPPED {test}: tinyproxy is not installed (apt-get install tinyproxy); nothing went through a real proxy"
        );
        return None;
    };
    // A port taken between choosing and binding makes tinyproxy exit before it is
    // ready: then try another.
    for _ in 0..3 {
        let port = support::refused_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port is allowed.
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nMaxClients 50\nLogLevel Info\n"
        );
        if basic_auth {
            text.push_str("BasicAuth user pass\n");
        }
        std::fs::write(&conf, text).unwrap();
        let mut child = Command::new(&binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            // In the foreground it logs to stdout.
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tinyproxy");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(BOUND, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Accepting connections") {
                    return true;
                }
            }
            false
        })
        .await
        .expect("tinyproxy neither started nor exited");
        if ready {
            // Keep reading its log so that a full pipe never blocks it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Some(Tinyproxy {
                _child: child,
                port,
                _dir: dir,
            });
        }
    }
    panic!("tinyproxy did not start on a free port in 3 attempts");
}

async fn echo_through(url: &str, extra: &[&str]) {
    let mut args = vec!["connect", url];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    let mut client = Wsup::spawn(args);
    client.write_line("through tinyproxy").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("through tinyproxy\n");
}

#[tokio::test]
async fn ws_and_wss_go_through_tinyproxy() {
    let Some(proxy) = tinyproxy("ws_and_wss_go_through_tinyproxy", false).await else {
        return;
    };
    let (plain, ws_url) = serve("echo").await;
    echo_through(&ws_url, &["--proxy", &proxy.url()]).await;
    let (tls, wss_url) = serve_tls("echo").await;
    echo_through(
        &wss_url,
        &["--proxy", &proxy.url(), "--ca-cert", &fixture("ca.pem")],
    )
    .await;
    stop_serve(plain).await;
    stop_serve(tls).await;
}

#[tokio::test]
async fn tinyproxy_basic_auth_wants_the_proxy_urls_credentials() {
    let test = "tinyproxy_basic_auth_wants_the_proxy_urls_credentials";
    let Some(proxy) = tinyproxy(test, true).await else {
        return;
    };
    let (plain, ws_url) = serve("echo").await;
    let mut args = vec!["connect", ws_url.as_str(), "--proxy"];
    let proxy_url = proxy.url();
    args.push(&proxy_url);
    let done = Wsup::spawn(args).finish().await;
    // 407, or 401 from tinyproxy 1.11, which answers a CONNECT without credentials so.
    done.assert_code(77)
        .assert_stderr_contains(&format!("proxy {} answered HTTP 4", proxy.url()))
        .assert_stderr_contains("none were sent");

    let wrong = proxy.url_with_userinfo("user:wrong");
    let done = Wsup::spawn(["connect", &ws_url, "--proxy", &wrong])
        .finish()
        .await;
    done.assert_code(77)
        .assert_stderr_contains("rejected the credentials");

    let right = proxy.url_with_userinfo("user:pass");
    echo_through(&ws_url, &["--proxy", &right]).await;
    let (tls, wss_url) = serve_tls("echo").await;
    echo_through(
        &wss_url,
        &["--proxy", &right, "--ca-cert", &fixture("ca.pem")],
    )
    .await;
    stop_serve(plain).await;
    stop_serve(tls).await;
}
