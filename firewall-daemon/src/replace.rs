//! Replacing a file the daemon or fwctl writes (the rules file of `fwctl add`, its `FILE~`,
//! the `[metrics]` textfile) so that no reader ever sees half of it: the bytes go to a
//! temporary file in the same directory (created exclusively, so a name planted there is never
//! followed), which gets its mode and owner through its descriptor, is synced, and is renamed
//! over the path; then the directory is synced, so the rename survives a crash.

use std::{io::Write as _, os::unix::fs::PermissionsExt as _, path::Path};

/// Replaces `path` with `bytes`, mode `mode` and, if given, owner `(uid, gid)`.
pub fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".firewall-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))?;
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
