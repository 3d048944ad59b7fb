//! A private PostgreSQL on a free loopback port in a temporary directory, for `chatfleet dev`
//! and the tests (like [`crate::local_redis`]). Readiness is the server's own "ready to accept
//! connections" log line, not a sleep.
//!
//! Debian installs the server binaries in `/usr/lib/postgresql/<version>/bin`, off PATH: they
//! are looked up there (newest version first) after PATH. PostgreSQL refuses to run as root, so
//! as root the data directory is given to, and the server run as, the `postgres` user (or
//! `nobody`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Time allowed for initdb, and for the server to report readiness.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts when another process takes the chosen port first.
const PORT_ATTEMPTS: usize = 5;

/// Why a local PostgreSQL could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "PostgreSQL was not found (initdb and postgres, on PATH or in /usr/lib/postgresql/*/bin). \
         Install it first, e.g. `apt-get install -y postgresql` (Debian/Ubuntu) or `bin/setup-deps`"
    )]
    NotInstalled,
    #[error("cannot start PostgreSQL: {0}")]
    Io(#[from] std::io::Error),
    #[error("PostgreSQL did not become ready: {0}")]
    NotReady(String),
}

/// A running private PostgreSQL. Killed when dropped.
pub struct LocalPostgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

impl LocalPostgres {
    /// Creates a cluster (initdb, trust auth on loopback) and starts it.
    pub async fn start() -> Result<Self, LocalPostgresError> {
        let bin = find_bin_dir().ok_or(LocalPostgresError::NotInstalled)?;
        let dir = tempfile::tempdir()?;
        let user = if unsafe { libc::geteuid() } == 0 { Some(unprivileged_user()) } else { None };
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
            .arg(data_dir(dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = tokio::time::timeout(START_TIMEOUT, initdb.output())
            .await
            .map_err(|_| LocalPostgresError::NotReady("initdb timed out".into()))??;
        if !out.status.success() {
            return Err(LocalPostgresError::NotReady(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        let mut pg = Self { child: None, port: 0, bin, user, dir };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            pg.port = free_port()?;
            match pg.spawn().await {
                Ok(()) => return Ok(pg),
                Err(LocalPostgresError::NotReady(why)) => last = why,
                Err(e) => return Err(e),
            }
        }
        Err(LocalPostgresError::NotReady(last))
    }

    /// Starts the server on this instance's port and data directory.
    async fn spawn(&mut self) -> Result<(), LocalPostgresError> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(data_dir(self.dir.path()))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            // A throwaway server: durability is not wanted, speed is.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "logging_collector=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        as_user(&mut cmd, self.user);
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        match crate::local_redis::await_log_line(stderr, "ready to accept connections", START_TIMEOUT).await {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(last) => {
                let _ = child.kill().await;
                Err(LocalPostgresError::NotReady(last))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server (fast shutdown: open transactions roll back) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
            }
            if tokio::time::timeout(START_TIMEOUT, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }

    /// Starts the server again after [`Self::stop`], on the same port and data.
    pub async fn restart(&mut self) -> Result<(), LocalPostgresError> {
        self.stop().await;
        self.spawn().await
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The directory holding `initdb` and `postgres`: PATH first, then Debian's versioned
/// directories, newest first.
fn find_bin_dir() -> Option<PathBuf> {
    if let (Ok(i), Ok(p)) = (which::which("initdb"), which::which("postgres")) {
        if i.parent() == p.parent() {
            return i.parent().map(Path::to_path_buf);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// (uid, gid) of `postgres`, else `nobody`.
fn unprivileged_user() -> (u32, u32) {
    for name in [c"postgres", c"nobody"] {
        // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            return unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        }
    }
    (65534, 65534)
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL (kill_on_drop) would leave backends behind for a moment; ask for an
            // immediate shutdown instead, and let the OS reap.
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
            }
        }
    }
}
