//! Which ids this process can give the files it writes. Outside a user
//! namespace of its own, every id (as root) — or none it needs to keep (as
//! another user, owners are not kept). Inside the one the executor makes at
//! start-up as a user other than root (its `userns` module), the ids the
//! namespace maps: one (0) by default, a range where newuidmap/newgidmap
//! and `/etc/subuid` give one. Extraction asks here to turn a refused chown
//! into an error that says what to change; the executor asks before a RUN
//! or a `COPY --chown` needs an id.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// How many uids (from 0) and gids the namespace maps.
static UIDS: AtomicU32 = AtomicU32::new(1);
static GIDS: AtomicU32 = AtomicU32::new(1);

/// Why an id other than 0 cannot be used there, for errors that meet one.
pub const ONE_ID: &str = "as a user other than root Kiln builds in a user namespace of its own, \
    which holds one id (0): install newuidmap/newgidmap (Debian's uidmap) and give the user a \
    range in /etc/subuid and /etc/subgid, as Kiln's image does, or build as root, or where the \
    runtime gives the container a range of ids (Kubernetes hostUsers: false)";

/// Whether this process runs in the user namespace the executor made ([`record`]).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Whether `uid`:`gid` exists where this process builds (always, outside a
/// namespace of its own).
pub fn holds(uid: u32, gid: u32) -> bool {
    !active() || (uid < UIDS.load(Ordering::Relaxed) && gid < GIDS.load(Ordering::Relaxed))
}

/// The ids the namespace holds, for the log.
pub fn ids() -> String {
    match (UIDS.load(Ordering::Relaxed), GIDS.load(Ordering::Relaxed)) {
        (1, 1) => "one id: files owned by other ids cannot be built".to_string(),
        (u, g) => format!(
            "uids 0-{} and gids 0-{} mapped by newuidmap/newgidmap",
            u - 1,
            g - 1
        ),
    }
}

/// Why `uid`:`gid` cannot be used here, for an error that meets it.
pub fn limit(uid: u32, gid: u32) -> String {
    let (u, g) = (UIDS.load(Ordering::Relaxed), GIDS.load(Ordering::Relaxed));
    if u == 1 && g == 1 {
        return ONE_ID.to_string();
    }
    format!(
        "{uid}:{gid} is outside the ids of Kiln's user namespace (uids 0-{}, gids 0-{}, from \
         /etc/subuid and /etc/subgid): give the user a larger range there",
        u - 1,
        g - 1
    )
}

/// Records that this process now runs in a user namespace of its own,
/// mapping `uids` uids (from 0) and `gids` gids. Called once, by the code
/// that made the namespace.
pub fn record(uids: u32, gids: u32) {
    UIDS.store(uids.max(1), Ordering::Relaxed);
    GIDS.store(gids.max(1), Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Relaxed);
}
