//! Proxies (issue 14 part 1): the real binary reaches `wsup serve` through the in-process
//! `CONNECT` proxy of `tests/support/proxy.rs`, chosen by `--proxy` or by the
//! environment; every answer the proxy can give is classified with the notice naming the
//! proxy; the token endpoint takes the same route; proxy credentials never reach stderr.

mod support;

use support::proxy::{Proxy, ProxyStep};
use support::{
    connect, fixture, refused_port, serve, serve_tls, stop_serve, wsup_command, Wsup, FAST,
};

/// `wsup connect URL extra…` with these environment variables.
fn connect_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Wsup {
    let mut command = wsup_command();
    command.args(["connect", url]).args(FAST).args(extra);
    for (name, value) in env {
        command.env(name, value);
    }
    Wsup::spawn_command(command)
}

/// Sends one line, closes stdin, expects the echo and exit 0.
async fn echo_once(mut client: Wsup) -> support::Finished {
    client.write_line("hello through the proxy").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout("hello through the proxy\n");
    done
}

/// `host:port` of a `ws://` or `wss://` URL printed by `wsup serve`.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest.split('/').next().unwrap().to_string()
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn ws_through_the_proxy_flag_sends_connect_with_the_credentials() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::always(ProxyStep::Tunnel).await;
    let proxy_url = proxy.url_with_userinfo("alice:p%40ss");
    echo_once(connect(&url, &["--proxy", &proxy_url])).await;
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let target = authority(&url);
    assert_eq!(requests[0].line, format!("CONNECT {target} HTTP/1.1"));
    assert_eq!(requests[0].header("host"), Some(target.as_str()));
    // Percent-decoded before encoding: alice:p@ss.
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some(format!("Basic {}", base64("alice:p@ss")).as_str())
    );
    stop_serve(server).await;
}

#[tokio::test]
async fn wss_through_the_proxy_runs_tls_to_the_server_inside_the_tunnel() {
    let (serve, url) = serve_tls("echo").await;
    let proxy = Proxy::always(ProxyStep::Tunnel).await;
    echo_once(connect(
        &url,
        &["--proxy", &proxy.url(), "--ca-cert", &fixture("ca.pem")],
    ))
    .await;
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].line,
        format!("CONNECT {} HTTP/1.1", authority(&url))
    );
    assert_eq!(requests[0].header("proxy-authorization"), None);
    stop_serve(serve).await;
}

#[tokio::test]
async fn an_https_proxy_gets_tls_too_trusting_the_ca_cert() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::start_tls(vec![ProxyStep::Tunnel]).await;
    assert!(proxy.url().starts_with("https://"));
    let proxy_url = proxy.url_with_userinfo("alice:tls-secret");
    echo_once(connect(
        &url,
        &["--proxy", &proxy_url, "--ca-cert", &fixture("ca.pem")],
    ))
    .await;
    let requests = proxy.requests();
    assert_eq!(
        requests[0].line,
        format!("CONNECT {} HTTP/1.1", authority(&url))
    );
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some(format!("Basic {}", base64("alice:tls-secret")).as_str())
    );
    // Without the CA the proxy's certificate is not trusted: permanent, naming the proxy.
    let done = connect(&url, &["--proxy", &proxy.url()]).finish().await;
    done.assert_code(69)
        .assert_stderr_contains(&format!("TLS to proxy {} failed", proxy.url()))
        .assert_stderr_contains("--ca-cert");
    stop_serve(server).await;
}

#[tokio::test]
async fn http_proxy_variable_carries_ws_to_a_name_only_the_proxy_resolves() {
    let (server, url) = serve("echo").await;
    let port = authority(&url).rsplit_once(':').unwrap().1.to_string();
    let target = format!("ws://wsup-test.invalid:{port}/");
    for variable in ["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"] {
        let proxy = Proxy::always(ProxyStep::Tunnel).await;
        echo_once(connect_with_env(&target, &[], &[(variable, &proxy.url())])).await;
        let requests = proxy.requests();
        assert_eq!(
            requests[0].line,
            format!("CONNECT wsup-test.invalid:{port} HTTP/1.1"),
            "{variable}"
        );
    }
    stop_serve(server).await;
}

#[tokio::test]
async fn https_proxy_is_not_used_for_ws_and_no_proxy_or_the_flag_bypass_the_environment() {
    let proxy = Proxy::always(ProxyStep::Tunnel).await;
    let target = format!("ws://wsup-test.invalid:{}/", refused_port());
    let direct = |extra: &'static [&'static str], env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
        connect_with_env(&target, extra, &env)
    };
    // Direct: wsup resolves the name itself, which does not exist (69).
    for (extra, env) in [
        (&[][..], vec![("HTTPS_PROXY", proxy.url())]),
        (
            &[][..],
            vec![
                ("http_proxy", proxy.url()),
                ("NO_PROXY", ".other.example, .INVALID".to_string()),
            ],
        ),
        (&["--no-proxy"][..], vec![("http_proxy", proxy.url())]),
    ] {
        let done = direct(extra, env).finish().await;
        done.assert_code(69)
            .assert_stderr_contains("host not found: wsup-test.invalid");
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[tokio::test]
async fn loopback_targets_ignore_environment_proxies() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::always(ProxyStep::Tunnel).await;
    echo_once(connect_with_env(
        &url,
        &[],
        &[("http_proxy", &proxy.url()), ("ALL_PROXY", &proxy.url())],
    ))
    .await;
    assert!(proxy.requests().is_empty());
    stop_serve(server).await;
}

#[tokio::test]
async fn proxy_407_without_credentials_stops_with_77_naming_the_proxy() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::always(ProxyStep::Status(
        407,
        vec![("Proxy-Authenticate", "Basic realm=\"corp\"".into())],
    ))
    .await;
    let done = connect(&url, &["--proxy", &proxy.url()]).finish().await;
    done.assert_code(77)
        .assert_stderr_contains(&format!(
            "proxy {} answered HTTP 407 Proxy Authentication Required to CONNECT",
            proxy.url()
        ))
        .assert_stderr_contains("none were sent")
        .assert_stderr_lacks("refreshing");
    assert_eq!(proxy.requests().len(), 1, "a 407 is not retried");
    stop_serve(server).await;
}

#[tokio::test]
async fn proxy_407_with_credentials_says_they_were_rejected() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::always(ProxyStep::Status(407, vec![])).await;
    let done = connect(&url, &["--proxy", &proxy.url_with_userinfo("bob:wrong")])
        .finish()
        .await;
    done.assert_code(77)
        .assert_stderr_contains("rejected the credentials in the proxy URL")
        .assert_stderr_lacks("bob:wrong");
    stop_serve(server).await;
}

#[tokio::test]
async fn proxy_403_is_permanent() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::always(ProxyStep::Status(403, vec![])).await;
    let done = connect(&url, &["--proxy", &proxy.url()]).finish().await;
    done.assert_code(69)
        .assert_stderr_contains(&format!("proxy {} answered HTTP 403", proxy.url()))
        .assert_stderr_contains("the proxy refused the tunnel");
    assert_eq!(proxy.requests().len(), 1);
    stop_serve(server).await;
}

#[tokio::test]
async fn proxy_502_is_transient_and_its_retry_after_is_honoured() {
    let (server, url) = serve("echo").await;
    let proxy = Proxy::start(vec![
        ProxyStep::Status(502, vec![("Retry-After", "1".into())]),
        ProxyStep::Tunnel,
    ])
    .await;
    let client = connect(&url, &["--proxy", &proxy.url()]);
    let line = client.wait_stderr("retrying in").await;
    assert!(
        line.contains(&format!("proxy {} answered HTTP 502", proxy.url()))
            && line.contains("[transient]: retrying in 1.0 s"),
        "{line}"
    );
    echo_once(client).await;
    assert_eq!(proxy.requests().len(), 2);
    stop_serve(server).await;
}

#[tokio::test]
async fn an_unreachable_proxy_is_transient_and_named() {
    let proxy = format!("http://127.0.0.1:{}", refused_port());
    let done = connect(
        "ws://127.0.0.1:9/",
        &["--proxy", &proxy, "--max-retries", "1"],
    )
    .finish()
    .await;
    done.assert_code(75)
        .assert_stderr_contains(&format!("proxy {proxy} unreachable: connection refused"))
        .assert_stderr_contains("the proxy may be down or unreachable")
        .assert_stderr_lacks("127.0.0.1:9:");
}

#[tokio::test]
async fn the_connect_timeout_covers_a_proxy_that_never_answers() {
    let proxy = Proxy::always(ProxyStep::Hang).await;
    let done = connect(
        "ws://wsup-test.invalid:9/",
        &[
            "--proxy",
            &proxy.url(),
            "--connect-timeout",
            "300ms",
            "--max-retries",
            "0",
        ],
    )
    .finish()
    .await;
    done.assert_code(75).assert_stderr_contains(&format!(
        "proxy {} unreachable: connect timed out: no tunnel to wsup-test.invalid:9 within 300 ms",
        proxy.url()
    ));
}

#[tokio::test]
async fn a_hostile_proxy_answer_is_bounded_and_permanent() {
    let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 64 << 10));
    for (answer, says) in [
        (endless, "longer than 16 KiB"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), "is not HTTP"),
    ] {
        let proxy = Proxy::always(ProxyStep::Raw(answer)).await;
        let done = connect("ws://wsup-test.invalid:9/", &["--proxy", &proxy.url()])
            .finish()
            .await;
        done.assert_code(69)
            .assert_stderr_contains("did not answer CONNECT as an HTTP proxy")
            .assert_stderr_contains(says);
    }
}

#[tokio::test]
async fn an_unusable_proxy_variable_is_a_usage_error_only_when_it_would_be_used() {
    let done = connect_with_env(
        "wss://wsup-test.invalid/",
        &[],
        &[("https_proxy", "socks5://carol:s3cret@127.0.0.1:1080")],
    )
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("invalid proxy URL in https_proxy")
        .assert_stderr_lacks("s3cret");
    let done = connect("ws://127.0.0.1:9/", &["--proxy", "ftp://p:21"])
        .finish()
        .await;
    done.assert_code(2)
        .assert_stderr_contains("invalid proxy URL in --proxy");
    let done = connect(
        "ws://127.0.0.1:9/",
        &["--proxy", "http://p:1", "--no-proxy"],
    )
    .finish()
    .await;
    done.assert_code(2);
}

#[tokio::test]
async fn proxy_credentials_never_reach_stderr_even_at_trace() {
    let (server, url) = serve("echo").await;
    let secret = "s3cret-proxy-pw";
    let encoded = base64(&format!("user:{secret}"));
    let tunnel = Proxy::always(ProxyStep::Tunnel).await;
    let refused = Proxy::always(ProxyStep::Status(407, vec![])).await;
    for (proxy, code) in [(&tunnel, 0), (&refused, 77)] {
        let mut command = wsup_command();
        command
            .args(["connect", &url, "-vvv", "--proxy"])
            .arg(proxy.url_with_userinfo(&format!("user:{secret}")))
            .env("WSUP_LOG", "trace");
        let mut client = Wsup::spawn_command(command);
        client.write_line("x").await;
        client.close_stdin();
        let done = client.finish().await;
        done.assert_code(code)
            .assert_stderr_lacks(secret)
            .assert_stderr_lacks(&encoded);
        assert!(
            proxy.requests()[0]
                .header("proxy-authorization")
                .is_some_and(|value| value.ends_with(&encoded)),
            "the credentials were sent to the proxy"
        );
    }
    stop_serve(server).await;
}

#[tokio::test]
async fn the_token_endpoint_takes_the_same_proxy_and_trusts_the_ca_cert() {
    let (serve, url) = serve_tls("echo").await;
    let target = authority(&url);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let credentials = serde_json::json!({
        "access_token": "expired",
        "access_token_expiration": "2001-01-01T00:00:00Z",
        "refresh_token": "rt-0",
        "token_url": format!("https://{target}/oauth/token"),
    });
    std::fs::write(&path, credentials.to_string()).unwrap();
    let proxy = Proxy::always(ProxyStep::Tunnel).await;
    let secret = "s3cret-proxy-pw";
    let proxy_url = proxy.url_with_userinfo(&format!("user:{secret}"));
    let mut command = wsup_command();
    command
        .args(["connect", &url, "-vvv", "--proxy", &proxy_url])
        .args(["--ca-cert", &fixture("ca.pem")])
        .args(["--credentials", path.to_str().unwrap()])
        .env("WSUP_LOG", "trace");
    let done = echo_once(Wsup::spawn_command(command)).await;
    // Neither reqwest's nor wsup's trace shows the proxy's credentials.
    done.assert_stderr_lacks(secret)
        .assert_stderr_lacks(&base64(&format!("user:{secret}")));
    let encoded = base64(&format!("user:{secret}"));
    for request in proxy.requests() {
        assert_eq!(
            request.header("proxy-authorization"),
            Some(format!("Basic {encoded}").as_str()),
            "both legs send the proxy credentials"
        );
    }
    let lines: Vec<String> = proxy.requests().into_iter().map(|r| r.line).collect();
    // The refresh before the first dial, then the websocket: both through the proxy.
    assert_eq!(
        lines,
        vec![format!("CONNECT {target} HTTP/1.1"); 2],
        "{lines:?}"
    );
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(
        stored.contains("tok-1"),
        "the refresh did not happen: {stored}"
    );
    stop_serve(serve).await;
}

/// An `http://` token URL goes through the same proxy too, as the proxy's own request
/// (absolute form, no `CONNECT`), with the proxy's credentials: the proxy's 502 is the
/// token endpoint's transient failure, and nothing is refreshed around the proxy.
#[tokio::test]
async fn an_http_token_url_is_sent_to_the_same_proxy_as_a_proxy_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let credentials = serde_json::json!({
        "access_token": "expired",
        "access_token_expiration": "2001-01-01T00:00:00Z",
        "refresh_token": "rt-0",
        "token_url": "http://wsup-test.invalid:8080/oauth/token",
    });
    std::fs::write(&path, credentials.to_string()).unwrap();
    let proxy = Proxy::always(ProxyStep::Status(502, vec![])).await;
    let proxy_url = proxy.url_with_userinfo("user:pw");
    let done = connect(
        "wss://wsup-test.invalid:8443/",
        &[
            "--proxy",
            &proxy_url,
            "--allow-insecure",
            "--max-retries",
            "0",
            "--credentials",
            path.to_str().unwrap(),
        ],
    )
    .finish()
    .await;
    done.assert_code(75);
    let requests = proxy.requests();
    let first = requests.first().expect("the refresh reached the proxy");
    assert_eq!(
        first.line, "POST http://wsup-test.invalid:8080/oauth/token HTTP/1.1",
        "{requests:?}"
    );
    assert_eq!(
        first.header("proxy-authorization"),
        Some(format!("Basic {}", base64("user:pw")).as_str())
    );
    assert!(
        std::fs::read_to_string(&path).unwrap().contains("rt-0"),
        "the refresh token is kept"
    );
}
