//! The cost floor of any user-space pooler on this machine: a 1:1 TCP relay that parses
//! nothing. Every accepted client gets its own upstream connection and bytes are copied both
//! ways as they arrive, on one current-thread tokio runtime (the runtime pgsluice uses with
//! one worker). There is no pooling, no authentication (the client's startup and the
//! server's authentication pass through), no statistics.
//!
//! The side-by-side bench runs it as the `floor` target (`--no-floor` leaves it out): its CPU
//! per transaction is what the kernel's loopback TCP work and the runtime cost when a process
//! sits between pgbench and PostgreSQL, and its added latency is the extra hop's. A pooler
//! cannot go below either without leaving user space.
//!
//!     cargo run --release --example relay_floor -- 127.0.0.1:6500 127.0.0.1:5432

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match (args.first(), args.get(1)) {
        (Some(l), Some(u)) => match (l.parse::<SocketAddr>(), u.parse::<SocketAddr>()) {
            (Ok(l), Ok(u)) => (l, u),
            _ => usage(),
        },
        _ => usage(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay_floor: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(listen, upstream)) {
        eprintln!("relay_floor: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: relay_floor LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT");
    std::process::exit(2);
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("relay_floor listening on {listen}, relaying to {upstream}");
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            relay(client, server).await;
        });
    }
}

/// Copies both ways until either side closes.
async fn relay(mut client: TcpStream, mut server: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
