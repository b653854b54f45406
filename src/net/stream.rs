//! One stream type for every transport, so the relay is written once. An enum rather
//! than a boxed trait object: static dispatch, and plaintext connections pay nothing for
//! TLS but one more arm in each match. The TLS variants box their session (large) so
//! the enum stays small; that is one allocation per TLS connection, none per message.
//!
//! rustls buffers output: a write it accepts may still sit in the session when the socket
//! is full. So every read and every readiness wait on a TLS stream first pushes pending
//! output out, and the relay flushes when it has nothing else to write; otherwise a
//! reply could stay buffered while pgsluice waits for the peer's next request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{client, server};

/// Where a peer is, as shown in logs and SHOW CLIENTS/SERVERS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(std::net::SocketAddr),
    Unix,
}

impl PeerAddr {
    pub fn ip_string(&self) -> String {
        self.host().to_string()
    }

    pub fn port(&self) -> u16 {
        match self {
            PeerAddr::Tcp(a) => a.port(),
            PeerAddr::Unix => 0,
        }
    }

    /// The address without the port, for SHOW CLIENTS.
    pub fn host(&self) -> crate::stats::HostAddr {
        match self {
            PeerAddr::Tcp(a) => crate::stats::HostAddr::Ip(a.ip()),
            PeerAddr::Unix => crate::stats::HostAddr::Unix,
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port()),
            PeerAddr::Unix => f.write_str("unix:0"),
        }
    }
}

/// PgBouncer's log prefix for a client, `C-0x<id>: db/user@addr:port`: the parts, put
/// together only when a line is logged (formatting addresses at every login was a tenth
/// of a login's instructions).
#[derive(Debug, Clone)]
pub struct Who {
    pub id: u64,
    pub peer: PeerAddr,
    /// Database and user, once the startup packet has named them.
    pub names: Option<Box<(String, String)>>,
}

impl Who {
    pub fn new(id: u64, peer: PeerAddr) -> Who {
        Who {
            id,
            peer,
            names: None,
        }
    }

    pub fn named(&mut self, database: &str, user: &str) {
        self.names = Some(Box::new((database.to_owned(), user.to_owned())));
    }
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (db, user) = match &self.names {
            Some(n) => (n.0.as_str(), n.1.as_str()),
            None => ("(nodb)", "(nouser)"),
        };
        write!(f, "C-{:#x}: {db}/{user}@{}", self.id, self.peer)
    }
}

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client that negotiated TLS with pgsluice.
    TlsFromClient(Box<server::TlsStream<TcpStream>>),
    /// pgsluice's TLS connection to a server.
    TlsToServer(Box<client::TlsStream<TcpStream>>),
    /// What a failed in-place TLS upgrade leaves: reads see EOF, writes fail.
    Closed,
}

/// Pushes out TLS output the session still holds. A `Pending` flush is not an error: the
/// socket's write readiness is now registered with `cx`, so the task wakes to finish it.
#[inline]
fn flush_pending<T: AsyncWrite + Unpin>(
    s: &mut T,
    pending: bool,
    cx: &mut Context<'_>,
) -> io::Result<()> {
    if pending {
        if let Poll::Ready(Err(e)) = Pin::new(s).poll_flush(cx) {
            return Err(e);
        }
    }
    Ok(())
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    /// TCP_NODELAY on every TCP socket: the protocol is request/response and Nagle would
    /// add a delayed-ACK round trip to small replies.
    pub fn tcp(s: TcpStream) -> Stream {
        let _ = s.set_nodelay(true);
        Stream::Tcp(s)
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsFromClient(_) | Stream::TlsToServer(_))
    }

    /// The TCP socket under the stream, if any (TLS included).
    pub fn tcp_socket(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(t) => Some(t),
            Stream::TlsFromClient(t) => Some(t.get_ref().0),
            Stream::TlsToServer(t) => Some(t.get_ref().0),
            Stream::Unix(_) | Stream::Closed => None,
        }
    }

    /// Local address and port for SHOW CLIENTS/SERVERS (`unix`, 0 for Unix sockets).
    /// Waits until the peer has gone or is talking: `true` once the socket is at EOF, has
    /// failed or holds a Terminate, `false` once it holds other bytes (which are left
    /// unread). For TLS the raw socket is looked at: a record there counts as bytes.
    /// Never ready for a closed stream.
    pub async fn peer_gone(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        loop {
            let r = match self {
                Stream::Unix(u) => {
                    if u.readable().await.is_err() {
                        return true;
                    }
                    u.try_io(tokio::io::Interest::READABLE, || {
                        socket2::SockRef::from(u).peek(&mut probe)
                    })
                }
                s => {
                    let Some(t) = s.tcp_socket() else {
                        return std::future::pending().await;
                    };
                    if t.readable().await.is_err() {
                        return true;
                    }
                    t.try_io(tokio::io::Interest::READABLE, || {
                        socket2::SockRef::from(t).peek(&mut probe)
                    })
                }
            };
            match r {
                Ok(0) => return true,
                // SAFETY: peek returned 1, so it wrote probe[0].
                Ok(_) => return !self.is_tls() && unsafe { probe[0].assume_init() } == b'X',
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            }
        }
    }

    /// The local address and port (SHOW CLIENTS `local_addr`), `unix` for Unix sockets.
    pub fn local_host(&self) -> (crate::stats::HostAddr, u16) {
        match self.tcp_socket() {
            Some(t) => t
                .local_addr()
                .map(|a| (crate::stats::HostAddr::Ip(a.ip()), a.port()))
                .unwrap_or((
                    crate::stats::HostAddr::Ip(std::net::Ipv4Addr::UNSPECIFIED.into()),
                    0,
                )),
            None => (crate::stats::HostAddr::Unix, 0),
        }
    }

    pub fn local_addr(&self) -> (String, u16) {
        match self.tcp_socket() {
            Some(t) => t
                .local_addr()
                .map(|a| (a.ip().to_string(), a.port()))
                .unwrap_or_default(),
            None => ("unix".to_string(), 0),
        }
    }

    /// `TLSv1.3/TLS_AES_256_GCM_SHA384` for a TLS stream, empty otherwise (SHOW CLIENTS
    /// and SHOW SERVERS `tls` column, login log line).
    pub fn tls_description(&self) -> String {
        match self {
            Stream::TlsFromClient(t) => super::tls::describe(t.get_ref().1),
            Stream::TlsToServer(t) => super::tls::describe(t.get_ref().1),
            _ => String::new(),
        }
    }

    /// The client certificate's subject CommonName, when the client presented one.
    pub fn peer_common_name(&self) -> Option<String> {
        match self {
            Stream::TlsFromClient(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| super::tls::common_name(c)),
            _ => None,
        }
    }

    /// The ALPN protocol the client and pgsluice agreed on.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::TlsFromClient(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Turns an accepted TCP client into a TLS one in place (after `S` to an SSLRequest,
    /// or for direct TLS). On failure the stream is `Closed`: nothing more can be said
    /// to a client whose handshake broke off.
    pub async fn accept_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        let Stream::Tcp(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS over this socket",
            ));
        };
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        *self = Stream::TlsFromClient(Box::new(tls));
        Ok(())
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsFromClient(s) => {
                let pending = s.get_ref().1.wants_write();
                flush_pending(s.as_mut(), pending, cx)?;
                Pin::new(s.as_mut()).poll_read(cx, buf)
            }
            Stream::TlsToServer(s) => {
                let pending = s.get_ref().1.wants_write();
                flush_pending(s.as_mut(), pending, cx)?;
                Pin::new(s.as_mut()).poll_read(cx, buf)
            }
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl Stream {
    /// Waits until the socket is readable without reading: an idle client waits here
    /// holding no buffer. A TLS stream first sends what its session still holds, and is
    /// readable at once when the session already has decrypted bytes (or the peer's
    /// close_notify), which the socket's readiness would not show.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::TlsFromClient(s) => {
                std::future::poll_fn(|cx| {
                    let pending = s.get_ref().1.wants_write();
                    flush_pending(s.as_mut(), pending, cx)?;
                    if !s.get_ref().1.wants_read() {
                        return Poll::Ready(Ok(()));
                    }
                    s.get_ref().0.poll_read_ready(cx)
                })
                .await
            }
            Stream::TlsToServer(s) => {
                std::future::poll_fn(|cx| {
                    let pending = s.get_ref().1.wants_write();
                    flush_pending(s.as_mut(), pending, cx)?;
                    if !s.get_ref().1.wants_read() {
                        return Poll::Ready(Ok(()));
                    }
                    s.get_ref().0.poll_read_ready(cx)
                })
                .await
            }
            Stream::Closed => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS pair over loopback TCP with tiny socket buffers: pgsluice's side as
    /// `Stream::TlsFromClient`, the peer as a plain tokio-rustls client.
    async fn pair() -> (Stream, tokio_rustls::client::TlsStream<TcpStream>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let small = |s: &TcpStream| {
            let r = socket2::SockRef::from(s);
            r.set_send_buffer_size(4096).unwrap();
            r.set_recv_buffer_size(4096).unwrap();
        };
        let connect = async {
            let s = TcpStream::connect(addr).await.unwrap();
            small(&s);
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, s)
                .await
                .unwrap()
        };
        let accept = async {
            let (s, _) = l.accept().await.unwrap();
            small(&s);
            let mut st = Stream::Tcp(s);
            st.accept_tls(Arc::new(server)).await.unwrap();
            st
        };
        let (peer, ours) = tokio::join!(connect, accept);
        (ours, peer)
    }

    /// A reply larger than the socket buffers is accepted by rustls before it is all
    /// sent; waiting for the peer's next request (`readable`, as an idle client does)
    /// must push the rest out, or both sides wait for ever.
    #[tokio::test]
    async fn buffered_tls_output_is_flushed_while_waiting_to_read() {
        for via_read in [false, true] {
            let (mut ours, mut peer) = pair().await;
            let reply = vec![7u8; 48 * 1024];
            ours.write_all(&reply).await.unwrap();
            let waiter = async {
                if via_read {
                    let mut b = [0u8; 1];
                    ours.read_exact(&mut b).await.unwrap();
                } else {
                    ours.readable().await.unwrap();
                }
            };
            let talker = async {
                let mut got = vec![0u8; reply.len()];
                peer.read_exact(&mut got).await.unwrap();
                peer.write_all(b"Q").await.unwrap();
                peer.flush().await.unwrap();
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(waiter, talker)
            })
            .await
            .unwrap_or_else(|_| panic!("stuck (via_read={via_read})"));
        }
    }
}
