//! PgBouncer-style log lines: `<ts> UTC [<pid>] LOG <message>`, to stderr (unless `-q`
//! or daemonized) and to `logfile` when set. pgbadger's PgBouncer mode reads this shape.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

struct PgBouncerFormat {
    pid: u32,
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC from the system clock (civil-from-days, no tz database).
pub fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

impl<S, N> FormatEvent<S, N> for PgBouncerFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "LOG",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "NOISE",
        };
        write!(w, "{} UTC [{}] {} ", timestamp(), self.pid, level)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The open log file, shared by every writer so RELOAD can swap it (log rotation: the
/// file is reopened by path, as PgBouncer does on SIGHUP).
static LOGFILE: std::sync::OnceLock<Arc<Mutex<Option<File>>>> = std::sync::OnceLock::new();

fn open_log(path: &str) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens `logfile` (RELOAD, SIGHUP). An empty path stops file logging; an error keeps
/// the old file.
pub fn reopen(path: &str) -> io::Result<()> {
    let Some(slot) = LOGFILE.get() else {
        return Ok(());
    };
    let new = if path.is_empty() {
        None
    } else {
        Some(open_log(path)?)
    };
    *slot.lock() = new;
    Ok(())
}

/// Writes each line to stderr and/or the log file.
#[derive(Clone)]
struct Sink {
    stderr: bool,
    file: Arc<Mutex<Option<File>>>,
}

struct SinkWriter(Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.stderr {
            let _ = io::stderr().write_all(buf);
        }
        if let Some(f) = self.0.file.lock().as_mut() {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter(self.clone())
    }
}

/// Installs the global logger. `verbose` counts `-v` plus the `verbose` setting.
pub fn init(verbose: u32, quiet: bool, logfile: &str) -> io::Result<()> {
    let opened = if logfile.is_empty() {
        None
    } else {
        Some(open_log(logfile)?)
    };
    let file = LOGFILE.get_or_init(|| Arc::new(Mutex::new(None))).clone();
    *file.lock() = opened;
    let level = match verbose {
        0 => Level::INFO,
        1 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let sink = Sink {
        stderr: !quiet,
        file,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(PgBouncerFormat {
            pid: std::process::id(),
        })
        .with_writer(sink)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 23);
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], " ");
    }
}
