//! The access log: one line per request, written through a buffer.
//!
//! A write per line costs a system call per request (the access log on used
//! to halve throughput), so lines collect in a 64 KiB buffer that goes out
//! when it is full, at the latest every half second (a flusher thread), and
//! when the process drains, hands over or exits ([`flush`]). No line is
//! dropped: when the output cannot keep up, the request that fills the buffer
//! waits for the write (the buffer is written under its lock).
//!
//! The line is the JSON line the tracing formatter writes for target
//! `access` (the format users parse does not change; a test compares the
//! two). With `--log-format text` the line goes through tracing as before.
//! The log level applies as before: the access log is target `access` at
//! info (`info,access=off` turns it off).

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes collected before they are written.
pub const BUFFER_BYTES: usize = 64 * 1024;
/// How often the flusher thread writes what has collected.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// One request's access-log fields.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub client: IpAddr,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// (filter, verdict) pairs, written `filter:verdict,...`.
    pub verdicts: &'a [(Arc<str>, &'static str)],
}

/// Whether the access log is on (target `access` at info); it can change
/// at run time (admin `/logging`).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Writes the access log line of one request (when the access log is on).
/// The one call the data path makes per request.
pub fn record(entry: &Entry<'_>) {
    if !enabled() {
        return;
    }
    if JSON.load(Ordering::Relaxed) {
        stdout_writer().write(entry);
    } else {
        emit_through_tracing(entry);
    }
}

/// Writes out every buffered line (drain, handover, exit).
pub fn flush() {
    if let Some(w) = STDOUT.get() {
        w.flush();
    }
}

/// Selects the buffered JSON writer (`json`) or tracing's text lines, and
/// starts the flusher thread. Called once, when logging is set up.
pub fn init(json: bool) {
    JSON.store(json, Ordering::Relaxed);
    if json {
        let writer = stdout_writer();
        FLUSHER.get_or_init(|| {
            std::thread::Builder::new()
                .name("access-log-flush".into())
                .spawn(move || loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    writer.flush();
                })
                .is_ok()
        });
    }
}

static JSON: AtomicBool = AtomicBool::new(false);
static STDOUT: OnceLock<Writer> = OnceLock::new();
static FLUSHER: OnceLock<bool> = OnceLock::new();

fn stdout_writer() -> &'static Writer {
    STDOUT.get_or_init(|| Writer::new(Box::new(std::io::stdout()), BUFFER_BYTES))
}

/// A buffered line writer over any output.
pub struct Writer {
    inner: Mutex<Inner>,
}

struct Inner {
    buf: Vec<u8>,
    capacity: usize,
    out: Box<dyn Write + Send>,
    scratch: Scratch,
}

/// What formatting a line reuses from the previous one.
#[derive(Default)]
struct Scratch {
    /// Space for the verdicts field.
    verdicts: String,
    stamp: SecondStamp,
}

impl Writer {
    pub fn new(out: Box<dyn Write + Send>, capacity: usize) -> Writer {
        Writer {
            inner: Mutex::new(Inner {
                buf: Vec::with_capacity(capacity + 1024),
                capacity,
                out,
                scratch: Scratch::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while formatting leaves at worst a partial line.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the entry's line; writes the buffer out once it is full.
    pub fn write(&self, entry: &Entry<'_>) {
        let mut inner = self.lock();
        let Inner { buf, scratch, .. } = &mut *inner;
        format_line(buf, scratch, entry, SystemTime::now());
        if inner.buf.len() >= inner.capacity {
            inner.write_out();
        }
    }

    /// Writes out everything buffered.
    pub fn flush(&self) {
        let mut inner = self.lock();
        if !inner.buf.is_empty() {
            inner.write_out();
        }
    }
}

impl Inner {
    fn write_out(&mut self) {
        let result = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        if result.is_err() {
            // stdout closed or failing: nothing to retry into.
            metrics::counter!("meshgate_access_log_write_errors_total").increment(1);
        }
        self.buf.clear();
    }
}

/// The tracing JSON formatter's line for this entry (fields in this order,
/// then the target), timestamp as RFC 3339 with microseconds.
fn format_line(buf: &mut Vec<u8>, scratch: &mut Scratch, e: &Entry<'_>, now: SystemTime) {
    use std::fmt::Write as _;
    buf.extend_from_slice(b"{\"timestamp\":\"");
    scratch.stamp.write(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
    let _ = serde_json::to_writer(&mut *buf, e.request_id);
    buf.extend_from_slice(b",\"route\":");
    let _ = serde_json::to_writer(&mut *buf, e.route);
    buf.extend_from_slice(b",\"method\":");
    let _ = serde_json::to_writer(&mut *buf, e.method);
    buf.extend_from_slice(b",\"path\":");
    let _ = serde_json::to_writer(&mut *buf, e.path);
    buf.extend_from_slice(b",\"client\":\"");
    write_ip(buf, e.client);
    buf.extend_from_slice(b"\",\"status\":");
    write_integer(buf, e.status);
    buf.extend_from_slice(b",\"duration_ms\":");
    let _ = serde_json::to_writer(&mut *buf, &e.duration_ms);
    if let Some(upstream) = e.upstream_ms {
        buf.extend_from_slice(b",\"upstream_ms\":");
        let _ = serde_json::to_writer(&mut *buf, &upstream);
    }
    buf.extend_from_slice(b",\"bytes_in\":");
    write_integer(buf, e.bytes_in);
    buf.extend_from_slice(b",\"bytes_out\":");
    write_integer(buf, e.bytes_out);
    buf.extend_from_slice(b",\"verdicts\":");
    let verdicts = &mut scratch.verdicts;
    verdicts.clear();
    for (i, (filter, verdict)) in e.verdicts.iter().enumerate() {
        if i > 0 {
            verdicts.push(',');
        }
        let _ = write!(verdicts, "{filter}:{verdict}");
    }
    let _ = serde_json::to_writer(&mut *buf, verdicts.as_str());
    buf.extend_from_slice(b",\"target\":\"access\"}\n");
}

/// The timestamp as RFC 3339 with microseconds (`2026-12-02T05:53:01.123456Z`,
/// humantime's format), the text up to the fraction kept for the second it
/// names: formatting the date is otherwise a good part of a line's cost.
#[derive(Default)]
struct SecondStamp {
    second: u64,
    /// `2026-12-02T05:53:01.`; empty before the first line.
    text: Vec<u8>,
}

impl SecondStamp {
    fn write(&mut self, buf: &mut Vec<u8>, now: SystemTime) {
        // A clock before 1970 writes the epoch (humantime would panic).
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.text.is_empty() || self.second != since.as_secs() {
            self.second = since.as_secs();
            self.text.clear();
            let second = UNIX_EPOCH + Duration::from_secs(self.second);
            // Writing into a Vec cannot fail.
            let _ = write!(self.text, "{}", humantime::format_rfc3339_seconds(second));
            self.text.pop(); // the `Z`
            self.text.push(b'.');
        }
        buf.extend_from_slice(&self.text);
        let at = buf.len();
        write_integer(buf, since.subsec_micros());
        // Six digits: zeros in front of a shorter number.
        let digits = buf.len() - at;
        buf.splice(at..at, std::iter::repeat_n(b'0', 6 - digits));
        buf.push(b'Z');
    }
}

// Integers and IPv4 addresses without the formatting machinery, which was
// a third of the line's cost (callgrind: the client address alone about
// 1 k instructions): serde_json writes integers with a digit table (itoa),
// the same digits as `Display`.
fn write_integer(buf: &mut Vec<u8>, n: impl serde::Serialize) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &n);
}

fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                write_integer(buf, octet);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// The line through tracing (text format, and the reference the JSON line
/// is tested against).
fn emit_through_tracing(e: &Entry<'_>) {
    let verdicts: Vec<String> = e.verdicts.iter().map(|(f, v)| format!("{f}:{v}")).collect();
    tracing::info!(
        target: "access",
        request_id = %e.request_id,
        route = %e.route,
        method = %e.method,
        path = %e.path,
        client = %e.client,
        status = e.status,
        duration_ms = e.duration_ms,
        upstream_ms = e.upstream_ms,
        bytes_in = e.bytes_in,
        bytes_out = e.bytes_out,
        verdicts = %verdicts.join(","),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    fn verdicts() -> Vec<(Arc<str>, &'static str)> {
        vec![(Arc::from("verify"), "ok"), (Arc::from("limit"), "ok")]
    }

    fn entry<'a>(
        verdicts: &'a [(Arc<str>, &'static str)],
        path: &'a str,
        upstream: Option<f64>,
    ) -> Entry<'a> {
        Entry {
            request_id: "3f2a-\"quoted\"",
            route: "api",
            method: "POST",
            path,
            client: "2001:db8::1".parse().expect("ip"),
            status: 429,
            duration_ms: 0.123_456_7,
            upstream_ms: upstream,
            bytes_in: 17,
            bytes_out: 4096,
            verdicts,
        }
    }

    /// The timestamp value replaced, so that two lines can be compared.
    fn without_timestamp(line: &str) -> String {
        let start = line.find("\"timestamp\":\"").expect("timestamp") + 13;
        let end = start + line[start..].find('"').expect("closing quote");
        format!("{}T{}", &line[..start], &line[end..])
    }

    #[test]
    fn line_is_the_tracing_json_line() {
        let v = verdicts();
        for (path, upstream, verdicts) in [
            ("/pay/\u{e9}\\x\n", Some(1.5), &v[..]),
            ("/", None, &[][..]),
            ("/a", Some(f64::NAN), &v[..1]),
        ] {
            for (client, status, bytes) in [
                ("2001:db8::1", 429, 17),
                ("10.0.0.255", 200, 0),
                ("0.0.0.0", 599, u64::MAX),
                ("255.255.255.255", 100, 10),
                ("::ffff:1.2.3.4", 204, 99_999),
            ] {
                let mut e = entry(verdicts, path, upstream);
                e.client = client.parse().expect("ip");
                e.status = status;
                e.bytes_in = bytes;
                e.bytes_out = bytes / 3;
                let traced = Shared::default();
                let out = traced.clone();
                let subscriber = tracing_subscriber::fmt()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(move || out.clone())
                    .finish();
                tracing::subscriber::with_default(subscriber, || emit_through_tracing(&e));
                let mut ours = Vec::new();
                format_line(&mut ours, &mut Scratch::default(), &e, SystemTime::now());
                let ours = String::from_utf8(ours).expect("utf-8");
                assert_eq!(without_timestamp(&ours), without_timestamp(&traced.text()));
                // Same timestamp shape: 2026-12-02T05:53:01.123456Z
                let ts = &ours[14..14 + 27];
                assert!(
                    ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
                    "{ts}"
                );
            }
        }
    }

    #[test]
    fn the_kept_second_writes_humantimes_timestamp() {
        let mut stamp = SecondStamp::default();
        let base = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for offset_us in [
            0u64,
            7,
            999_999,
            1_000_000,
            1_000_001,
            1_500_000,
            1_000,
            59_999_999,
            86_400_000_000,
            86_400_000_070,
            3,
            0,
        ] {
            let now = base + Duration::from_micros(offset_us);
            let mut ours = Vec::new();
            stamp.write(&mut ours, now);
            assert_eq!(
                String::from_utf8(ours).expect("utf-8"),
                humantime::format_rfc3339_micros(now).to_string(),
                "{offset_us}"
            );
        }
        let mut before_epoch = Vec::new();
        stamp.write(&mut before_epoch, UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(before_epoch, b"1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn lines_wait_in_the_buffer_until_full_or_flushed() {
        let out = Shared::default();
        let w = Writer::new(Box::new(out.clone()), 1024);
        let v = verdicts();
        let e = entry(&v, "/x", Some(1.0));
        w.write(&e);
        assert_eq!(out.text(), "", "one line stays buffered");
        w.flush();
        assert_eq!(out.text().lines().count(), 1);
        // Filling the buffer writes it out without a flush, every line whole.
        for _ in 0..20 {
            w.write(&e);
        }
        let written = out.text();
        assert!(written.lines().count() > 1, "{written}");
        assert!(written.ends_with('\n'));
        w.flush();
        assert_eq!(out.text().lines().count(), 21);
        for line in out.text().lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
        }
    }

    /// An output that takes its time: lines wait for it, none is dropped.
    struct Slow(Shared);

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(5));
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_output_makes_writers_wait_and_loses_nothing() {
        let out = Shared::default();
        let w = Arc::new(Writer::new(Box::new(Slow(out.clone())), 512));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    let v = verdicts();
                    for _ in 0..200 {
                        w.write(&entry(&v, "/slow", None));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        w.flush();
        assert_eq!(out.text().lines().count(), 800);
    }
}
