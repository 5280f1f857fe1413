//! Registry clients: UDP (broadcast or unicast) and TCP, compatible with rpyc's
//! registry servers and Herald's.
//!
//! ```no_run
//! use herald_registry::UdpRegistryClient;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald_registry::ClientError> {
//! // Broadcast to 255.255.255.255:18811 like rpyc's default client.
//! let client = UdpRegistryClient::broadcast(18811);
//! for addr in client.discover("ECHO").await? {
//!     println!("{addr}");
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::brine;
use crate::proto::{self, Command, Port, ReplyError, ServiceAddr};

/// rpyc's client timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed.
    #[error("registry {op} with {addr} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The registry address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// No (valid) reply within the timeout.
    #[error("no reply to {command} from registry {addr} within {timeout:?}")]
    Timeout {
        /// The command.
        command: &'static str,
        /// The registry address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The reply could not be understood.
    #[error("bad {command} reply from registry {addr}: {source}")]
    BadReply {
        /// The command.
        command: &'static str,
        /// The registry address.
        addr: SocketAddr,
        /// What was wrong.
        source: ReplyError,
    },
    /// REGISTER got a reply other than `"OK"`.
    #[error("registry {addr} answered REGISTER with {reply} instead of 'OK'")]
    NotOk {
        /// The registry address.
        addr: SocketAddr,
        /// The reply, as a Python repr.
        reply: String,
    },
}

fn is_broadcast(ip: IpAddr) -> bool {
    match ip {
        // rpyc's rule: any dotted component equal to 255 means broadcast.
        IpAddr::V4(v4) => v4.octets().contains(&255),
        IpAddr::V6(_) => false,
    }
}

/// A UDP registry client, like rpyc's `UDPRegistryClient`.
#[derive(Debug, Clone)]
pub struct UdpRegistryClient {
    target: SocketAddr,
    interface: IpAddr,
    timeout: Duration,
    broadcast: bool,
}

impl UdpRegistryClient {
    /// A client for `target`; broadcast is enabled when the address looks like a
    /// broadcast address (any octet 255, like rpyc).
    pub fn new(target: SocketAddr) -> Self {
        let interface = match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Self {
            target,
            interface,
            timeout: DEFAULT_TIMEOUT,
            broadcast: is_broadcast(target.ip()),
        }
    }

    /// A unicast client for one registry.
    pub fn unicast(target: SocketAddr) -> Self {
        Self {
            broadcast: false,
            ..Self::new(target)
        }
    }

    /// Broadcast to `255.255.255.255:port` (rpyc's default).
    pub fn broadcast(port: u16) -> Self {
        Self::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), port))
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Binds requests to this local address, so that the registry records it as the
    /// service's host (rpyc's `interface`).
    pub fn with_interface(mut self, interface: IpAddr) -> Self {
        self.interface = interface;
        self
    }

    /// The registry address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    fn socket(&self) -> Result<UdpSocket, ClientError> {
        let io = |source| ClientError::Io {
            op: "socket setup",
            addr: self.target,
            source,
        };
        let local = SocketAddr::new(self.interface, 0);
        let sock = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))
            .map_err(io)?;
        if self.broadcast {
            sock.set_broadcast(true).map_err(io)?;
        }
        sock.set_nonblocking(true).map_err(io)?;
        sock.bind(&SockAddr::from(local)).map_err(io)?;
        UdpSocket::from_std(sock.into()).map_err(io)
    }

    /// Sends `request` and returns the first reply that comes from the registry port
    /// and that `accept` turns into a value; other datagrams are ignored.
    async fn call<T>(
        &self,
        command: &'static str,
        request: &[u8],
        mut accept: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, ClientError> {
        let sock = self.socket()?;
        sock.send_to(request, self.target)
            .await
            .map_err(|source| ClientError::Io {
                op: "send",
                addr: self.target,
                source,
            })?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let recv = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let (n, from) = match recv {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        command,
                        addr: self.target,
                        timeout: self.timeout,
                    });
                }
                Ok(Err(e)) => {
                    // e.g. ECONNREFUSED from an ICMP error: keep waiting for others.
                    tracing::debug!(error = %e, "registry client recv error");
                    tokio::time::sleep_until(
                        deadline.min(Instant::now() + Duration::from_millis(20)),
                    )
                    .await;
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            let from_registry = from.port() == self.target.port()
                && (self.broadcast
                    || self.target.ip().is_unspecified()
                    || crate::core::normalize_ip(from.ip())
                        == crate::core::normalize_ip(self.target.ip()));
            if !from_registry {
                tracing::debug!(%from, "ignoring datagram not from the registry port");
                continue;
            }
            if let Some(v) = accept(&buf[..n]) {
                return Ok(v);
            }
            tracing::debug!(%from, len = n, "ignoring unexpected registry reply");
        }
    }

    /// Registers `port` under `aliases`; `Ok` once the registry answered `"OK"`.
    pub async fn register<S: AsRef<str>>(
        &self,
        aliases: &[S],
        port: impl Into<Port>,
    ) -> Result<(), ClientError> {
        let req = proto::encode_request(&Command::Register {
            aliases: aliases.iter().map(|a| a.as_ref().to_owned()).collect(),
            port: port.into(),
        });
        self.call("REGISTER", &req, |r| proto::is_ok_reply(r).then_some(()))
            .await
    }

    /// Sends UNREGISTER (fire and forget, like rpyc; the reply is not awaited).
    pub async fn unregister(&self, port: impl Into<Port>) -> Result<(), ClientError> {
        let req = proto::encode_request(&Command::Unregister { port: port.into() });
        let sock = self.socket()?;
        sock.send_to(&req, self.target)
            .await
            .map_err(|source| ClientError::Io {
                op: "send",
                addr: self.target,
                source,
            })?;
        Ok(())
    }

    /// The servers registered under `name` (empty when unknown).
    pub async fn discover(&self, name: &str) -> Result<Vec<ServiceAddr>, ClientError> {
        let req = proto::encode_request(&Command::Query { name: name.into() });
        self.call("QUERY", &req, |r| proto::parse_query_reply(r).ok())
            .await
    }

    /// The registered names (optionally only those with a server on `filter_host`);
    /// `None` when the registry does not allow listing.
    pub async fn list(
        &self,
        filter_host: Option<&str>,
    ) -> Result<Option<Vec<String>>, ClientError> {
        let req = proto::encode_request(&Command::List {
            filter: filter_host.map(str::to_owned),
        });
        self.call("LIST", &req, |r| proto::parse_list_reply(r).ok())
            .await
    }
}

/// A TCP registry client, like rpyc's `TCPRegistryClient`: one request per connection.
#[derive(Debug, Clone)]
pub struct TcpRegistryClient {
    target: SocketAddr,
    timeout: Duration,
}

impl TcpRegistryClient {
    /// A client for the registry at `target`.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The registry address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    async fn connect(
        &self,
        command: &'static str,
        request: &[u8],
    ) -> Result<TcpStream, ClientError> {
        let timeout = || ClientError::Timeout {
            command,
            addr: self.target,
            timeout: self.timeout,
        };
        let mut stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.target))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| ClientError::Io {
                op: "connect",
                addr: self.target,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        tokio::time::timeout(self.timeout, stream.write_all(request))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| ClientError::Io {
                op: "send",
                addr: self.target,
                source,
            })?;
        Ok(stream)
    }

    /// Sends one request and reads one complete brine reply.
    async fn call(&self, command: &'static str, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let timeout = || ClientError::Timeout {
            command,
            addr: self.target,
            timeout: self.timeout,
        };
        let mut stream = tokio::time::timeout_at(deadline, self.connect(command, request))
            .await
            .map_err(|_| timeout())??;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| timeout())?
                .map_err(|source| ClientError::Io {
                    op: "receive",
                    addr: self.target,
                    source,
                })?;
            buf.extend_from_slice(&chunk[..n]);
            match brine::decode(&buf) {
                Ok(_) => return Ok(buf),
                Err(e) if e.is_truncated() && n > 0 && buf.len() < 1 << 20 => continue,
                Err(e) if n == 0 && buf.is_empty() => {
                    let _ = e;
                    // Closed without a reply: the registry dropped the request.
                    return Err(timeout());
                }
                Err(e) => {
                    return Err(ClientError::BadReply {
                        command,
                        addr: self.target,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Registers `port` under `aliases`; `Ok` once the registry answered `"OK"`.
    pub async fn register<S: AsRef<str>>(
        &self,
        aliases: &[S],
        port: impl Into<Port>,
    ) -> Result<(), ClientError> {
        let req = proto::encode_request(&Command::Register {
            aliases: aliases.iter().map(|a| a.as_ref().to_owned()).collect(),
            port: port.into(),
        });
        let reply = self.call("REGISTER", &req).await?;
        if proto::is_ok_reply(&reply) {
            Ok(())
        } else {
            Err(ClientError::NotOk {
                addr: self.target,
                reply: brine::decode(&reply)
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_else(|e| e.to_string()),
            })
        }
    }

    /// Sends UNREGISTER and closes without reading (like rpyc).
    pub async fn unregister(&self, port: impl Into<Port>) -> Result<(), ClientError> {
        let req = proto::encode_request(&Command::Unregister { port: port.into() });
        let mut stream = self.connect("UNREGISTER", &req).await?;
        let _ = stream.shutdown().await;
        Ok(())
    }

    /// The servers registered under `name` (empty when unknown).
    pub async fn discover(&self, name: &str) -> Result<Vec<ServiceAddr>, ClientError> {
        let req = proto::encode_request(&Command::Query { name: name.into() });
        let reply = self.call("QUERY", &req).await?;
        proto::parse_query_reply(&reply).map_err(|source| ClientError::BadReply {
            command: "QUERY",
            addr: self.target,
            source,
        })
    }

    /// The registered names; `None` when the registry does not allow listing.
    pub async fn list(
        &self,
        filter_host: Option<&str>,
    ) -> Result<Option<Vec<String>>, ClientError> {
        let req = proto::encode_request(&Command::List {
            filter: filter_host.map(str::to_owned),
        });
        let reply = self.call("LIST", &req).await?;
        proto::parse_list_reply(&reply).map_err(|source| ClientError::BadReply {
            command: "LIST",
            addr: self.target,
            source,
        })
    }
}

/// Either client, for code that lets the user choose the transport.
#[derive(Debug, Clone)]
pub enum RegistryClient {
    /// Over UDP.
    Udp(UdpRegistryClient),
    /// Over TCP.
    Tcp(TcpRegistryClient),
}

impl RegistryClient {
    /// The registry address.
    pub fn target(&self) -> SocketAddr {
        match self {
            RegistryClient::Udp(c) => c.target(),
            RegistryClient::Tcp(c) => c.target(),
        }
    }

    /// See [`UdpRegistryClient::register`].
    pub async fn register<S: AsRef<str>>(
        &self,
        aliases: &[S],
        port: impl Into<Port>,
    ) -> Result<(), ClientError> {
        match self {
            RegistryClient::Udp(c) => c.register(aliases, port).await,
            RegistryClient::Tcp(c) => c.register(aliases, port).await,
        }
    }

    /// See [`UdpRegistryClient::unregister`].
    pub async fn unregister(&self, port: impl Into<Port>) -> Result<(), ClientError> {
        match self {
            RegistryClient::Udp(c) => c.unregister(port).await,
            RegistryClient::Tcp(c) => c.unregister(port).await,
        }
    }

    /// See [`UdpRegistryClient::discover`].
    pub async fn discover(&self, name: &str) -> Result<Vec<ServiceAddr>, ClientError> {
        match self {
            RegistryClient::Udp(c) => c.discover(name).await,
            RegistryClient::Tcp(c) => c.discover(name).await,
        }
    }

    /// See [`UdpRegistryClient::list`].
    pub async fn list(
        &self,
        filter_host: Option<&str>,
    ) -> Result<Option<Vec<String>>, ClientError> {
        match self {
            RegistryClient::Udp(c) => c.list(filter_host).await,
            RegistryClient::Tcp(c) => c.list(filter_host).await,
        }
    }
}

impl From<UdpRegistryClient> for RegistryClient {
    fn from(c: UdpRegistryClient) -> Self {
        RegistryClient::Udp(c)
    }
}

impl From<TcpRegistryClient> for RegistryClient {
    fn from(c: TcpRegistryClient) -> Self {
        RegistryClient::Tcp(c)
    }
}
