//! Runtimes of one worker thread each, two per core, that accepted TCP connections are
//! spread over: `wsup port-forward`'s tunnels and `wsup serve`'s connections.
//!
//! Why not one runtime with a worker per core: a tunnel is three tasks (the
//! supervisor's driver, the session, the session's TCP reader) that hand every frame to
//! each other. On one worker the hand-over stays on one thread; on two, the tasks wake
//! each other across cores and the idle worker is woken to steal, and one tunnel moved
//! 7–18 % less than with one worker (docs/benchmarks.md, issue #16). One worker, on the
//! other hand, is one core for all tunnels. Shards keep each connection, with every
//! task it spawns, on one thread, and spread connections over several threads: one
//! tunnel moves about as much as on one worker, 32 busy tunnels 4–24 % more (see
//! [`SHARDS_PER_CORE`] for why two per core).
//!
//! A connection goes to the shard with the fewest open connections and stays there for
//! its life (its socket is registered with that shard's I/O driver).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

/// Shards per core by default: a shard's thread competes for the CPU with every other
/// thread on the machine (the tunnels' own peers included), so with one per core 32 busy
/// tunnels moved 0.87× of 32 thread-per-connection relay chains downstream and with two
/// per core 0.98× (six interleaved repetitions, two cores; upstream 0.94× and 0.95×).
pub const SHARDS_PER_CORE: usize = 2;

/// Shards at most by default: measured on two cores only, so more threads than this
/// are not assumed to help.
pub const MAX_SHARDS: usize = 8;

/// Runtimes of one worker thread each, for the connections placed on them. Dropping it
/// stops them; connections still running on them are dropped.
pub struct RuntimeShards {
    shards: Vec<Shard>,
}

struct Shard {
    /// Shut down in the background when the shards are dropped (a runtime cannot be
    /// dropped in place inside another runtime's task).
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
    /// Connections running on this shard now.
    open: Arc<AtomicUsize>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for RuntimeShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeShards")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl RuntimeShards {
    /// `count` shards (at least one), each a runtime with one worker thread named
    /// `wsup-shard-N`.
    pub fn start(count: usize) -> io::Result<Self> {
        let shards = (0..count.max(1))
            .map(|index| {
                // One worker of the multi-thread scheduler rather than a current-thread
                // runtime: its LIFO slot runs the task a frame was just handed to next,
                // which is how the driver, the session and its reader take turns.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("wsup-shard-{index}"))
                    .enable_all()
                    .build()?;
                Ok(Shard {
                    handle: runtime.handle().clone(),
                    runtime: Some(runtime),
                    open: Arc::new(AtomicUsize::new(0)),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(RuntimeShards { shards })
    }

    /// [`SHARDS_PER_CORE`] shards per core this process may use, at most
    /// [`MAX_SHARDS`]; `TOKIO_WORKER_THREADS`, when set to a number, gives the count
    /// instead.
    pub fn per_core() -> io::Result<Self> {
        Self::start(shard_count(
            std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
            std::thread::available_parallelism().map_or(1, usize::from),
        ))
    }

    /// Runs `connection(stream)` in `set`, on the shard with the fewest open
    /// connections, with `stream` moved to that shard's I/O driver.
    ///
    /// A stream that cannot be moved (out of file descriptors or memory in the kernel's
    /// event queue) is dropped with a warning: the peer sees its connection closed.
    pub fn spawn_connection<F, Fut>(&self, set: &mut JoinSet<()>, stream: TcpStream, connection: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|shard| shard.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // Deregistered from this runtime's driver; registered again on the shard's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection to its thread: dropped");
                return;
            }
        };
        let open = OpenConnection::count(&shard.open);
        set.spawn_on(
            async move {
                let _open = open;
                match TcpStream::from_std(stream) {
                    Ok(stream) => connection(stream).await,
                    Err(error) => {
                        tracing::warn!(%error, "cannot register a connection on its thread: dropped")
                    }
                }
            },
            &shard.handle,
        );
    }

    #[cfg(test)]
    fn open_per_shard(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|shard| shard.open.load(Ordering::Relaxed))
            .collect()
    }
}

/// Runs `connection(stream)` in `set`: on `shards` when given (see
/// [`RuntimeShards::spawn_connection`]), else on the runtime `set` is used from. Both
/// accept loops (`port-forward`'s listener, `serve`'s) place connections through here.
pub fn spawn_connection<F, Fut>(
    shards: Option<&RuntimeShards>,
    set: &mut JoinSet<()>,
    stream: TcpStream,
    connection: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match shards {
        Some(shards) => shards.spawn_connection(set, stream, connection),
        None => {
            set.spawn(connection(stream));
        }
    }
}

/// The number of shards for `TOKIO_WORKER_THREADS` (if any) and the cores available.
fn shard_count(worker_threads: Option<&str>, cores: usize) -> usize {
    worker_threads
        .and_then(|value| value.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| cores.saturating_mul(SHARDS_PER_CORE).min(MAX_SHARDS))
        .max(1)
}

/// Counts one connection on a shard while it lives: dropped when the connection's task
/// ends or is aborted.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn two_shards_per_core_capped_unless_tokio_worker_threads_says() {
        assert_eq!(shard_count(None, 1), 2);
        assert_eq!(shard_count(None, 2), 4);
        assert_eq!(shard_count(None, 4), MAX_SHARDS);
        assert_eq!(shard_count(None, 64), MAX_SHARDS);
        assert_eq!(shard_count(Some("12"), 2), 12);
        assert_eq!(shard_count(Some(" 1 "), 16), 1);
        // Not a count: the default.
        assert_eq!(shard_count(Some("0"), 2), 4);
        assert_eq!(shard_count(Some("many"), 3), 6);
    }

    /// Accepts `n` connections and hands each to the shards with an echo.
    async fn echo_connections(shards: &RuntimeShards, n: usize) -> (JoinSet<()>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut set = JoinSet::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            shards.spawn_connection(&mut set, stream, |mut stream| async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() {
                    let answer = format!("{name}\n");
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
        (set, clients)
    }

    async fn thread_of(client: &mut TcpStream) -> String {
        client.write_all(b"?").await.unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            client.read_exact(&mut byte).await.unwrap();
            if byte[0] == b'\n' {
                break String::from_utf8(answer).unwrap();
            }
            answer.push(byte[0]);
        }
    }

    #[tokio::test]
    async fn connections_are_spread_over_the_shards_and_served_on_their_threads() {
        let shards = RuntimeShards::start(2).unwrap();
        let (mut set, mut clients) = echo_connections(&shards, 4).await;
        let mut threads = Vec::new();
        for client in &mut clients {
            threads.push(thread_of(client).await);
        }
        // Least loaded first: alternating, each connection on a shard thread.
        assert_eq!(
            threads,
            [
                "wsup-shard-0",
                "wsup-shard-1",
                "wsup-shard-0",
                "wsup-shard-1"
            ]
        );
        assert_eq!(shards.open_per_shard(), [2, 2]);

        // A connection that ends frees its place: the next one goes there.
        drop(clients.remove(0));
        set.join_next().await.unwrap().unwrap();
        assert_eq!(shards.open_per_shard(), [1, 2]);
        let (_more, mut more_clients) = echo_connections(&shards, 1).await;
        assert_eq!(thread_of(&mut more_clients[0]).await, "wsup-shard-0");

        // Aborted connections are counted out too.
        set.abort_all();
        while set.join_next().await.is_some() {}
        assert_eq!(shards.open_per_shard(), [1, 0]);
    }
}
