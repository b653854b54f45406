//! `pgsluice [-d] [-R] [-q] [-v]... [-u USER] [-V] [-h] CONFIG`: PgBouncer's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use pgsluice::config::Config;
use pgsluice::control::App;

#[derive(Parser, Debug)]
#[command(
    name = "pgsluice",
    about = "PostgreSQL connection pooler, compatible with PgBouncer's configuration",
    disable_version_flag = true
)]
struct Cli {
    /// Run in the background (needs pidfile in the config).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Online restart (PgBouncer -R): not supported; use so_reuseport and SIGTERM.
    #[arg(short = 'R', long = "reboot")]
    reboot: bool,
    /// Run quietly: do not log to stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// More verbose logging; may be repeated.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Switch to this Unix user after binding the listeners.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Print the version and exit.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Configuration file: `*.toml` is TOML, anything else pgbouncer.ini syntax.
    config: Option<PathBuf>,
}

// jemalloc instead of glibc malloc (issue 7): after a storm of 10,000 clients, glibc kept
// all 110 MiB it had grown by (one arena per worker thread, freed chunks fragmented
// between live ones). jemalloc's background thread hands freed pages back to the OS within
// about a second, and its size classes cost less per idle client. Measured in
// benches/side-by-side/README.md ("Optimisations and their measured effect").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's build-time options, read once when it initialises (the `malloc_conf` symbol
/// of jemalloc's API, `_rjem_` prefixed as tikv-jemalloc-sys builds it): purge from a
/// background thread, dirty pages after 1 s, and skip the lazy MADV_FREE stage so the
/// pages leave RSS at once. The symbol must be a NUL-terminated C string pointer, which a
/// `&[u8; N]` with a trailing NUL is.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!(
            "pgsluice {} (PgBouncer-compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let Some(path) = cli.config.clone() else {
        eprintln!("pgsluice: a config file is required (see -h)");
        return ExitCode::from(1);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{} ERROR cannot load config file: {e}",
                pgsluice::logging::timestamp()
            );
            return ExitCode::from(1);
        }
    };
    let g = &config.general;
    if cli.daemon && g.pidfile.is_empty() {
        eprintln!(
            "{} ERROR daemon mode needs pidfile configured",
            pgsluice::logging::timestamp()
        );
        return ExitCode::from(1);
    }
    if cli.daemon {
        if let Err(e) = daemonize() {
            eprintln!("daemonize failed: {e}");
            return ExitCode::from(1);
        }
        // jemalloc turns its background threads off in a forked child; without them an
        // idle daemon would keep the memory a burst of clients left behind.
        if !restart_allocator_purging() {
            eprintln!("pgsluice: could not restart the allocator's purging thread");
        }
    }
    let verbose = g.verbose + u32::from(cli.verbose);
    if let Err(e) = pgsluice::logging::init(verbose, cli.quiet || cli.daemon, &g.logfile) {
        eprintln!("cannot open logfile {}: {e}", g.logfile);
        return ExitCode::from(1);
    }
    if cli.reboot {
        tracing::warn!("-R (online restart) is not supported: run the new process with so_reuseport = 1 and send SIGTERM to the old one");
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let users = match App::load_userlist(&config) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("cannot load auth_file: {e}");
            return ExitCode::from(1);
        }
    };
    let pidfile = (!g.pidfile.is_empty()).then(|| PathBuf::from(&g.pidfile));
    if let Some(p) = &pidfile {
        if let Err(e) = write_pidfile(p) {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    }
    let workers = match g.worker_threads {
        0 => auto_worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        ),
        n => n as usize,
    };
    // One worker: a current-thread runtime. It runs the same tasks without the
    // multi-thread scheduler's work-stealing queues and cross-thread wake-ups (measured:
    // benches/side-by-side/README.md, "Optimisations and their measured effect").
    let built = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let user_switch = cli
        .user
        .clone()
        .or_else(|| (!g.user.is_empty()).then(|| g.user.clone()));
    // TLS files are read before anything starts: a bad one stops startup (PgBouncer:
    // "TLS setup failed").
    let tls = match pgsluice::net::tls::TlsContexts::build(&config.general) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("TLS setup failed: {e}");
            return ExitCode::from(1);
        }
    };
    let app = App::with_tls(config, users, tls);
    let code = rt.block_on(async {
        let listeners = match pgsluice::run::bind(&app) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        if let Some(u) = &user_switch {
            if let Err(e) = switch_user(u) {
                tracing::error!("cannot switch to user {u}: {e}");
                return ExitCode::from(1);
            }
        }
        tracing::info!(
            "process up: pgsluice {}, pid={}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        match pgsluice::run::serve(app, listeners).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(1)
            }
        }
    });
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// `worker_threads = 0`: one worker per core, except on machines with two cores or
/// fewer, where one thread is used. There the pooler shares the cores with PostgreSQL
/// (and often the clients), a second worker adds cross-thread wake-ups to every hand-off
/// between client tasks, and one worker spends less CPU per transaction without being the
/// bottleneck (measured: benches/side-by-side/README.md, "Optimisations and their measured
/// effect"). An explicit `worker_threads` is always obeyed.
fn auto_worker_threads(cores: usize) -> usize {
    if cores <= 2 {
        1
    } else {
        cores
    }
}

/// Refuses to start over a live instance's pidfile; replaces a stale one.
fn write_pidfile(p: &Path) -> Result<(), String> {
    if let Ok(old) = std::fs::read_to_string(p) {
        if let Ok(pid) = old.trim().parse::<i32>() {
            // SAFETY: kill with signal 0 only checks that the pid exists; no memory involved.
            if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
                return Err(format!(
                    "pidfile {} exists and process {pid} is running",
                    p.display()
                ));
            }
        }
    }
    std::fs::write(p, format!("{}\n", std::process::id()))
        .map_err(|e| format!("cannot write pidfile {}: {e}", p.display()))
}

/// Classic double-fork-free daemonize: fork, parent exits, child starts a new session and
/// points stdio at /dev/null. Runs before any thread exists.
fn daemonize() -> std::io::Result<()> {
    // SAFETY: called from main before the tokio runtime or any other thread is started, so
    // the child is a faithful single-threaded copy; only async-signal-safe calls follow.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        std::process::exit(0);
    }
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors with a valid open fd.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    Ok(())
}

/// Switches jemalloc's background purging thread on (after `fork`, where jemalloc turns
/// it off). True on success.
fn restart_allocator_purging() -> bool {
    let mut on = true;
    // SAFETY: "background_thread" is jemalloc's documented writable `bool` control. The
    // name is a NUL-terminated C string literal, `newp` points to a live `bool` of the
    // length passed, and no old value is requested (null `oldp`/`oldlenp`). Called from
    // main before any other thread of ours exists.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"background_thread".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&mut on as *mut bool).cast(),
            std::mem::size_of::<bool>(),
        )
    };
    rc == 0
}

/// `-u USER`: drop to that user's uid/gid after the listeners are bound.
fn switch_user(name: &str) -> std::io::Result<()> {
    let cname = std::ffi::CString::new(name).map_err(|_| std::io::Error::other("bad user name"))?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage valid until the next
    // getpw* call; we read the two ids immediately.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return Err(std::io::Error::other("no such user"));
    }
    // SAFETY: pw is non-null and points to a valid passwd struct (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: plain syscalls on integer ids.
    if unsafe { libc::setgid(gid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
