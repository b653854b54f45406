//! Running the pgsluice binary under test.
//!
//! The binary is started as `pgsluice <dir>/pgsluice.ini` in a fresh temp
//! dir, with stdout and stderr appended to `<dir>/pgsluice.log`.  In the ini
//! text (and [`Pooler::write_ini`]) these placeholders are replaced:
//!
//! | placeholder       | value                                          |
//! |-------------------|------------------------------------------------|
//! | `{port}`          | the pooler's own free port ([`Pooler::port`])  |
//! | `{dir}`           | the pooler's temp dir (auth_file, sockets, ...)|
//! | `{pg_host}`       | `127.0.0.1`                                    |
//! | `{pg_port}`       | the test cluster's port                        |
//! | `{pg_socket_dir}` | the test cluster's Unix socket directory       |
//!
//! `{pg_*}` placeholders start the test cluster if it is not running yet.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cluster::{cluster, free_port, PG_HOST};

/// How long the pooler may take to accept TCP connections, or to exit in
/// [`Pooler::start_expect_fail`].
pub const POOLER_START_DEADLINE: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 3;
const INI_NAME: &str = "pgsluice.ini";
const LOG_NAME: &str = "pgsluice.log";

/// Replaces the placeholders listed in the module docs.
pub fn expand_placeholders(template: &str, port: u16, dir: &Path) -> String {
    let mut text = template
        .replace("{port}", &port.to_string())
        .replace("{dir}", &dir.to_string_lossy())
        .replace("{pg_host}", PG_HOST);
    if text.contains("{pg_port}") || text.contains("{pg_socket_dir}") {
        let pg = cluster();
        text = text
            .replace("{pg_port}", &pg.port().to_string())
            .replace("{pg_socket_dir}", &pg.socket_dir().to_string_lossy());
    }
    text
}

/// How to start a pooler: ini text, extra files, environment, program.
#[derive(Debug, Clone)]
pub struct PoolerBuilder {
    ini: String,
    files: Vec<(String, Vec<u8>)>,
    envs: Vec<(String, String)>,
    program: PathBuf,
    leading_args: Vec<String>,
}

impl PoolerBuilder {
    /// A builder for `pgsluice` with the given ini template.
    pub fn new(ini: &str) -> Self {
        PoolerBuilder {
            ini: ini.to_owned(),
            files: Vec::new(),
            envs: Vec::new(),
            program: PathBuf::from(env!("CARGO_BIN_EXE_pgsluice")),
            leading_args: Vec::new(),
        }
    }

    /// Writes `<dir>/<name>` before start (no placeholder expansion).
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((name.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// Writes `<dir>/userlist.txt` before start.
    pub fn userlist(self, contents: &str) -> Self {
        self.file("userlist.txt", contents)
    }

    /// Sets an environment variable for the pooler process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `program leading_args... <ini path>` instead of pgsluice (for
    /// testing the harness with a stand-in).
    pub fn program(mut self, program: impl Into<PathBuf>, leading_args: &[&str]) -> Self {
        self.program = program.into();
        self.leading_args = leading_args.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn prepare(&self, port: u16, dir: &Path) {
        fs::write(
            dir.join(INI_NAME),
            expand_placeholders(&self.ini, port, dir),
        )
        .expect("write pgsluice.ini");
        for (name, contents) in &self.files {
            fs::write(dir.join(name), contents)
                .unwrap_or_else(|e| panic!("write {name} into the pooler dir: {e}"));
        }
    }

    fn spawn(&self, dir: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_NAME))
            .expect("open the pooler log file");
        let log2 = log.try_clone().expect("clone the pooler log file handle");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.leading_args)
            .arg(dir.join(INI_NAME))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()))
    }

    /// Starts the pooler and waits (10 s) until its TCP port accepts
    /// connections.  Panics with the pooler's log if it exits first or does
    /// not listen in time.  Retries on another port (3 attempts) when the
    /// log says the address was in use.
    pub fn start(self) -> Pooler {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pooler = self.launch();
            match pooler.wait_listening() {
                Ok(()) => return pooler,
                Err(status) => {
                    let log = pooler.log();
                    if attempt < START_ATTEMPTS && log.contains("in use") {
                        // Someone took the port between our probe and the bind.
                        drop(pooler);
                        continue;
                    }
                    panic!(
                        "{} did not start listening on 127.0.0.1:{} ({status}); log:\n{log}",
                        self.program.display(),
                        pooler.port
                    );
                }
            }
        }
    }

    /// Writes the files into a fresh temp dir and spawns the process.
    fn launch(&self) -> Pooler {
        let dir = tempfile::Builder::new()
            .prefix("pgsluice-pooler-")
            .tempdir()
            .expect("create the pooler temp dir");
        let port = free_port();
        self.prepare(port, dir.path());
        let child = self.spawn(dir.path());
        let pid = child.id();
        let watchdog = spawn_watchdog(pid, dir.path());
        Pooler {
            port,
            log_path: dir.path().join(LOG_NAME),
            dir,
            pid,
            state: Mutex::new(State {
                child,
                watchdog,
                status: None,
            }),
        }
    }

    /// Runs the pooler expecting it to exit by itself within 10 s (e.g. on a
    /// configuration error); returns its exit status and output.  Panics (after
    /// killing it) if it is still running then.
    pub fn start_expect_fail(self) -> (ExitStatus, String) {
        let pooler = self.launch();
        match pooler.wait_exit(POOLER_START_DEADLINE) {
            Some(status) => (status, pooler.log()),
            None => panic!(
                "{} was expected to exit but is still running after {POOLER_START_DEADLINE:?}; log:\n{}",
                self.program.display(),
                pooler.log()
            ),
        }
    }
}

/// `sh -c 'read; kill -KILL <pid>; rm -rf <dir>'` with a stdin pipe that
/// only this process holds: if the test process dies without dropping the
/// [`Pooler`], EOF makes the shell kill the pooler and remove its temp dir.
/// Disarmed by killing the shell first.
fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg("read -r _; kill -KILL \"$1\" 2>/dev/null; rm -rf \"$2\"")
        .arg("pgsluice-pooler-watchdog")
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("pgsluice test harness: no watchdog for pooler pid {pid}: {e}"))
        .ok()
}

struct State {
    child: Child,
    watchdog: Option<Child>,
    /// Set once the pooler was reaped; its pid must not be signalled after that.
    status: Option<ExitStatus>,
}

impl State {
    /// Polls the pooler once; on exit, reaps it and disarms the watchdog.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    self.disarm_watchdog();
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for pooler pid {} failed: {e}", self.child.id()),
            }
        }
        self.status
    }

    fn disarm_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A running pooler process; killed (SIGKILL, by pid) and reaped on drop.
pub struct Pooler {
    /// The pooler's TCP port on 127.0.0.1 (`{port}` in the ini).
    pub port: u16,
    /// The pooler's temp dir (`{dir}`): ini, log, extra files.
    pub dir: TempDir,
    pid: u32,
    log_path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Pooler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooler")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid)
            .finish()
    }
}

impl Pooler {
    /// Starts pgsluice with `ini` (placeholders expanded); see [`PoolerBuilder::start`].
    pub fn start(ini: &str) -> Pooler {
        PoolerBuilder::new(ini).start()
    }

    /// Runs pgsluice with `ini` expecting it to exit within 10 s; returns
    /// its status and output.
    pub fn start_expect_fail(ini: &str) -> (ExitStatus, String) {
        PoolerBuilder::new(ini).start_expect_fail()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_listening(&self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + POOLER_START_DEADLINE;
        loop {
            if let Some(status) = self.state().poll() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not listening after {POOLER_START_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pooler's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the pooler wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle`; false if `timeout` passes first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `<dir>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The ini file the pooler was started with.
    pub fn ini_path(&self) -> PathBuf {
        self.path(INI_NAME)
    }

    /// `<dir>/.s.PGSQL.<port>`: the pooler's Unix socket when the ini says
    /// `unix_socket_dir = {dir}`.
    pub fn unix_socket_path(&self) -> PathBuf {
        self.path(&format!(".s.PGSQL.{}", self.port))
    }

    /// Writes `<dir>/<name>` (e.g. a new userlist.txt before a reload).
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) {
        fs::write(self.path(name), contents)
            .unwrap_or_else(|e| panic!("write {name} into the pooler dir: {e}"));
    }

    /// Replaces the ini file (placeholders expanded with this pooler's port
    /// and dir), e.g. before [`Pooler::signal`]`(libc::SIGHUP)`.
    pub fn write_ini(&self, ini: &str) {
        self.write_file(
            INI_NAME,
            expand_placeholders(ini, self.port, self.dir.path()),
        );
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`, `libc::SIGTERM`) to the pooler.
    /// Panics if it has already exited.
    pub fn signal(&self, sig: i32) {
        let mut state = self.state();
        if let Some(status) = state.poll() {
            panic!(
                "cannot send signal {sig} to pooler pid {}: it already exited ({status}); log:
{}",
                self.pid,
                self.log()
            );
        }
        // The child is not reaped yet, so the pid is still ours.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(
            status.success(),
            "kill -{sig} {} failed: {status}",
            self.pid
        );
    }

    /// True while the pooler process has not exited.
    pub fn is_running(&self) -> bool {
        self.state().poll().is_none()
    }

    /// Waits up to `timeout` for the pooler to exit; its status, or `None`
    /// if it is still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.state().poll() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        // Disarm the watchdog first so that it can never signal a reused pid.
        state.disarm_watchdog();
        if state.status.is_none() {
            let _ = state.child.kill();
            state.status = state.child.wait().ok();
        }
    }
}
