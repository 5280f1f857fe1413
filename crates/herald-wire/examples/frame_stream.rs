//! A casty-compatible frame stream over an in-memory pipe with `FramedRead` /
//! `FramedWrite`, showing how a reader skips malformed and unknown frames and
//! keeps going.
//!
//! `cargo run -p herald-wire --example frame_stream`

use futures::{SinkExt, StreamExt};
use herald_wire::{Envelope, Frame, FrameCodec, Handshake, WireError};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, FramedWrite};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), WireError> {
    let (client, server) = tokio::io::duplex(4096);
    let (_, client_w) = tokio::io::split(client);
    let mut writer = FramedWrite::new(client_w, FrameCodec::new());

    let writer_task = tokio::spawn(async move {
        writer
            .send(Frame::Handshake(Handshake::new("127.0.0.1", 25521)))
            .await?;
        let env = Envelope::new(
            "casty://sys@127.0.0.1:25520/sink",
            "casty://sys@127.0.0.1:25521/",
            "m.Ping",
            &b"{}"[..],
        );
        writer.send(&env).await?;
        // A frame kind casty ignores, and a message frame with a broken envelope.
        writer
            .send(Frame::Other {
                kind: 0x07,
                body: "hi".into(),
            })
            .await?;
        let inner = writer.get_mut();
        inner.write_all(&[0, 0, 0, 3, 0x01, 0xde, 0xad]).await?;
        writer.send(&env).await?;
        writer.get_mut().shutdown().await?;
        Ok::<_, WireError>(())
    });

    let mut reader = FramedRead::new(server, FrameCodec::new().with_max_frame_size(1 << 20));
    while let Some(item) = reader.next().await {
        // `Err` is fatal (oversized length, truncated stream): close the connection.
        match item? {
            Frame::Handshake(h) => println!("handshake from {}:{}", h.host, h.port),
            Frame::Message(env) => println!(
                "message to {} ({}, {} B)",
                env.target,
                env.type_hint,
                env.payload.len()
            ),
            Frame::Other { kind, body } => {
                println!("skipping frame kind 0x{kind:02x} ({} B)", body.len())
            }
            Frame::Malformed { kind, error, .. } => {
                println!("dropping malformed frame kind 0x{kind:02x}: {error}")
            }
        }
    }
    writer_task
        .await
        .map_err(|e| WireError::from(std::io::Error::other(e)))??;
    Ok(())
}
