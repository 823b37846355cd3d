//! Room in the kernel's neighbour tables (ARP and IPv6 neighbour
//! discovery) for a lab's hosts.
//!
//! Each network namespace keeps its own neighbour entries, but the tables'
//! garbage-collection thresholds (`net.ipv4.neigh.default.gc_thresh1..3`
//! and IPv6's) count the entries of every namespace together, and their
//! defaults (128, 512, 1024) are sized for one host. A lab whose N hosts
//! talk to each other holds up to about N x (N + 8) entries (one per peer,
//! plus multicast ones). Past `gc_thresh2`, the kernel's forced collection
//! deletes, in all namespaces at once, every entry not confirmed within
//! the last 5 s, and the hosts must resolve their peers again: measured at
//! 64 hosts, 85 unicast probes in a run went unanswered while their
//! sender or their target re-resolved the other (a resolution took 2 s or
//! more among 64 hosts' broadcasts, or failed), in waves, and the mesh
//! took 27-42 s to fill its tables instead of 7 s. Real hosts, each with
//! its own table of a few dozen entries, never see that.
//!
//! So a lab that needs more room raises the three thresholds for its
//! lifetime (machine-wide: the only place they can be set) and the last
//! lab of the process puts back the values it found, where nobody else
//! changed them meanwhile. Labs of other processes running at the same
//! time may find the room gone early; only big labs notice.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The tables whose thresholds are raised.
const TABLES: [&str; 2] = [
    "/proc/sys/net/ipv4/neigh/default",
    "/proc/sys/net/ipv6/neigh/default",
];
/// Entries a host holds besides one per peer: the multicast groups it
/// joined (mDNS, all-nodes, solicited-node ...), its router.
const EXTRA_PER_HOST: usize = 8;

/// What the labs of this process changed, to put back.
#[derive(Debug, Default)]
struct Raised {
    /// Labs holding room.
    labs: usize,
    /// Each threshold file: the value found, the value written last.
    files: Vec<(PathBuf, u64, u64)>,
}

static RAISED: Mutex<Option<Raised>> = Mutex::new(None);

/// Holds room for a lab's hosts in the neighbour tables until dropped.
#[derive(Debug)]
pub(crate) struct NeighbourRoom {
    held: bool,
}

impl NeighbourRoom {
    /// Room for `hosts` hosts that may all talk to each other: no
    /// collection at all until they hold that many entries, forced
    /// collection only past twice that. Changes nothing when the tables
    /// already have it (labs of up to 8 hosts, by the kernel's defaults);
    /// warns and goes on when the thresholds cannot be written (the lab
    /// works, big labs lose packets).
    pub(crate) fn for_hosts(hosts: usize) -> NeighbourRoom {
        let need = (hosts * (hosts + EXTRA_PER_HOST)) as u64;
        let mut raised = RAISED.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = false;
        for table in TABLES {
            let dir = Path::new(table);
            let thresh1 = dir.join("gc_thresh1");
            let Some(now) = read(&thresh1) else {
                continue; // no such table (IPv6 disabled): nothing to collect
            };
            // What the machine had before any lab of ours: a lab that fits
            // only in room another lab made holds it too. Below gc_thresh1
            // nothing is ever collected.
            let found = raised
                .as_ref()
                .and_then(|r| r.files.iter().find(|(p, _, _)| *p == thresh1))
                .map_or(now, |(_, found, _)| *found);
            if found >= need {
                continue;
            }
            held = true;
            if now >= need {
                continue;
            }
            // The highest first: the kernel does not order them, and a
            // reader between two writes then never sees thresh1 > thresh3.
            for (name, value) in [
                ("gc_thresh3", need * 4),
                ("gc_thresh2", need * 2),
                ("gc_thresh1", need),
            ] {
                let path = dir.join(name);
                let Some(before) = read(&path) else { continue };
                let value = value.max(before);
                if let Err(e) = fs::write(&path, value.to_string()) {
                    eprintln!(
                        "lab: cannot raise {} to {value} ({e}): a lab of {hosts} hosts \
                         may lose packets while its hosts resolve each other again",
                        path.display()
                    );
                    continue;
                }
                let state = raised.get_or_insert_with(Raised::default);
                match state.files.iter_mut().find(|(p, _, _)| *p == path) {
                    Some((_, _, last)) => *last = value,
                    None => state.files.push((path, before, value)),
                }
            }
        }
        if held {
            raised.get_or_insert_with(Raised::default).labs += 1;
        }
        NeighbourRoom { held }
    }
}

impl Drop for NeighbourRoom {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut raised = RAISED.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = raised.as_mut() else { return };
        state.labs -= 1;
        if state.labs > 0 {
            return;
        }
        // The lowest first, the reverse of raising.
        for (path, found, last) in state.files.iter().rev() {
            if read(path) == Some(*last) {
                if let Err(e) = fs::write(path, found.to_string()) {
                    eprintln!("lab: cannot put back {} = {found}: {e}", path.display());
                }
            }
        }
        *raised = None;
    }
}

fn read(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
