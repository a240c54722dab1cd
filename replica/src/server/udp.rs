//! The receiving half of both transports: an ordinary UDP socket read by
//! a thread of its own, which queues each datagram for the core.

use super::ReceiveDrops;
use super::core::CoreInput;
use crate::round::Input;
use crate::wire::{MessageKind, peek_kind_and_count};
use rand::{Rng, SeedableRng};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Requested size of the replication socket's receive buffer: room for a
/// full flow-control window of datagrams and then some.
const RECEIVE_BUFFER_BYTES: usize = 4 << 20;
/// How often the receiving thread looks at the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a loss drill logs what it dropped so far.
const DRILL_REPORT_EVERY: Duration = Duration::from_millis(250);

/// What a loss drill dropped, by datagram kind: datagrams and the records
/// they carried (as their headers claim), so a run can tell which losses
/// cost what.
#[derive(Default)]
struct DrillTally {
    datagrams: [u64; MessageKind::ALL.len()],
    records: [u64; MessageKind::ALL.len()],
    unknown: u64,
    changed: bool,
}

impl DrillTally {
    fn count(&mut self, bytes: &[u8]) {
        self.changed = true;
        let Some((kind, count)) = peek_kind_and_count(bytes) else {
            self.unknown += 1;
            return;
        };
        if let Some(index) = MessageKind::ALL.iter().position(|&k| k == kind) {
            self.datagrams[index] += 1;
            self.records[index] += u64::from(count);
        }
    }

    /// One log line: `append=12/104` is 12 datagrams carrying 104 records.
    fn report(&mut self) {
        if !self.changed {
            return;
        }
        self.changed = false;
        let kinds: Vec<String> = MessageKind::ALL
            .iter()
            .zip(self.datagrams.iter().zip(&self.records))
            .filter(|(_, (datagrams, _))| **datagrams > 0)
            .map(|(kind, (datagrams, records))| format!("{}={datagrams}/{records}", kind.name()))
            .collect();
        tracing::info!(
            dropped = %kinds.join(" "),
            unknown = self.unknown,
            "loss drill: datagrams/records dropped so far, by kind"
        );
    }
}

/// Prepares the replication socket: a read timeout (so the thread can
/// stop) and a large receive buffer (the kernel caps it at rmem_max).
pub(super) fn prepare_socket(socket: &UdpSocket) -> std::io::Result<()> {
    socket.set_read_timeout(Some(READ_TIMEOUT))?;
    let socket = socket2::SockRef::from(socket);
    match socket
        .set_recv_buffer_size(RECEIVE_BUFFER_BYTES)
        .and_then(|()| socket.recv_buffer_size())
    {
        // Linux reports twice what it grants (bookkeeping included).
        Ok(granted) if granted < RECEIVE_BUFFER_BYTES => tracing::warn!(
            granted,
            wanted = RECEIVE_BUFFER_BYTES,
            "the UDP receive buffer is smaller than wanted (raise net.core.rmem_max); bursts will be repaired by NAKs"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %error, "could not enlarge the UDP receive buffer"),
    }
    Ok(())
}

/// Reads datagrams until `stopping`, dropping `drop_percent` of them at
/// random (a loss drill) and any that find the core's queue full (the
/// sender repairs them like any other loss).
pub(super) fn receive_datagrams(
    socket: &UdpSocket,
    inputs: &SyncSender<CoreInput>,
    stopping: &AtomicBool,
    drop_percent: u8,
    drops: &ReceiveDrops,
) {
    let mut buffer = vec![0u8; crate::wire::PAYLOAD_BYTES_MAX + 1];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rand::random());
    let mut tally = DrillTally::default();
    let mut reported = Instant::now();
    while !stopping.load(Ordering::SeqCst) {
        if drop_percent > 0 && reported.elapsed() >= DRILL_REPORT_EVERY {
            reported = Instant::now();
            tally.report();
        }
        match socket.recv_from(&mut buffer) {
            Ok((length, _)) if drop_percent > 0 && rng.random_range(0..100u8) < drop_percent => {
                drops.injected.fetch_add(1, Ordering::Relaxed);
                tally.count(&buffer[..length]);
            }
            Ok((length, _)) => {
                let input = CoreInput::Round(Input::Datagram(buffer[..length].to_vec()));
                match inputs.try_send(input) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        drops.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tally.report();
}
