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

impl ClientError {
    /// Maps an OS error of `op` with the registry at `addr`.
    fn io(op: &'static str, addr: SocketAddr) -> impl Fn(io::Error) -> ClientError + Copy {
        move |source| ClientError::Io { op, addr, source }
    }
}

/// The REGISTER request both clients send.
fn register_command<S: AsRef<str>>(aliases: &[S], port: impl Into<Port>) -> Command {
    Command::Register {
        aliases: aliases.iter().map(|a| a.as_ref().to_owned()).collect(),
        port: port.into(),
    }
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
        let io = ClientError::io("socket setup", self.target);
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

    /// Sends `command` from a fresh socket, which is returned for the reply.
    async fn send(&self, command: &Command) -> Result<UdpSocket, ClientError> {
        let sock = self.socket()?;
        sock.send_to(&proto::encode_request(command), self.target)
            .await
            .map_err(ClientError::io("send", self.target))?;
        Ok(sock)
    }

    /// Sends `command` and returns the first reply that comes from the registry port
    /// and that `accept` turns into a value; other datagrams are ignored.
    async fn call<T>(
        &self,
        command: &Command,
        mut accept: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, ClientError> {
        let sock = self.send(command).await?;
        let deadline = deadline_after(self.timeout);
        let mut buf = vec![0u8; 65_536];
        loop {
            let recv = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let (n, from) = match recv {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        command: command.name(),
                        addr: self.target,
                        timeout: self.timeout,
                    });
                }
                Ok(Err(e)) => {
                    // e.g. ECONNREFUSED from an ICMP error: keep waiting for others.
                    tracing::debug!(error = %e, "registry client recv error");
                    tokio::time::sleep_until(
                        deadline.min(deadline_after(Duration::from_millis(20))),
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
        self.call(&register_command(aliases, port), |r| {
            proto::is_ok_reply(r).then_some(())
        })
        .await
    }

    /// Sends UNREGISTER (fire and forget, like rpyc; the reply is not awaited).
    pub async fn unregister(&self, port: impl Into<Port>) -> Result<(), ClientError> {
        self.send(&Command::Unregister { port: port.into() })
            .await
            .map(drop)
    }

    /// The servers registered under `name` (empty when unknown).
    pub async fn discover(&self, name: &str) -> Result<Vec<ServiceAddr>, ClientError> {
        self.call(&Command::Query { name: name.into() }, |r| {
            proto::parse_query_reply(r).ok()
        })
        .await
    }

    /// The registered names (optionally only those with a server on `filter_host`);
    /// `None` when the registry does not allow listing.
    pub async fn list(
        &self,
        filter_host: Option<&str>,
    ) -> Result<Option<Vec<String>>, ClientError> {
        let list = Command::List {
            filter: filter_host.map(str::to_owned),
            legacy: false,
        };
        self.call(&list, |r| proto::parse_list_reply(r).ok()).await
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

    fn timeout_error(&self, command: &Command) -> ClientError {
        ClientError::Timeout {
            command: command.name(),
            addr: self.target,
            timeout: self.timeout,
        }
    }

    /// Connects and sends `command`; the stream is returned for the reply.
    async fn connect(&self, command: &Command) -> Result<TcpStream, ClientError> {
        let timeout = |_| self.timeout_error(command);
        let mut stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.target))
            .await
            .map_err(timeout)?
            .map_err(ClientError::io("connect", self.target))?;
        let _ = stream.set_nodelay(true);
        tokio::time::timeout(
            self.timeout,
            stream.write_all(&proto::encode_request(command)),
        )
        .await
        .map_err(timeout)?
        .map_err(ClientError::io("send", self.target))?;
        Ok(stream)
    }

    /// Sends one request and reads one complete brine reply.
    async fn call(&self, command: &Command) -> Result<Vec<u8>, ClientError> {
        let deadline = deadline_after(self.timeout);
        let timeout = || self.timeout_error(command);
        let mut stream = tokio::time::timeout_at(deadline, self.connect(command))
            .await
            .map_err(|_| timeout())??;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| timeout())?
                .map_err(ClientError::io("receive", self.target))?;
            buf.extend_from_slice(&chunk[..n]);
            match brine::decode(&buf) {
                Ok(_) => return Ok(buf),
                Err(e) if e.is_truncated() && n > 0 && buf.len() < 1 << 20 => continue,
                // Closed without a reply: the registry dropped the request.
                Err(_) if n == 0 && buf.is_empty() => return Err(timeout()),
                Err(e) => return Err(self.bad_reply(command, e.into())),
            }
        }
    }

    fn bad_reply(&self, command: &Command, source: ReplyError) -> ClientError {
        ClientError::BadReply {
            command: command.name(),
            addr: self.target,
            source,
        }
    }

    /// [`call`](Self::call), then `parse` the reply.
    async fn call_parsed<T>(
        &self,
        command: &Command,
        parse: fn(&[u8]) -> Result<T, ReplyError>,
    ) -> Result<T, ClientError> {
        let reply = self.call(command).await?;
        parse(&reply).map_err(|source| self.bad_reply(command, source))
    }

    /// Registers `port` under `aliases`; `Ok` once the registry answered `"OK"`.
    pub async fn register<S: AsRef<str>>(
        &self,
        aliases: &[S],
        port: impl Into<Port>,
    ) -> Result<(), ClientError> {
        let reply = self.call(&register_command(aliases, port)).await?;
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
        let mut stream = self
            .connect(&Command::Unregister { port: port.into() })
            .await?;
        let _ = stream.shutdown().await;
        Ok(())
    }

    /// The servers registered under `name` (empty when unknown).
    pub async fn discover(&self, name: &str) -> Result<Vec<ServiceAddr>, ClientError> {
        self.call_parsed(
            &Command::Query { name: name.into() },
            proto::parse_query_reply,
        )
        .await
    }

    /// The registered names; `None` when the registry does not allow listing.
    pub async fn list(
        &self,
        filter_host: Option<&str>,
    ) -> Result<Option<Vec<String>>, ClientError> {
        let list = Command::List {
            filter: filter_host.map(str::to_owned),
            legacy: false,
        };
        self.call_parsed(&list, proto::parse_list_reply).await
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

/// `now + timeout`, or a day from now when that does not fit (a huge timeout).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}
