//! The primary's side of the machine link, without I/O: handshakes, event
//! submissions grouped for one commit, and acknowledgements of what is
//! committed — never of anything less.
//!
//! The shell moves bytes: it hands every frame payload to [`Ingest`] and
//! executes the [`IngestAction`]s it returns. Between loop iterations it
//! takes the accumulated submissions with [`Ingest::take_proposal`] and
//! proposes them to the node as one group commit.
//!
//! It also carries operators' commands to machines: a committed command
//! goes to its machine's authenticated session at once ([`Ingest::remote`]),
//! and a session that authenticates is sent every committed command still
//! pending for its machine, in id order. And it remembers when each machine
//! was last heard and how far its own ledger reached, as it said in its
//! last `Ping`.

use ledger::MachineId;
use ledger::crypto::{NONCE_BYTES, SecretKey};
use ledger::rules::RemoteCommand;
use ledger::store::record::SignedEvent;
use ledger::store::{APPEND_BATCH_MAX, Appended, EventRejection};
use link::channel::{
    Channel, Downstream, Hello, HelloReply, LINK_VERSION, LINK_VERSION_MIN, LinkError, Refusal,
    RefusalReason, SUBMIT_EVENTS_MAX, Side, Upstream, UpstreamV1, decode_plain, encode_plain,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub type SessionId = u64;

/// Most sessions served at once; more connections are refused.
pub const SESSIONS_MAX: usize = 12_288;
/// Most events waiting for the next group commit; a session submitting
/// beyond that is asked to resend later.
pub const PENDING_EVENTS_MAX: usize = APPEND_BATCH_MAX / 2;
/// Most pending commands sent to a machine when its session authenticates
/// (the primary refuses to queue more than this for one machine, see
/// `crate::operators::COMMANDS_PENDING_MAX`, so all of them fit).
pub const COMMANDS_PER_SESSION_MAX: usize = 64;

/// Marks of appended events a session keeps for its acknowledgements
/// (`SessionState::Open::appended`): a machine has at most 2,048 events in
/// flight and submits up to 128 at a time, so this is never reached in
/// practice, and reaching it only delays an acknowledgement.
pub const APPENDED_MARKS_MAX: usize = 1_024;
/// Machines whose last contact is remembered; beyond it the one heard
/// from longest ago is forgotten.
pub const MACHINES_SEEN_MAX: usize = 65_536;
/// The link keys of provisioned machines.
pub trait LinkKeys {
    fn link_key(&self, machine: &MachineId) -> Option<SecretKey>;
}

impl LinkKeys for ledger::keys::Keyring {
    fn link_key(&self, machine: &MachineId) -> Option<SecretKey> {
        ledger::keys::Keyring::link_key(self, machine)
    }
}

/// What the log says about machines' streams and the commands for them.
pub trait MachineIndex {
    /// The last logged (seq, gseq) of `machine`, (0, 0) if none.
    fn machine_head(&self, machine: &MachineId) -> (u64, u64);
    fn gseq_of(&self, machine: &MachineId, seq: u64) -> Option<u64>;
    /// Commands for `machine` requested at or below `commit_gseq` that it
    /// has not applied yet, in id order, at most `max`.
    fn pending_commands(
        &self,
        machine: &MachineId,
        commit_gseq: u64,
        max: usize,
    ) -> Vec<RemoteCommand>;
}

/// The highest seq of `machine` whose entry is at or below `commit`,
/// given a seq `known` to be committed already (0 for none).
///
/// A machine's entries are logged in seq order, so their gseqs increase
/// with seq: a binary search over the stream between `known` and the head
/// finds the mark in about 20 index reads at most (a commit acknowledges
/// from the sessions' marks instead, see [`Ingest::on_commit`]). A seq
/// missing from the index counts as uncommitted, which can only delay an
/// ack.
pub fn committed_seq(
    index: &dyn MachineIndex,
    machine: &MachineId,
    commit: u64,
    known: u64,
) -> u64 {
    let (head_seq, head_gseq) = index.machine_head(machine);
    if head_gseq <= commit {
        return head_seq;
    }
    // Invariant: `low` is committed (0 stands for none), `high` is not.
    let (mut low, mut high) = (known.min(head_seq), head_seq);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        match index.gseq_of(machine, middle) {
            Some(gseq) if gseq <= commit => low = middle,
            _ => high = middle,
        }
    }
    low
}

/// Whether `session` has events queued for the next proposal.
fn pending_from(pending: &[Submission], session: SessionId) -> bool {
    pending.iter().any(|s| s.session == session)
}

/// The highest seq among a session's marks at or below `commit`, which
/// leave the marks: a machine's entries are logged in seq order, so an
/// entry at or below the commit has every earlier one of its machine
/// committed with it. `None` when no mark has been committed yet (events
/// of the machine's earlier sessions are then acknowledged by the next
/// mark, or when its head is committed).
fn committed_mark(appended: &mut VecDeque<(u64, u64)>, commit: u64) -> Option<u64> {
    let mut committed = None;
    while let Some(&(gseq, seq)) = appended.front() {
        if gseq > commit {
            break;
        }
        committed = committed.max(Some(seq));
        appended.pop_front();
    }
    committed
}

/// A machine's batch of events waiting for the next proposal, with each
/// event's seq.
struct Submission {
    session: SessionId,
    events: Vec<SignedEvent>,
    seqs: Vec<u64>,
}

/// Where an event of a proposal came from: its session and its seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub session: SessionId,
    pub seq: u64,
}

/// Where the node stands, as the link needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub accepts_writes: bool,
    pub epoch: u64,
    pub commit_gseq: u64,
    /// The primary's machine address, when another replica is primary.
    pub primary_address: Option<String>,
    /// The replica's wall clock (ms since the Unix epoch), for when a
    /// machine was last heard.
    pub wall_ms: i64,
}

/// What this replica last heard from a machine over its link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSeen {
    /// When a sealed frame from it last opened (the replica's wall clock).
    pub last_seen_ms: i64,
    /// The highest machine_seq in its own ledger, as its last `Ping` said
    /// (machines of link version 1 do not say).
    pub local_tip: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestAction {
    /// Send this frame payload on the session.
    Send {
        session: SessionId,
        payload: Vec<u8>,
    },
    /// Close the session (after sending what was queued). `handshake`:
    /// the machine never proved its key (unknown machine, other link
    /// version, wrong key), which its operator needs to hear about.
    Close {
        session: SessionId,
        reason: String,
        handshake: bool,
    },
    /// A machine without a key knocked: the key directory may need a
    /// reload (a machine provisioned after the replica started).
    UnknownMachine(MachineId),
    /// The session's first sealed frame opened: the peer holds the
    /// machine's link key. Until then a connection proves nothing (a
    /// `Hello` is plain text and machine ids are no secret), so the shell
    /// keeps it in the small pool of connections still in their handshake.
    Authenticated { session: SessionId },
}

enum SessionState {
    AwaitingHello,
    Open {
        machine: MachineId,
        channel: Box<Channel>,
        /// The link version the machine speaks (its `Hello`'s).
        version: u8,
        /// The committed mark last told to the machine.
        acked: u64,
        /// Whether a sealed frame from the machine has opened yet.
        authenticated: bool,
        /// Where this session's events went, oldest first: the (gseq,
        /// seq) of its last event in each proposal, so a commit finds the
        /// machine's committed mark without reading the log's index. At
        /// most `APPENDED_MARKS_MAX`; the oldest go first, which only makes
        /// an acknowledgement wait for a later mark.
        appended: VecDeque<(u64, u64)>,
    },
    Closing,
}

/// Counters for the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestCounters {
    pub sessions_opened: u64,
    pub frames_rejected: u64,
    pub events_submitted: u64,
    pub events_duplicate: u64,
    pub events_rejected: u64,
    pub redirects: u64,
    /// Operators' commands sent to machines (a command may be sent again
    /// on a later session until the machine applies it).
    pub commands_sent: u64,
    /// Sessions of machines that speak an older link version.
    pub sessions_old_version: u64,
}

/// The sealed frame that sends a machine on to the primary.
fn redirect(
    counters: &mut IngestCounters,
    channel: &mut Channel,
    primary: &Option<String>,
) -> Vec<u8> {
    counters.redirects += 1;
    channel.seal(&Downstream::Redirect {
        primary: primary.clone(),
    })
}

pub struct Ingest {
    /// Ordered, so what the sessions are sent does not depend on hashing
    /// (the simulation replays a seed exactly).
    sessions: BTreeMap<SessionId, SessionState>,
    /// Sessions that may have committed events they were not told of yet:
    /// those that submitted since their last acknowledgement. A commit
    /// looks at these only, not at every connected machine (10,000 idle
    /// sessions made each commit walk them all).
    awaiting: BTreeSet<SessionId>,
    /// Submissions since the last proposal, oldest first.
    pending: Vec<Submission>,
    pending_events: usize,
    /// When each machine was last heard, and its reported tip.
    seen: BTreeMap<MachineId, LinkSeen>,
    counters: IngestCounters,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest::new()
    }
}

impl Ingest {
    pub fn new() -> Ingest {
        Ingest {
            sessions: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            pending: Vec::new(),
            pending_events: 0,
            seen: BTreeMap::new(),
            counters: IngestCounters::default(),
        }
    }

    /// Marks of appended events held over all sessions, for tests.
    #[cfg(test)]
    fn marks_held(&self) -> usize {
        self.sessions
            .values()
            .map(|state| match state {
                SessionState::Open { appended, .. } => appended.len(),
                _ => 0,
            })
            .sum()
    }

    /// What this replica last heard from `machine` over its link, if it
    /// has since it started.
    pub fn seen(&self, machine: &MachineId) -> Option<LinkSeen> {
        self.seen.get(machine).copied()
    }

    /// A sealed frame from `machine` opened at `wall_ms`; a `Ping` also
    /// said how far its ledger reaches.
    fn heard(&mut self, machine: &MachineId, wall_ms: i64, local_tip: Option<u64>) {
        if !self.seen.contains_key(machine) && self.seen.len() >= MACHINES_SEEN_MAX {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, seen)| seen.last_seen_ms)
                .map(|(machine, _)| machine.clone());
            if let Some(oldest) = oldest {
                self.seen.remove(&oldest);
            }
        }
        let seen = self.seen.entry(machine.clone()).or_default();
        seen.last_seen_ms = seen.last_seen_ms.max(wall_ms);
        if local_tip.is_some() {
            seen.local_tip = local_tip;
        }
    }

    pub fn counters(&self) -> &IngestCounters {
        &self.counters
    }

    /// Machines with an open session.
    pub fn connected_machines(&self) -> Vec<MachineId> {
        let mut machines: Vec<MachineId> = self
            .sessions
            .values()
            .filter_map(|s| match s {
                SessionState::Open { machine, .. } => Some(machine.clone()),
                _ => None,
            })
            .collect();
        machines.sort();
        machines.dedup();
        machines
    }

    /// A connection arrived. `false` when it must be refused (too many).
    pub fn accept(&mut self, session: SessionId) -> bool {
        if self.sessions.len() >= SESSIONS_MAX {
            return false;
        }
        self.sessions.insert(session, SessionState::AwaitingHello);
        true
    }

    /// The shell refused a frame before it could be parsed (an oversized
    /// length prefix); counted with the other rejected frames.
    pub fn frame_refused(&mut self) {
        self.counters.frames_rejected += 1;
    }

    pub fn disconnected(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        self.pending.retain(|s| s.session != session);
        self.pending_events = self.pending.iter().map(|s| s.events.len()).sum();
    }

    /// A frame payload arrived on `session`.
    pub fn on_frame(
        &mut self,
        session: SessionId,
        payload: &[u8],
        server_nonce: [u8; NONCE_BYTES],
        keys: &dyn LinkKeys,
        standing: &Standing,
        index: &dyn MachineIndex,
    ) -> Vec<IngestAction> {
        let mut out = Vec::new();
        let handshake = matches!(
            self.sessions.get(&session),
            Some(
                SessionState::AwaitingHello
                    | SessionState::Open {
                        authenticated: false,
                        ..
                    }
            )
        );
        let result = match self.sessions.get(&session) {
            Some(SessionState::AwaitingHello) => self.on_hello(
                &mut out,
                session,
                payload,
                server_nonce,
                keys,
                standing,
                index,
            ),
            Some(SessionState::Open { .. }) => {
                self.on_sealed(&mut out, session, payload, standing, index)
            }
            Some(SessionState::Closing) | None => Ok(()),
        };
        if let Err(error) = result {
            self.counters.frames_rejected += 1;
            self.close(&mut out, session, error.to_string());
            if let Some(IngestAction::Close { handshake: h, .. }) = out.last_mut() {
                *h = handshake;
            }
        }
        out
    }

    fn close(&mut self, out: &mut Vec<IngestAction>, session: SessionId, reason: String) {
        self.sessions.insert(session, SessionState::Closing);
        self.pending.retain(|s| s.session != session);
        self.pending_events = self.pending.iter().map(|s| s.events.len()).sum();
        out.push(IngestAction::Close {
            session,
            reason,
            handshake: false,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        out: &mut Vec<IngestAction>,
        session: SessionId,
        payload: &[u8],
        server_nonce: [u8; NONCE_BYTES],
        keys: &dyn LinkKeys,
        standing: &Standing,
        index: &dyn MachineIndex,
    ) -> Result<(), LinkError> {
        let hello: Hello = decode_plain(payload)?;
        // A refusal tells the machine's people why before the session
        // closes (in plaintext: there may be no key to seal it with).
        let refuse = |reason| IngestAction::Send {
            session,
            payload: encode_plain(&Refusal::HelloRefused { reason }),
        };
        if !(LINK_VERSION_MIN..=LINK_VERSION).contains(&hello.version) {
            out.push(refuse(RefusalReason::Version {
                supported: LINK_VERSION,
            }));
            return Err(LinkError::Version(hello.version));
        }
        let Some(key) = keys.link_key(&hello.machine_id) else {
            out.push(IngestAction::UnknownMachine(hello.machine_id.clone()));
            out.push(refuse(RefusalReason::UnknownMachine));
            return Err(LinkError::UnknownMachine(hello.machine_id.to_string()));
        };
        out.push(IngestAction::Send {
            session,
            // Answered in the machine's own version, which it checks.
            payload: encode_plain(&HelloReply {
                version: hello.version,
                server_nonce,
            }),
        });
        let mut channel = Box::new(Channel::new(
            &key,
            &hello.machine_id,
            &hello.client_nonce,
            &server_nonce,
            Side::Replica,
        ));
        if !standing.accepts_writes {
            let payload = redirect(&mut self.counters, &mut channel, &standing.primary_address);
            out.push(IngestAction::Send { session, payload });
            self.close(out, session, "not the primary".into());
            return Ok(());
        }
        let acked = committed_seq(index, &hello.machine_id, standing.commit_gseq, 0);
        let payload = channel.seal(&Downstream::Welcome {
            committed_seq: acked,
            epoch: standing.epoch,
        });
        out.push(IngestAction::Send { session, payload });
        self.counters.sessions_opened += 1;
        if hello.version < LINK_VERSION {
            self.counters.sessions_old_version += 1;
        }
        self.sessions.insert(
            session,
            SessionState::Open {
                machine: hello.machine_id,
                channel,
                version: hello.version,
                acked,
                authenticated: false,
                appended: VecDeque::new(),
            },
        );
        Ok(())
    }

    fn on_sealed(
        &mut self,
        out: &mut Vec<IngestAction>,
        session: SessionId,
        payload: &[u8],
        standing: &Standing,
        index: &dyn MachineIndex,
    ) -> Result<(), LinkError> {
        let Some(SessionState::Open {
            machine,
            channel,
            version,
            acked,
            authenticated,
            ..
        }) = self.sessions.get_mut(&session)
        else {
            return Ok(());
        };
        let message = open_upstream(channel, *version, payload)?;
        let machine = machine.clone();
        let first_frame = !*authenticated;
        if first_frame {
            *authenticated = true;
            out.push(IngestAction::Authenticated { session });
        }
        if !standing.accepts_writes {
            let payload = redirect(&mut self.counters, channel, &standing.primary_address);
            out.push(IngestAction::Send { session, payload });
            self.close(out, session, "no longer the primary".into());
            return Ok(());
        }
        match message {
            Heard::Ping { local_tip } => {
                *acked = committed_seq(index, &machine, standing.commit_gseq, *acked);
                let payload = channel.seal(&Downstream::Ack {
                    committed_seq: *acked,
                });
                out.push(IngestAction::Send { session, payload });
                self.heard(&machine, standing.wall_ms, local_tip);
            }
            Heard::Submit { events } => {
                self.heard(&machine, standing.wall_ms, None);
                self.on_submit(out, session, &machine, events)?;
            }
        }
        if first_frame {
            // The machine proved its key: what was committed for it while
            // it was away (or on a primary that has since died) goes now.
            let pending =
                index.pending_commands(&machine, standing.commit_gseq, COMMANDS_PER_SESSION_MAX);
            self.send_commands(out, session, &pending);
        }
        Ok(())
    }

    /// A machine's batch of events, queued for the next group commit (or
    /// sent back when the group commit is behind).
    fn on_submit(
        &mut self,
        out: &mut Vec<IngestAction>,
        session: SessionId,
        machine: &MachineId,
        events: Vec<SignedEvent>,
    ) -> Result<(), LinkError> {
        if events.is_empty() || events.len() > SUBMIT_EVENTS_MAX {
            return Err(LinkError::Protocol("a submit carries 1 to 128 events"));
        }
        let mut seqs = Vec::with_capacity(events.len());
        for event in &events {
            let envelope = event
                .envelope()
                .map_err(|e| LinkError::Malformed(e.to_string()))?;
            if &envelope.machine_id != machine {
                return Err(LinkError::Protocol("event of another machine"));
            }
            seqs.push(envelope.machine_seq);
        }
        if self.pending_events + events.len() > PENDING_EVENTS_MAX {
            // Group commit is behind; let the machine come back.
            let Some(SessionState::Open { channel, acked, .. }) = self.sessions.get_mut(&session)
            else {
                return Ok(());
            };
            let first = seqs.first().copied().unwrap_or(*acked + 1);
            let payload = channel.seal(&Downstream::Resend {
                resend_from: first,
                reason: "primary busy".into(),
            });
            out.push(IngestAction::Send { session, payload });
            return Ok(());
        }
        self.counters.events_submitted += events.len() as u64;
        self.pending_events += events.len();
        self.pending.push(Submission {
            session,
            events,
            seqs,
        });
        self.awaiting.insert(session);
        Ok(())
    }

    /// Seals `commands` for the session, in order.
    fn send_commands(
        &mut self,
        out: &mut Vec<IngestAction>,
        session: SessionId,
        commands: &[RemoteCommand],
    ) {
        let Some(SessionState::Open { channel, .. }) = self.sessions.get_mut(&session) else {
            return;
        };
        for command in commands {
            let payload = channel.seal(&Downstream::Remote(command.clone()));
            out.push(IngestAction::Send { session, payload });
            self.counters.commands_sent += 1;
        }
    }

    /// Everything submitted since the last call, for one group commit, with
    /// the session each event came from.
    pub fn take_proposal(&mut self) -> Option<(Vec<SignedEvent>, Vec<Origin>)> {
        if self.pending.is_empty() {
            return None;
        }
        let mut events = Vec::with_capacity(self.pending_events);
        let mut origins = Vec::with_capacity(self.pending_events);
        for submission in self.pending.drain(..) {
            let session = submission.session;
            origins.extend(
                submission
                    .seqs
                    .into_iter()
                    .map(|seq| Origin { session, seq }),
            );
            events.extend(submission.events);
        }
        self.pending_events = 0;
        Some((events, origins))
    }

    /// The outcome of appending a proposal: sessions whose events were
    /// refused are told where to resume; forgeries close the session.
    pub fn on_appended(&mut self, results: &[Appended], origins: &[Origin]) -> Vec<IngestAction> {
        let mut out = Vec::new();
        let mut resume: BTreeMap<SessionId, u64> = BTreeMap::new();
        let mut closing: BTreeMap<SessionId, String> = BTreeMap::new();
        // Each session's last logged event of this proposal.
        let mut logged: BTreeMap<SessionId, (u64, u64)> = BTreeMap::new();
        for (result, origin) in results.iter().zip(origins) {
            let session = origin.session;
            match result {
                Appended::New { gseq } => {
                    logged.insert(session, (*gseq, origin.seq));
                    self.awaiting.insert(session);
                }
                Appended::Duplicate { gseq } => {
                    self.counters.events_duplicate += 1;
                    logged.insert(session, (*gseq, origin.seq));
                    self.awaiting.insert(session);
                }
                Appended::Rejected(EventRejection::Gap { expected, .. }) => {
                    self.counters.events_rejected += 1;
                    resume.entry(session).or_insert(*expected);
                }
                Appended::Rejected(other) => {
                    self.counters.events_rejected += 1;
                    closing.entry(session).or_insert_with(|| other.to_string());
                }
            }
        }
        for (session, mark) in logged {
            if let Some(SessionState::Open { appended, .. }) = self.sessions.get_mut(&session) {
                if appended.len() >= APPENDED_MARKS_MAX {
                    appended.pop_front();
                }
                appended.push_back(mark);
            }
        }
        for (session, reason) in closing {
            self.close(&mut out, session, format!("event refused: {reason}"));
            resume.remove(&session);
        }
        for (session, resend_from) in resume {
            if let Some(SessionState::Open { channel, .. }) = self.sessions.get_mut(&session) {
                let payload = channel.seal(&Downstream::Resend {
                    resend_from,
                    reason: "gap in the machine's stream".into(),
                });
                out.push(IngestAction::Send { session, payload });
            }
        }
        out
    }

    /// The commit advanced: acknowledge every session whose machine has
    /// more committed than it was told.
    pub fn on_commit(&mut self, commit_gseq: u64, index: &dyn MachineIndex) -> Vec<IngestAction> {
        let mut out = Vec::new();
        let sessions = &mut self.sessions;
        self.awaiting.retain(|&session| {
            let Some(SessionState::Open {
                machine,
                channel,
                acked,
                appended,
                ..
            }) = sessions.get_mut(&session)
            else {
                return false;
            };
            let (head_seq, head_gseq) = index.machine_head(machine);
            let committed = if head_gseq <= commit_gseq {
                // Every mark is at or below the head: none is needed again.
                appended.clear();
                head_seq
            } else {
                committed_mark(appended, commit_gseq).unwrap_or(*acked)
            };
            if committed > *acked {
                *acked = committed;
                let payload = channel.seal(&Downstream::Ack {
                    committed_seq: committed,
                });
                out.push(IngestAction::Send { session, payload });
            }
            // Still waiting while its machine has appended events beyond
            // the commit, or has events queued for the next proposal.
            committed < head_seq || pending_from(&self.pending, session)
        });
        out
    }

    /// Seals a committed dashboard command for `machine` on its session,
    /// if it has one that authenticated (the newest, when it reconnected
    /// and the old one lingers): a connection that only named the machine
    /// proves nothing, and a command sent there would wait for the
    /// machine's next session.
    pub fn remote(
        &mut self,
        machine: &MachineId,
        command: &RemoteCommand,
    ) -> Option<Vec<IngestAction>> {
        let session = self.sessions.iter().rev().find_map(|(&session, state)| {
            matches!(
                state,
                SessionState::Open { machine: m, authenticated: true, .. } if m == machine
            )
            .then_some(session)
        })?;
        let mut out = Vec::new();
        self.send_commands(&mut out, session, std::slice::from_ref(command));
        Some(out)
    }

    /// This replica stopped being the primary: every machine is sent on.
    pub fn on_demoted(&mut self, primary_address: Option<String>) -> Vec<IngestAction> {
        let mut out = Vec::new();
        let open: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s, SessionState::Open { .. }))
            .map(|(&id, _)| id)
            .collect();
        for session in open {
            if let Some(SessionState::Open { channel, .. }) = self.sessions.get_mut(&session) {
                let payload = redirect(&mut self.counters, channel, &primary_address);
                out.push(IngestAction::Send { session, payload });
            }
            self.close(&mut out, session, "no longer the primary".into());
        }
        out
    }
}

/// What a machine said, whichever link version its session speaks.
enum Heard {
    Submit {
        events: Vec<SignedEvent>,
    },
    /// `local_tip` is `None` from a machine of link version 1.
    Ping {
        local_tip: Option<u64>,
    },
}

/// Opens a machine's sealed frame as the message of its link version.
fn open_upstream(channel: &mut Channel, version: u8, payload: &[u8]) -> Result<Heard, LinkError> {
    Ok(if version == 1 {
        match channel.open::<UpstreamV1>(payload)? {
            UpstreamV1::Submit { events } => Heard::Submit { events },
            UpstreamV1::Ping => Heard::Ping { local_tip: None },
        }
    } else {
        match channel.open::<Upstream>(payload)? {
            Upstream::Submit { events } => Heard::Submit { events },
            Upstream::Ping { local_tip } => Heard::Ping {
                local_tip: Some(local_tip),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One machine whose seqs 1..=n were logged at gseq 3·seq (interleaved
    /// with other machines' entries).
    struct Interleaved(u64);

    impl MachineIndex for Interleaved {
        fn machine_head(&self, _: &MachineId) -> (u64, u64) {
            (self.0, 3 * self.0)
        }
        fn gseq_of(&self, _: &MachineId, seq: u64) -> Option<u64> {
            (1..=self.0).contains(&seq).then_some(3 * seq)
        }
        fn pending_commands(&self, _: &MachineId, _: u64, _: usize) -> Vec<RemoteCommand> {
            Vec::new()
        }
    }

    /// A machine with no events yet, and commands for it, each requested
    /// at gseq 10 · id.
    struct Commanded(Vec<RemoteCommand>);

    impl MachineIndex for Commanded {
        fn machine_head(&self, _: &MachineId) -> (u64, u64) {
            (0, 0)
        }
        fn gseq_of(&self, _: &MachineId, _: u64) -> Option<u64> {
            None
        }
        fn pending_commands(&self, _: &MachineId, commit: u64, max: usize) -> Vec<RemoteCommand> {
            self.0
                .iter()
                .filter(|c| 10 * c.command_id <= commit)
                .take(max)
                .cloned()
                .collect()
        }
    }

    fn standing(commit_gseq: u64) -> Standing {
        Standing {
            accepts_writes: true,
            epoch: 1,
            commit_gseq,
            primary_address: None,
            wall_ms: 1_700_000_000_000,
        }
    }

    /// A machine's end of a session with `ingest`, after the handshake in
    /// link `version`: its channel, and what the ingest answered the hello.
    fn handshake(
        ingest: &mut Ingest,
        version: u8,
        standing: &Standing,
        index: &dyn MachineIndex,
    ) -> (Channel, Vec<IngestAction>) {
        let keys = OneKey(SecretKey::from_bytes([9; 32]));
        let machine = MachineId::numbered(1);
        assert!(ingest.accept(7));
        let (client_nonce, server_nonce) = ([1; NONCE_BYTES], [2; NONCE_BYTES]);
        let hello = encode_plain(&Hello {
            version,
            machine_id: machine.clone(),
            client_nonce,
        });
        let answer = ingest.on_frame(7, &hello, server_nonce, &keys, standing, index);
        let channel = Channel::new(
            &keys.0,
            &machine,
            &client_nonce,
            &server_nonce,
            Side::Machine,
        );
        (channel, answer)
    }

    /// What the machine reads in the frames sent on session 7.
    fn read(channel: &mut Channel, actions: &[IngestAction]) -> Vec<Downstream> {
        actions
            .iter()
            .filter_map(|action| match action {
                IngestAction::Send {
                    session: 7,
                    payload,
                } => Some(channel.open::<Downstream>(payload).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn frame(
        ingest: &mut Ingest,
        payload: &[u8],
        standing: &Standing,
        index: &dyn MachineIndex,
    ) -> Vec<IngestAction> {
        let keys = OneKey(SecretKey::from_bytes([9; 32]));
        ingest.on_frame(7, payload, [2; NONCE_BYTES], &keys, standing, index)
    }

    #[test]
    fn the_committed_mark_is_the_last_seq_at_or_below_the_commit() {
        let machine = MachineId::numbered(1);
        let index = Interleaved(10_000);
        assert_eq!(committed_seq(&index, &machine, 0, 0), 0);
        assert_eq!(committed_seq(&index, &machine, 2, 0), 0);
        assert_eq!(committed_seq(&index, &machine, 3, 0), 1);
        assert_eq!(committed_seq(&index, &machine, 3_001, 0), 1_000);
        assert_eq!(committed_seq(&index, &machine, 29_999, 0), 9_999);
        assert_eq!(committed_seq(&index, &machine, 30_000, 0), 10_000);
        assert_eq!(committed_seq(&index, &machine, u64::MAX, 0), 10_000);
        assert_eq!(committed_seq(&Interleaved(0), &machine, 5, 0), 0);
        // From a seq known to be committed: the same mark.
        assert_eq!(committed_seq(&index, &machine, 29_999, 9_000), 9_999);
        assert_eq!(committed_seq(&index, &machine, 29_999, 9_999), 9_999);
    }

    /// A machine whose head is set by the test, and whose index must not
    /// be read: acknowledgements come from where its events went.
    struct Unread(std::cell::Cell<(u64, u64)>);

    impl MachineIndex for Unread {
        fn machine_head(&self, _: &MachineId) -> (u64, u64) {
            self.0.get()
        }
        fn gseq_of(&self, _: &MachineId, seq: u64) -> Option<u64> {
            panic!("the index was read for seq {seq}")
        }
        fn pending_commands(&self, _: &MachineId, _: u64, _: usize) -> Vec<RemoteCommand> {
            Vec::new()
        }
    }

    #[test]
    fn a_commit_acknowledges_from_where_the_sessions_events_were_appended() {
        let standing = standing(0);
        let index = Unread(std::cell::Cell::new((0, 0)));
        let mut ingest = Ingest::new();
        let (mut channel, welcome) = handshake(&mut ingest, LINK_VERSION, &standing, &index);
        read(&mut channel, &welcome[1..]);
        let mut signer = ledger::StreamSigner::new(
            &SecretKey::from_bytes([9; 32]),
            ledger::store::record::GENESIS_HASH,
        );
        let mut submit =
            |ingest: &mut Ingest, channel: &mut Channel, seqs: std::ops::RangeInclusive<u64>| {
                let events = seqs
                    .map(|machine_seq| {
                        signer.sign(&ledger::event::EventEnvelope {
                            machine_id: MachineId::numbered(1),
                            machine_seq,
                            at_ms: 1_700_000_000_000,
                            event: ledger::event::Event::MoneyInserted {
                                denomination: ledger::money::Denomination::Coin100,
                                destination: ledger::event::Destination::Tube,
                            },
                        })
                    })
                    .collect();
                let payload = channel.seal(&Upstream::Submit { events });
                assert!(frame(ingest, &payload, &standing, &index).len() <= 1);
                ingest.take_proposal().unwrap()
            };
        // Two proposals: seqs 1-3 at gseqs 10-12, seqs 4-5 at 20-21 (one a
        // resend already in the log).
        let (_, origins) = submit(&mut ingest, &mut channel, 1..=3);
        let seqs: Vec<u64> = origins.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let appended = [10, 11, 12].map(|gseq| Appended::New { gseq });
        assert!(ingest.on_appended(&appended, &origins).is_empty());
        let (_, origins) = submit(&mut ingest, &mut channel, 4..=5);
        let appended = [Appended::Duplicate { gseq: 20 }, Appended::New { gseq: 21 }];
        assert!(ingest.on_appended(&appended, &origins).is_empty());
        index.0.set((5, 21));
        let mut acks = |commit: u64| {
            let frames = ingest.on_commit(commit, &index);
            read(&mut channel, &frames)
        };
        assert_eq!(acks(11), [], "seq 3 (gseq 12) is not committed yet");
        assert_eq!(acks(12), [Downstream::Ack { committed_seq: 3 }]);
        assert_eq!(
            acks(20),
            [],
            "gseq 20 is seq 4, but only seq 5's mark is kept"
        );
        assert_eq!(acks(21), [Downstream::Ack { committed_seq: 5 }]);
        assert_eq!(acks(30), [], "told already, and no longer awaited");
        // A commit of the whole head leaves no marks behind (an idle
        // machine's session would otherwise keep one per proposal).
        let (_, origins) = submit(&mut ingest, &mut channel, 6..=6);
        assert!(
            ingest
                .on_appended(&[Appended::New { gseq: 40 }], &origins)
                .is_empty()
        );
        let (_, origins) = submit(&mut ingest, &mut channel, 7..=7);
        assert!(
            ingest
                .on_appended(&[Appended::New { gseq: 41 }], &origins)
                .is_empty()
        );
        index.0.set((7, 41));
        let frames = ingest.on_commit(41, &index);
        assert_eq!(
            read(&mut channel, &frames),
            [Downstream::Ack { committed_seq: 7 }]
        );
        assert_eq!(ingest.marks_held(), 0);
    }

    struct OneKey(SecretKey);

    impl LinkKeys for OneKey {
        fn link_key(&self, machine: &MachineId) -> Option<SecretKey> {
            (*machine == MachineId::numbered(1)).then(|| self.0.clone())
        }
    }

    #[test]
    fn a_session_is_authenticated_by_its_first_sealed_frame_not_by_its_hello() {
        let machine = MachineId::numbered(1);
        let keys = OneKey(SecretKey::from_bytes([9; 32]));
        let standing = standing(0);
        let index = Interleaved(0);
        let mut ingest = Ingest::new();
        assert!(ingest.accept(7));
        let client_nonce = [1; NONCE_BYTES];
        let server_nonce = [2; NONCE_BYTES];
        let hello = encode_plain(&Hello {
            version: LINK_VERSION,
            machine_id: machine.clone(),
            client_nonce,
        });
        let authenticated = |actions: &[IngestAction]| {
            actions
                .iter()
                .filter(|a| matches!(a, IngestAction::Authenticated { session: 7 }))
                .count()
        };
        let answer = ingest.on_frame(7, &hello, server_nonce, &keys, &standing, &index);
        assert_eq!(answer.len(), 2, "the reply and the welcome: {answer:?}");
        assert_eq!(authenticated(&answer), 0, "anyone can name a machine");
        let mut channel = Channel::new(
            &keys.0,
            &machine,
            &client_nonce,
            &server_nonce,
            Side::Machine,
        );
        let ping = channel.seal(&Upstream::Ping { local_tip: 0 });
        let first = ingest.on_frame(7, &ping, server_nonce, &keys, &standing, &index);
        assert_eq!(authenticated(&first), 1);
        let ping = channel.seal(&Upstream::Ping { local_tip: 0 });
        let second = ingest.on_frame(7, &ping, server_nonce, &keys, &standing, &index);
        assert_eq!(authenticated(&second), 0, "said once");
    }

    #[test]
    fn a_ping_says_when_the_machine_was_heard_and_how_far_its_ledger_reaches() {
        let machine = MachineId::numbered(1);
        let mut ingest = Ingest::new();
        let index = Interleaved(0);
        let (mut channel, _) = handshake(&mut ingest, LINK_VERSION, &standing(0), &index);
        assert_eq!(ingest.seen(&machine), None, "a hello proves nothing");
        let ping = channel.seal(&Upstream::Ping { local_tip: 12 });
        frame(&mut ingest, &ping, &standing(0), &index);
        let seen = ingest.seen(&machine).unwrap();
        assert_eq!(seen.local_tip, Some(12));
        assert_eq!(seen.last_seen_ms, standing(0).wall_ms);
        let later = Standing {
            wall_ms: standing(0).wall_ms + 5_000,
            ..standing(0)
        };
        let ping = channel.seal(&Upstream::Ping { local_tip: 15 });
        frame(&mut ingest, &ping, &later, &index);
        let expected = LinkSeen {
            last_seen_ms: later.wall_ms,
            local_tip: Some(15),
        };
        assert_eq!(ingest.seen(&machine), Some(expected));
    }

    #[test]
    fn a_machine_of_link_version_1_is_answered_in_its_version_and_served() {
        let machine = MachineId::numbered(1);
        let mut ingest = Ingest::new();
        let index = Interleaved(0);
        let (mut channel, answer) = handshake(&mut ingest, 1, &standing(0), &index);
        let IngestAction::Send { payload, .. } = &answer[0] else {
            panic!("a reply first: {answer:?}");
        };
        assert_eq!(decode_plain::<HelloReply>(payload).unwrap().version, 1);
        assert!(matches!(
            read(&mut channel, &answer[1..])[..],
            [Downstream::Welcome { .. }]
        ));
        let ping = channel.seal(&UpstreamV1::Ping);
        let answer = frame(&mut ingest, &ping, &standing(0), &index);
        assert_eq!(
            read(&mut channel, &answer),
            [Downstream::Ack { committed_seq: 0 }]
        );
        assert_eq!(ingest.counters().sessions_old_version, 1);
        let seen = ingest.seen(&machine).unwrap();
        assert_eq!(seen.local_tip, None, "version 1 does not report its tip");
    }

    #[test]
    fn a_machine_of_an_unknown_link_version_is_refused_saying_which_is_spoken() {
        let mut ingest = Ingest::new();
        let (_, answer) = handshake(&mut ingest, LINK_VERSION + 1, &standing(0), &Interleaved(0));
        let [
            IngestAction::Send { payload, .. },
            IngestAction::Close { reason, .. },
        ] = &answer[..]
        else {
            panic!("a refusal, then the close: {answer:?}");
        };
        assert!(reason.contains("version"), "{reason}");
        assert_eq!(
            decode_plain::<Refusal>(payload).unwrap(),
            Refusal::HelloRefused {
                reason: RefusalReason::Version {
                    supported: LINK_VERSION
                }
            }
        );
    }

    /// Commands requested while the machine was away reach it once its
    /// session proves the machine's key, in id order, committed ones only;
    /// `remote` sends only to such a session.
    #[test]
    fn committed_commands_go_to_a_session_once_it_authenticates() {
        let machine = MachineId::numbered(1);
        let command = |command_id| RemoteCommand {
            command_id,
            action: ledger::rules::RemoteAction::SettleChangeOwed { ticket: command_id },
        };
        let index = Commanded(vec![command(1), command(2), command(3)]);
        let mut ingest = Ingest::new();
        let (mut channel, answer) = handshake(&mut ingest, LINK_VERSION, &standing(25), &index);
        assert!(matches!(
            read(&mut channel, &answer[1..])[..],
            [Downstream::Welcome { .. }]
        ));
        assert!(
            ingest.remote(&machine, &command(3)).is_none(),
            "not proven yet"
        );
        let ping = channel.seal(&Upstream::Ping { local_tip: 0 });
        let answer = frame(&mut ingest, &ping, &standing(25), &index);
        assert_eq!(
            read(&mut channel, &answer),
            [
                Downstream::Ack { committed_seq: 0 },
                Downstream::Remote(command(1)),
                Downstream::Remote(command(2)),
            ],
            "command 3 is not committed yet"
        );
        let later = ingest.remote(&machine, &command(3)).unwrap();
        assert_eq!(read(&mut channel, &later), [Downstream::Remote(command(3))]);
        assert_eq!(ingest.counters().commands_sent, 3);
        assert!(
            ingest
                .remote(&MachineId::numbered(2), &command(4))
                .is_none()
        );
    }

    /// What closed a session that never proved its key is flagged as a
    /// failed handshake (the replica warns about those, rate-limited);
    /// a later protocol error of an authenticated machine is not.
    #[test]
    fn a_failed_handshake_is_told_apart_from_a_later_error() {
        let keys = OneKey(SecretKey::from_bytes([9; 32]));
        let standing = standing(0);
        let index = Interleaved(0);
        let mut ingest = Ingest::new();
        let handshake_of = |actions: &[IngestAction]| {
            actions.iter().find_map(|a| match a {
                IngestAction::Close { handshake, .. } => Some(*handshake),
                _ => None,
            })
        };
        let hello = |machine: MachineId, client_nonce| {
            encode_plain(&Hello {
                version: LINK_VERSION,
                machine_id: machine,
                client_nonce,
            })
        };
        // A machine the replica has no key for.
        assert!(ingest.accept(1));
        let stranger = hello(MachineId::numbered(2), [1; NONCE_BYTES]);
        let refused = ingest.on_frame(1, &stranger, [2; NONCE_BYTES], &keys, &standing, &index);
        assert_eq!(handshake_of(&refused), Some(true), "{refused:?}");
        // A known machine with the wrong key: its first sealed frame fails.
        assert!(ingest.accept(2));
        let known = hello(MachineId::numbered(1), [3; NONCE_BYTES]);
        ingest.on_frame(2, &known, [4; NONCE_BYTES], &keys, &standing, &index);
        let mut wrong = Channel::new(
            &SecretKey::from_bytes([8; 32]),
            &MachineId::numbered(1),
            &[3; NONCE_BYTES],
            &[4; NONCE_BYTES],
            Side::Machine,
        );
        let ping = wrong.seal(&Upstream::Ping { local_tip: 0 });
        let refused = ingest.on_frame(2, &ping, [4; NONCE_BYTES], &keys, &standing, &index);
        assert_eq!(handshake_of(&refused), Some(true), "{refused:?}");
        // The right key, then garbage: an error, not a handshake.
        assert!(ingest.accept(3));
        ingest.on_frame(3, &known, [5; NONCE_BYTES], &keys, &standing, &index);
        let mut right = Channel::new(
            &keys.0,
            &MachineId::numbered(1),
            &[3; NONCE_BYTES],
            &[5; NONCE_BYTES],
            Side::Machine,
        );
        let ping = right.seal(&Upstream::Ping { local_tip: 0 });
        ingest.on_frame(3, &ping, [5; NONCE_BYTES], &keys, &standing, &index);
        let garbage = ingest.on_frame(3, b"garbage", [5; NONCE_BYTES], &keys, &standing, &index);
        assert_eq!(handshake_of(&garbage), Some(false), "{garbage:?}");
    }
}
