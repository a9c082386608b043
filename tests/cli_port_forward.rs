//! `wsup port-forward` end to end: the real binary against `wsup serve --script
//! forward:HOST:PORT` (a child process, with a TCP echo target behind it) and against a
//! small independent websocket server written below on tokio-tungstenite, on loopback,
//! in real time. Every wait is event-driven and bounded by `BOUND`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::{fixture, serve_tls, Wsup, BOUND, FAST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1 << 20;

/// Deterministic, non-repeating-looking bytes, different per `seed`.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?}: {what}"))
}

// ------------------------------------------------------------------ a TCP echo target

/// A TCP server that echoes every connection; returns its address.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

// ------------------------------------------------------------- the independent server

/// What one websocket connection of the independent server does.
#[derive(Clone)]
enum Act {
    /// Upgrade, send every binary frame back until the client closes.
    Echo,
    /// Upgrade, send this one binary frame, then echo.
    SendThenEcho(Bytes),
    /// Answer the upgrade with this HTTP status.
    Http(u16),
    /// Upgrade, close with this code and reason.
    Close(u16, &'static str),
    /// Upgrade, echo the first binary frame, then close with this code.
    EchoOnceThenClose(u16),
    /// Upgrade, send `frames` binary frames of `size` bytes as fast as the client takes
    /// them, counting the bytes sent; then echo.
    Flood { frames: usize, size: usize },
}

#[derive(Debug, Clone, Default)]
struct Seen {
    /// TCP connections accepted.
    connections: usize,
    upgrades: usize,
    /// Close codes the client sent, in the order they arrived.
    client_closes: Vec<u16>,
    /// Bytes the `Flood` behaviour has sent so far.
    flooded: usize,
}

struct WsServer {
    addr: SocketAddr,
    seen: watch::Receiver<Seen>,
}

fn big_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 * MIB))
        .max_frame_size(Some(64 * MIB))
}

impl WsServer {
    /// Connection N gets `script[N]`; the last entry repeats.
    async fn start(script: Vec<Act>) -> WsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = watch::channel(Seen::default());
        let seen_tx = Arc::new(seen_tx);
        tokio::spawn(async move {
            let mut index = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                let act = script[index.min(script.len() - 1)].clone();
                index += 1;
                seen_tx.send_modify(|s| s.connections += 1);
                tokio::spawn(serve_one(tcp, act, Arc::clone(&seen_tx)));
            }
        });
        WsServer { addr, seen }
    }

    fn url(&self) -> String {
        format!("ws://{}/forward", self.addr)
    }

    fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&Seen) -> bool) -> Seen {
        let mut seen = self.seen.clone();
        let found = bounded(what, seen.wait_for(|s| condition(s)))
            .await
            .expect("server alive")
            .clone();
        found
    }
}

async fn serve_one(tcp: TcpStream, act: Act, seen: Arc<watch::Sender<Seen>>) {
    let status = match act {
        Act::Http(status) => Some(status),
        _ => None,
    };
    #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
    let callback = move |_: &Request, response: Response| -> Result<Response, ErrorResponse> {
        match status {
            Some(status) => {
                let mut refusal = ErrorResponse::new(Some("scripted refusal".into()));
                *refusal.status_mut() = status.try_into().unwrap();
                Err(refusal)
            }
            None => Ok(response),
        }
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(big_config())).await
    else {
        return;
    };
    seen.send_modify(|s| s.upgrades += 1);
    let mut echo_limit = None;
    match act {
        Act::Http(_) => unreachable!("refused above"),
        Act::Echo => {}
        Act::SendThenEcho(bytes) => {
            if ws.send(Message::Binary(bytes)).await.is_err() {
                return;
            }
        }
        Act::Close(code, reason) => {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))
                .await;
        }
        Act::EchoOnceThenClose(code) => echo_limit = Some((1, code)),
        Act::Flood { frames, size } => {
            let chunk = Bytes::from(payload(size, 7));
            for _ in 0..frames {
                if ws.send(Message::Binary(chunk.clone())).await.is_err() {
                    return;
                }
                seen.send_modify(|s| s.flooded += size);
            }
        }
    }
    let mut echoed = 0;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(bytes) => {
                if ws.send(Message::Binary(bytes)).await.is_err() {
                    return;
                }
                echoed += 1;
                if let Some((limit, code)) = echo_limit {
                    if echoed == limit {
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "".into(),
                            }))
                            .await;
                    }
                }
            }
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                seen.send_modify(|s| s.client_closes.push(code));
            }
            _ => {}
        }
    }
}

// -------------------------------------------------------------------------- helpers

/// `wsup port-forward URL --listen 127.0.0.1:0` with fast retries; returns the process
/// and the address it listens on (from its `forwarding ADDR -> URL` line).
async fn port_forward(url: &str, extra: &[&str]) -> (Wsup, SocketAddr) {
    port_forward_with_env(url, extra, &[]).await
}

/// [`port_forward`] with extra environment variables.
async fn port_forward_with_env(
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Wsup, SocketAddr) {
    let mut command = support::wsup_command();
    command.args(["port-forward", url, "--listen", "127.0.0.1:0"]);
    command.args(FAST).args(extra);
    command.envs(env.iter().copied());
    let wsup = Wsup::spawn_command(command);
    let stderr = wsup.wait_stderr(&format!(" -> {url}\n")).await;
    let line = stderr
        .lines()
        .find(|line| line.starts_with("wsup: forwarding "))
        .unwrap_or_else(|| panic!("no forwarding line in {stderr:?}"));
    let (addr, _) = line["wsup: forwarding ".len()..]
        .split_once(" -> ")
        .expect("ADDR -> URL");
    (wsup, addr.parse().expect("a socket address"))
}

async fn serve_forwarding_to(target: SocketAddr, script_prefix: &str) -> (Wsup, String) {
    let script = format!("{script_prefix}forward:{target}");
    let serve = Wsup::spawn(["serve", "--listen", "127.0.0.1:0", "--script", &script]);
    let url = serve.first_stdout_line().await;
    assert!(url.starts_with("ws://127.0.0.1:"), "serve printed {url:?}");
    (serve, url)
}

async fn stop(wsup: Wsup, signal: &str, code: i32) -> support::Finished {
    wsup.signal(signal);
    let done = wsup.finish().await;
    done.assert_code(code);
    done
}

/// Sends `data` through a new tunnel and reads the same number of bytes back, both
/// directions at once; asserts they are identical. Returns the open connection.
async fn round_trip(listen: SocketAddr, data: &[u8]) -> TcpStream {
    let tcp = bounded("connect to the listener", TcpStream::connect(listen))
        .await
        .expect("the listener accepts");
    let (mut read, mut write) = tcp.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write into the tunnel");
        write
    });
    let mut back = vec![0u8; data.len()];
    bounded("the echo through the tunnel", read.read_exact(&mut back))
        .await
        .expect("read the echo");
    assert!(back == data, "{} bytes came back altered", data.len());
    let write = writer.await.unwrap();
    read.reunite(write).unwrap()
}

/// Waits until the peer closes `tcp` (EOF or reset), discarding what still arrives.
async fn assert_closed(mut tcp: TcpStream, what: &str) {
    let mut sink = vec![0u8; 64 * 1024];
    bounded(what, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// ----------------------------------------------------------- payloads, both directions

#[tokio::test]
async fn serve_1mib_and_16mib_pass_through_byte_identical() {
    let target = echo_target().await;
    let (serve, url) = serve_forwarding_to(target, "").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    for (size, seed) in [(MIB, 1), (16 * MIB, 2)] {
        let tcp = round_trip(listen, &payload(size, seed)).await;
        drop(tcp);
    }
    let done = stop(forward, "TERM", 143).await;
    done.assert_stdout("");
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn independent_1mib_and_16mib_pass_through_byte_identical() {
    let server = WsServer::start(vec![Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    for (size, seed) in [(MIB, 3), (16 * MIB, 4)] {
        round_trip(listen, &payload(size, seed)).await;
    }
    stop(forward, "TERM", 143).await;
    assert_eq!(
        server.seen().upgrades,
        2,
        "one websocket per TCP connection"
    );
}

#[tokio::test]
async fn independent_a_single_16mib_frame_arrives_intact() {
    let big = payload(16 * MIB, 5);
    let server = WsServer::start(vec![Act::SendThenEcho(Bytes::from(big.clone()))]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    let mut got = vec![0u8; big.len()];
    bounded("the 16 MiB frame", tcp.read_exact(&mut got))
        .await
        .unwrap();
    assert!(got == big, "the frame arrived altered");
    // And the tunnel still works the other way.
    let small = payload(1000, 6);
    tcp.write_all(&small).await.unwrap();
    let mut back = vec![0u8; small.len()];
    bounded("the echo", tcp.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, small);
    stop(forward, "TERM", 143).await;
}

// ------------------------------------------------------------------ concurrent tunnels

/// 32 tunnels at once, each with its own data; returns them still open.
async fn thirty_two_at_once(listen: SocketAddr) -> Vec<TcpStream> {
    let tunnels: Vec<_> = (0..32u64)
        .map(|seed| {
            tokio::spawn(async move {
                let data = payload(256 * 1024 + seed as usize, 100 + seed);
                round_trip(listen, &data).await
            })
        })
        .collect();
    let mut open = Vec::new();
    for tunnel in tunnels {
        open.push(tunnel.await.expect("tunnel task"));
    }
    assert_eq!(open.len(), 32);
    open
}

#[tokio::test]
async fn serve_32_concurrent_tunnels() {
    let target = echo_target().await;
    let (serve, url) = serve_forwarding_to(target, "").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    let open = thirty_two_at_once(listen).await;
    let done = stop(forward, "TERM", 143).await;
    drop(open);
    done.assert_stderr_lacks("tunnel closed");
    stop(serve, "TERM", 143).await;
}

/// Names of the threads of process `pid` that run connections (`wsup-shard-N`), sorted.
fn shard_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("wsup-shard-"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn port_forward_and_serve_start_as_many_connection_threads_as_tokio_worker_threads_says() {
    let target = echo_target().await;
    // TOKIO_WORKER_THREADS gives the number of connection threads (default: two per
    // core, at most 8); 32 tunnels spread over them pass intact. Which thread runs which
    // connection is the unit test's in src/shards.rs.
    let mut command = support::wsup_command();
    command.args(["serve", "--listen", "127.0.0.1:0", "--script"]);
    command.arg(format!("forward:{target}"));
    command.env("TOKIO_WORKER_THREADS", "3");
    let serve = Wsup::spawn_command(command);
    let url = serve.first_stdout_line().await;
    let (forward, listen) =
        port_forward_with_env(&url, &[], &[("TOKIO_WORKER_THREADS", "3")]).await;
    let open = thirty_two_at_once(listen).await;
    let threads = ["wsup-shard-0", "wsup-shard-1", "wsup-shard-2"];
    assert_eq!(shard_threads(forward.pid()), threads);
    assert_eq!(shard_threads(serve.pid()), threads);
    let done = stop(forward, "TERM", 143).await;
    drop(open);
    done.assert_stderr_lacks("tunnel closed");
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn independent_32_concurrent_tunnels() {
    let server = WsServer::start(vec![Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let open = thirty_two_at_once(listen).await;
    assert_eq!(server.seen().upgrades, 32);
    stop(forward, "TERM", 143).await;
    for tcp in open {
        assert_closed(tcp, "every tunnel is closed on SIGTERM").await;
    }
    // Every tunnel closed its websocket on SIGTERM: 1001 going away.
    let seen = server
        .wait_for("32 close frames", |s| s.client_closes.len() == 32)
        .await;
    assert!(
        seen.client_closes.iter().all(|code| *code == 1001),
        "{seen:?}"
    );
}

// ------------------------------------------------------ failures stay in their tunnel

#[tokio::test]
async fn serve_a_rejected_tunnel_closes_only_its_connection() {
    // The first websocket is closed 1008 and there are no credentials to refresh: that
    // tunnel stops (auth) and its TCP connection is closed; the next one works.
    let target = echo_target().await;
    let (serve, url) = serve_forwarding_to(target, "close:1008:token expired,").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    let rejected = TcpStream::connect(listen).await.unwrap();
    assert_closed(rejected, "the rejected tunnel's TCP connection closes").await;
    forward.wait_stderr("tunnel closed").await;
    round_trip(listen, &payload(MIB, 9)).await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("1008")
        .assert_stderr_contains("token expired")
        .assert_stderr_contains("pass --token-env VAR or --credentials FILE");
    let tunnel_line = done
        .stderr
        .lines()
        .find(|line| line.contains("tunnel closed"))
        .expect("a line for the failed tunnel");
    assert!(
        tunnel_line.starts_with("wsup: 127.0.0.1:"),
        "prefixed by the tunnel's peer: {tunnel_line:?}"
    );
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn independent_a_rejected_tunnel_closes_only_its_connection() {
    // 503 with --max-retries 0: the first tunnel gives up at once (75), the second works.
    let server = WsServer::start(vec![Act::Http(503), Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &["--max-retries", "0"]).await;
    let rejected = TcpStream::connect(listen).await.unwrap();
    assert_closed(rejected, "the rejected tunnel's TCP connection closes").await;
    forward.wait_stderr("tunnel closed").await;
    round_trip(listen, &payload(MIB, 10)).await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("503")
        .assert_stderr_contains("giving up after 0 retries");
    assert_eq!(server.seen().connections, 2);
}

#[tokio::test]
async fn independent_close_1008_without_credentials_stops_that_tunnel() {
    let server = WsServer::start(vec![Act::Close(1008, "token expired"), Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let rejected = TcpStream::connect(listen).await.unwrap();
    assert_closed(rejected, "the rejected tunnel's TCP connection closes").await;
    forward.wait_stderr("tunnel closed").await;
    round_trip(listen, &payload(1000, 11)).await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("token expired");
    assert_eq!(
        server.seen().connections,
        2,
        "an auth failure is not redialed"
    );
}

#[tokio::test]
async fn serve_a_tunnel_redials_while_dialing_up_to_the_default_5_retries() {
    // 503 twice, then forward: the first tunnel gets through on its third dial.
    let target = echo_target().await;
    let (serve, url) = serve_forwarding_to(target, "http:503,http:503,").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    round_trip(listen, &payload(64 * 1024, 12)).await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("attempt 1 of 5")
        .assert_stderr_contains("attempt 2 of 5")
        .assert_stderr_lacks("tunnel closed");
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn independent_default_retries_per_tunnel_is_5() {
    let server = WsServer::start(vec![Act::Http(503)]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let tcp = TcpStream::connect(listen).await.unwrap();
    assert_closed(tcp, "the tunnel gives up").await;
    forward.wait_stderr("tunnel closed").await;
    assert_eq!(server.seen().connections, 6, "1 dial + 5 retries");
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("giving up after 5 retries");
}

#[tokio::test]
async fn independent_a_tunnel_is_not_redialed_once_bytes_flow() {
    // The websocket echoes one frame, then the server restarts (1012, transient): the
    // byte stream cannot be resumed, so the TCP connection closes without a redial.
    let server = WsServer::start(vec![Act::EchoOnceThenClose(1012), Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let tcp = round_trip(listen, b"ping").await;
    assert_closed(tcp, "the tunnel closes when its websocket goes").await;
    forward.wait_stderr("tunnel closed").await;
    assert_eq!(server.seen().connections, 1, "no redial after bytes flowed");
    // The listener is still there.
    round_trip(listen, b"again").await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("1012");
}

#[tokio::test]
async fn serve_an_unreachable_forward_target_closes_the_tunnel_with_its_reason() {
    let unreachable: SocketAddr = format!("127.0.0.1:{}", support::refused_port())
        .parse()
        .unwrap();
    let (serve, url) = serve_forwarding_to(unreachable, "").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    let tcp = TcpStream::connect(listen).await.unwrap();
    assert_closed(tcp, "the tunnel closes").await;
    forward.wait_stderr("tunnel closed").await;
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_contains("1011")
        .assert_stderr_contains("forward target unreachable");
    stop(serve, "TERM", 143).await;
}

// ------------------------------------------------------------ shared credentials

#[tokio::test]
async fn serve_tunnels_rejected_together_share_one_token_refresh() {
    // In-process `wsup serve` (for its counters): it wants a token the credentials file
    // does not have yet, so every tunnel's first dial gets 401; the refresh is
    // single-flight across tunnels: one token request, and every tunnel works.
    let target = echo_target().await;
    let script = format!("forward:{target}").parse().unwrap();
    let server = wsup::serve::start(wsup::serve::ServeOptions {
        require_token: Some("only-a-refreshed-token-works".into()),
        ..wsup::serve::ServeOptions::new("127.0.0.1:0".parse().unwrap(), script)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let credentials = serde_json::json!({
        "access_token": "stale",
        "access_token_expiration": "2099-01-01T00:00:00Z",
        "refresh_token": "rt-0",
        "token_url": server.token_url(),
    });
    std::fs::write(&path, credentials.to_string()).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let (forward, listen) = port_forward(&server.ws_url(), &["--credentials", &path]).await;
    let tunnels: Vec<_> = (0..8u64)
        .map(|seed| {
            tokio::spawn(async move { round_trip(listen, &payload(4096, 200 + seed)).await })
        })
        .collect();
    for tunnel in tunnels {
        tunnel.await.expect("tunnel task");
    }
    let stats = server.stats();
    assert_eq!(stats.token_requests, 1, "{stats:?}");
    assert_eq!(stats.upgrades, 8, "{stats:?}");
    assert!(stats.unauthorized >= 1, "{stats:?}");
    let done = stop(forward, "TERM", 143).await;
    done.assert_stderr_lacks("tunnel closed")
        .assert_stderr_lacks("only-a-refreshed")
        .assert_stderr_lacks("tok-1");
    server.shutdown().await;
}

// ----------------------------------------------------------------------- back-pressure

#[tokio::test]
async fn independent_a_slow_reader_slows_the_websocket_and_memory_stays_bounded() {
    const FRAMES: usize = 1024;
    const SIZE: usize = 64 * 1024; // 64 MiB in all
    let server = WsServer::start(vec![Act::Flood {
        frames: FRAMES,
        size: SIZE,
    }])
    .await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    // Nobody reads: the server must get stuck well before 64 MiB. Its progress is a
    // watch; give it a bounded chance to (wrongly) push everything.
    let everything = tokio::time::timeout(
        Duration::from_secs(2),
        server.wait_for("never", |s| s.flooded == FRAMES * SIZE),
    )
    .await;
    assert!(
        everything.is_err(),
        "64 MiB went into a tunnel nobody reads"
    );
    let stuck_at = server.seen().flooded;
    assert!(
        stuck_at < 40 * MIB,
        "{} MiB were taken from the server while the TCP reader was idle",
        stuck_at / MIB
    );
    let rss = vm_hwm_kib(forward.pid());
    assert!(
        rss < 64 * 1024,
        "wsup's peak memory is {rss} KiB while buffering for an idle reader"
    );
    // Now read: every byte arrives, in order.
    let expected = payload(SIZE, 7);
    let mut chunk = vec![0u8; SIZE];
    for frame in 0..FRAMES {
        bounded("the flood", tcp.read_exact(&mut chunk))
            .await
            .unwrap();
        assert!(chunk == expected, "frame {frame} altered");
    }
    stop(forward, "TERM", 143).await;
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

// ----------------------------------------------------------------------------- signals

async fn sigterm_closes_listener_and_tunnels(listen: SocketAddr, forward: Wsup) {
    let tcp = round_trip(listen, b"before the signal").await;
    let signalled = forward.signal("TERM");
    let done = forward.finish().await;
    done.assert_code(143)
        .assert_stdout("")
        .assert_stderr_contains("terminated (SIGTERM)")
        .assert_stderr_lacks("tunnel closed");
    let latency = done.exited_at - signalled;
    assert!(
        latency < Duration::from_secs(1),
        "exit took {latency:?} after SIGTERM"
    );
    assert_closed(tcp, "the open tunnel is closed").await;
    let refused = TcpStream::connect(listen).await;
    assert!(refused.is_err(), "the listener is closed after SIGTERM");
}

#[tokio::test]
async fn serve_sigterm_exits_143_and_closes_the_listener() {
    let target = echo_target().await;
    let (serve, url) = serve_forwarding_to(target, "").await;
    let (forward, listen) = port_forward(&url, &[]).await;
    sigterm_closes_listener_and_tunnels(listen, forward).await;
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn independent_sigterm_exits_143_closes_the_listener_and_sends_1001() {
    let server = WsServer::start(vec![Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    sigterm_closes_listener_and_tunnels(listen, forward).await;
    let seen = server
        .wait_for("the tunnel's close frame", |s| !s.client_closes.is_empty())
        .await;
    assert_eq!(seen.client_closes, vec![1001]);
}

#[tokio::test]
async fn independent_sigint_exits_130() {
    let server = WsServer::start(vec![Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &[]).await;
    let tcp = round_trip(listen, b"x").await;
    let done = stop(forward, "INT", 130).await;
    done.assert_stderr_contains("interrupted (SIGINT)");
    assert_closed(tcp, "the open tunnel is closed").await;
}

#[tokio::test]
async fn a_listen_address_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let done = Wsup::spawn(["port-forward", "ws://127.0.0.1:9/", "--listen", &addr])
        .finish()
        .await;
    done.assert_code(69)
        .assert_stderr_contains("cannot listen on");
}

// ------------------------------------------------------------- hostile clients

/// `--max-tunnels 2` against a server that never answers the upgrade: two tunnels dial,
/// the third client waits in the listen queue (no third dial) until a client leaves;
/// then it is dialed. The limit is said once, not once per waiting client.
#[tokio::test]
async fn max_tunnels_holds_further_clients_until_a_tunnel_ends_with_one_notice() {
    let server = support::Server::always(support::Behaviour::Hang).await;
    let (forward, listen) = port_forward(
        &server.url(),
        &["--max-tunnels", "2", "--connect-timeout", "1h"],
    )
    .await;
    let first = TcpStream::connect(listen).await.expect("client 1");
    let _second = TcpStream::connect(listen).await.expect("client 2");
    server.wait_connections(2).await;
    // Accepted by the kernel (listen queue), not by wsup.
    let _third = TcpStream::connect(listen).await.expect("client 3");
    forward.wait_stderr("--max-tunnels").await;
    // A bounded look for a dial that must not come (not a synchronisation: nothing is
    // waited for on the success path).
    let third_dialed =
        tokio::time::timeout(Duration::from_millis(500), server.wait_connections(3)).await;
    assert!(
        third_dialed.is_err(),
        "a third tunnel dialed past --max-tunnels 2"
    );
    assert_eq!(server.connection_count(), 2);
    drop(first);
    server.wait_connections(3).await;
    let done = stop(forward, "TERM", 143).await;
    assert_eq!(
        done.stderr.matches("--max-tunnels").count(),
        1,
        "one notice: {}",
        done.stderr
    );
    assert_eq!(server.connection_count(), 3);
}

/// A client that connects and leaves at once (a port scan, a health check) ends its
/// tunnel at once: the refusing upstream sees at most one dial, not a dial per retry;
/// and the listener serves the next client.
#[tokio::test]
async fn a_client_that_leaves_while_its_tunnel_dials_costs_at_most_one_dial() {
    let server = WsServer::start(vec![Act::Http(503), Act::Echo]).await;
    let (forward, listen) = port_forward(&server.url(), &["-vv"]).await;
    let tcp = TcpStream::connect(listen)
        .await
        .expect("the listener accepts");
    drop(tcp);
    forward.wait_stderr("tunnel closed").await;
    let seen = server.seen();
    assert!(
        seen.connections <= 1,
        "{} dials for a client that left",
        seen.connections
    );
    let tcp = round_trip(listen, b"the listener survives").await;
    drop(tcp);
    stop(forward, "TERM", 143).await;
}

/// Against an upstream that hangs the upgrade, a client that leaves ends its tunnel
/// before the connect timeout: the tunnel's end is logged and nothing else is dialed.
#[tokio::test]
async fn a_client_that_leaves_during_a_hanging_dial_ends_its_tunnel_at_once() {
    let server = support::Server::always(support::Behaviour::Hang).await;
    let (forward, listen) = port_forward(&server.url(), &["-vv", "--connect-timeout", "1h"]).await;
    let tcp = TcpStream::connect(listen)
        .await
        .expect("the listener accepts");
    server.wait_connections(1).await;
    drop(tcp);
    forward.wait_stderr("tunnel closed").await;
    assert_eq!(server.connection_count(), 1);
    stop(forward, "TERM", 143).await;
}

// ------------------------------------------- wss:// through `wsup serve --tls-cert`

#[tokio::test]
async fn serve_tls_forwards_over_wss_trusting_the_test_ca() {
    let target = echo_target().await;
    let script = format!("forward:{target}");
    let (serve, url) = serve_tls(&script).await;
    let (forward, listen) = port_forward(&url, &["--ca-cert", &fixture("ca.pem")]).await;
    drop(round_trip(listen, &payload(MIB, 7)).await);
    stop(forward, "TERM", 143).await;
    stop(serve, "TERM", 143).await;
}

#[tokio::test]
async fn serve_tls_with_a_file_that_holds_no_key_exits_2() {
    let done = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &fixture("localhost-cert.pem"),
        "--tls-key",
        &fixture("ca.pem"),
    ])
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("--tls-key")
        .assert_stderr_contains("no usable private key");
}

#[tokio::test]
async fn serve_tls_with_an_unreadable_cert_exits_2() {
    let done = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &fixture("no-such-cert.pem"),
        "--tls-key",
        &fixture("localhost-key.pem"),
    ])
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("--tls-cert")
        .assert_stderr_contains("cannot read it");
}

#[tokio::test]
async fn serve_tls_cert_without_a_key_is_a_usage_error() {
    let done = Wsup::spawn(["serve", "--tls-cert", &fixture("localhost-cert.pem")])
        .finish()
        .await;
    done.assert_code(2).assert_stderr_contains("--tls-key");
}
