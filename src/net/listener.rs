//! Listening sockets: every `listen_addr` on `listen_port` over TCP, plus
//! `<unix_socket_dir>/.s.PGSQL.<port>`, as PgBouncer does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use super::tcp::TcpOptions;
use super::{PeerAddr, Stream};
use crate::config::General;

pub enum Listener {
    /// With the keepalive / TCP_USER_TIMEOUT settings for accepted client sockets, so a
    /// client that vanished without a FIN (a NAT timeout, a dead host) is noticed and its
    /// session, and any server it holds, freed. Taken at startup, when the listener is bound.
    Tcp(TcpListener, TcpOptions),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            Listener::Tcp(l, opts) => {
                let (s, addr) = l.accept().await?;
                opts.apply_or_log(&s, format_args!("client {addr}"));
                Ok((Stream::tcp(s), PeerAddr::Tcp(addr)))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), PeerAddr::Unix))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l, _) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(_) => "tcp".into(),
            },
            Listener::Unix(_, p) => p.display().to_string(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The addresses `listen_addr` names: `*` = all IPv4 and IPv6 addresses; host names are
/// resolved once at startup.
fn listen_addrs(g: &General) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in &g.listen_addr {
        let a = a.trim();
        if a.is_empty() {
            continue;
        }
        if a == "*" {
            out.push(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                g.listen_port,
            ));
            out.push(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                g.listen_port,
            ));
        } else if let Ok(ip) = a.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, g.listen_port));
        } else {
            use std::net::ToSocketAddrs;
            out.extend((a, g.listen_port).to_socket_addrs()?);
        }
    }
    Ok(out)
}

/// Binds every listener the configuration asks for. Must run inside the tokio runtime.
pub fn bind_all(g: &General) -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for addr in listen_addrs(g)? {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            // `*` binds both families separately, so the v6 socket must not claim v4.
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_address(true)?;
        if g.so_reuseport {
            sock.set_reuse_port(true)?;
        }
        sock.set_nonblocking(true)?;
        if let Err(e) = sock.bind(&addr.into()) {
            return Err(io::Error::new(e.kind(), format!("bind {addr}: {e}")));
        }
        sock.listen(g.listen_backlog.min(i32::MAX as u32) as i32)?;
        out.push(Listener::Tcp(
            TcpListener::from_std(sock.into())?,
            TcpOptions::from_general(g),
        ));
    }
    if !g.unix_socket_dir.is_empty() && !g.unix_socket_dir.starts_with('@') {
        let path = PathBuf::from(&g.unix_socket_dir).join(format!(".s.PGSQL.{}", g.listen_port));
        // A stale socket file from a crashed run would make bind fail; PgBouncer removes it too.
        if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        let l = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(g.unix_socket_mode),
            );
        }
        out.push(Listener::Unix(l, path));
    }
    Ok(out)
}
