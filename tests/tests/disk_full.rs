//! A replica whose disk fills up under load: its data directory sits on a
//! small tmpfs, and while the fleet writes, a filler file takes what space
//! is left. The replica must refuse writes with a clear log line, stay up
//! and keep serving its status, the cluster must lose nothing it
//! acknowledged, and once the filler is removed the replica catches up.
//!
//! Needs root (to mount a tmpfs); skipped with a message otherwise.

mod common;

use common::{
    Cluster, base_port, check_every_replica_holds, finish_fleet, init_cluster, start_fleet,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MACHINES: u32 = 4;
const EVENTS_PER_MACHINE: u64 = 2_000;
/// The tmpfs under the replica: room for RocksDB's files and then some.
const TMPFS_BYTES: u64 = 64 << 20;
/// The replica's write buffers (WAL files are preallocated to about this
/// size, so with the default 64 MiB the WAL would not feel a full disk).
const MEMTABLE_MIB: u32 = 1;
/// What the filler leaves free: a few batches' worth.
const LEFT_FREE_BYTES: u64 = 256 << 10;

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "vendledger-disk-full",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs writes into the struct we pass and nothing else.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0);
            stat.f_bavail * stat.f_frsize
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Takes all but `leave` bytes of the file system holding `path`.
fn fill(path: &Path, bytes: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path).unwrap();
    let length = libc::off_t::try_from(bytes).unwrap();
    // SAFETY: fallocate on a file we own; it only reserves blocks.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    assert_eq!(result, 0, "fallocate: {}", std::io::Error::last_os_error());
}

fn replica_log(dir: &Path, index: usize) -> String {
    std::fs::read_to_string(dir.join(format!("replica-{index}.log"))).unwrap_or_default()
}

#[test]
fn a_replica_whose_disk_fills_refuses_writes_stays_up_and_catches_up() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let topology = init_cluster(&dir, base_port());
    let config_path = &topology.configs[0];
    let mut config = replica::config::ReplicaConfig::load(config_path).unwrap();
    config.log_memtable_mib = MEMTABLE_MIB;
    std::fs::write(config_path, config.to_toml()).unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.join("replica-1"), TMPFS_BYTES) else {
        eprintln!("skipping: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    };
    let mut cluster = Cluster::start(&dir, topology);
    cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        s.iter().any(|r| r["role"] == "primary")
    });
    let fleet = start_fleet(&dir, MACHINES, EVENTS_PER_MACHINE, 300);
    cluster.wait_for("replica-1 to be writing", Duration::from_secs(60), |s| {
        s.first()
            .and_then(|r| r["tip"].as_u64())
            .is_some_and(|tip| tip > 500)
    });

    // The disk fills up under load.
    let filler = tmpfs.0.join("filler");
    fill(&filler, tmpfs.free_bytes().saturating_sub(LEFT_FREE_BYTES));
    let status = cluster.wait_for(
        "replica-1 to report its storage error",
        Duration::from_secs(60),
        |s| s.first().is_some_and(|r| r["storage_error"].is_string()),
    );
    let full = &status[0];
    eprintln!("replica-1 with a full disk: {}", full["storage_error"]);
    assert_eq!(full["reachable"], true, "status is still served: {full}");
    assert!(
        replica_log(&dir, 1).contains("refuses writes"),
        "the operator is told in the log"
    );
    let stuck_tip = full["tip"].as_u64().unwrap();

    // The fleet finishes on the other two replicas.
    let summary = finish_fleet(fleet, u64::from(MACHINES) * EVENTS_PER_MACHINE);
    let status = cluster.status();
    assert!(
        status[0]["tip"].as_u64().unwrap() < status[1]["tip"].as_u64().unwrap(),
        "replica-1 stayed behind while its disk was full: {status:#?}"
    );
    assert!(status[0]["tip"].as_u64().unwrap() <= stuck_tip + 1_000);

    // Space comes back: replica-1 writes again and catches up.
    std::fs::remove_file(&filler).unwrap();
    cluster.wait_for(
        "replica-1 to catch up once space is freed",
        Duration::from_secs(120),
        |s| {
            s.len() == 3
                && s.iter().all(|r: &Value| {
                    r["reachable"] == true
                        && r["tip"] == s[1]["tip"]
                        && r["commit"] == s[1]["tip"]
                        && r["storage_error"].is_null()
                })
        },
    );
    assert!(replica_log(&dir, 1).contains("the log can be written again"));
    cluster.stop_all();
    check_every_replica_holds(&dir, &summary);
    drop(tmpfs);
}
