//! When the rules' selectors may resolve differently, so the daemon resolves them again.
//!
//! Why inotify *and* a period: a package upgrade replaces a program's file (a new inode), which
//! inotify on its directory reports at once; unit cgroups do not notify, nor does a symlink's
//! target replaced elsewhere, so a periodic wake-up covers those.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsString,
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::PathBuf,
    time::Duration,
};

use log::{debug, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, Interval, MissedTickBehavior},
};

/// What inotify reports on a watched directory.
const WATCH_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// How long events are drained after the first one, so that an upgrade that touches many
/// files wakes the caller once.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// `AsyncFd` needs `AsRawFd`, which nix's `Inotify` does not implement.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One inotify watch: the directories it stands for (a symlinked directory and its target
/// share one) and the names in them that lead to a program.
#[derive(Debug, Default)]
struct Watch {
    dirs: BTreeSet<PathBuf>,
    names: BTreeSet<OsString>,
}

/// Says when the rules' selectors may resolve differently: a program file created, replaced,
/// renamed or removed (inotify on its directory, or on the nearest existing ancestor while the
/// directory does not exist), and periodically, for unit cgroups (which do not notify) and for
/// what inotify does not see (a symlink's target replaced elsewhere).
pub struct Watcher {
    programs: Vec<PathBuf>,
    inotify: Option<AsyncFd<InotifyFd>>,
    watches: HashMap<WatchDescriptor, Watch>,
    /// Directories that could not be watched, so each is warned about once.
    failed: BTreeSet<PathBuf>,
    interval: Interval,
}

/// What one wait of [`Watcher::changed`] ended with.
enum Wake {
    Period,
    Event,
    Irrelevant,
    Failed(io::Error),
}

impl Watcher {
    /// Watches the directories of `programs` and wakes every `period` (at least 10 ms). Must
    /// be called within a tokio runtime. If inotify cannot be used, only the period wakes.
    pub fn new(programs: &[PathBuf], period: Duration) -> anyhow::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            anyhow::bail!("the selector watcher needs a tokio runtime");
        }
        let period = period.max(Duration::from_millis(10));
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(io::Error::from)
            .and_then(|i| {
                // SAFETY: `InotifyFd` owns the descriptor (an `OwnedFd` inside `Inotify`) and
                // always returns that same one; it is closed only when the `AsyncFd` drops it.
                unsafe { AsyncFd::register_with_interest(InotifyFd(i), Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
            }) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(
                    "cannot watch program files with inotify ({e}); changes are noticed every \
                     {period:?}"
                );
                None
            }
        };
        let mut programs: Vec<PathBuf> = programs
            .iter()
            .filter(|p| p.is_absolute())
            .cloned()
            .collect();
        programs.sort();
        programs.dedup();
        let mut watcher = Self {
            programs,
            inotify,
            watches: HashMap::new(),
            failed: BTreeSet::new(),
            interval,
        };
        watcher.rewatch();
        Ok(watcher)
    }

    /// Returns when something may have changed: a relevant inotify event (then events are
    /// drained for `DEBOUNCE` more), or the period elapsed. The caller then resolves again
    /// and compares.
    pub async fn changed(&mut self) {
        loop {
            let wake = match &self.inotify {
                None => {
                    self.interval.tick().await;
                    Wake::Period
                }
                Some(fd) => tokio::select! {
                    _ = self.interval.tick() => Wake::Period,
                    r = read_relevant(fd, &self.watches) => match r {
                        Ok(true) => Wake::Event,
                        Ok(false) => Wake::Irrelevant,
                        Err(e) => Wake::Failed(e),
                    },
                },
            };
            match wake {
                Wake::Period => break,
                Wake::Event => {
                    if let Some(fd) = &self.inotify {
                        drain_for(fd, DEBOUNCE).await;
                    }
                    self.interval.reset();
                    break;
                }
                Wake::Irrelevant => continue,
                Wake::Failed(e) => {
                    warn!(
                        "reading inotify events failed ({e}); program changes are noticed \
                         every {:?} only",
                        self.interval.period()
                    );
                    self.inotify = None;
                    self.watches.clear();
                    break;
                }
            }
        }
        self.rewatch();
    }

    /// The directories to watch and the names in each that lead to a program.
    fn targets(&self) -> BTreeMap<PathBuf, BTreeSet<OsString>> {
        let mut out: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
        for program in &self.programs {
            let mut child = program.as_path();
            while let Some(dir) = child.parent() {
                if dir.is_dir() {
                    if let Some(name) = child.file_name() {
                        out.entry(dir.to_path_buf())
                            .or_default()
                            .insert(name.to_owned());
                    }
                    break;
                }
                child = dir;
            }
        }
        out
    }

    /// Brings the inotify watches in line with [`Self::targets`]: directories that appeared
    /// are watched instead of their ancestors, deleted ones are replaced by theirs.
    fn rewatch(&mut self) {
        let Some(fd) = &self.inotify else {
            return;
        };
        let inotify = &fd.get_ref().0;
        let mut watches: HashMap<WatchDescriptor, Watch> = HashMap::new();
        for (dir, names) in self.targets() {
            match inotify.add_watch(&dir, WATCH_MASK) {
                Ok(wd) => {
                    self.failed.remove(&dir);
                    let w = watches.entry(wd).or_default();
                    w.dirs.insert(dir);
                    w.names.extend(names);
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        warn!(
                            "cannot watch {} for program changes ({e}); changes there are \
                             noticed every {:?}",
                            dir.display(),
                            self.interval.period()
                        );
                    }
                }
            }
        }
        for wd in self.watches.keys() {
            if !watches.contains_key(wd) {
                // Fails harmlessly for a watch the kernel already dropped (deleted directory).
                let _ = inotify.rm_watch(*wd);
            }
        }
        debug!(
            "watching {} director{} for program changes",
            watches.len(),
            if watches.len() == 1 { "y" } else { "ies" }
        );
        self.watches = watches;
    }
}

/// Whether an event may change what a program resolves to.
fn relevant(event: &InotifyEvent, watches: &HashMap<WatchDescriptor, Watch>) -> bool {
    if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    let Some(watch) = watches.get(&event.wd) else {
        // A watch removed by rewatch; its IN_IGNORED arrives later.
        return false;
    };
    match &event.name {
        // The directory itself: deleted, moved, or its watch dropped.
        None => true,
        Some(name) => watch.names.contains(name),
    }
}

/// Waits for events and reads them: `true` if one of them is relevant.
async fn read_relevant(
    fd: &AsyncFd<InotifyFd>,
    watches: &HashMap<WatchDescriptor, Watch>,
) -> io::Result<bool> {
    let mut guard = fd.readable().await?;
    match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from)) {
        Ok(Ok(events)) => Ok(events.iter().any(|e| relevant(e, watches))),
        Ok(Err(e)) => Err(e),
        // Spurious readiness: cleared, wait again.
        Err(_would_block) => Ok(false),
    }
}

/// Reads and discards events for `period`.
async fn drain_for(fd: &AsyncFd<InotifyFd>, period: Duration) {
    let deadline = Instant::now() + period;
    let drain = async {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            if let Ok(Err(_)) =
                guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from))
            {
                return;
            }
        }
    };
    // A read error ends the drain early; the next wait reports it.
    let _ = tokio::time::timeout_at(deadline, drain).await;
    tokio::time::sleep_until(deadline).await;
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        path::Path,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    fn write_file(path: &Path, contents: &str) {
        fs::write(path, contents).expect("write file");
    }

    fn unique_dir() -> tempfile::TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        tempfile::Builder::new()
            .prefix(&format!(
                "resolve-watch-{}-",
                N.fetch_add(1, Ordering::Relaxed)
            ))
            .tempdir()
            .expect("tempdir")
    }

    #[tokio::test]
    async fn watcher_wakes_on_a_created_program() {
        let dir = unique_dir();
        let bin = dir.path().join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_secs(60)).expect("watcher");
        assert!(w.inotify.is_some(), "inotify is available here");
        let started = std::time::Instant::now();
        let path = bin.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            fs::write(&path, "new").expect("create");
        });
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by inotify, not the 60 s period");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn watcher_watches_an_ancestor_until_the_directory_appears() {
        let dir = unique_dir();
        let sub = dir.path().join("opt/app");
        let bin = sub.join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_secs(60)).expect("watcher");
        // An unrelated file does not wake it.
        write_file(&dir.path().join("unrelated"), "");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.changed())
                .await
                .is_err(),
            "woken by an unrelated file"
        );
        fs::create_dir_all(&sub).expect("mkdir");
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the directory appearing");
        // Now the directory itself is watched.
        let watched: Vec<_> = w.watches.values().flat_map(|w| w.dirs.iter()).collect();
        assert_eq!(watched, vec![&sub]);
        write_file(&bin, "x");
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the program appearing");
    }

    #[tokio::test]
    async fn watcher_wakes_after_the_period() {
        let dir = unique_dir();
        let bin = dir.path().join("prog");
        let mut w =
            Watcher::new(std::slice::from_ref(&bin), Duration::from_millis(200)).expect("watcher");
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the period");
        let took = started.elapsed();
        // Half the period: an immediate wake-up fails, and a guest under software emulation,
        // whose timers were seen firing at 189 ms of a 200 ms period, passes.
        assert!(took >= Duration::from_millis(100), "{took:?}");
        // And again.
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .expect("woken by the period again");
    }
}
