//! How many events a machine keeps in flight: a window that adapts to
//! what the primary commits, so that under saturation the queues in front
//! of the primary stay short while its throughput holds.
//!
//! A fixed window of 2,048 events per machine put ~40,000 events in front
//! of a primary that commits ~100,000 a second: every acknowledgement then
//! waited seconds in queues, although a few thousand in flight over the
//! fleet keep the primary's group commits full. The window follows the
//! acknowledgement delay instead (delay-based AIMD, as TCP Vegas and LEDBAT
//! do): while the newest acknowledged batch came back within
//! [`ACK_DELAY_TARGET_MS`], the window grows by a quarter of what was
//! acknowledged; when it came back later, the window shrinks by a quarter,
//! at most once per target period (one queue is not punished twice).
//! Pure: the uplink passes the clock in.

use std::collections::VecDeque;

/// The window never exceeds this many events (the fixed window of old).
pub const IN_FLIGHT_EVENTS_MAX: u64 = 2_048;
/// Nor falls below this (one full `Submit` and then some, so a machine
/// with a backlog always has a batch on its way).
pub const IN_FLIGHT_EVENTS_MIN: u64 = 256;
/// Acknowledgement delay the window steers towards: above it the window
/// shrinks.
pub const ACK_DELAY_TARGET_MS: u64 = 40;

/// The adaptive in-flight window of one machine's uplink.
#[derive(Debug)]
pub struct InFlightWindow {
    events: u64,
    /// (last seq of a sent batch, when it was sent), oldest first; at most
    /// one entry per event in flight, so never more than
    /// [`IN_FLIGHT_EVENTS_MAX`].
    sent: VecDeque<(u64, u64)>,
    shrunk_at_ms: Option<u64>,
}

impl Default for InFlightWindow {
    fn default() -> InFlightWindow {
        InFlightWindow {
            events: IN_FLIGHT_EVENTS_MAX,
            sent: VecDeque::new(),
            shrunk_at_ms: None,
        }
    }
}

impl InFlightWindow {
    /// Events that may be in flight now.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// A batch ending at `last_seq` was sent at `now_ms`.
    pub fn on_sent(&mut self, last_seq: u64, now_ms: u64) {
        if self.sent.back().is_some_and(|&(seq, _)| seq >= last_seq) {
            // A resend of what is already timed: keep the first send.
            return;
        }
        if self.sent.len() as u64 >= IN_FLIGHT_EVENTS_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back((last_seq, now_ms));
    }

    /// Nothing sent is in flight any more (a new session, or a resend
    /// from an earlier mark): the next sends are timed afresh.
    pub fn forget_sent(&mut self) {
        self.sent.clear();
    }

    /// Everything up to `acked` is committed (`newly` events of it just
    /// now): adapts the window to how long the newest of it took.
    pub fn on_acked(&mut self, acked: u64, newly: u64, now_ms: u64) {
        let mut newest_sent_ms = None;
        while let Some(&(seq, sent_ms)) = self.sent.front() {
            if seq > acked {
                break;
            }
            newest_sent_ms = Some(sent_ms);
            self.sent.pop_front();
        }
        let Some(sent_ms) = newest_sent_ms else {
            return;
        };
        let delay_ms = now_ms.saturating_sub(sent_ms);
        if delay_ms <= ACK_DELAY_TARGET_MS {
            self.events = (self.events + (newly / 4).max(1)).min(IN_FLIGHT_EVENTS_MAX);
        } else if self
            .shrunk_at_ms
            .is_none_or(|at| now_ms >= at + ACK_DELAY_TARGET_MS)
        {
            self.events = (self.events - self.events / 4).max(IN_FLIGHT_EVENTS_MIN);
            self.shrunk_at_ms = Some(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `batches` batches of `size` at `at_ms`, starting after `from`.
    fn send(window: &mut InFlightWindow, from: u64, batches: u64, size: u64, at_ms: u64) -> u64 {
        for batch in 1..=batches {
            window.on_sent(from + batch * size, at_ms);
        }
        from + batches * size
    }

    #[test]
    fn slow_acknowledgements_shrink_the_window_once_per_target_period() {
        let mut window = InFlightWindow::default();
        let sent = send(&mut window, 0, 16, 128, 0);
        window.on_acked(128, 128, 500);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 3 / 4);
        // The same queue, acknowledged again within the target period.
        window.on_acked(256, 128, 510);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 3 / 4);
        window.on_acked(sent, sent - 256, 500 + ACK_DELAY_TARGET_MS);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 9 / 16);
        for round in 1..100 {
            let from = sent + round * 128;
            window.on_sent(from, 10_000 * round);
            window.on_acked(from, 128, 10_000 * round + 1_000);
        }
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MIN);
    }

    #[test]
    fn prompt_acknowledgements_grow_the_window_back_to_its_maximum() {
        let mut window = InFlightWindow::default();
        let mut sent = send(&mut window, 0, 1, 128, 0);
        window.on_acked(sent, 128, 1_000);
        let shrunk = window.events();
        assert!(shrunk < IN_FLIGHT_EVENTS_MAX);
        let mut now_ms = 2_000;
        sent = send(&mut window, sent, 4, 128, now_ms);
        now_ms += ACK_DELAY_TARGET_MS;
        window.on_acked(sent, 512, now_ms);
        assert_eq!(window.events(), shrunk + 128);
        for _ in 0..100 {
            sent = send(&mut window, sent, 4, 128, now_ms);
            now_ms += 5;
            window.on_acked(sent, 512, now_ms);
        }
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX);
    }

    #[test]
    fn only_acknowledged_batches_count_and_resends_keep_their_first_time() {
        let mut window = InFlightWindow::default();
        send(&mut window, 0, 2, 128, 0);
        // A resend of the first batch, much later, is not a new sample.
        window.on_sent(128, 900);
        // An ack short of the first batch's end says nothing.
        window.on_acked(100, 100, 1_000);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX);
        window.on_acked(128, 28, 1_000);
        assert!(window.events() < IN_FLIGHT_EVENTS_MAX);
        window.forget_sent();
        let before = window.events();
        window.on_acked(256, 128, 2_000);
        assert_eq!(window.events(), before);
    }
}
