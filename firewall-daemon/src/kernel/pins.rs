//! The pin directory: where the state that outlives a generation (and the daemon) lives.
//!
//! Shared maps are pinned by name so that every generation, both directions' copies and the
//! next daemon open the same counters, connections and listeners. That only works on a bpf
//! filesystem, and only if a pin left by another version has this version's layout: both are
//! checked here, against the registry of maps ([`firewall_common::maps`]), before anything is
//! loaded. Pinned maps are opened here too, for the daemon's own reads and writes.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, MapInfo};
use firewall_common::maps::{self, Capacity, Kind};
use log::warn;

/// statfs magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// statfs magic of sysfs: what `/sys/fs/bpf` is when nothing is mounted on it.
const SYSFS_MAGIC: i64 = 0x6265_6572;
/// Where bpf filesystems are mounted by convention (systemd mounts one there at boot).
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";

/// What [`prepare_pin_dir`] has to do before pinning under a pin directory.
#[derive(Debug, PartialEq, Eq)]
enum PinFs {
    /// The pin directory is (or will be created) on a bpf filesystem.
    Ready,
    /// The pin directory is under [`BPF_FS_ROOT`] and nothing is mounted there: mount a bpf
    /// filesystem there, as systemd and Cilium do.
    MountRoot,
    /// Anything else: mounting over another filesystem or in an arbitrary place is the
    /// administrator's decision, not the daemon's.
    NotBpf,
}

/// `existing_fs`: the filesystem type of `pin_dir` or of its nearest existing ancestor;
/// `root_fs`: that of [`BPF_FS_ROOT`], if it exists.
fn pin_fs_plan(pin_dir: &Path, existing_fs: i64, root_fs: Option<i64>) -> PinFs {
    if existing_fs == BPF_FS_MAGIC {
        PinFs::Ready
    } else if pin_dir.starts_with(BPF_FS_ROOT) && root_fs == Some(SYSFS_MAGIC) {
        PinFs::MountRoot
    } else {
        PinFs::NotBpf
    }
}

fn fs_type(path: &Path) -> anyhow::Result<i64> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64)
}

/// Creates `pin_dir` if needed and checks that it lives on a bpf filesystem (pins elsewhere fail
/// with an obscure EPERM otherwise). When `pin_dir` is under [`BPF_FS_ROOT`] and no bpf
/// filesystem is mounted there (hosts without systemd, some minimal images), mounts one.
pub fn prepare_pin_dir(pin_dir: &Path) -> anyhow::Result<()> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let root = Path::new(BPF_FS_ROOT);
    let root_fs = if root.exists() {
        Some(fs_type(root)?)
    } else {
        None
    };
    match pin_fs_plan(pin_dir, fs_type(existing)?, root_fs) {
        PinFs::Ready => {}
        PinFs::MountRoot => {
            use nix::mount::{MsFlags, mount};
            // The options systemd uses for this mount.
            mount(
                Some("bpf"),
                root,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .with_context(|| {
                format!(
                    "no bpf filesystem is mounted at {BPF_FS_ROOT} and mounting one failed; \
                     mount it (`mount -t bpf bpf {BPF_FS_ROOT}`) or set [daemon] pin_dir to a \
                     directory on a bpf filesystem"
                )
            })?;
            log::info!("mounted a bpf filesystem at {BPF_FS_ROOT} (none was mounted)");
        }
        PinFs::NotBpf => bail!(
            "pin_dir {} is not on a bpf filesystem; mount one there first \
             (`mount -t bpf bpf DIR`), or set [daemon] pin_dir to a directory under \
             {BPF_FS_ROOT}, where the daemon mounts one when none is",
            pin_dir.display()
        ),
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    if fs_type(pin_dir)? != BPF_FS_MAGIC {
        bail!(
            "pin_dir {} is not on a bpf filesystem; mount one first \
             (`mount -t bpf bpf {BPF_FS_ROOT}`, which systemd does at boot) or set [daemon] pin_dir",
            pin_dir.display()
        );
    }
    Ok(())
}

/// Pin name of the generation's XDP program in force, for inspection
/// (`bpftool prog show pinned ...`).
pub const PROGRAM_PIN: &str = "firewall_xdp";

/// Unpins every shared map whose layout is not this version's (an upgrade that changed it):
/// the next load creates it afresh. Returns the names of the maps discarded. Connections in a
/// discarded table are forgotten; the seeding from the host's sockets at start-up brings back
/// those still open.
///
/// A pin left by another version of the daemon with a different layout would be adopted by
/// the loader as it is, and the verifier or the programs would then misread it: type, key
/// size, value size and, where the programs index the map by constant ([`Capacity::Indexed`]), the
/// number of entries must be this version's.
pub fn discard_incompatible_pins(pin_dir: &Path) -> Vec<&'static str> {
    let mut discarded = Vec::new();
    for spec in maps::of_kind(Kind::Shared) {
        let name = spec.name;
        let path = pin_dir.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        // Every shared map's value is a shared type (the registry's tests say so).
        let (key, Some(value)) = (spec.key_size, spec.value_size) else {
            continue;
        };
        let entries = match spec.capacity {
            Capacity::Indexed(n) => Some(n),
            _ => None,
        };
        // The type too: a table that was an LRU in another version (and forgot entries) is not
        // one this version may adopt where it relies on entries staying.
        let map_type = info.map_type().map(|t| t as u32);
        let fits = map_type.as_ref().is_ok_and(|&t| t == spec.map_type as u32)
            && info.key_size() as usize == key
            && info.value_size() as usize == value
            && entries.is_none_or(|n| info.max_entries() == n);
        if !fits {
            warn!(
                "{name}: the pinned map has another layout (type {:?}, key {} B, value {} B, {} \
                 entries; this version needs type {:?}, key {key} B, value {value} B), left by \
                 another version of the daemon: replacing it",
                map_type.ok(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                spec.map_type as u32
            );
            if let Err(e) = std::fs::remove_file(&path) {
                warn!("{name}: could not remove the pin {}: {e}", path.display());
            }
            discarded.push(name);
        }
    }
    discarded
}

/// The number of entries of the map pinned as `name`, or `None` if there is no such pin.
pub fn pinned_capacity(pin_dir: &Path, name: &str) -> anyhow::Result<Option<u32>> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&path)
        .with_context(|| format!("reading the pinned map {}", path.display()))?;
    Ok(Some(info.max_entries()))
}

/// Capacity of a connection table: the pinned table's if one exists (it is adopted with its
/// connections; a new size applies once the table is gone), else the configured one.
pub(super) fn table_capacity(pin_dir: &Path, name: &str, configured: u32) -> anyhow::Result<u32> {
    let Some(pinned) = pinned_capacity(pin_dir, name)? else {
        return Ok(configured);
    };
    if pinned != configured {
        warn!(
            "{name}: keeping the existing table of {pinned} entries with its connections; \
             the configured size {configured} applies after the pinned tables are removed \
             (daemon stopped with SIGTERM, or a reboot)"
        );
    }
    Ok(pinned)
}

/// Opens the map pinned as `name` under `pin_dir` (it exists once a generation has been
/// loaded). The caller converts it to the typed map it expects, which checks the layout.
pub fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(pin_dir.join(name))
        .with_context(|| format!("opening the pinned map {name}"))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_a_bpf_filesystem_only_where_none_is_and_only_under_sys_fs_bpf() {
        let default = Path::new("/sys/fs/bpf/firewall");
        // Mounted (by systemd): nothing to do, wherever the pin directory is.
        assert_eq!(
            pin_fs_plan(default, BPF_FS_MAGIC, Some(BPF_FS_MAGIC)),
            PinFs::Ready
        );
        assert_eq!(
            pin_fs_plan(Path::new("/run/fw"), BPF_FS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::Ready
        );
        // Nothing on /sys/fs/bpf (the bare sysfs directory): mount there.
        assert_eq!(
            pin_fs_plan(default, SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::MountRoot
        );
        assert_eq!(
            pin_fs_plan(Path::new(BPF_FS_ROOT), SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::MountRoot
        );
        // Something else mounted on /sys/fs/bpf is not covered up.
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        assert_eq!(
            pin_fs_plan(default, TMPFS_MAGIC, Some(TMPFS_MAGIC)),
            PinFs::NotBpf
        );
        // A pin directory elsewhere is the administrator's to mount; a name that merely
        // starts with the same characters is elsewhere.
        assert_eq!(
            pin_fs_plan(Path::new("/run/fw"), TMPFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::NotBpf
        );
        assert_eq!(
            pin_fs_plan(Path::new("/sys/fs/bpfx/fw"), SYSFS_MAGIC, Some(SYSFS_MAGIC)),
            PinFs::NotBpf
        );
        // No /sys/fs/bpf at all (a kernel without bpf): nothing to mount on.
        assert_eq!(pin_fs_plan(default, SYSFS_MAGIC, None), PinFs::NotBpf);
    }

    #[test]
    fn a_pin_directory_off_bpffs_fails_saying_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = format!(
            "{:#}",
            prepare_pin_dir(&dir.path().join("fw")).expect_err("not a bpf filesystem")
        );
        assert!(
            err.contains("not on a bpf filesystem") && err.contains("mount -t bpf"),
            "{err}"
        );
        assert!(!dir.path().join("fw").exists(), "nothing created: {err}");
    }
}
