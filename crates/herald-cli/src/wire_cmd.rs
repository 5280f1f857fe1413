//! `herald envelope` and `herald frame`: encode and decode casty wire data.
//!
//! Everything the user supplies (hex, files, field values) that fails to parse
//! or decode is reported as [`crate::bad_input`] (one line, exit status 2).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use herald_wire::payload::{CastyValue, TreeFormat};
use herald_wire::{DEFAULT_MAX_FRAME_SIZE, Envelope, Frame, FrameCodec, FrameIter};
use serde_json::{Value, json};

use crate::bad_input;

/// `herald envelope ...`
#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Encode an envelope (byte-exact with casty 0.21.0) and print it as hex.
    Encode(EncodeArgs),
    /// Decode an envelope and print its fields.
    Decode(DecodeArgs),
}

/// `herald frame ...`
#[derive(Debug, Subcommand)]
pub enum FrameCommand {
    /// Decode a stream of TCP frames (e.g. a capture file) and list every frame.
    Decode(FrameDecodeArgs),
}

/// Arguments of `herald envelope encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Target actor URI, e.g. `casty://sys@127.0.0.1:25520/user/counter`.
    #[arg(long)]
    pub target: String,
    /// Sender URI, e.g. `casty://sys@127.0.0.1:25521/`.
    #[arg(long)]
    pub sender: String,
    /// Message type name, e.g. `casty_vec_msgs.Ping`.
    #[arg(long)]
    pub type_hint: String,
    /// Payload as hex.
    #[arg(
        long,
        conflicts_with = "payload_file",
        required_unless_present = "payload_file"
    )]
    pub payload_hex: Option<String>,
    /// Payload read from a file (raw bytes).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Print a whole TCP message frame (`u32 len | 0x01 | envelope`) instead of the bare envelope.
    #[arg(long)]
    pub frame: bool,
}

/// Where the bytes to decode come from.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// The bytes as hex (whitespace allowed).
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    pub hex: Option<String>,
    /// Read raw bytes from a file instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Arguments of `herald envelope decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Print JSON (payload as hex) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also decode the payload as casty's tagged tree (`json`, `msgpack`, `json+zlib`, `msgpack+zlib`).
    #[arg(long, value_name = "FORMAT")]
    pub payload_format: Option<String>,
}

/// Arguments of `herald frame decode`.
#[derive(Debug, Args)]
pub struct FrameDecodeArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Print JSON (one array of frames) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Largest frame length accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub max_frame_size: usize,
    /// Also decode message payloads as casty's tagged tree (`json`, `msgpack`, `json+zlib`, `msgpack+zlib`).
    #[arg(long, value_name = "FORMAT")]
    pub payload_format: Option<String>,
}

/// Runs `herald envelope ...`.
pub fn run_envelope(cmd: EnvelopeCommand) -> anyhow::Result<()> {
    match cmd {
        EnvelopeCommand::Encode(args) => {
            let payload = match (&args.payload_hex, &args.payload_file) {
                (Some(h), _) => parse_hex(h).context("--payload-hex")?,
                (None, Some(path)) => read_file(path)?,
                (None, None) => {
                    return Err(bad_input(anyhow::anyhow!(
                        "give --payload-hex or --payload-file"
                    )));
                }
            };
            let env = Envelope::new(args.target, args.sender, args.type_hint, payload);
            let bytes = if args.frame {
                Frame::Message(env).encode()
            } else {
                env.encode()
            };
            outln!("{}", hex::encode(&bytes));
            Ok(())
        }
        EnvelopeCommand::Decode(args) => {
            let format = parse_format(args.payload_format.as_deref())?;
            let bytes = read_input(&args.input)?;
            let env = Envelope::decode(bytes)
                .map_err(|e| bad_input(anyhow::Error::new(e).context("decoding envelope")))?;
            let tree = format
                .map(|f| f.decode(&env.payload))
                .transpose()
                .map_err(|e| bad_input(anyhow::Error::new(e).context("decoding payload")))?;
            if args.json {
                let mut v = envelope_json(&env);
                if let Some(t) = &tree {
                    v["payload_tree"] = tree_json(t);
                }
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let text = envelope_text(&env, tree.as_ref());
                outln!("{}", text.strip_suffix('\n').unwrap_or(&text));
            }
            Ok(())
        }
    }
}

/// Runs `herald frame ...`.
pub fn run_frame(cmd: FrameCommand) -> anyhow::Result<()> {
    match cmd {
        FrameCommand::Decode(args) => {
            let format = parse_format(args.payload_format.as_deref())?;
            let bytes = read_input(&args.input)?;
            let total = bytes.len();
            let codec = FrameCodec::new().with_max_frame_size(args.max_frame_size);
            let mut frames = Vec::new();
            let mut offset = 0usize;
            let mut fatal = None;
            for item in FrameIter::new(codec, bytes) {
                match item {
                    Ok(frame) => {
                        let len = frame.encoded_len();
                        frames.push((offset, frame));
                        offset += len;
                    }
                    Err(e) => fatal = Some(e),
                }
            }
            if args.json {
                let list: Vec<Value> = frames
                    .iter()
                    .enumerate()
                    .map(|(i, (off, f))| frame_json(i, *off, f, format))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&Value::Array(list))?);
            } else {
                for (i, (off, f)) in frames.iter().enumerate() {
                    outln!("{}", frame_text(i, *off, f, format));
                }
                outln!("{} frame(s), {} of {} bytes", frames.len(), offset, total);
            }
            match fatal {
                Some(e) => Err(bad_input(
                    anyhow::Error::new(e).context(format!("frame stream at byte offset {offset}")),
                )),
                None => Ok(()),
            }
        }
    }
}

fn parse_format(s: Option<&str>) -> anyhow::Result<Option<TreeFormat>> {
    s.map(|s| s.parse::<TreeFormat>())
        .transpose()
        .map_err(|e| bad_input(anyhow::Error::new(e).context("--payload-format")))
}

fn parse_hex(s: &str) -> anyhow::Result<Bytes> {
    let cleaned: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let cleaned = cleaned.strip_prefix("0x").unwrap_or(&cleaned);
    hex::decode(cleaned)
        .map(Bytes::from)
        .map_err(|e| bad_input(anyhow::anyhow!("invalid hex: {e}")))
}

fn read_file(path: &PathBuf) -> anyhow::Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| bad_input(anyhow::anyhow!("reading {}: {e}", path.display())))
}

fn read_input(input: &InputArgs) -> anyhow::Result<Bytes> {
    match (&input.hex, &input.file) {
        (Some(h), _) => parse_hex(h),
        (None, Some(path)) => read_file(path),
        (None, None) => Err(bad_input(anyhow::anyhow!(
            "give the bytes as HEX or with --file"
        ))),
    }
}

fn extra_json(env: &Envelope) -> Value {
    Value::Object(env.extra_headers().iter().cloned().collect())
}

fn envelope_json(env: &Envelope) -> Value {
    json!({
        "target": env.target,
        "sender": env.sender,
        "type_hint": env.type_hint,
        "header_len": env.header_len(),
        "payload_len": env.payload.len(),
        "payload_hex": hex::encode(&env.payload),
        "extra": extra_json(env),
    })
}

/// Renders a tree as casty's JSON form (bytes, which JSON can't hold, as `{"__bytes_hex__": ..}`).
fn tree_json(t: &CastyValue) -> Value {
    match t.to_json_bytes() {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => json!({ "debug": format!("{t:?}") }),
    }
}

fn tree_text(t: &CastyValue) -> String {
    match t.to_json_bytes() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => format!("{t:?}"),
    }
}

fn envelope_text(env: &Envelope, tree: Option<&CastyValue>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "target:      {}", env.target);
    let _ = writeln!(s, "sender:      {}", env.sender);
    let _ = writeln!(s, "type_hint:   {}", env.type_hint);
    if !env.extra_headers().is_empty() {
        let _ = writeln!(s, "extra:       {}", extra_json(env));
    }
    let _ = writeln!(s, "header_len:  {}", env.header_len());
    let _ = writeln!(s, "payload_len: {}", env.payload.len());
    let _ = writeln!(s, "payload_hex: {}", hex::encode(&env.payload));
    if let Some(t) = tree {
        let _ = writeln!(s, "payload:     {}", tree_text(t));
    }
    s
}

fn kind_name(f: &Frame) -> &'static str {
    match f {
        Frame::Handshake(_) => "handshake",
        Frame::Message(_) => "message",
        Frame::Other { .. } => "other",
        Frame::Malformed { .. } => "malformed",
    }
}

fn frame_json(i: usize, offset: usize, f: &Frame, format: Option<TreeFormat>) -> Value {
    let mut v = json!({
        "index": i,
        "offset": offset,
        "len_field": f.body_len() + 1,
        "frame_type": f.kind(),
        "kind": kind_name(f),
    });
    match f {
        Frame::Handshake(h) => {
            v["host"] = json!(h.host);
            v["port"] = json!(h.port);
        }
        Frame::Message(env) => {
            v["envelope"] = envelope_json(env);
            if let Some(fmt) = format {
                v["payload_tree"] = match fmt.decode(&env.payload) {
                    Ok(t) => tree_json(&t),
                    Err(e) => json!({ "error": e.to_string() }),
                };
            }
        }
        Frame::Other { body, .. } => v["body_hex"] = json!(hex::encode(body)),
        Frame::Malformed { body, error, .. } => {
            v["body_hex"] = json!(hex::encode(body));
            v["error"] = json!(error.to_string());
        }
    }
    v
}

fn frame_text(i: usize, offset: usize, f: &Frame, format: Option<TreeFormat>) -> String {
    let head = format!(
        "#{i} @{offset} len={} type=0x{:02x} {}",
        f.body_len() + 1,
        f.kind(),
        kind_name(f)
    );
    match f {
        Frame::Handshake(h) => format!("{head} host={} port={}", h.host, h.port),
        Frame::Message(env) => {
            let mut s = format!(
                "{head} target={} sender={} type_hint={} payload={} B",
                env.target,
                env.sender,
                env.type_hint,
                env.payload.len()
            );
            if let Some(fmt) = format {
                match fmt.decode(&env.payload) {
                    Ok(t) => {
                        let _ = write!(s, " {}", tree_text(&t));
                    }
                    Err(e) => {
                        let _ = write!(s, " (payload: {e})");
                    }
                }
            }
            s
        }
        Frame::Other { body, .. } => format!("{head} body={} B", body.len()),
        Frame::Malformed { error, .. } => format!("{head} error: {error}"),
    }
}
