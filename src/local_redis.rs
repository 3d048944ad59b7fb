//! A private `redis-server` on a free loopback port in a temporary directory, for `chatfleet dev`
//! and the tests. Readiness is the server's own "Ready to accept connections" line, not a sleep.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Time allowed for redis-server to report readiness.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts when another process takes the chosen port first.
const PORT_ATTEMPTS: usize = 5;

/// Why a local Redis could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalRedisError {
    #[error(
        "redis-server was not found on PATH. Install it first, e.g. `apt-get install -y redis-server` \
         (Debian/Ubuntu) or `brew install redis` (macOS); chatfleet needs Redis 7 or newer"
    )]
    NotInstalled,
    #[error("cannot start redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server did not become ready: {0}")]
    NotReady(String),
}

/// A running private Redis. Killed when dropped.
pub struct LocalRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl LocalRedis {
    /// Starts redis-server with `extra` arguments appended (e.g. `["--appendonly", "yes"]`).
    pub async fn start(extra: &[&str]) -> Result<Self, LocalRedisError> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            match spawn(port, dir.path(), &extra).await {
                Ok(child) => return Ok(Self { child, port, dir, extra }),
                Err(LocalRedisError::NotReady(line)) => last = line,
                Err(e) => return Err(e),
            }
        }
        Err(LocalRedisError::NotReady(last))
    }

    /// Starts redis-server on `port` (a process that was told to use it may already be waiting).
    pub async fn start_on(port: u16, extra: &[&str]) -> Result<Self, LocalRedisError> {
        let dir = tempfile::tempdir()?;
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let child = spawn(port, dir.path(), &extra).await?;
        Ok(Self { child, port, dir, extra })
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and directory: it comes
    /// back with what its directory holds (an RDB saved earlier, an AOF), and nothing since.
    pub async fn restart(&mut self) -> Result<(), LocalRedisError> {
        let _ = self.child.kill().await;
        self.child = spawn(self.port, self.dir.path(), &self.extra).await?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p <port> <args>` against this server and returns its output.
    pub async fn cli(&self, args: &[&str]) -> Result<String, LocalRedisError> {
        let cli = which::which("redis-cli").map_err(|_| LocalRedisError::NotInstalled)?;
        let out = Command::new(cli).args(["-p", &self.port.to_string()]).args(args).output().await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts redis-server on `port` in `dir`; ready when it says so.
async fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Result<Child, LocalRedisError> {
    let bin = which::which("redis-server").map_err(|_| LocalRedisError::NotInstalled)?;
    let mut child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--protected-mode", "no", "--daemonize", "no", "--loglevel", "notice"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    match await_log_line(stdout, "Ready to accept connections", START_TIMEOUT).await {
        Ok(()) => Ok(child),
        Err(last) => {
            let _ = child.kill().await;
            Err(LocalRedisError::NotReady(last))
        }
    }
}

/// Reads a server's log until a line contains `marker` (its own readiness message), then keeps
/// draining it in the background so the server never blocks on a full pipe. `Err` holds the last
/// line read when the log ended or `limit` passed first.
pub(crate) async fn await_log_line<R>(log: R, marker: &str, limit: Duration) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(log).lines();
    let mut last = String::new();
    let ready = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(marker) {
                return true;
            }
            last = line;
        }
        false
    })
    .await;
    if !matches!(ready, Ok(true)) {
        return Err(last);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
