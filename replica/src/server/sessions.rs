//! Machine connections: a bounded accept loop and one task per session
//! that splits the byte stream into frames for the core and writes the
//! core's frames back.

use super::SessionWriter;
use super::core::CoreInput;
use crate::ingest::SessionId;
use crate::link::FrameBuffer;
use crate::round::Input;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Most machine connections served at once. One more waits in the
/// kernel's accept queue until a session ends (the machine's connect
/// times out and it tries again with backoff), so a flood of idle
/// connections cannot exhaust the process's file descriptors.
pub const MACHINE_CONNECTIONS_MAX: usize = 4_096;
/// Frames queued for one machine connection; a slower machine is cut off.
pub const SESSION_WRITE_QUEUE_FRAMES: usize = 1_024;
/// A machine connection silent for this long is closed.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

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
    let (mut reader, mut writer) = stream.into_split();
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
        while let Some(payload) = outgoing.recv().await {
            if writer
                .write_all(&crate::link::encode_frame(&payload))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buffer = FrameBuffer::default();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut closing = Input::SessionClosed(session);
    'read: loop {
        let read = match tokio::time::timeout(SESSION_IDLE_TIMEOUT, reader.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buffer.extend(&chunk[..read]);
        loop {
            match buffer.next_frame() {
                Ok(Some(payload)) => {
                    let frame = CoreInput::Round(Input::SessionFrame { session, payload });
                    if inputs.try_send(frame).is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    closing = Input::SessionMalformed(session);
                    break 'read;
                }
            }
        }
    }
    // The core must learn about the close; wait for room rather than drop it.
    let closed = inputs.clone();
    let _ =
        tokio::task::spawn_blocking(move || closed.send(CoreInput::Round(closing)).is_ok()).await;
    let _ = write.await;
}
