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
//! A new window starts at its minimum and, until it first shrinks, grows
//! by all that was acknowledged (doubling each round trip, as TCP's slow
//! start does): starting at the maximum, a fleet connecting at once put
//! 40,000 events in front of the primary before the first acknowledgement
//! could say the queue was long, and a saturated run's acknowledgements
//! waited 340-590 ms at p99 while the windows shrank (63-70 ms from the
//! minimum, at the same throughput).
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
    /// When the window last shrank; `None` until it first does, and until
    /// then it grows by all that was acknowledged (slow start).
    shrunk_at_ms: Option<u64>,
}

impl Default for InFlightWindow {
    fn default() -> InFlightWindow {
        InFlightWindow {
            events: IN_FLIGHT_EVENTS_MIN,
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
            let growth = match self.shrunk_at_ms {
                None => newly,
                Some(_) => newly / 4,
            };
            self.events = (self.events + growth.max(1)).min(IN_FLIGHT_EVENTS_MAX);
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

    /// A window grown to its maximum by prompt acknowledgements; returns
    /// the last seq sent.
    fn grown(window: &mut InFlightWindow) -> u64 {
        let mut sent = 0;
        for round in 0..100 {
            sent = send(window, sent, 2, 128, round * 10);
            window.on_acked(sent, 256, round * 10 + 5);
        }
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX);
        sent
    }

    #[test]
    fn a_new_window_starts_at_its_minimum_and_doubles_until_it_first_shrinks() {
        let mut window = InFlightWindow::default();
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MIN);
        let sent = send(&mut window, 0, 2, 128, 0);
        window.on_acked(sent, 256, ACK_DELAY_TARGET_MS);
        assert_eq!(window.events(), 2 * IN_FLIGHT_EVENTS_MIN);
        // A slow acknowledgement ends the slow start.
        let sent = send(&mut window, sent, 4, 128, 100);
        window.on_acked(sent, 512, 100 + ACK_DELAY_TARGET_MS + 1);
        assert_eq!(window.events(), 2 * IN_FLIGHT_EVENTS_MIN * 3 / 4);
        let sent = send(&mut window, sent, 2, 128, 200);
        window.on_acked(sent, 256, 210);
        assert_eq!(window.events(), 2 * IN_FLIGHT_EVENTS_MIN * 3 / 4 + 64);
    }

    #[test]
    fn slow_acknowledgements_shrink_the_window_once_per_target_period() {
        let mut window = InFlightWindow::default();
        let sent = grown(&mut window);
        let sent = send(&mut window, sent, 16, 128, 2_000);
        let first = sent - 16 * 128;
        window.on_acked(first + 128, 128, 2_500);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 3 / 4);
        // The same queue, acknowledged again within the target period.
        window.on_acked(first + 256, 128, 2_510);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 3 / 4);
        window.on_acked(sent, sent - first - 256, 2_500 + ACK_DELAY_TARGET_MS);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX * 9 / 16);
        for round in 1..100 {
            let from = sent + round * 128;
            window.on_sent(from, 10_000 * round + 2_500);
            window.on_acked(from, 128, 10_000 * round + 3_500);
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
        let start = grown(&mut window);
        send(&mut window, start, 2, 128, 2_000);
        // A resend of the first batch, much later, is not a new sample.
        window.on_sent(start + 128, 2_900);
        // An ack short of the first batch's end says nothing.
        window.on_acked(start + 100, 100, 3_000);
        assert_eq!(window.events(), IN_FLIGHT_EVENTS_MAX);
        window.on_acked(start + 128, 28, 3_000);
        assert!(window.events() < IN_FLIGHT_EVENTS_MAX);
        window.forget_sent();
        let before = window.events();
        window.on_acked(start + 256, 128, 4_000);
        assert_eq!(window.events(), before);
    }
}
