//! A raw PostgreSQL wire-protocol (v3) client for tests that need exact
//! control over the bytes: pipelining, partial messages, protocol errors,
//! cancel requests.
//!
//! `send_*` methods write at once (panicking on I/O errors) unless the
//! client is corked ([`RawClient::cork`]), in which case messages collect
//! until [`RawClient::uncork`] writes them in one go.  `recv*` methods return
//! `None` on EOF and panic after the timeout (default 10 s).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Default time a `recv` waits for a message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Auth request codes of AuthenticationXXX ('R') messages.
pub mod auth {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// One backend message: type byte and body (without the length word).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            b'E' | b'N' => write!(f, "Msg('{}', {:?})", self.tag as char, self.fields()),
            _ => write!(
                f,
                "Msg('{}', {:?})",
                self.tag as char,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

/// Reads a NUL-terminated string from the front of `buf`.
fn take_cstr(buf: &mut Bytes) -> String {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .unwrap_or_else(|| panic!("missing NUL terminator in {buf:?}"));
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    s
}

impl Msg {
    fn expect_tag(&self, tag: u8) {
        assert_eq!(
            self.tag as char, tag as char,
            "expected a '{}' message, got {self:?}",
            tag as char
        );
    }

    /// Fields of an ErrorResponse / NoticeResponse as (code, value).
    pub fn fields(&self) -> Vec<(u8, String)> {
        let mut body = self.body.clone();
        let mut out = Vec::new();
        while body.has_remaining() {
            let code = body.get_u8();
            if code == 0 {
                break;
            }
            out.push((code, take_cstr(&mut body)));
        }
        out
    }

    /// One field of an ErrorResponse / NoticeResponse (b'S', b'C', b'M', ...).
    pub fn field(&self, code: u8) -> Option<String> {
        self.fields()
            .into_iter()
            .find_map(|(c, v)| (c == code).then_some(v))
    }

    /// True for an ErrorResponse.
    pub fn is_error(&self) -> bool {
        self.tag == b'E'
    }

    /// SQLSTATE (C field) of an ErrorResponse / NoticeResponse, "" if absent.
    pub fn sqlstate(&self) -> String {
        self.field(b'C').unwrap_or_default()
    }

    /// Message (M field) of an ErrorResponse / NoticeResponse, "" if absent.
    pub fn message(&self) -> String {
        self.field(b'M').unwrap_or_default()
    }

    /// Severity (S field, e.g. "ERROR", "FATAL") of an ErrorResponse / NoticeResponse.
    pub fn severity(&self) -> String {
        self.field(b'S').unwrap_or_default()
    }

    /// Transaction status of a ReadyForQuery: b'I', b'T' or b'E'.
    pub fn ready_status(&self) -> u8 {
        self.expect_tag(b'Z');
        self.body[0]
    }

    /// Columns of a DataRow (`None` for NULL).
    pub fn columns(&self) -> Vec<Option<Bytes>> {
        self.expect_tag(b'D');
        let mut body = self.body.clone();
        let n = body.get_i16();
        (0..n)
            .map(|_| {
                let len = body.get_i32();
                if len < 0 {
                    None
                } else {
                    Some(body.split_to(len as usize))
                }
            })
            .collect()
    }

    /// Columns of a DataRow as text (lossy UTF-8).
    pub fn text_columns(&self) -> Vec<Option<String>> {
        self.columns()
            .into_iter()
            .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }

    /// Tag of a CommandComplete, e.g. "SELECT 1".
    pub fn command_tag(&self) -> String {
        self.expect_tag(b'C');
        take_cstr(&mut self.body.clone())
    }

    /// Request code of an Authentication message (see [`auth`]).
    pub fn auth_code(&self) -> i32 {
        self.expect_tag(b'R');
        self.body.clone().get_i32()
    }

    /// Name and value of a ParameterStatus.
    pub fn parameter_status(&self) -> (String, String) {
        self.expect_tag(b'S');
        let mut body = self.body.clone();
        let name = take_cstr(&mut body);
        (name, take_cstr(&mut body))
    }

    /// (process id, secret key) of a BackendKeyData.
    pub fn backend_key(&self) -> (i32, i32) {
        self.expect_tag(b'K');
        let mut body = self.body.clone();
        (body.get_i32(), body.get_i32())
    }
}

/// Anything a [`RawClient`] can talk over.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawStream for T {}

/// The md5 password response: "md5" + md5hex(md5hex(password + user) + salt).
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex(&outer.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A raw protocol connection.
pub struct RawClient {
    stream: Box<dyn RawStream>,
    inbuf: BytesMut,
    out: BytesMut,
    corked: bool,
    /// How long `recv` waits before panicking.
    pub timeout: Duration,
    /// From BackendKeyData during login.
    pub backend_pid: Option<i32>,
    /// From BackendKeyData during login.
    pub secret_key: Option<i32>,
    /// ParameterStatus values seen during login.
    pub params: HashMap<String, String>,
    /// Authentication request codes the server sent during login, in order.
    pub auth_requests: Vec<i32>,
    /// NoticeResponses seen during login.
    pub notices: Vec<Msg>,
}

impl fmt::Debug for RawClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClient")
            .field("backend_pid", &self.backend_pid)
            .field("auth_requests", &self.auth_requests)
            .finish_non_exhaustive()
    }
}

impl RawClient {
    /// Wraps an established stream.
    pub fn from_stream(stream: Box<dyn RawStream>) -> RawClient {
        RawClient {
            stream,
            inbuf: BytesMut::with_capacity(8192),
            out: BytesMut::new(),
            corked: false,
            timeout: RECV_TIMEOUT,
            backend_pid: None,
            secret_key: None,
            params: HashMap::new(),
            auth_requests: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// Connects to 127.0.0.1:`port`, or returns the error.
    pub async fn try_connect(port: u16) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient::from_stream(Box::new(stream)))
    }

    /// Connects to 127.0.0.1:`port`; panics on failure.
    pub async fn connect(port: u16) -> RawClient {
        RawClient::try_connect(port)
            .await
            .unwrap_or_else(|e| panic!("raw connect to 127.0.0.1:{port} failed: {e}"))
    }

    /// Connects to a Unix socket (the full path of `.s.PGSQL.<port>`).
    pub async fn connect_unix(path: &Path) -> RawClient {
        let stream = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("raw connect to {} failed: {e}", path.display()));
        RawClient::from_stream(Box::new(stream))
    }

    // ---------------------------------------------------------------- sending

    /// Collect messages instead of writing each at once.
    pub fn cork(&mut self) {
        self.corked = true;
    }

    /// Writes everything collected since [`RawClient::cork`] in one write.
    pub async fn uncork(&mut self) {
        self.corked = false;
        self.flush_out().await;
    }

    async fn flush_out(&mut self) {
        if self.corked || self.out.is_empty() {
            return;
        }
        let data = self.out.split().freeze();
        if let Err(e) = self.write_all(&data).await {
            panic!("raw client write failed: {e}");
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// Appends a message with a type byte; `body` writes its contents.
    fn put_msg(&mut self, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        self.out.put_u8(tag);
        self.put_untagged(body);
    }

    /// Appends a length-prefixed message without a type byte (startup & co).
    fn put_untagged(&mut self, body: impl FnOnce(&mut BytesMut)) {
        let start = self.out.len();
        self.out.put_i32(0);
        body(&mut self.out);
        let len = i32::try_from(self.out.len() - start).expect("message too long");
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Writes raw bytes as they are (respects cork).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.flush_out().await;
    }

    /// Writes raw bytes now, returning the I/O error instead of panicking.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await
    }

    /// StartupMessage (protocol 3.0) with the given parameters.
    pub async fn send_startup(&mut self, params: &[(&str, &str)]) {
        self.put_untagged(|b| {
            b.put_i32(PROTOCOL_3_0);
            for (k, v) in params {
                put_cstr(b, k);
                put_cstr(b, v);
            }
            b.put_u8(0);
        });
        self.flush_out().await;
    }

    /// SSLRequest; returns the server's one-byte answer (b'S' or b'N').
    pub async fn send_ssl_request(&mut self) -> u8 {
        self.send_request_code(SSL_REQUEST_CODE).await
    }

    /// GSSENCRequest; returns the server's one-byte answer (b'G' or b'N').
    pub async fn send_gssenc_request(&mut self) -> u8 {
        self.send_request_code(GSSENC_REQUEST_CODE).await
    }

    async fn send_request_code(&mut self, code: i32) -> u8 {
        self.put_untagged(|b| b.put_i32(code));
        self.flush_out().await;
        while self.inbuf.is_empty() {
            if !self.fill().await {
                panic!("connection closed while waiting for the answer to request code {code}");
            }
        }
        self.inbuf.get_u8()
    }

    /// PasswordMessage ('p') with a NUL-terminated string.
    pub async fn send_password(&mut self, password: &str) {
        self.put_msg(b'p', |b| put_cstr(b, password));
        self.flush_out().await;
    }

    /// SASLInitialResponse ('p').
    pub async fn send_sasl_initial(&mut self, mechanism: &str, data: &[u8]) {
        self.put_msg(b'p', |b| {
            put_cstr(b, mechanism);
            b.put_i32(i32::try_from(data.len()).expect("SASL data too long"));
            b.put_slice(data);
        });
        self.flush_out().await;
    }

    /// SASLResponse ('p').
    pub async fn send_sasl_response(&mut self, data: &[u8]) {
        self.put_msg(b'p', |b| b.put_slice(data));
        self.flush_out().await;
    }

    /// Query ('Q').
    pub async fn send_query(&mut self, sql: &str) {
        self.put_msg(b'Q', |b| put_cstr(b, sql));
        self.flush_out().await;
    }

    /// Parse ('P') of `sql` as statement `name` ("" = unnamed).
    pub async fn send_parse(&mut self, name: &str, sql: &str, param_types: &[u32]) {
        self.put_msg(b'P', |b| {
            put_cstr(b, name);
            put_cstr(b, sql);
            b.put_i16(i16::try_from(param_types.len()).expect("too many parameter types"));
            for t in param_types {
                b.put_u32(*t);
            }
        });
        self.flush_out().await;
    }

    /// Bind ('B') of statement `stmt` to `portal`, all parameters and results
    /// in text format (`None` = NULL).
    pub async fn send_bind(&mut self, portal: &str, stmt: &str, params: &[Option<&[u8]>]) {
        self.send_bind_with(portal, stmt, &[], params, &[]).await;
    }

    /// Bind ('B') with explicit parameter and result format codes.
    pub async fn send_bind_with(
        &mut self,
        portal: &str,
        stmt: &str,
        param_formats: &[i16],
        params: &[Option<&[u8]>],
        result_formats: &[i16],
    ) {
        self.put_msg(b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, stmt);
            b.put_i16(i16::try_from(param_formats.len()).expect("too many formats"));
            for f in param_formats {
                b.put_i16(*f);
            }
            b.put_i16(i16::try_from(params.len()).expect("too many parameters"));
            for p in params {
                match p {
                    None => b.put_i32(-1),
                    Some(v) => {
                        b.put_i32(i32::try_from(v.len()).expect("parameter too long"));
                        b.put_slice(v);
                    }
                }
            }
            b.put_i16(i16::try_from(result_formats.len()).expect("too many formats"));
            for f in result_formats {
                b.put_i16(*f);
            }
        });
        self.flush_out().await;
    }

    /// Describe ('D') of a statement (`kind` b'S') or portal (b'P').
    pub async fn send_describe(&mut self, kind: u8, name: &str) {
        self.put_msg(b'D', |b| {
            b.put_u8(kind);
            put_cstr(b, name);
        });
        self.flush_out().await;
    }

    /// Execute ('E') of `portal`, at most `max_rows` rows (0 = all).
    pub async fn send_execute(&mut self, portal: &str, max_rows: i32) {
        self.put_msg(b'E', |b| {
            put_cstr(b, portal);
            b.put_i32(max_rows);
        });
        self.flush_out().await;
    }

    /// Sync ('S').
    pub async fn send_sync(&mut self) {
        self.put_msg(b'S', |_| {});
        self.flush_out().await;
    }

    /// Flush ('H').
    pub async fn send_flush(&mut self) {
        self.put_msg(b'H', |_| {});
        self.flush_out().await;
    }

    /// Close ('C') of a statement (`kind` b'S') or portal (b'P').
    pub async fn send_close(&mut self, kind: u8, name: &str) {
        self.put_msg(b'C', |b| {
            b.put_u8(kind);
            put_cstr(b, name);
        });
        self.flush_out().await;
    }

    /// CopyData ('d').
    pub async fn send_copy_data(&mut self, data: &[u8]) {
        self.put_msg(b'd', |b| b.put_slice(data));
        self.flush_out().await;
    }

    /// CopyDone ('c').
    pub async fn send_copy_done(&mut self) {
        self.put_msg(b'c', |_| {});
        self.flush_out().await;
    }

    /// CopyFail ('f').
    pub async fn send_copy_fail(&mut self, message: &str) {
        self.put_msg(b'f', |b| put_cstr(b, message));
        self.flush_out().await;
    }

    /// Terminate ('X'); write errors are ignored (the peer may be gone).
    pub async fn send_terminate(&mut self) {
        self.put_msg(b'X', |_| {});
        let data = self.out.split().freeze();
        self.corked = false;
        let _ = self.write_all(&data).await;
    }

    /// CancelRequest for (`pid`, `secret`) on a fresh connection to
    /// 127.0.0.1:`port`; waits (up to 10 s) for the server to close it.
    pub async fn send_cancel(port: u16, pid: i32, secret: i32) {
        let mut client = RawClient::connect(port).await;
        client.put_untagged(|b| {
            b.put_i32(CANCEL_REQUEST_CODE);
            b.put_i32(pid);
            b.put_i32(secret);
        });
        client.flush_out().await;
        if let Some(msg) = client.recv().await {
            panic!("unexpected answer to a CancelRequest: {msg:?}");
        }
    }

    // -------------------------------------------------------------- receiving

    /// Reads more data into `inbuf` within `timeout`: `Some(false)` on EOF
    /// (or connection reset), `None` on timeout.
    async fn fill_within(&mut self, timeout: Duration) -> Option<bool> {
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.inbuf)).await {
            Err(_) => None,
            Ok(Ok(0)) => Some(false),
            Ok(Ok(_)) => Some(true),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Some(false)
            }
            Ok(Err(e)) => panic!("raw client read failed: {e}"),
        }
    }

    /// Reads more data into `inbuf`; false on EOF.  Panics after `self.timeout`.
    async fn fill(&mut self) -> bool {
        let timeout = self.timeout;
        self.fill_within(timeout).await.unwrap_or_else(|| {
            panic!(
                "raw client: no data from the server within {timeout:?} ({} bytes buffered: {:?})",
                self.inbuf.len(),
                &self.inbuf[..]
            )
        })
    }

    /// Splits one complete message off `inbuf`, if there is one.
    fn parse_one(&mut self) -> Option<Msg> {
        if self.inbuf.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([self.inbuf[1], self.inbuf[2], self.inbuf[3], self.inbuf[4]]);
        assert!(
            len >= 4,
            "invalid message length {len} for tag {:?}",
            self.inbuf[0] as char
        );
        let total = 1 + len as usize;
        if self.inbuf.len() < total {
            return None;
        }
        let mut frame = self.inbuf.split_to(total);
        let tag = frame[0];
        frame.advance(5);
        Some(Msg {
            tag,
            body: frame.freeze(),
        })
    }

    /// The next message; `None` on EOF.  Panics after `self.timeout`, or if
    /// the connection closes in the middle of a message.
    pub async fn recv(&mut self) -> Option<Msg> {
        let timeout = self.timeout;
        match self.try_recv(timeout).await {
            Ok(msg) => msg,
            Err(()) => panic!(
                "raw client: no complete message from the server within {timeout:?} ({} bytes buffered: {:?})",
                self.inbuf.len(),
                &self.inbuf[..]
            ),
        }
    }

    /// Like [`RawClient::recv`] but waits at most `timeout` and returns
    /// `Err(())` if no complete message arrived by then (for asserting that
    /// the server stays silent).
    #[allow(clippy::result_unit_err)]
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Option<Msg>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(msg) = self.parse_one() {
                return Ok(Some(msg));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill_within(left).await {
                None => return Err(()),
                Some(true) => {}
                Some(false) => {
                    assert!(
                        self.inbuf.is_empty(),
                        "connection closed in the middle of a message: {:?}",
                        &self.inbuf[..]
                    );
                    return Ok(None);
                }
            }
        }
    }

    /// The next message, panicking on EOF.
    pub async fn recv_msg(&mut self) -> Msg {
        self.recv()
            .await
            .expect("the server closed the connection while a message was expected")
    }

    /// Messages up to and including the first one tagged `tag`; panics on EOF.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            match self.recv().await {
                Some(msg) => {
                    let done = msg.tag == tag;
                    msgs.push(msg);
                    if done {
                        return msgs;
                    }
                }
                None => panic!(
                    "connection closed before a '{}' message; got {msgs:?}",
                    tag as char
                ),
            }
        }
    }

    /// Reads until EOF and returns what came before it.
    pub async fn recv_until_eof(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        while let Some(msg) = self.recv().await {
            msgs.push(msg);
        }
        msgs
    }

    /// Simple query: sends `sql` and returns everything up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send_query(sql).await;
        self.recv_until(b'Z').await
    }

    /// Simple query returning the text rows; panics on an ErrorResponse.
    pub async fn query_rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let msgs = self.query(sql).await;
        if let Some(err) = msgs.iter().find(|m| m.is_error()) {
            panic!("query {sql:?} failed: {err:?}");
        }
        msgs.iter()
            .filter(|m| m.tag == b'D')
            .map(Msg::text_columns)
            .collect()
    }

    // ------------------------------------------------------------------ login

    /// Startup with user and database, answering whatever authentication the
    /// server asks for (trust, cleartext, md5, SCRAM-SHA-256) with `password`;
    /// reads up to ReadyForQuery.  Returns the ErrorResponse if the server
    /// rejects the login.  The auth requests seen are in `auth_requests`.
    pub async fn login(&mut self, user: &str, db: &str, password: Option<&str>) -> Result<(), Msg> {
        self.login_with(&[("user", user), ("database", db)], password)
            .await
    }

    /// [`RawClient::login`] with arbitrary startup parameters (must include "user").
    pub async fn login_with(
        &mut self,
        params: &[(&str, &str)],
        password: Option<&str>,
    ) -> Result<(), Msg> {
        let user = params
            .iter()
            .find_map(|(k, v)| (*k == "user").then_some(*v))
            .expect("startup parameters must include user");
        self.send_startup(params).await;
        let mut scram: Option<ScramSha256> = None;
        let need_password = |kind: &str| -> &str {
            password
                .unwrap_or_else(|| panic!("server asked for a {kind} password but none was given"))
        };
        loop {
            let Some(msg) = self.recv().await else {
                panic!(
                    "server closed the connection during login (auth requests so far: {:?})",
                    self.auth_requests
                );
            };
            match msg.tag {
                b'R' => {
                    let code = msg.auth_code();
                    let data = msg.body.slice(4..);
                    if code != auth::SASL_CONTINUE && code != auth::SASL_FINAL {
                        self.auth_requests.push(code);
                    }
                    match code {
                        auth::OK => {}
                        auth::CLEARTEXT_PASSWORD => {
                            let pw = need_password("cleartext");
                            self.send_password(pw).await;
                        }
                        auth::MD5_PASSWORD => {
                            let pw = md5_password(user, need_password("md5"), &data[..4]);
                            self.send_password(&pw).await;
                        }
                        auth::SASL => {
                            let mechanisms: Vec<&[u8]> =
                                data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            assert!(
                                mechanisms.contains(&&b"SCRAM-SHA-256"[..]),
                                "server offers no SCRAM-SHA-256: {mechanisms:?}"
                            );
                            let s = ScramSha256::new(
                                need_password("SCRAM").as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let first = s.message().to_vec();
                            scram = Some(s);
                            self.send_sasl_initial("SCRAM-SHA-256", &first).await;
                        }
                        auth::SASL_CONTINUE => {
                            let s = scram.as_mut().expect("SASLContinue before SASL");
                            s.update(&data)
                                .unwrap_or_else(|e| panic!("bad SCRAM server-first message: {e}"));
                            let response = s.message().to_vec();
                            self.send_sasl_response(&response).await;
                        }
                        auth::SASL_FINAL => {
                            scram
                                .as_mut()
                                .expect("SASLFinal before SASL")
                                .finish(&data)
                                .unwrap_or_else(|e| {
                                    panic!("SCRAM server signature check failed: {e}")
                                });
                        }
                        other => panic!("unsupported authentication request {other}"),
                    }
                }
                b'E' => return Err(msg),
                b'S' => {
                    let (k, v) = msg.parameter_status();
                    self.params.insert(k, v);
                }
                b'K' => {
                    let (pid, secret) = msg.backend_key();
                    self.backend_pid = Some(pid);
                    self.secret_key = Some(secret);
                }
                b'N' => self.notices.push(msg),
                b'Z' => return Ok(()),
                _ => panic!("unexpected message during login: {msg:?}"),
            }
        }
    }

    async fn login_expecting(
        &mut self,
        user: &str,
        db: &str,
        password: Option<&str>,
        method: i32,
    ) -> Result<(), Msg> {
        self.login(user, db, password).await?;
        assert_eq!(
            self.auth_requests.first().copied(),
            Some(method),
            "expected authentication request {method}, server sent {:?}",
            self.auth_requests
        );
        Ok(())
    }

    /// Login that must not be asked for a password (AuthenticationOk at once).
    pub async fn login_trust(&mut self, user: &str, db: &str) -> Result<(), Msg> {
        self.login_expecting(user, db, None, auth::OK).await
    }

    /// Login that must be answered with an md5 password.
    pub async fn login_md5(&mut self, user: &str, db: &str, password: &str) -> Result<(), Msg> {
        self.login_expecting(user, db, Some(password), auth::MD5_PASSWORD)
            .await
    }

    /// Login that must be answered with a cleartext password.
    pub async fn login_cleartext(
        &mut self,
        user: &str,
        db: &str,
        password: &str,
    ) -> Result<(), Msg> {
        self.login_expecting(user, db, Some(password), auth::CLEARTEXT_PASSWORD)
            .await
    }

    /// Login that must go through SCRAM-SHA-256.
    pub async fn login_scram(&mut self, user: &str, db: &str, password: &str) -> Result<(), Msg> {
        self.login_expecting(user, db, Some(password), auth::SASL)
            .await
    }
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}
