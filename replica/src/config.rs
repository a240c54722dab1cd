//! A replica's configuration: one TOML file per replica. Every field is
//! documented here and in `docs/replica.example.toml`.

use crate::node::{Member, NodeConfig};
use crate::transport::TransportKind;
use crate::wire::{NodeId, PAYLOAD_BYTES_DEFAULT, PAYLOAD_BYTES_MAX, PAYLOAD_BYTES_MIN};
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Shared by the replicas of one cluster; datagrams of other clusters
    /// are refused.
    pub cluster_id: u32,
    /// This replica's number in the cluster (1 to 3), unique.
    pub id: NodeId,
    /// A readable name, used in logs, status and epoch markers ("replica-1").
    pub name: String,
    /// 2: the preferred primary; 1: may take over (the backup); 0: votes but
    /// never stands (the sync replica).
    pub priority: u8,
    /// Where this replica keeps its RocksDB log (`data_dir/log`).
    pub data_dir: PathBuf,
    /// Key directory: `store.key` (this replica's at-rest key),
    /// `cluster.key` (shared by the cluster) and `machines/*.key`.
    pub keys_dir: PathBuf,
    /// TCP address machines connect to.
    pub machine_listen: SocketAddrV4,
    /// UDP address replication datagrams are received on (both transports).
    pub replication_listen: SocketAddrV4,
    /// HTTP address of the status API and dashboard.
    pub status_listen: SocketAddrV4,
    /// `udp` (an ordinary socket) or `raw` (IPv4 and UDP headers built by
    /// us, sent on a raw socket; needs CAP_NET_RAW).
    #[serde(default = "default_transport")]
    pub transport: TransportKind,
    /// Raw transport: the source address written into every IP header
    /// (default: `replication_listen`, which then must not be 0.0.0.0).
    #[serde(default)]
    pub raw_source: Option<SocketAddrV4>,
    /// Send datagrams meant for every peer once, to this broadcast address,
    /// instead of once per peer (peers must listen on its port).
    #[serde(default)]
    pub broadcast: Option<SocketAddrV4>,
    /// Largest datagram payload (1,400 to 60,000 bytes). A replica sends
    /// smaller ones where the path MTU to its peers is smaller (1,472 on
    /// Ethernet), never below 1,400.
    #[serde(default = "default_payload_bytes")]
    pub payload_bytes_max: usize,
    /// How often the primary sends heartbeats (50 to 100 ms is right).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Election timeouts are drawn from this range; keep it well under a
    /// second so the backup takes over within one.
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Wait before the first NAK of a hole (0, the default: at once, as
    /// Aeron asks over unicast). Each hole is asked again when a later
    /// NAK was answered first, or after the repair round trip, backing off
    /// up to `nak_backoff_max_ms`.
    #[serde(default = "default_nak_delay_ms")]
    pub nak_delay_ms: u64,
    #[serde(default = "default_nak_backoff_max_ms")]
    pub nak_backoff_max_ms: u64,
    /// Fault injection for loss drills and benchmarks: drop this share (0
    /// to 50 percent) of received replication datagrams at random, before
    /// they are decoded, as a lossy network would. Counted in the status
    /// as `injected_loss`. Keep it 0 in production.
    #[serde(default)]
    pub drop_received_percent: u8,
    /// RocksDB's write buffer per column family, in MiB (1 to 1024). Its
    /// WAL files are preallocated to about this size, and after a full
    /// disk it resumes only once there is room to flush every buffer (five
    /// of them), so small disks want small buffers.
    #[serde(default = "default_log_memtable_mib")]
    pub log_memtable_mib: u32,
    /// The other replicas.
    pub peers: Vec<PeerConfig>,
    /// The operators' dashboard served on `status_listen`: HTTPS and the
    /// alert thresholds (every field has a default).
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Moving old closed segments out of the live log (off unless
    /// `keep_segments` or `keep_days` is set).
    #[serde(default)]
    pub archive: ArchiveConfig,
}

/// The `[archive]` section: this replica archives on its own schedule.
/// It never archives past its commit mark, nor, as primary, past what a
/// follower has matched; archived entries stay readable (catch-up of a
/// far-behind peer, replays, the tools) from the archive files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Keep at least this many closed segments in the live log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_segments: Option<u64>,
    /// Keep the segments whose last entry is younger than this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u64>,
    /// Where archive files go (default `data_dir/archive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// How often to look for a segment to archive, in seconds (default 60;
    /// at most one segment is archived each time, so a backlog never
    /// holds the core for long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_s: Option<u64>,
}

impl ArchiveConfig {
    pub fn enabled(&self) -> bool {
        self.keep_segments.is_some() || self.keep_days.is_some()
    }

    pub fn every_ms(&self) -> u64 {
        self.every_s.unwrap_or(60).saturating_mul(1_000)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self
            .every_s
            .is_some_and(|every| !(1..=86_400).contains(&every))
        {
            return Err(ConfigError::Invalid(
                "[archive] every_s must be 1 to 86400".into(),
            ));
        }
        Ok(())
    }
}

/// The `[dashboard]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// PEM certificate chain; with `tls_private_key`, the dashboard serves
    /// HTTPS (plain HTTP then only redirects, and answers the status API
    /// and `vendctl`'s sealed requests). `vendctl keys tls` makes a pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key: Option<PathBuf>,
    /// A slot with this many items or fewer (but some) raises a low-stock
    /// alert.
    #[serde(default = "default_low_stock_units")]
    pub low_stock_units: u32,
    /// A machine not heard from for this long is offline (the primary
    /// raises it; followers hold no machine sessions).
    #[serde(default = "default_offline_after_s")]
    pub offline_after_s: u64,
    /// A machine holding more events than this that the fleet has not
    /// acknowledged raises a backlog alert.
    #[serde(default = "default_backlog_events_max")]
    pub backlog_events_max: u64,
    /// A collection counted more than this many won over or short of the
    /// expected amount raises an alert.
    #[serde(default = "default_over_short_won_max")]
    pub over_short_won_max: i64,
    /// Live-update (SSE) subscribers held at once; more get 503.
    #[serde(default = "default_sse_subscribers_max")]
    pub sse_subscribers_max: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            tls_certificate: None,
            tls_private_key: None,
            low_stock_units: default_low_stock_units(),
            offline_after_s: default_offline_after_s(),
            backlog_events_max: default_backlog_events_max(),
            over_short_won_max: default_over_short_won_max(),
            sse_subscribers_max: default_sse_subscribers_max(),
        }
    }
}

impl DashboardConfig {
    pub fn thresholds(&self) -> dashboard::alerts::AlertThresholds {
        dashboard::alerts::AlertThresholds {
            low_stock_units: self.low_stock_units,
            offline_after_s: self.offline_after_s,
            backlog_events_max: self.backlog_events_max,
            over_short_won_max: self.over_short_won_max,
        }
    }

    /// The certificate and key, when both are given.
    pub fn tls(&self) -> Option<dashboard::TlsFiles> {
        match (&self.tls_certificate, &self.tls_private_key) {
            (Some(certificate), Some(private_key)) => Some(dashboard::TlsFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            }),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: &str| Err(ConfigError::Invalid(format!("[dashboard] {why}")));
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            return invalid("tls_certificate and tls_private_key go together");
        }
        if !(1..=10_000).contains(&self.sse_subscribers_max) {
            return invalid("sse_subscribers_max must be 1 to 10000");
        }
        if self.offline_after_s == 0 || self.over_short_won_max < 0 {
            return invalid("offline_after_s must be positive and over_short_won_max not negative");
        }
        Ok(())
    }
}

fn default_low_stock_units() -> u32 {
    dashboard::alerts::AlertThresholds::default().low_stock_units
}
fn default_offline_after_s() -> u64 {
    dashboard::alerts::AlertThresholds::default().offline_after_s
}
fn default_backlog_events_max() -> u64 {
    dashboard::alerts::AlertThresholds::default().backlog_events_max
}
fn default_over_short_won_max() -> i64 {
    dashboard::alerts::AlertThresholds::default().over_short_won_max
}
fn default_sse_subscribers_max() -> usize {
    dashboard::app::SSE_SUBSCRIBERS_DEFAULT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub name: String,
    pub priority: u8,
    /// Where the peer receives datagrams.
    pub replication_addr: SocketAddrV4,
    /// Where the peer accepts machines (sent to machines as a redirect).
    pub machine_addr: SocketAddrV4,
    /// Where the peer serves its dashboard (followers link to the
    /// primary's, and the replication page asks peers for their status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_addr: Option<SocketAddrV4>,
}

fn default_transport() -> TransportKind {
    TransportKind::Udp
}
fn default_log_memtable_mib() -> u32 {
    u32::try_from(ledger::store::MEMTABLE_BYTES_DEFAULT >> 20).expect("64")
}
fn default_payload_bytes() -> usize {
    PAYLOAD_BYTES_DEFAULT
}
fn default_heartbeat_ms() -> u64 {
    50
}
/// Short enough for a failover under 500 ms (detection is most of it: p99
/// 460 ms over 20 kills), long enough that the core stalls of a
/// 10,000-machine fleet (rounds of up to ~240 ms) depose no primary: with
/// 150-300 ms both such runs had a needless election (BENCHMARKS.md).
fn default_election_min_ms() -> u64 {
    200
}
fn default_election_max_ms() -> u64 {
    400
}
fn default_nak_delay_ms() -> u64 {
    0
}
fn default_nak_backoff_max_ms() -> u64 {
    400
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Each message includes its cause, which is not also a `source`:
    // printed with `{:#}`, it would appear twice.
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML file, naming the file in any error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.display().to_string(),
        error,
    })
}

impl ReplicaConfig {
    pub fn load(path: &Path) -> Result<ReplicaConfig, ConfigError> {
        let config: ReplicaConfig = read_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serialises")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        let mut ids: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        ids.push(self.id);
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() + 1 || ids.contains(&0) {
            return invalid("replica ids must be distinct and non-zero".into());
        }
        if self.peers.len() != 2 {
            return invalid(format!(
                "a cluster has three replicas; {} peers given",
                self.peers.len()
            ));
        }
        if self.priority > 2 || self.peers.iter().any(|p| p.priority > 2) {
            return invalid("priority is 0, 1 or 2".into());
        }
        if !(PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&self.payload_bytes_max) {
            return invalid(format!(
                "payload_bytes_max must be {PAYLOAD_BYTES_MIN} to {PAYLOAD_BYTES_MAX}"
            ));
        }
        if !(10..=1_000).contains(&self.heartbeat_ms) {
            return invalid("heartbeat_ms must be 10 to 1000".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms * 2
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return invalid("election timeouts must exceed two heartbeats and min < max".into());
        }
        if self.drop_received_percent > 50 {
            return invalid("drop_received_percent must be 0 to 50".into());
        }
        if !(1..=1_024).contains(&self.log_memtable_mib) {
            return invalid("log_memtable_mib must be 1 to 1024".into());
        }
        if self.transport == TransportKind::Raw && self.raw_source().ip().is_unspecified() {
            return invalid(
                "the raw transport needs raw_source (or a specific replication_listen address)"
                    .into(),
            );
        }
        if self.name.is_empty() || self.name.len() > ledger::store::record::REPLICA_NAME_BYTES_MAX {
            return invalid("name must have 1 to 64 bytes".into());
        }
        self.archive.validate()?;
        self.dashboard.validate()
    }

    pub fn raw_source(&self) -> SocketAddrV4 {
        self.raw_source.unwrap_or(self.replication_listen)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    pub fn node_config(&self) -> NodeConfig {
        let mut members = vec![Member {
            id: self.id,
            priority: self.priority,
        }];
        members.extend(self.peers.iter().map(|p| Member {
            id: p.id,
            priority: p.priority,
        }));
        NodeConfig {
            id: self.id,
            members,
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            nak_delay_ms: self.nak_delay_ms,
            nak_backoff_max_ms: self.nak_backoff_max_ms,
            repair_records_max: crate::node::REPAIR_RECORDS_DEFAULT,
            stream_window_records: crate::node::STREAM_WINDOW_RECORDS,
            reorder_records_max: crate::node::REORDER_RECORDS_MAX,
        }
    }

    pub fn peer(&self, id: NodeId) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The role name shown while following: "sync" for priority 0,
    /// "backup" for priority 1, "follower" for the preferred primary.
    pub fn follower_role_name(&self) -> &'static str {
        match self.priority {
            0 => "sync",
            1 => "backup",
            _ => "follower",
        }
    }
}

/// Addresses of a local three-replica cluster on one host.
pub struct LocalClusterPlan {
    pub base_port: u16,
    pub host: std::net::Ipv4Addr,
}

impl LocalClusterPlan {
    /// Replica `id` (1-3): machines on base+id, replication on base+10+id,
    /// status on base+20+id.
    pub fn machine_addr(&self, id: NodeId) -> SocketAddrV4 {
        SocketAddrV4::new(self.host, self.base_port + u16::from(id))
    }

    pub fn replication_addr(&self, id: NodeId) -> SocketAddrV4 {
        SocketAddrV4::new(self.host, self.base_port + 10 + u16::from(id))
    }

    pub fn status_addr(&self, id: NodeId) -> SocketAddrV4 {
        SocketAddrV4::new(self.host, self.base_port + 20 + u16::from(id))
    }

    /// The standard trio: replica-1 preferred primary, replica-2 sync,
    /// replica-3 backup.
    pub fn config(
        &self,
        id: NodeId,
        cluster_id: u32,
        dir: &Path,
        transport: TransportKind,
    ) -> ReplicaConfig {
        let priority = crate::node::standard_priority;
        ReplicaConfig {
            cluster_id,
            id,
            name: format!("replica-{id}"),
            priority: priority(id),
            data_dir: dir.join(format!("replica-{id}")),
            keys_dir: dir.join("keys"),
            machine_listen: self.machine_addr(id),
            replication_listen: self.replication_addr(id),
            status_listen: self.status_addr(id),
            transport,
            raw_source: None,
            broadcast: None,
            payload_bytes_max: PAYLOAD_BYTES_DEFAULT,
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_min_ms: default_election_min_ms(),
            election_timeout_max_ms: default_election_max_ms(),
            nak_delay_ms: default_nak_delay_ms(),
            nak_backoff_max_ms: default_nak_backoff_max_ms(),
            drop_received_percent: 0,
            log_memtable_mib: default_log_memtable_mib(),
            peers: [1u8, 2, 3]
                .into_iter()
                .filter(|&peer| peer != id)
                .map(|peer| PeerConfig {
                    id: peer,
                    name: format!("replica-{peer}"),
                    priority: priority(peer),
                    replication_addr: self.replication_addr(peer),
                    machine_addr: self.machine_addr(peer),
                    status_addr: Some(self.status_addr(peer)),
                })
                .collect(),
            dashboard: DashboardConfig::default(),
            archive: ArchiveConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_config_round_trips_through_toml_and_validates() {
        let plan = LocalClusterPlan {
            base_port: 7100,
            host: std::net::Ipv4Addr::LOCALHOST,
        };
        let config = plan.config(3, 9, Path::new("/tmp/c"), TransportKind::Udp);
        config.validate().unwrap();
        let parsed: ReplicaConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(config.follower_role_name(), "backup");
        assert_eq!(config.node_config().members.len(), 3);
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let plan = LocalClusterPlan {
            base_port: 7100,
            host: std::net::Ipv4Addr::LOCALHOST,
        };
        let mut config = plan.config(1, 9, Path::new("/tmp/c"), TransportKind::Udp);
        config.peers[0].id = 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("distinct")
        );
        let mut config = plan.config(1, 9, Path::new("/tmp/c"), TransportKind::Raw);
        config.replication_listen = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 7111);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("raw_source")
        );
        let text = plan
            .config(1, 9, Path::new("/tmp/c"), TransportKind::Udp)
            .to_toml()
            + "\nsurprise = 1\n";
        assert!(
            toml::from_str::<ReplicaConfig>(&text).is_err(),
            "unknown fields are refused"
        );
        let mut config = plan.config(1, 9, Path::new("/tmp/c"), TransportKind::Udp);
        config.dashboard.tls_certificate = Some("/tmp/cert.pem".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
    }

    #[test]
    fn a_config_without_a_dashboard_section_loads_with_defaults() {
        let plan = LocalClusterPlan {
            base_port: 7100,
            host: std::net::Ipv4Addr::LOCALHOST,
        };
        let mut config = plan.config(2, 9, Path::new("/tmp/c"), TransportKind::Udp);
        config.dashboard.tls_certificate = Some("/tmp/c/tls/cert.pem".into());
        config.dashboard.tls_private_key = Some("/tmp/c/tls/key.pem".into());
        config.dashboard.low_stock_units = 3;
        let parsed: ReplicaConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(parsed, config);
        // An older file: no [dashboard], no peers' status addresses.
        let old: String = plan
            .config(2, 9, Path::new("/tmp/c"), TransportKind::Udp)
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("status_addr") && !line.starts_with("[dashboard]"))
            .filter(|line| {
                ![
                    "low_stock_units",
                    "offline_after_s",
                    "backlog_events_max",
                    "over_short_won_max",
                    "sse_subscribers_max",
                ]
                .iter()
                .any(|key| line.starts_with(key))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: ReplicaConfig = toml::from_str(&old).unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.dashboard, DashboardConfig::default());
        assert!(parsed.peers.iter().all(|p| p.status_addr.is_none()));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_validates() {
        let text = include_str!("../../docs/replica.example.toml");
        let config: ReplicaConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.transport, TransportKind::Raw);
    }
}
