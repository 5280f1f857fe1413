//! Registry messages: parsing requests and replies, building them for clients.
//!
//! Every request is the brine 3-tuple `("RPYC", command, args)`; every reply is one
//! bare brine value. This module is pure (no I/O, no clock).
//!
//! ```
//! use herald_registry::proto::{parse_request, encode_request, Command, Port};
//!
//! let bytes = encode_request(&Command::Query { name: "foo".into() });
//! assert_eq!(bytes, [0x12, 0x08, 0x0d, b'R', b'P', b'Y', b'C', 0x08, 0x0e, 0x05,
//!     b'Q', b'U', b'E', b'R', b'Y', 0x10, 0x08, 0x0c, b'f', b'o', b'o']);
//! assert_eq!(parse_request(&bytes).unwrap().0, Command::Query { name: "foo".into() });
//! ```

use std::fmt;

use crate::brine::{self, BrineError, Value};

/// The magic string that starts every request.
pub const MAGIC: &str = "RPYC";

/// A service's "port" as rpyc records it: a TCP port number, or the socket path of a
/// unix-socket `ThreadedServer` (rpyc sends the path as a str).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    /// A port number (rpyc does not validate the range; neither do we).
    Num(i64),
    /// A unix-socket path.
    Path(String),
}

impl Port {
    /// The brine value sent on the wire.
    pub fn to_value(&self) -> Value {
        match self {
            Port::Num(n) => Value::Int(*n),
            Port::Path(p) => Value::Str(p.clone()),
        }
    }

    /// Reads a port from a brine value (int or str).
    pub fn from_value(v: &Value) -> Option<Port> {
        match v {
            Value::Int(n) => Some(Port::Num(*n)),
            Value::Str(s) => Some(Port::Path(s.clone())),
            _ => None,
        }
    }

    /// How many bytes its encoding takes.
    fn encoded_len(&self) -> usize {
        match self {
            Port::Num(n) => brine::encoded_int_len(*n),
            Port::Path(p) => brine::encoded_str_len(p),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Port::Num(n) => brine::encode_int(*n, out),
            Port::Path(p) => brine::encode_str(p, out),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Num(n) => write!(f, "{n}"),
            Port::Path(p) => f.write_str(p),
        }
    }
}

impl From<u16> for Port {
    fn from(p: u16) -> Self {
        Port::Num(i64::from(p))
    }
}

/// A registry request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register (or keep alive) the sender's `port` under every alias.
    Register {
        /// Service names as sent (the server upper-cases them).
        aliases: Vec<String>,
        /// The service's port.
        port: Port,
    },
    /// Remove the sender's `port` from every name.
    Unregister {
        /// The service's port.
        port: Port,
    },
    /// Ask for the servers of one name.
    Query {
        /// Service name (any case).
        name: String,
    },
    /// Ask for the registered names, optionally only those with a server on one host.
    List {
        /// Host filter (`None` or `""` = all names).
        filter: Option<String>,
        /// Sent in the rpyc 5.1.0 form, args `()`: no filter (`filter` is not sent), and
        /// that client reads only 1500 bytes of the reply even over UDP. `false`: the
        /// 5.2+ form `((filter_host,),)`.
        legacy: bool,
    },
}

impl Command {
    /// The wire name of the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "REGISTER",
            Command::Unregister { .. } => "UNREGISTER",
            Command::Query { .. } => "QUERY",
            Command::List { .. } => "LIST",
        }
    }
}

/// Why a request could not be parsed (the server drops it without a reply, except
/// [`RequestError::BytesName`], which it answers with `()` like rpyc).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Not decodable as brine.
    #[error("undecodable request: {0}")]
    Decode(#[from] BrineError),
    /// Decoded, but not a 3-tuple.
    #[error("request is {found}, expected a 3-tuple (magic, command, args)")]
    NotATriple {
        /// What it was.
        found: String,
    },
    /// The first item is not the str `"RPYC"`.
    #[error("invalid magic {found} (expected 'RPYC')")]
    BadMagic {
        /// Python repr of the magic, at most 64 chars.
        found: String,
    },
    /// The command is not a str (this kills rpyc's own server; Herald drops it).
    #[error("command is a {found}, expected a str")]
    CommandNotStr {
        /// Its type.
        found: &'static str,
    },
    /// A command the registry does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The args item is not a tuple.
    #[error("{command} args are a {found}, expected a tuple")]
    ArgsNotTuple {
        /// The command.
        command: &'static str,
        /// What they were.
        found: &'static str,
    },
    /// Wrong number of args.
    #[error("{command} takes {expected} argument(s), got {got}")]
    WrongArity {
        /// The command.
        command: &'static str,
        /// Expected count (text, e.g. `"1"` or `"0 or 1"`).
        expected: &'static str,
        /// Received count.
        got: usize,
    },
    /// An argument of the wrong type.
    #[error("{command} {what} is invalid: {found}")]
    BadArgument {
        /// The command.
        command: &'static str,
        /// Which argument.
        what: &'static str,
        /// What it was, as a short repr.
        found: String,
    },
    /// QUERY with a bytes name (rpyc answers `()`: it never matches a str name).
    #[error("QUERY name is bytes {0}, which never matches")]
    BytesName(String),
}

fn short_repr(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 61;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Parses one request; returns it and the number of bytes used (rpyc ignores trailing
/// bytes after the first value, so callers may too).
pub fn parse_request(bytes: &[u8]) -> Result<(Command, usize), RequestError> {
    let (value, used) = brine::decode(bytes)?;
    Ok((parse_request_value(value)?, used))
}

/// Interprets an already decoded request value.
pub fn parse_request_value(value: Value) -> Result<Command, RequestError> {
    let Value::Tuple(items) = value else {
        return Err(RequestError::NotATriple {
            found: format!("a {}", value.type_name()),
        });
    };
    let [magic, command, args] =
        <[Value; 3]>::try_from(items).map_err(|items| RequestError::NotATriple {
            found: format!("a {}-tuple", items.len()),
        })?;
    if magic.as_str() != Some(MAGIC) {
        return Err(RequestError::BadMagic {
            found: short_repr(&magic),
        });
    }
    let Value::Str(command) = command else {
        return Err(RequestError::CommandNotStr {
            found: command.type_name(),
        });
    };
    let cmd: &'static str = if command.eq_ignore_ascii_case("register") {
        "REGISTER"
    } else if command.eq_ignore_ascii_case("unregister") {
        "UNREGISTER"
    } else if command.eq_ignore_ascii_case("query") {
        "QUERY"
    } else if command.eq_ignore_ascii_case("list") {
        "LIST"
    } else {
        let mut shown = command;
        if shown.len() > 64 {
            let mut cut = 64;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
        }
        return Err(RequestError::UnknownCommand(shown));
    };
    let Value::Tuple(args) = args else {
        return Err(RequestError::ArgsNotTuple {
            command: cmd,
            found: args.type_name(),
        });
    };
    let arity = |expected: &'static str| RequestError::WrongArity {
        command: cmd,
        expected,
        got: args.len(),
    };
    match cmd {
        "REGISTER" => {
            let [aliases, port] =
                <&[Value; 2]>::try_from(args.as_slice()).map_err(|_| arity("2"))?;
            let aliases = match aliases {
                Value::Tuple(items) => items
                    .iter()
                    .map(|a| match a {
                        Value::Str(s) => Ok(s.clone()),
                        other => Err(RequestError::BadArgument {
                            command: cmd,
                            what: "alias",
                            found: short_repr(other),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                // rpyc iterates a str alias list: each character becomes a name.
                Value::Str(s) => s.chars().map(String::from).collect(),
                other => {
                    return Err(RequestError::BadArgument {
                        command: cmd,
                        what: "aliases",
                        found: short_repr(other),
                    });
                }
            };
            let port = Port::from_value(port).ok_or_else(|| RequestError::BadArgument {
                command: cmd,
                what: "port",
                found: short_repr(port),
            })?;
            Ok(Command::Register { aliases, port })
        }
        "UNREGISTER" => {
            let [port] = <&[Value; 1]>::try_from(args.as_slice()).map_err(|_| arity("1"))?;
            let port = Port::from_value(port).ok_or_else(|| RequestError::BadArgument {
                command: cmd,
                what: "port",
                found: short_repr(port),
            })?;
            Ok(Command::Unregister { port })
        }
        "QUERY" => {
            let [name] = <&[Value; 1]>::try_from(args.as_slice()).map_err(|_| arity("1"))?;
            match name {
                Value::Str(s) => Ok(Command::Query { name: s.clone() }),
                Value::Bytes(_) => Err(RequestError::BytesName(short_repr(name))),
                other => Err(RequestError::BadArgument {
                    command: cmd,
                    what: "name",
                    found: short_repr(other),
                }),
            }
        }
        _ => {
            // LIST: rpyc 5.1 sent `()`, 5.2+ send `((filter_host,),)`.
            let legacy = args.is_empty();
            let filter = match args.as_slice() {
                [] => None,
                [Value::Tuple(inner)] => match inner.as_slice() {
                    [Value::None] => None,
                    [Value::Str(h)] if h.is_empty() => None,
                    [Value::Str(h)] => Some(h.clone()),
                    _ => {
                        return Err(RequestError::BadArgument {
                            command: cmd,
                            what: "filter",
                            found: short_repr(&args[0]),
                        });
                    }
                },
                [other] => {
                    return Err(RequestError::BadArgument {
                        command: cmd,
                        what: "filter",
                        found: short_repr(other),
                    });
                }
                _ => return Err(arity("0 or 1")),
            };
            Ok(Command::List { filter, legacy })
        }
    }
}

/// `("RPYC", "QUERY", (` followed by a str tag, as rpyc clients encode it.
const QUERY_PREFIX: &[u8] = b"\x12\x08\x0dRPYC\x08\x0e\x05QUERY\x10\x08";

/// The name of a QUERY encoded exactly as rpyc clients do (`"RPYC"`, `"QUERY"`, one
/// str argument; trailing bytes ignored), read in place; `None` for anything else,
/// which then takes the general [`parse_request`] path.
pub fn canonical_query_name(bytes: &[u8]) -> Option<&str> {
    let rest = bytes.strip_prefix(QUERY_PREFIX)?;
    let (&tag, rest) = rest.split_first()?;
    let (len, rest) = match tag {
        0x01 => (0, rest),
        0x0a..=0x0d => (usize::from(tag - 0x0a + 1), rest),
        0x0e => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

fn request_header(command: &str, out: &mut Vec<u8>) {
    brine::encode_tuple_header(3, out);
    brine::encode_str(MAGIC, out);
    brine::encode_str(command, out);
}

/// Encodes a request exactly as rpyc 6 clients do (LIST in the 5.2+ form, or as rpyc
/// 5.1.0 did when `legacy`).
pub fn encode_request(cmd: &Command) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    request_header(cmd.name(), &mut out);
    match cmd {
        Command::Register { aliases, port } => {
            brine::encode_tuple_header(2, &mut out);
            brine::encode_tuple_header(aliases.len(), &mut out);
            for a in aliases {
                brine::encode_str(a, &mut out);
            }
            port.encode_into(&mut out);
        }
        Command::Unregister { port } => {
            brine::encode_tuple_header(1, &mut out);
            port.encode_into(&mut out);
        }
        Command::Query { name } => {
            brine::encode_tuple_header(1, &mut out);
            brine::encode_str(name, &mut out);
        }
        Command::List { legacy: true, .. } => {
            brine::encode_tuple_header(0, &mut out);
        }
        Command::List {
            filter,
            legacy: false,
        } => {
            brine::encode_tuple_header(1, &mut out);
            brine::encode_tuple_header(1, &mut out);
            match filter {
                Some(h) => brine::encode_str(h, &mut out),
                None => out.push(0x00),
            }
        }
    }
    out
}

/// The `"OK"` reply to REGISTER and UNREGISTER.
pub const REPLY_OK: [u8; 4] = [0x08, 0x0b, b'O', b'K'];
/// The `None` reply to LIST when listing is disabled.
pub const REPLY_NONE: [u8; 1] = [0x00];
/// The `()` reply to QUERY for an unknown name.
pub const REPLY_EMPTY: [u8; 1] = [0x02];

/// Why a reply could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    /// Not decodable as brine.
    #[error("undecodable reply: {0}")]
    Decode(#[from] BrineError),
    /// Decoded, but not the expected shape.
    #[error("unexpected {command} reply {found}")]
    Shape {
        /// The command that was answered.
        command: &'static str,
        /// A short repr of what came back.
        found: String,
    },
}

/// One server of a name, as QUERY returns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAddr {
    /// The host the registry recorded (the IP it saw).
    pub host: String,
    /// The port.
    pub port: Port,
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Appends one `(host, port)` pair.
pub(crate) fn encode_addr(host: &str, port: &Port, out: &mut Vec<u8>) {
    brine::encode_tuple_header(2, out);
    brine::encode_str(host, out);
    port.encode_into(out);
}

/// How many bytes [`encode_addr`] appends, without encoding.
pub(crate) fn encoded_addr_len(host: &str, port: &Port) -> usize {
    brine::tuple_header_len(2) + brine::encoded_str_len(host) + port.encoded_len()
}

/// Parses a QUERY reply: a tuple of `(host, port)` pairs.
pub fn parse_query_reply(bytes: &[u8]) -> Result<Vec<ServiceAddr>, ReplyError> {
    let (v, _) = brine::decode(bytes)?;
    let shape = |v: &Value| ReplyError::Shape {
        command: "QUERY",
        found: short_repr(v),
    };
    let items = v.as_tuple().ok_or_else(|| shape(&v))?;
    items
        .iter()
        .map(|pair| match pair.as_tuple() {
            Some([Value::Str(host), port]) => Ok(ServiceAddr {
                host: host.clone(),
                port: Port::from_value(port).ok_or_else(|| shape(pair))?,
            }),
            _ => Err(shape(pair)),
        })
        .collect()
}

/// Parses a LIST reply: `None` (listing disabled) or a tuple of names.
pub fn parse_list_reply(bytes: &[u8]) -> Result<Option<Vec<String>>, ReplyError> {
    let (v, _) = brine::decode(bytes)?;
    let shape = |v: &Value| ReplyError::Shape {
        command: "LIST",
        found: short_repr(v),
    };
    match &v {
        Value::None => Ok(None),
        Value::Tuple(items) => items
            .iter()
            .map(|n| n.as_str().map(str::to_owned).ok_or_else(|| shape(n)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(shape(other)),
    }
}

/// True when `bytes` is the `"OK"` reply (trailing bytes ignored, like rpyc).
pub fn is_ok_reply(bytes: &[u8]) -> bool {
    matches!(brine::decode(bytes), Ok((Value::Str(s), _)) if s == "OK")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_forms() {
        // 5.1 form: args ()
        let v = Value::tuple([Value::str("RPYC"), Value::str("LIST"), Value::Tuple(vec![])]);
        let legacy = Command::List {
            filter: None,
            legacy: true,
        };
        assert_eq!(parse_request_value(v.clone()), Ok(legacy.clone()));
        assert_eq!(brine::encode(&v), encode_request(&legacy));
        let v = Value::tuple([
            Value::str("RPYC"),
            Value::str("list"),
            Value::tuple([Value::tuple([Value::str("")])]),
        ]);
        assert_eq!(
            parse_request_value(v),
            Ok(Command::List {
                filter: None,
                legacy: false
            })
        );
        let v = Value::tuple([
            Value::str("RPYC"),
            Value::str("LIST"),
            Value::tuple([Value::Int(3)]),
        ]);
        assert!(matches!(
            parse_request_value(v),
            Err(RequestError::BadArgument { what: "filter", .. })
        ));
    }

    #[test]
    fn canonical_query_fast_path_agrees_with_the_parser() {
        for name in [
            "",
            "A",
            "ABCD",
            "foo",
            "x".repeat(255).as_str(),
            "\u{e9}t\u{e9}",
        ] {
            let req = encode_request(&Command::Query { name: name.into() });
            assert_eq!(canonical_query_name(&req), Some(name));
            let mut junk = req.clone();
            junk.extend_from_slice(b"\xff\xff");
            assert_eq!(canonical_query_name(&junk), Some(name));
            // Every strict prefix is refused (the parser reports truncation).
            for cut in 0..req.len() {
                assert_eq!(canonical_query_name(&req[..cut]), None, "cut {cut}");
            }
        }
        let long = encode_request(&Command::Query {
            name: "y".repeat(256),
        });
        assert_eq!(
            canonical_query_name(&long),
            None,
            "4-byte length form: general path"
        );
        let bad_utf8 = [QUERY_PREFIX, &[0x0a, 0xff]].concat();
        assert_eq!(canonical_query_name(&bad_utf8), None);
    }

    #[test]
    fn non_str_command_is_an_error() {
        let v = Value::tuple([Value::str("RPYC"), Value::Int(5), Value::Tuple(vec![])]);
        assert_eq!(
            parse_request_value(v),
            Err(RequestError::CommandNotStr { found: "int" })
        );
    }

    #[test]
    fn register_round_trip_with_path_port() {
        let cmd = Command::Register {
            aliases: vec!["A".into(), "b".into()],
            port: Port::Path("/tmp/s.sock".into()),
        };
        assert_eq!(parse_request(&encode_request(&cmd)).map(|x| x.0), Ok(cmd));
    }

    #[test]
    fn encoded_addr_len_matches_encode_addr() {
        for (host, port) in [
            ("10.0.0.1", Port::Num(1)),
            ("fe80::1", Port::Num(18812)),
            ("", Port::Num(-5_000_000_000)),
            ("127.0.0.1", Port::Path("/run/svc.sock".into())),
            ("h", Port::Path("p".repeat(300))),
        ] {
            let mut out = Vec::new();
            encode_addr(host, &port, &mut out);
            assert_eq!(encoded_addr_len(host, &port), out.len(), "{host} {port}");
        }
    }

    #[test]
    fn reply_parsers_reject_wrong_shapes() {
        assert!(parse_query_reply(&REPLY_OK).is_err());
        assert_eq!(parse_list_reply(&REPLY_NONE), Ok(None));
        assert_eq!(parse_query_reply(&REPLY_EMPTY), Ok(vec![]));
        assert!(is_ok_reply(&REPLY_OK));
        assert!(!is_ok_reply(&REPLY_NONE));
    }
}
