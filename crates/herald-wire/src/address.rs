//! casty actor addresses: `casty://system@host:port/path` and the local form
//! `casty://system/path`.
//!
//! Unlike casty's own parser, this one round-trips everything an encoder
//! writes: the empty path of casty's `sender` (`casty://sys@h:1/`), IPv6
//! hosts in brackets (`casty://sys@[::1]:25520/a`), and an optional node id
//! (`?node=<id>` suffix, a Herald extension that casty never writes). Ports are
//! range checked.

use std::fmt;
use std::str::FromStr;

use crate::error::{WireError, preview};

/// URI scheme of actor addresses.
pub const SCHEME: &str = "casty://";

/// Query key that carries the node id (Herald extension).
const NODE_QUERY: &str = "?node=";

/// An actor address.
///
/// `path` is stored without its leading `/` (as casty writes it): the root
/// actor of a system has the empty path.
///
/// ```
/// use herald_wire::ActorAddress;
///
/// let a: ActorAddress = "casty://sys@[::1]:25520/user/counter".parse()?;
/// assert_eq!(a.system(), "sys");
/// assert_eq!(a.host(), Some("::1"));
/// assert_eq!(a.port(), Some(25520));
/// assert_eq!(a.path(), "user/counter");
/// assert_eq!(a.to_string(), "casty://sys@[::1]:25520/user/counter");
///
/// let root: ActorAddress = "casty://sys@127.0.0.1:25521/".parse()?;
/// assert_eq!(root.path(), "");
/// # Ok::<(), herald_wire::WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorAddress {
    system: String,
    host_port: Option<(String, u16)>,
    path: String,
    node_id: Option<String>,
}

fn invalid(input: &str, reason: impl Into<String>) -> WireError {
    WireError::InvalidAddress {
        input: preview(input, 200),
        reason: reason.into(),
    }
}

fn check_system(system: &str) -> Result<(), String> {
    if system.is_empty() {
        return Err("system name is empty".into());
    }
    if let Some(c) = system.chars().find(|c| matches!(c, '@' | '/' | '?' | ':')) {
        return Err(format!("system name {system:?} contains {c:?}"));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if let Some(c) = host
        .chars()
        .find(|c| matches!(c, '@' | '/' | '?' | '[' | ']'))
    {
        return Err(format!("host {host:?} contains {c:?}"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if path.contains('?') {
        return Err(format!("path {path:?} contains '?'"));
    }
    Ok(())
}

impl ActorAddress {
    /// A remote address `casty://system@host:port/path`. A leading `/` of
    /// `path` is stripped (as casty's `to_uri` does).
    ///
    /// # Errors
    /// [`WireError::InvalidAddress`] if the system is empty or contains `@ / ? :`,
    /// the host is empty or contains `@ / ? [ ]`, or the path contains `?`.
    pub fn remote(
        system: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        path: impl Into<String>,
    ) -> Result<Self, WireError> {
        let (system, host, path) = (system.into(), host.into(), path.into());
        let path = path.strip_prefix('/').map(str::to_owned).unwrap_or(path);
        let check = check_system(&system)
            .and_then(|()| check_host(&host))
            .and_then(|()| check_path(&path));
        let addr = ActorAddress {
            system,
            host_port: Some((host, port)),
            path,
            node_id: None,
        };
        match check {
            Ok(()) => Ok(addr),
            Err(reason) => Err(invalid(&addr.to_string(), reason)),
        }
    }

    /// A local address `casty://system/path`.
    ///
    /// # Errors
    /// As [`ActorAddress::remote`].
    pub fn local(system: impl Into<String>, path: impl Into<String>) -> Result<Self, WireError> {
        let (system, path) = (system.into(), path.into());
        let path = path.strip_prefix('/').map(str::to_owned).unwrap_or(path);
        let check = check_system(&system).and_then(|()| check_path(&path));
        let addr = ActorAddress {
            system,
            host_port: None,
            path,
            node_id: None,
        };
        match check {
            Ok(()) => Ok(addr),
            Err(reason) => Err(invalid(&addr.to_string(), reason)),
        }
    }

    /// Attaches a node id (written as a `?node=<id>` suffix).
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Same system and host:port, another path (e.g. the root `""` for a sender).
    pub fn with_path(&self, path: impl Into<String>) -> Result<Self, WireError> {
        let path = path.into();
        let path = path.strip_prefix('/').map(str::to_owned).unwrap_or(path);
        check_path(&path).map_err(|r| invalid(&path, r))?;
        Ok(ActorAddress {
            path,
            ..self.clone()
        })
    }

    /// Parses an address (same as [`str::parse`]).
    ///
    /// # Errors
    /// [`WireError::InvalidAddress`] naming the input and what is wrong.
    pub fn parse(input: &str) -> Result<Self, WireError> {
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid(input, "does not start with \"casty://\""))?;
        let (rest, node_id) = match rest.find(NODE_QUERY) {
            Some(i) => {
                let id = &rest[i + NODE_QUERY.len()..];
                if id.is_empty() {
                    return Err(invalid(input, "node id after \"?node=\" is empty"));
                }
                (&rest[..i], Some(id.to_owned()))
            }
            None => (rest, None),
        };
        if rest.contains('?') {
            return Err(invalid(
                input,
                "unsupported query: only \"?node=<id>\" is allowed",
            ));
        }
        // Authority ends at the first '/' (no '/' may appear in system or host).
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (system, host_port) = match authority.split_once('@') {
            None => (authority, None),
            Some((system, hp)) => (system, Some(parse_host_port(input, hp)?)),
        };
        check_system(system).map_err(|r| invalid(input, r))?;
        if let Some((host, _)) = &host_port {
            check_host(host).map_err(|r| invalid(input, r))?;
        }
        Ok(ActorAddress {
            system: system.to_owned(),
            host_port,
            path: path.to_owned(),
            node_id,
        })
    }

    /// The actor system name.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// Host, for a remote address.
    pub fn host(&self) -> Option<&str> {
        self.host_port.as_ref().map(|(h, _)| h.as_str())
    }

    /// Port, for a remote address.
    pub fn port(&self) -> Option<u16> {
        self.host_port.as_ref().map(|(_, p)| *p)
    }

    /// `true` for the local form (no host:port).
    pub fn is_local(&self) -> bool {
        self.host_port.is_none()
    }

    /// Path without the leading `/` (empty for the system root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Path with a leading `/`, as casty's receiver routes it (e.g. `/user/counter`).
    pub fn actor_path(&self) -> String {
        format!("/{}", self.path)
    }

    /// The node id, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }
}

fn parse_host_port(input: &str, hp: &str) -> Result<(String, u16), WireError> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(input, "IPv6 host is missing its closing ']'"))?;
        if !host.contains(':') {
            return Err(invalid(
                input,
                format!("bracketed host {host:?} is not an IPv6 address"),
            ));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid(input, "missing ':port' after the IPv6 host"))?;
        (host, port)
    } else {
        let (host, port) = hp
            .rsplit_once(':')
            .ok_or_else(|| invalid(input, "missing ':port' after the host"))?;
        if host.contains(':') {
            return Err(invalid(
                input,
                format!("host {host:?} contains ':' (write IPv6 as [..])"),
            ));
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            input,
            format!("port {port:?} is not a decimal number"),
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(input, format!("port {port} is out of range 0..=65535")))?;
    Ok((host.to_owned(), port))
}

impl fmt::Display for ActorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        f.write_str(&self.system)?;
        if let Some((host, port)) = &self.host_port {
            if host.contains(':') {
                write!(f, "@[{host}]:{port}")?;
            } else {
                write!(f, "@{host}:{port}")?;
            }
        }
        write!(f, "/{}", self.path)?;
        if let Some(id) = &self.node_id {
            write!(f, "{NODE_QUERY}{id}")?;
        }
        Ok(())
    }
}

impl FromStr for ActorAddress {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        ActorAddress::parse(s)
    }
}

impl TryFrom<&str> for ActorAddress {
    type Error = WireError;
    fn try_from(s: &str) -> Result<Self, WireError> {
        ActorAddress::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn p(s: &str) -> ActorAddress {
        ActorAddress::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_casty_forms() {
        let a = p("casty://my-sys@127.0.0.1:25520/user/counter");
        assert_eq!(
            (a.system(), a.host(), a.port(), a.path()),
            ("my-sys", Some("127.0.0.1"), Some(25520), "user/counter")
        );
        assert_eq!(a.actor_path(), "/user/counter");
        let l = p("casty://sys/user/a");
        assert!(l.is_local());
        assert_eq!(l.path(), "user/a");
        assert_eq!(p("casty://s@h:1//a").path(), "/a");
        assert_eq!(p("casty://s@h:1//a").to_string(), "casty://s@h:1//a");
        let n = p("casty://s@h:1/x?node=node-a");
        assert_eq!(n.node_id(), Some("node-a"));
        assert_eq!(n.to_string(), "casty://s@h:1/x?node=node-a");
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "http://s@h:1/a",
            "casty://s@h:99999999/a",
            "casty://s@h:65536/a",
            "casty://s@h:/a",
            "casty://s@h:x/a",
            "casty://s@h/a",
            "casty://@h:1/a",
            "casty:///a",
            "casty://s@[::1/a",
            "casty://s@[abc]:1/a",
            "casty://s@::1:1/a",
            "casty://s@h:1/a?x=1",
            "casty://s@h:1/a?node=",
        ] {
            let e = ActorAddress::parse(bad);
            assert!(
                matches!(e, Err(WireError::InvalidAddress { .. })),
                "{bad}: {e:?}"
            );
        }
        let e = ActorAddress::parse("casty://s@h:70000/a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid actor address \"casty://s@h:70000/a\": port 70000 is out of range 0..=65535"
        );
    }

    #[test]
    fn constructors_validate_and_strip_leading_slash() {
        let a = ActorAddress::remote("s", "::1", 7, "/a/b").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.to_string(), "casty://s@[::1]:7/a/b");
        assert!(ActorAddress::remote("", "h", 1, "a").is_err());
        assert!(ActorAddress::local("s", "a?b").is_err());
        assert_eq!(
            ActorAddress::local("s", "").map(|a| a.to_string()).ok(),
            Some("casty://s/".to_owned())
        );
    }
}
