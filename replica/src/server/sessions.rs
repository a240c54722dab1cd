//! Machine connections: a bounded accept loop and one task per session
//! that splits the byte stream into frames for the core and writes the
//! core's frames back.

use super::SessionWriter;
use super::core::CoreInput;
use crate::ingest::SessionId;
use crate::round::Input;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use link::codec::{frame_codec, is_oversized_frame};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Most machine connections served at once. One more waits in the
/// kernel's accept queue until a session ends (the machine's connect
/// times out and it tries again with backoff), so a flood of idle
/// connections cannot exhaust the process's file descriptors.
pub const MACHINE_CONNECTIONS_MAX: usize = 4_096;
/// Frames queued for one machine connection; a slower machine is cut off.
pub const SESSION_WRITE_QUEUE_FRAMES: usize = 1_024;
/// A machine connection that completes no frame for this long is closed
/// (machines ping every second; a trickle of bytes does not count).
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts machine connections until `stopped`, at most
/// `MACHINE_CONNECTIONS_MAX` at once.
pub(super) async fn accept_machines(
    listener: tokio::net::TcpListener,
    inputs: SyncSender<CoreInput>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let next_session = AtomicU64::new(1);
    let permits = Arc::new(Semaphore::new(MACHINE_CONNECTIONS_MAX));
    let mut warned_full = false;
    loop {
        // Wait for room before accepting, so the limit holds.
        let permit = tokio::select! {
            () = super::until_stopped(&mut stopped) => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if permits.available_permits() == 0 && !warned_full {
            tracing::warn!(
                limit = MACHINE_CONNECTIONS_MAX,
                "machine connections at their limit; new ones wait"
            );
        }
        warned_full = permits.available_permits() == 0;
        tokio::select! {
            () = super::until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let session = next_session.fetch_add(1, Ordering::Relaxed);
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        serve_session(stream, session, inputs).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a machine connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_session(
    stream: tokio::net::TcpStream,
    session: SessionId,
    inputs: SyncSender<CoreInput>,
) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (frames, mut outgoing): (SessionWriter, _) =
        tokio::sync::mpsc::channel::<Vec<u8>>(SESSION_WRITE_QUEUE_FRAMES);
    if inputs
        .try_send(CoreInput::SessionOpened {
            session,
            writer: frames,
        })
        .is_err()
    {
        return;
    }
    let write = tokio::spawn(async move {
        let mut writer = FramedWrite::new(writer, frame_codec());
        while let Some(payload) = outgoing.recv().await {
            if writer.send(Bytes::from(payload)).await.is_err() {
                return;
            }
        }
        // Flushes what is queued, then shuts the write side down.
        let _ = SinkExt::<Bytes>::close(&mut writer).await;
    });
    let mut reader = FramedRead::new(reader, frame_codec());
    let mut closing = Input::SessionClosed(session);
    loop {
        let payload = match tokio::time::timeout(SESSION_IDLE_TIMEOUT, reader.next()).await {
            Ok(Some(Ok(payload))) => payload.to_vec(),
            Ok(Some(Err(error))) => {
                if is_oversized_frame(&error) {
                    closing = Input::SessionMalformed(session);
                }
                break;
            }
            Ok(None) | Err(_) => break,
        };
        let frame = CoreInput::Round(Input::SessionFrame { session, payload });
        if inputs.try_send(frame).is_err() {
            break;
        }
    }
    // The core must learn about the close; wait for room rather than drop it.
    let closed = inputs.clone();
    let _ =
        tokio::task::spawn_blocking(move || closed.send(CoreInput::Round(closing)).is_ok()).await;
    let _ = write.await;
}
