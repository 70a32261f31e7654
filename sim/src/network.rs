//! turmoil's simulated TCP behind the SDK's network seam, so every
//! connection of the real code (Raft, forwarding, keepers, clients) crosses
//! links the simulation can cut, delay and make lossy.

use std::io;
use std::net::SocketAddr;

use spike_sdk::net::{BoxFuture, Listener, Network, Stream};

/// The simulated network.
pub struct SimNetwork;

struct SimListener(turmoil::net::TcpListener);

impl Network for SimNetwork {
    fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(Box::new(stream) as Stream)
        })
    }

    fn bind(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        // A simulated host has one address, and turmoil binds only the
        // unspecified one: the same thing there.
        let address = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), address.port());
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(address).await?;
            Ok(Box::new(SimListener(listener)) as Box<dyn Listener>)
        })
    }
}

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as Stream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
