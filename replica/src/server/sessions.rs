//! Machine connections: an accept loop that admits within the caps, and
//! one task per session that splits the byte stream into frames for the
//! core, writes the core's frames back, and closes the connection at its
//! deadlines.

use super::SessionWriter;
use super::core::CoreInput;
use crate::ingest::SessionId;
use crate::round::Input;
use bytes::{Bytes, BytesMut};
use dashboard::admission::{Admission, AdmissionLimits, Slot};
use futures_util::{SinkExt, StreamExt};
use ledger::keys::Keyring;
use link::codec::{frame_codec, is_oversized_frame};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames queued for one machine connection; a slower machine is cut off.
pub const SESSION_WRITE_QUEUE_FRAMES: usize = 1_024;
/// A connection must authenticate (its first sealed frame opened by the
/// core, see `IngestAction::Authenticated`) within this of being accepted,
/// or it is closed. A machine gives up on a handshake after
/// `link::uplink::CONNECT_TIMEOUT_MS` and sends a sealed frame as soon as
/// it is welcomed, so this only ends connections no machine waits on.
pub const MACHINE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Every frame must be whole within this of the previous one (of the
/// connection's start, for the first). Machines ping every second, so a
/// live session never comes near it, idle or not; and since the deadline
/// is set when a frame ends, bytes trickling in cannot move it: a partial
/// frame is held at most this long.
pub const SESSION_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A session's read and write buffers start this small. Most of a fleet's
/// connections are idle (a ping a second, an acknowledgement now and then:
/// frames of tens of bytes), and tokio-util's default of 8 KiB each was
/// most of what an idle connection cost the replica (see BENCHMARKS.md,
/// "10,000 machines, stop 20"). A larger frame grows its buffer as needed.
pub const SESSION_BUFFER_BYTES_INITIAL: usize = 512;
/// A buffer grown beyond this by a large frame (a machine resending its
/// backlog) is given back once it is empty, so a connection that goes idle
/// after a burst returns to the small size instead of keeping its largest
/// frame's buffer for as long as it stays connected.
pub const SESSION_BUFFER_BYTES_KEPT_MAX: usize = 16 * 1024;

/// Accepts machine connections until `stopped`, within `limits`: at most
/// `connections_max` at once, of which at most `exposed_max` have not
/// authenticated. Admission never waits (see `dashboard::admission`): at
/// the cap the oldest connection still in its handshake is closed for the
/// newcomer, and only when every one is an authenticated machine is the
/// newcomer refused.
pub(super) async fn accept_machines(
    listener: tokio::net::TcpListener,
    inputs: SyncSender<CoreInput>,
    limits: AdmissionLimits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let next_session = AtomicU64::new(1);
    let admission = Admission::new("machine", limits);
    loop {
        let stream = tokio::select! {
            () = super::until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    admission.accept_failed(&error).await;
                    continue;
                }
            },
        };
        let Some(slot) = admission.admit() else {
            continue; // Refused: closed at once.
        };
        let session = next_session.fetch_add(1, Ordering::Relaxed);
        let inputs = inputs.clone();
        tokio::spawn(serve_session(stream, session, inputs, slot));
    }
}

async fn serve_session(
    stream: tokio::net::TcpStream,
    session: SessionId,
    inputs: SyncSender<CoreInput>,
    slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (frames, mut outgoing): (SessionWriter, _) =
        tokio::sync::mpsc::channel::<Vec<u8>>(SESSION_WRITE_QUEUE_FRAMES);
    let (authenticated, heard) = tokio::sync::oneshot::channel();
    if inputs
        .try_send(CoreInput::SessionOpened {
            session,
            writer: frames,
            authenticated,
        })
        .is_err()
    {
        return;
    }
    let write = tokio::spawn(async move {
        let mut writer =
            FramedWrite::with_capacity(writer, frame_codec(), SESSION_BUFFER_BYTES_INITIAL);
        while let Some(payload) = outgoing.recv().await {
            if writer.send(Bytes::from(payload)).await.is_err() {
                return;
            }
            // `send` flushed, so the buffer is empty unless the socket is
            // still taking it.
            shrink_when_empty(writer.write_buffer_mut());
        }
        // Flushes what is queued, then shuts the write side down.
        let _ = SinkExt::<Bytes>::close(&mut writer).await;
    });
    let closing = read_frames(reader, session, &inputs, &slot, heard).await;
    drop(slot);
    // The core must learn about the close; wait for room rather than drop it.
    let closed = inputs.clone();
    let _ =
        tokio::task::spawn_blocking(move || closed.send(CoreInput::Round(closing)).is_ok()).await;
    let _ = write.await;
}

/// Hands the session's frames to the core until the connection ends, a
/// deadline passes or the slot is evicted; returns how the core is told.
async fn read_frames(
    reader: tokio::net::tcp::OwnedReadHalf,
    session: SessionId,
    inputs: &SyncSender<CoreInput>,
    slot: &Slot,
    heard: tokio::sync::oneshot::Receiver<()>,
) -> Input<Keyring> {
    let mut reader = FramedRead::with_capacity(reader, frame_codec(), SESSION_BUFFER_BYTES_INITIAL);
    let handshake_deadline = Instant::now() + MACHINE_HANDSHAKE_TIMEOUT;
    let mut frame_deadline = Instant::now() + SESSION_FRAME_TIMEOUT;
    let mut heard = Some(heard);
    let mut authenticated = false;
    loop {
        tokio::select! {
            () = slot.evicted() => {
                tracing::debug!(session, "a connection in its handshake gave way to a newer one");
                return Input::SessionClosed(session);
            }
            () = tokio::time::sleep_until(handshake_deadline), if !authenticated => {
                tracing::debug!(session, "a machine connection did not authenticate in time");
                return Input::SessionClosed(session);
            }
            // The core says so once, or drops the sender when it closes
            // the session (then the deadline or the close ends it).
            result = async { heard.as_mut().expect("polled only while set").await }, if heard.is_some() => {
                heard = None;
                authenticated = result.is_ok() && slot.protect();
            }
            frame = tokio::time::timeout_at(frame_deadline, reader.next()) => {
                let payload = match frame {
                    Ok(Some(Ok(payload))) => payload.to_vec(),
                    Ok(Some(Err(error))) if is_oversized_frame(&error) => {
                        return Input::SessionMalformed(session);
                    }
                    Ok(Some(Err(_)) | None) => return Input::SessionClosed(session),
                    Err(_) => {
                        tracing::debug!(session, "a machine frame was not whole in time");
                        return Input::SessionClosed(session);
                    }
                };
                frame_deadline = Instant::now() + SESSION_FRAME_TIMEOUT;
                shrink_when_empty(reader.read_buffer_mut());
                let frame = CoreInput::Round(Input::SessionFrame { session, payload });
                if inputs.try_send(frame).is_err() {
                    return Input::SessionClosed(session);
                }
            }
        }
    }
}

/// Gives back a session buffer that a large frame grew, once nothing is
/// left in it (see [`SESSION_BUFFER_BYTES_KEPT_MAX`]).
fn shrink_when_empty(buffer: &mut BytesMut) {
    if buffer.is_empty() && buffer.capacity() > SESSION_BUFFER_BYTES_KEPT_MAX {
        *buffer = BytesMut::with_capacity(SESSION_BUFFER_BYTES_INITIAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_grown_by_a_large_frame_is_given_back_and_a_busy_one_kept() {
        let mut grown = BytesMut::with_capacity(SESSION_BUFFER_BYTES_KEPT_MAX * 4);
        shrink_when_empty(&mut grown);
        assert_eq!(grown.capacity(), SESSION_BUFFER_BYTES_INITIAL);

        let mut busy = BytesMut::with_capacity(SESSION_BUFFER_BYTES_KEPT_MAX * 4);
        busy.extend_from_slice(b"part of the next frame");
        shrink_when_empty(&mut busy);
        assert!(busy.capacity() >= SESSION_BUFFER_BYTES_KEPT_MAX * 4);
        assert_eq!(&busy[..], b"part of the next frame");

        let mut small = BytesMut::with_capacity(SESSION_BUFFER_BYTES_KEPT_MAX);
        shrink_when_empty(&mut small);
        assert_eq!(small.capacity(), SESSION_BUFFER_BYTES_KEPT_MAX);
    }
}
