//! The per-test-binary PostgreSQL cluster.
//!
//! See the module documentation of `common` for how the cluster is started and
//! how it is guaranteed to go away with the test binary.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{connect, quote_ident, quote_literal, sqlstate_of};

/// The only host the cluster listens on.
pub const PG_HOST: &str = "127.0.0.1";
/// How long the cluster may take to accept connections after it was started.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How many ports are tried before giving up (another process may grab the
/// free port between our probe and the postmaster's bind).
const START_ATTEMPTS: usize = 3;
/// How long the exit handler waits for the watchdog to stop PostgreSQL.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// Group roles used by `pg_hba.conf` to pick an authentication method from a
/// role's name prefix (PostgreSQL 15 has no regular expressions in
/// `pg_hba.conf`; 16 and later get regex lines as well).
pub const AUTH_GROUPS: [(&str, &str, &str); 3] = [
    ("md5_", "pgsluice_auth_md5", "md5"),
    ("scram_", "pgsluice_auth_scram", "scram-sha-256"),
    ("pw_", "pgsluice_auth_password", "password"),
];

/// Shell script run (as the `postgres` OS user when we are root) to start the
/// postmaster and watch our end of its stdin pipe.
///
/// Arguments: $1 postgres binary, $2 data dir, $3 port, $4 server log, $5 the
/// cluster's root temp dir.  Prints the postmaster pid on stdout.  When stdin
/// reaches EOF (the test process closed it or died) the postmaster gets
/// SIGQUIT (immediate shutdown: it SIGQUITs all its children, waits for them
/// and SIGKILLs stragglers after 5 s) and, once it is gone, the root dir is
/// removed.  If the postmaster exits on its own (e.g. the port was taken), the
/// script exits with its status and leaves the directory for a retry.
const WATCHDOG_SCRIPT: &str = r#"
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
exec 3<&0
"$1" -D "$2" -p "$3" </dev/null >>"$4" 2>&1 3<&- &
pid=$!
echo "$pid"
(
  read -r _ <&3
  : >"$5/.shutdown"
  kill -QUIT "$pid" 2>/dev/null
) &
reader=$!
exec 3<&-
wait "$pid"
status=$?
if [ ! -e "$5/.shutdown" ]; then
  kill "$reader" 2>/dev/null
fi
wait "$reader"
if [ -e "$5/.shutdown" ]; then
  cd /
  rm -rf "$5"
fi
exit "$status"
"#;

/// A running PostgreSQL cluster, shared by all tests of one test binary.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    major_version: u32,
    postmaster_pid: u32,
    log_path: PathBuf,
}

/// What the exit handler needs to stop the cluster.
struct Running {
    watchdog: Child,
    /// Our end of the watchdog's stdin; closing it stops the cluster.
    stdin: Option<ChildStdin>,
    /// Kept open so the watchdog never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    postmaster_pid: u32,
    dir: Option<TempDir>,
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
static REGISTER_EXIT_HANDLER: Once = Once::new();

/// The test binary's PostgreSQL cluster, started on first use.
///
/// Panics with the reason (including the server log tail) if it could not be
/// started; every later call panics with the same message.
pub fn cluster() -> &'static PgCluster {
    match CLUSTER.get_or_init(start_cluster) {
        Ok(cluster) => cluster,
        Err(reason) => panic!("the test PostgreSQL cluster could not be started: {reason}"),
    }
}

/// True when running as root, in which case PostgreSQL must run as `postgres`.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid() has no preconditions, cannot fail and touches no memory
    // of ours.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as the `postgres` OS user when we are root
/// (PostgreSQL refuses to run as root), or as ourselves otherwise.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The `bin` directory of the newest PostgreSQL under /usr/lib/postgresql, or
/// `$PGSLUICE_TEST_PG_BIN` if set.
fn find_bin_dir() -> Result<(PathBuf, u32), String> {
    if let Some(dir) = std::env::var_os("PGSLUICE_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        let version = server_major_version(&dir)?;
        return Ok((dir, version));
    }
    let root = Path::new("/usr/lib/postgresql");
    let entries = fs::read_dir(root).map_err(|e| {
        format!(
            "cannot list {}: {e} (install the postgresql package, see .ci/run)",
            root.display()
        )
    })?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name
            .split('.')
            .map(str::parse::<u32>)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").is_file()
            && bin.join("postgres").is_file()
            && best.as_ref().is_none_or(|(v, _)| version > *v)
        {
            best = Some((version, bin));
        }
    }
    let (_, bin) = best.ok_or_else(|| {
        format!(
            "no {}/*/bin/initdb found (install the postgresql package, see .ci/run)",
            root.display()
        )
    })?;
    let version = server_major_version(&bin)?;
    Ok((bin, version))
}

/// Major version reported by `postgres --version` ("postgres (PostgreSQL) 15.18 ...").
fn server_major_version(bin_dir: &Path) -> Result<u32, String> {
    let postgres = bin_dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|word| word.split('.').next()?.parse::<u32>().ok())
        .ok_or_else(|| format!("cannot parse the PostgreSQL version from {text:?}"))
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((PG_HOST, 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of the probe listener")
        .port()
}

/// The last `lines` lines of a file, or a note that it could not be read.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn hba_conf(major_version: u32) -> String {
    let mut hba = String::from(
        "# Written by the pgsluice test harness.\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n\
         local   all  postgres  trust\n\
         host    all  postgres  127.0.0.1/32  trust\n",
    );
    for (prefix, group, method) in AUTH_GROUPS {
        if major_version >= 16 {
            hba.push_str(&format!("local   all  /^{prefix}  {method}\n"));
            hba.push_str(&format!(
                "host    all  /^{prefix}  127.0.0.1/32  {method}\n"
            ));
        }
        hba.push_str(&format!("local   all  +{group}  {method}\n"));
        hba.push_str(&format!("host    all  +{group}  127.0.0.1/32  {method}\n"));
    }
    hba.push_str(
        "local   all  all  trust\n\
         host    all  all  127.0.0.1/32  trust\n",
    );
    hba
}

fn server_conf(socket_dir: &Path) -> String {
    format!(
        "\n# Added by the pgsluice test harness.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {socket_dir}\n\
         max_connections = 300\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         shared_buffers = 64MB\n\
         password_encryption = 'scram-sha-256'\n",
        socket_dir = quote_literal(&socket_dir.to_string_lossy()),
    )
}

fn start_cluster() -> Result<PgCluster, String> {
    let (bin_dir, major_version) = find_bin_dir()?;
    let tmp = tempfile::Builder::new()
        .prefix("pgsluice-pg-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir for the cluster: {e}"))?;
    let dir = tmp.path().to_path_buf();
    let data_dir = dir.join("data");
    let socket_dir = dir.join("sock");
    let log_path = dir.join("postgres.log");
    fs::create_dir(&socket_dir)
        .map_err(|e| format!("cannot create {}: {e}", socket_dir.display()))?;
    // Created now so that the chown below hands it to postgres, which appends to it.
    fs::write(&log_path, "").map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    if running_as_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "chown -R postgres:postgres {} failed ({}): {} (does the postgres OS user exist? see .ci/run)",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }

    let initdb = bin_dir.join("initdb");
    let out = as_postgres(&initdb)
        .arg("-D")
        .arg(&data_dir)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=trust",
            "--no-sync",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The files exist and belong to postgres; rewriting them keeps the owner.
    fs::write(data_dir.join("pg_hba.conf"), hba_conf(major_version))
        .map_err(|e| format!("cannot write pg_hba.conf: {e}"))?;
    let conf_path = data_dir.join("postgresql.conf");
    let mut conf = fs::read_to_string(&conf_path)
        .map_err(|e| format!("cannot read {}: {e}", conf_path.display()))?;
    conf.push_str(&server_conf(&socket_dir));
    fs::write(&conf_path, conf)
        .map_err(|e| format!("cannot write {}: {e}", conf_path.display()))?;

    REGISTER_EXIT_HANDLER.call_once(|| {
        // SAFETY: stop_cluster_at_exit is an `extern "C" fn()` that never
        // unwinds; registering it has no other precondition.
        let rc = unsafe { libc::atexit(stop_cluster_at_exit) };
        if rc != 0 {
            eprintln!("pgsluice test harness: atexit registration failed; relying on the watchdog");
        }
    });

    let mut failures = Vec::new();
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port();
        match launch(&bin_dir, &data_dir, &dir, &socket_dir, &log_path, port) {
            Ok((watchdog, stdin, stdout, postmaster_pid)) => {
                let running = Running {
                    watchdog,
                    stdin: Some(stdin),
                    _stdout: stdout,
                    postmaster_pid,
                    dir: Some(tmp),
                };
                *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
                let cluster = PgCluster {
                    port,
                    dir,
                    data_dir,
                    socket_dir,
                    bin_dir,
                    major_version,
                    postmaster_pid,
                    log_path,
                };
                cluster.create_auth_groups()?;
                return Ok(cluster);
            }
            Err((reason, retry)) => {
                failures.push(format!("attempt {attempt} on port {port}: {reason}"));
                if !retry {
                    break;
                }
            }
        }
    }
    Err(failures.join("\n"))
}

/// Starts the postmaster under the watchdog and waits until it accepts
/// connections.  On failure nothing is left running, and the error says
/// whether another port is worth a try; it includes the server log tail.
#[allow(clippy::type_complexity)]
fn launch(
    bin_dir: &Path,
    data_dir: &Path,
    dir: &Path,
    socket_dir: &Path,
    log_path: &Path,
    port: u16,
) -> Result<(Child, ChildStdin, BufReader<ChildStdout>, u32), (String, bool)> {
    let with_log = |what: String| {
        format!(
            "{what}\n--- tail of {} ---\n{}",
            log_path.display(),
            file_tail(log_path, 30)
        )
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| (format!("cannot open {}: {e}", log_path.display()), false))?;
    let mut cmd = if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", "sh"]);
        cmd
    } else {
        Command::new("sh")
    };
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pgsluice-pg-watchdog")
        .arg(bin_dir.join("postgres"))
        .arg(data_dir)
        .arg(port.to_string())
        .arg(log_path)
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut watchdog = cmd
        .spawn()
        .map_err(|e| (format!("cannot start the postmaster watchdog: {e}"), false))?;
    let stdin = watchdog.stdin.take().expect("watchdog stdin is piped");
    let mut stdout = BufReader::new(watchdog.stdout.take().expect("watchdog stdout is piped"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let Ok(postmaster_pid) = line.trim().parse::<u32>() else {
        drop(stdin);
        let status = watchdog.wait();
        return Err((
            with_log(format!(
                "the watchdog did not report a postmaster pid (got {line:?}, watchdog {status:?})"
            )),
            false,
        ));
    };

    let deadline = Instant::now() + READY_DEADLINE;
    let socket = socket_dir.join(format!(".s.PGSQL.{port}"));
    loop {
        match watchdog.try_wait() {
            Ok(Some(status)) => {
                drop(stdin);
                return Err((
                    with_log(format!("postgres exited during startup ({status})")),
                    true,
                ));
            }
            Ok(None) => {}
            Err(e) => {
                drop(stdin);
                stop_watchdog(&mut watchdog, postmaster_pid);
                return Err((format!("cannot poll the watchdog: {e}"), false));
            }
        }
        if socket.exists() && pg_isready(bin_dir, port) {
            return Ok((watchdog, stdin, stdout, postmaster_pid));
        }
        if Instant::now() > deadline {
            // Read the log before stopping: the watchdog removes the directory.
            let reason = with_log(format!(
                "postgres did not accept connections within {READY_DEADLINE:?}"
            ));
            drop(stdin);
            stop_watchdog(&mut watchdog, postmaster_pid);
            return Err((reason, false));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pg_isready(bin_dir: &Path, port: u16) -> bool {
    Command::new(bin_dir.join("pg_isready"))
        .args([
            "-q", "-h", PG_HOST, "-U", "postgres", "-d", "postgres", "-t", "2",
        ])
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for a watchdog whose stdin was closed; kills it and the postmaster
/// if that takes longer than `STOP_DEADLINE`.  Never panics.
fn stop_watchdog(watchdog: &mut Child, postmaster_pid: u32) {
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        match watchdog.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // The postmaster is still our grandchild's child and unreaped, so its pid
    // cannot have been reused.
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(postmaster_pid.to_string())
        .stderr(Stdio::null())
        .status();
    let _ = watchdog.kill();
    let _ = watchdog.wait();
}

/// Registered with atexit(3): stops the cluster synchronously before the test
/// binary exits and removes its directory.  Must not unwind.
extern "C" fn stop_cluster_at_exit() {
    let running = match RUNNING.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(mut running) = running {
        drop(running.stdin.take());
        stop_watchdog(&mut running.watchdog, running.postmaster_pid);
        drop(running.dir.take());
    }
}

impl PgCluster {
    /// TCP port of the cluster on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always "127.0.0.1".
    pub fn host(&self) -> &'static str {
        PG_HOST
    }

    /// Directory holding the server's Unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temp dir holding data dir, socket dir and server log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory of the server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Major version of the server (15 for 15.x).
    pub fn major_version(&self) -> u32 {
        self.major_version
    }

    /// Pid of the postmaster.
    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster_pid
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Creates the group roles that `pg_hba.conf` matches on (see `AUTH_GROUPS`).
    fn create_auth_groups(&self) -> Result<(), String> {
        let sql: String = AUTH_GROUPS
            .iter()
            .map(|(_, group, _)| format!("CREATE ROLE {} NOLOGIN;", quote_ident(group)))
            .collect();
        let out = Command::new(self.bin_dir.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(&sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "creating the hba group roles failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A direct connection as the `postgres` superuser (trust over TCP).
    pub async fn superuser(&self) -> tokio_postgres::Client {
        connect(self.port, "postgres", "postgres", None)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "superuser connection to 127.0.0.1:{} failed: {e}\n--- server log tail ---\n{}",
                    self.port,
                    file_tail(&self.log_path, 20)
                )
            })
    }

    /// A direct connection to the cluster as any role.
    pub async fn connect(
        &self,
        db: &str,
        user: &str,
        password: Option<&str>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self.port, db, user, password).await
    }

    /// Creates a LOGIN role (or updates an existing one) and sets its password
    /// (`None` removes it).  Safe to call concurrently with the same name.
    ///
    /// The name prefix picks the server-side authentication method:
    /// `md5_` → md5 (the password is stored as an md5 hash so that md5 is really
    /// used), `scram_` → scram-sha-256, `pw_` → password (cleartext), anything
    /// else → trust.  On PostgreSQL 15 this works through membership in the
    /// `AUTH_GROUPS` roles, which only this function grants.
    pub async fn create_role(&self, name: &str, password: Option<&str>) {
        let client = self.superuser().await;
        let ident = quote_ident(name);
        let encryption = if name.starts_with("md5_") {
            "md5"
        } else {
            "scram-sha-256"
        };
        let password_sql = password.map_or_else(|| "NULL".to_owned(), quote_literal);
        let mut sql = format!(
            "BEGIN;\n\
             SELECT pg_advisory_xact_lock(hashtext({lock_key}));\n\
             SET LOCAL password_encryption = '{encryption}';\n\
             DO $pgsluice_harness$ BEGIN CREATE ROLE {ident}; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $pgsluice_harness$;\n\
             ALTER ROLE {ident} LOGIN PASSWORD {password_sql};\n",
            lock_key = quote_literal(&format!("pgsluice harness role {name}")),
        );
        if let Some((_, group, _)) = AUTH_GROUPS.iter().find(|(p, _, _)| name.starts_with(p)) {
            sql.push_str(&format!("GRANT {} TO {ident};\n", quote_ident(group)));
        }
        sql.push_str("COMMIT;");
        if let Err(e) = client.batch_execute(&sql).await {
            panic!("create_role({name:?}) failed: {e:?}");
        }
    }

    /// Turns TLS on in the running cluster (`ssl = on` by ALTER SYSTEM and a reload, no
    /// restart), with the given PEM server certificate chain and key, and, when
    /// `ca_pem` is given, `ssl_ca_file` (clients may then present certificates, shown in
    /// pg_stat_ssl.client_dn). Plaintext connections keep working (pg_hba has `host`
    /// lines), so other tests of the same binary are unaffected. Used by tests/tls.rs,
    /// which generates the certificates with rcgen; calling it again replaces them.
    pub async fn enable_ssl(&self, cert_pem: &str, key_pem: &str, ca_pem: Option<&str>) {
        use std::os::unix::fs::PermissionsExt;
        let write = |name: &str, text: &str, mode: u32| {
            let path = self.data_dir.join(name);
            fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            // PostgreSQL refuses a key file others can read.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            if running_as_root() {
                let out = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .output()
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
                assert!(out.status.success(), "chown {} failed", path.display());
            }
        };
        write("harness_server.crt", cert_pem, 0o644);
        write("harness_server.key", key_pem, 0o600);
        let mut sql = String::from(
            "ALTER SYSTEM SET ssl_cert_file = 'harness_server.crt';\n\
             ALTER SYSTEM SET ssl_key_file = 'harness_server.key';\n",
        );
        match ca_pem {
            Some(ca) => {
                write("harness_ca.crt", ca, 0o644);
                sql.push_str("ALTER SYSTEM SET ssl_ca_file = 'harness_ca.crt';\n");
            }
            None => sql.push_str("ALTER SYSTEM RESET ssl_ca_file;\n"),
        }
        sql.push_str("ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();");
        let client = self.superuser().await;
        // One statement at a time: ALTER SYSTEM refuses an implicit transaction block.
        for stmt in sql.lines() {
            client
                .batch_execute(stmt)
                .await
                .unwrap_or_else(|e| panic!("enable_ssl: {stmt}: {e:?}"));
        }
        // The reload is asynchronous: wait until new backends run with ssl = on.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on = self
                .superuser()
                .await
                .query_one("SHOW ssl", &[])
                .await
                .map(|r| r.get::<_, String>(0) == "on")
                .unwrap_or(false);
            if on {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ssl did not turn on; server log tail:\n{}",
                file_tail(&self.log_path, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a database owned by `owner` unless it exists, then makes sure
    /// `owner` owns it.  Safe to call concurrently with the same name.
    pub async fn create_database(&self, name: &str, owner: &str) {
        let client = self.superuser().await;
        let ident = quote_ident(name);
        let owner_ident = quote_ident(owner);
        // CREATE DATABASE cannot run in a transaction, so take a session lock.
        let lock_key = quote_literal(&format!("pgsluice harness database {name}"));
        client
            .batch_execute(&format!("SELECT pg_advisory_lock(hashtext({lock_key}))"))
            .await
            .unwrap_or_else(|e| panic!("create_database({name:?}): advisory lock failed: {e:?}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client
                .batch_execute(&format!("CREATE DATABASE {ident} OWNER {owner_ident}"))
                .await
            {
                Ok(()) => break,
                // 42P04 duplicate_database; 23505 if a concurrent creator (not
                // using this function) committed first.
                Err(e) if matches!(sqlstate_of(&e).as_str(), "42P04" | "23505") => break,
                // 55006: "source database template1 is being accessed by other users".
                Err(e) if sqlstate_of(&e) == "55006" && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create_database({name:?}, owner {owner:?}) failed: {e:?}"),
            }
        }
        client
            .batch_execute(&format!(
                "ALTER DATABASE {ident} OWNER TO {owner_ident}; SELECT pg_advisory_unlock(hashtext({lock_key}))"
            ))
            .await
            .unwrap_or_else(|e| panic!("create_database({name:?}): ALTER DATABASE failed: {e:?}"));
    }

    /// Number of client backends (excluding the one asking) matching the given
    /// filters; `None` matches anything.  `state` is pg_stat_activity.state,
    /// e.g. "idle", "active", "idle in transaction".
    pub async fn count_backends(
        &self,
        datname: Option<&str>,
        usename: Option<&str>,
        state: Option<&str>,
    ) -> i64 {
        let client = self.superuser().await;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                   AND ($1::text IS NULL OR datname = $1) \
                   AND ($2::text IS NULL OR usename = $2) \
                   AND ($3::text IS NULL OR state = $3)",
                &[&datname, &usename, &state],
            )
            .await
            .unwrap_or_else(|e| panic!("counting backends failed: {e:?}"));
        row.get(0)
    }

    /// The pid of the one active backend (of `usename`, if given) whose query contains
    /// `marker`, once there is exactly one; panics after 5 s.
    pub async fn active_pid(&self, usename: Option<&str>, marker: &str) -> i32 {
        let su = self.superuser().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let rows = su
                .query(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE state = 'active' AND pid <> pg_backend_pid() \
                       AND ($1::text IS NULL OR usename = $1) AND strpos(query, $2) > 0",
                    &[&usename, &marker],
                )
                .await
                .unwrap_or_else(|e| panic!("pg_stat_activity: {e:?}"));
            if let [row] = rows.as_slice() {
                return row.get(0);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no single active query with {marker:?} for {usename:?}: {} rows",
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `count_backends` until it equals `expected` or `timeout` passes;
    /// returns the last count seen.
    pub async fn wait_for_backends(
        &self,
        datname: Option<&str>,
        usename: Option<&str>,
        state: Option<&str>,
        expected: i64,
        timeout: Duration,
    ) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_backends(datname, usename, state).await;
            if n == expected || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Terminates client backends matching the filters (never the asking one);
    /// returns how many were signalled.
    pub async fn terminate_backends(&self, datname: Option<&str>, usename: Option<&str>) -> i64 {
        let client = self.superuser().await;
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                   AND ($1::text IS NULL OR datname = $1) \
                   AND ($2::text IS NULL OR usename = $2)",
                &[&datname, &usename],
            )
            .await
            .unwrap_or_else(|e| panic!("terminating backends failed: {e:?}"));
        row.get(0)
    }

    /// The role's stored password exactly as the server keeps it in
    /// `pg_authid.rolpassword`: "md5<32 hex>" or
    /// "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"; `None` if the
    /// role has no password.  Panics if the role does not exist.
    pub async fn role_secret(&self, role: &str) -> Option<String> {
        let client = self.superuser().await;
        let row = client
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap_or_else(|e| panic!("reading pg_authid for {role:?} failed: {e:?}"))
            .unwrap_or_else(|| panic!("role {role:?} does not exist"));
        row.get(0)
    }
}
