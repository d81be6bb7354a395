//! Where every owner-side file lives, and how it is opened safely.
//!
//! DESIGN §3: `SUPPORT_HOME` (or `--home`) puts every file under one
//! directory; otherwise the XDG base directories are used (config in
//! `$XDG_CONFIG_HOME/support`, state in `$XDG_STATE_HOME/support`).
//! Directories are created 0700 and files 0600 at creation, whatever the
//! umask. A file that is a symlink, owned by another user, or writable by
//! group or others is refused with a [`FileError::Unsafe`] naming the file
//! and the fix.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use etcetera::BaseStrategy;

/// A file-system failure at one of the owner's files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file or directory exists but may not be trusted (DESIGN §3).
    #[error("{path} is unsafe: {why}; fix: {fix}", path = path.display(), fix = why.fix(path))]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: Unsafe,
    },
    /// The file is larger than the cap for its kind.
    #[error("{path} is larger than {limit} bytes; it is not a file support wrote. Remove or shorten it", path = path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap, bytes.
        limit: u64,
    },
    /// An operating-system error; `op` says what was being done, `source` why
    /// (not repeated in this variant's text: [`crate::ErrorChain`] adds it).
    #[error("cannot {op} {path}", path = path.display())]
    Io {
        /// What was being done: `read`, `create`, `rename`, ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Neither `SUPPORT_HOME` nor a home directory could be found.
    #[error("cannot find a home directory ({0}); set SUPPORT_HOME or pass --home DIR")]
    NoHome(String),
}

/// Why a file or directory is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    /// The path is a symbolic link; links are never followed.
    Symlink,
    /// The path is neither a regular file nor a directory as expected.
    WrongType,
    /// Owned by `uid`, not by the current user `expected`.
    ForeignOwner {
        /// The owner's uid.
        uid: u32,
        /// Ours.
        expected: u32,
    },
    /// Group- or other-writable; `mode` is the permission bits.
    Writable {
        /// The permission bits.
        mode: u32,
        /// Whether it is a directory.
        dir: bool,
    },
    /// A secret (key) readable by group or others.
    Readable {
        /// The permission bits.
        mode: u32,
    },
}

impl Unsafe {
    fn fix(&self, path: &Path) -> String {
        let p = path.display();
        match self {
            Unsafe::Symlink => format!("remove the link (rm {p}) and let support create the file"),
            Unsafe::WrongType => format!("move {p} away"),
            Unsafe::ForeignOwner { expected, .. } => {
                format!("chown {expected} {p}, or remove it if you did not create it")
            }
            Unsafe::Writable { dir: true, .. } => format!("chmod 700 {p}"),
            Unsafe::Writable { dir: false, .. } => format!("chmod 600 {p}"),
            Unsafe::Readable { .. } => {
                format!("chmod 600 {p}; if others may have read it, treat the key as leaked and replace it")
            }
        }
    }
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsafe::Symlink => f.write_str("it is a symbolic link"),
            Unsafe::WrongType => f.write_str("it is not a regular file or directory as expected"),
            Unsafe::ForeignOwner { uid, expected } => {
                write!(f, "it is owned by uid {uid}, not by you (uid {expected})")
            }
            Unsafe::Writable { mode, .. } => {
                write!(f, "it is writable by group or others (mode {:04o})", mode & 0o7777)
            }
            Unsafe::Readable { mode } => {
                write!(f, "it is a secret readable by group or others (mode {:04o})", mode & 0o7777)
            }
        }
    }
}

/// The locations of every owner-side file.
///
/// With a home directory every path is `HOME/<name>`; otherwise config
/// files sit in `config_dir` and state files in `state_dir`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `SUPPORT_HOME`, or the state directory when XDG paths are used.
    pub home: PathBuf,
    /// Holds `trusted_operators.toml`, `policy.d/` and `config.toml`.
    pub config_dir: PathBuf,
    /// Holds the grant, the audit log and its key, the secret, keys, `daemon.json`.
    pub state_dir: PathBuf,
}

impl Paths {
    /// Resolves the paths: `home` if given (from `--home` or `SUPPORT_HOME`),
    /// else `$XDG_CONFIG_HOME/support` and `$XDG_STATE_HOME/support`
    /// (defaults `~/.config` and `~/.local/state`).
    ///
    /// # Errors
    /// [`FileError::NoHome`] when no home directory can be found.
    pub fn resolve(home: Option<PathBuf>) -> Result<Paths, FileError> {
        if let Some(home) = home {
            let home = absolute(&home)?;
            return Ok(Paths::under(home));
        }
        let xdg = etcetera::choose_base_strategy().map_err(|e| FileError::NoHome(e.to_string()))?;
        let config_dir = xdg.config_dir().join("support");
        let state_dir = xdg.state_dir().unwrap_or_else(|| xdg.home_dir().join(".local/state")).join("support");
        Ok(Paths { home: state_dir.clone(), config_dir, state_dir })
    }

    /// Every file directly under `home`.
    pub fn under(home: PathBuf) -> Paths {
        Paths { config_dir: home.clone(), state_dir: home.clone(), home }
    }

    /// `consent.json`: the live grant.
    pub fn consent(&self) -> PathBuf {
        self.state_dir.join("consent.json")
    }
    /// `audit.jsonl`: the hash-chained audit log.
    pub fn audit(&self) -> PathBuf {
        self.state_dir.join("audit.jsonl")
    }
    /// `audit.key`: the audit chain's HMAC key.
    pub fn audit_key(&self) -> PathBuf {
        self.state_dir.join("audit.key")
    }
    /// `secret`: the loopback control API's bearer secret.
    pub fn secret(&self) -> PathBuf {
        self.state_dir.join("secret")
    }
    /// `device.key`: the device's Ed25519 key (PKCS#8).
    pub fn device_key(&self) -> PathBuf {
        self.state_dir.join("device.key")
    }
    /// `daemon.json`: written by a running daemon.
    pub fn daemon_info(&self) -> PathBuf {
        self.state_dir.join("daemon.json")
    }
    /// `daemon.lock`: a running daemon holds an exclusive flock(2) on it,
    /// so there is one daemon per home.
    pub fn daemon_lock(&self) -> PathBuf {
        self.state_dir.join("daemon.lock")
    }
    /// `control.sock`: the daemon's control API as a Unix socket (0600, in
    /// the 0700 state directory, same-uid peers only), which the owner's CLI
    /// prefers to the TCP port: no other local user can reach or crowd it.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }
    /// `run/`: what the daemon keeps only for its next start after a crash
    /// (`tasks.json`), in a directory of its own: rewriting it at every
    /// task's start and end then wakes no watcher of `consent.json`.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }
    /// `run/tasks.json`: the daemon's running tasks, for the next start after a crash.
    pub fn tasks(&self) -> PathBuf {
        self.run_dir().join("tasks.json")
    }
    /// `tasks.json` where daemons before `run/` kept it, read once at start.
    pub(crate) fn tasks_before_run_dir(&self) -> PathBuf {
        self.state_dir.join("tasks.json")
    }
    /// `daemon.toml`: the daemon's settings (relay, trust, enrolment).
    pub fn daemon_config(&self) -> PathBuf {
        self.config_dir.join("daemon.toml")
    }
    /// `trusted_operators.toml`: operators the owner trusts.
    pub fn trusted_operators(&self) -> PathBuf {
        self.config_dir.join("trusted_operators.toml")
    }
    /// `policy.d/`: local catalogue additions and overrides.
    pub fn policy_dir(&self) -> PathBuf {
        self.config_dir.join("policy.d")
    }

    /// Creates the config and state directories (0700) if missing and
    /// checks that they are safe.
    ///
    /// # Errors
    /// [`FileError::Unsafe`] for a linked, foreign or writable directory;
    /// [`FileError::Io`] when it cannot be created.
    pub fn ensure_dirs(&self) -> Result<(), FileError> {
        ensure_dir(&self.state_dir)?;
        if self.config_dir != self.state_dir {
            ensure_dir(&self.config_dir)?;
        }
        Ok(())
    }
}

/// Where a relay keeps its files: its state directory (`--state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayPaths {
    /// The state directory (0700).
    pub dir: PathBuf,
}

impl RelayPaths {
    /// The files of the relay whose state directory is `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RelayPaths {
        RelayPaths { dir: dir.into() }
    }
    /// `relay.lock`: the running relay holds an exclusive flock(2) on it.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("relay.lock")
    }
    /// `live.json`: what the running relay knows of each device now.
    pub fn live(&self) -> PathBuf {
        self.dir.join("live.json")
    }
    /// `admin.sock`: the running relay's answer to `support relay devices`.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    /// `registry.json`: enrolled devices, operators, enrolment tokens.
    pub fn registry(&self) -> PathBuf {
        self.dir.join("registry.json")
    }
    /// `registry.lock`: held while the registry is changed.
    pub fn registry_lock(&self) -> PathBuf {
        self.dir.join("registry.lock")
    }
    /// `cert.pem`: the relay's certificate chain.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    /// `key.pem`: the relay's private key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

/// `~` and `~/x` against `$HOME` (`/` when unset); any other path as written.
pub fn expand_home(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    match path.strip_prefix('~') {
        Some("") => home,
        Some(rest) => home.join(rest.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, FileError> {
    std::path::absolute(path).map_err(|source| FileError::Io { op: "resolve", path: path.into(), source })
}

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The current user's login name, or the uid as text when it has none.
pub fn current_user() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io { op, path: path.to_path_buf(), source }
}

/// Checks the metadata of an opened (or `lstat`ed) path.
fn check_meta(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), FileError> {
    let unsafe_ = |why| Err(FileError::Unsafe { path: path.to_path_buf(), why });
    if meta.file_type().is_symlink() {
        return unsafe_(Unsafe::Symlink);
    }
    if (dir && !meta.is_dir()) || (!dir && !meta.is_file()) {
        return unsafe_(Unsafe::WrongType);
    }
    let expected = current_uid();
    if meta.uid() != expected {
        return unsafe_(Unsafe::ForeignOwner { uid: meta.uid(), expected });
    }
    if meta.mode() & 0o022 != 0 {
        return unsafe_(Unsafe::Writable { mode: meta.mode(), dir });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700 and checks it.
///
/// # Errors
/// As [`Paths::ensure_dirs`].
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create directory", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
    check_meta(dir, &meta, true)?;
    // A restrictive umask may have taken the owner's own bits; put them back.
    if meta.mode() & 0o700 != 0o700 {
        fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io_err("chmod", dir))?;
    }
    Ok(())
}

/// Checks an existing directory without creating it (not a link, ours,
/// not writable by group or others). A missing directory passes: there is
/// nothing in it to trust.
///
/// # Errors
/// [`FileError::Unsafe`], or [`FileError::Io`] when it cannot be inspected.
pub(crate) fn check_dir(dir: &Path) -> Result<(), FileError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => check_meta(dir, &meta, true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", dir)(e)),
    }
}

/// Never follow a link; never block opening a FIFO planted in our place
/// (it is then refused as not a regular file).
fn nofollow() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK
}

/// Maps an open error, turning `ELOOP` from `O_NOFOLLOW` into [`Unsafe::Symlink`].
fn open_err(path: &Path, op: &'static str, e: io::Error) -> FileError {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        FileError::Unsafe { path: path.to_path_buf(), why: Unsafe::Symlink }
    } else {
        FileError::Io { op, path: path.to_path_buf(), source: e }
    }
}

/// Opens an existing file for reading without following links, and checks
/// it after opening (owner, mode, type). `Ok(None)` if it does not exist.
///
/// # Errors
/// [`FileError::Unsafe`], or [`FileError::Io`] for other failures.
pub(crate) fn open_read(path: &Path) -> Result<Option<File>, FileError> {
    let file = match OpenOptions::new().read(true).custom_flags(nofollow()).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_err(path, "open", e)),
    };
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta, false)?;
    Ok(Some(file))
}

/// Reads a whole file through [`open_read`], refusing more than `cap` bytes.
///
/// # Errors
/// As [`open_read`], plus [`FileError::TooLarge`].
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, FileError> {
    let Some(file) = open_read(path)? else { return Ok(None) };
    read_all_capped(file, path, cap).map(Some)
}

/// As [`read_capped`], for a key or secret: also refused when group or
/// others may read it (mode bits 0o077).
///
/// # Errors
/// As [`read_capped`], plus [`FileError::Unsafe`] with [`Unsafe::Readable`].
pub(crate) fn read_secret(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, FileError> {
    let Some(file) = open_read(path)? else { return Ok(None) };
    let mode = file.metadata().map_err(io_err("inspect", path))?.mode();
    if mode & 0o077 != 0 {
        return Err(FileError::Unsafe { path: path.to_path_buf(), why: Unsafe::Readable { mode } });
    }
    read_all_capped(file, path, cap).map(Some)
}

fn read_all_capped(file: File, path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    file.take(cap + 1).read_to_end(&mut buf).map_err(io_err("read", path))?;
    if buf.len() as u64 > cap {
        return Err(FileError::TooLarge { path: path.to_path_buf(), limit: cap });
    }
    Ok(buf)
}

/// Opens (creating 0600 if missing) a file for appending and reading,
/// without following links, and checks it after opening.
///
/// # Errors
/// As [`open_read`].
pub(crate) fn open_append(path: &Path) -> Result<File, FileError> {
    let opts = |new: bool| {
        let mut o = OpenOptions::new();
        o.read(true).append(true).custom_flags(nofollow()).mode(0o600);
        if new {
            o.create_new(true);
        }
        o
    };
    let file = match opts(true).open(path) {
        Ok(f) => {
            // Created just now: undo whatever the umask took, before any write.
            f.set_permissions(Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
            f
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            opts(false).open(path).map_err(|e| open_err(path, "open", e))?
        }
        Err(e) => return Err(open_err(path, "create", e)),
    };
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    check_meta(path, &meta, false)?;
    Ok(file)
}

/// Creates `path` with `contents` if it does not exist (0600, `O_EXCL`,
/// fsynced, directory fsynced). Returns `false` if it already existed.
///
/// # Errors
/// [`FileError::Io`] or [`FileError::Unsafe`] (a link in the way).
pub(crate) fn create_new(path: &Path, contents: &[u8]) -> Result<bool, FileError> {
    let mut file = match OpenOptions::new().write(true).create_new(true).custom_flags(nofollow()).mode(0o600).open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(open_err(path, "create", e)),
    };
    file.set_permissions(Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    file.write_all(contents).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    sync_parent(path)?;
    Ok(true)
}

/// Replaces `path` atomically: a 0600 temp file in the same directory,
/// written, fsynced, renamed over `path`, then the directory fsynced.
///
/// # Errors
/// [`FileError::Io`] for any step; `path` is then left as it was.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    replace(path, |w| w.write_all(contents), true)
}

/// As [`write_atomic`], with what `write` writes (through a buffer) as the
/// contents, so they need never be whole in memory.
///
/// # Errors
/// As [`write_atomic`]; an error `write` returns is a failed write.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&mut File>) -> io::Result<()>,
) -> Result<(), FileError> {
    replace(path, write, true)
}

/// Replaces `path` atomically for other processes (a 0600 temp file,
/// renamed over it) but without fsync: for state that must survive the
/// process crashing, not the machine (the page cache outlives the process).
///
/// # Errors
/// [`FileError::Io`] for any step; `path` is then left as it was.
pub(crate) fn replace_unsynced(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    replace(path, |w| w.write_all(contents), false)
}

fn replace(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&mut File>) -> io::Result<()>,
    sync: bool,
) -> Result<(), FileError> {
    let dir = parent(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    let file = tmp.as_file_mut();
    file.set_permissions(Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    let mut buffered = io::BufWriter::new(&mut *file);
    write(&mut buffered).and_then(|()| buffered.flush()).map_err(io_err("write", path))?;
    drop(buffered);
    if sync {
        file.sync_all().map_err(io_err("fsync", path))?;
    }
    tmp.persist(path).map_err(|e| FileError::Io { op: "rename into", path: path.into(), source: e.error })?;
    if sync { sync_parent(path) } else { Ok(()) }
}

/// Binds a Unix socket at `path`, made 0600; it belongs in a 0700
/// directory, which keeps everyone else out until then. A socket (or link)
/// already at `path` is a leftover and is replaced: call it holding the lock
/// that makes the caller the only server of its directory.
///
/// # Errors
/// As bind(2) (e.g. a path over the 108 bytes of `sun_path`) and chmod(2).
pub(crate) fn bind_socket(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(m) = fs::symlink_metadata(path)
        && (m.file_type().is_socket() || m.file_type().is_symlink())
    {
        let _ = fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    fs::set_permissions(path, Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes `path` (a link is removed, never followed) and fsyncs its
/// directory. Returns whether anything was removed.
///
/// # Errors
/// [`FileError::Io`] when the file exists but cannot be removed.
pub(crate) fn remove(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_parent(path: &Path) -> Result<(), FileError> {
    let dir = parent(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn refuses_links_and_writable_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"x").unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o600)).unwrap();
        assert!(open_read(&real).unwrap().is_some());

        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let err = open_read(&link).unwrap_err();
        assert!(matches!(err, FileError::Unsafe { why: Unsafe::Symlink, .. }), "{err}");
        assert!(matches!(open_append(&link), Err(FileError::Unsafe { why: Unsafe::Symlink, .. })));

        fs::set_permissions(&real, Permissions::from_mode(0o620)).unwrap();
        let err = open_read(&real).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_a_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("consent.json");
        symlink(&target, &path).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::symlink_metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_streamed_write_that_fails_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.json");
        write_atomic_with(&path, |w| w.write_all(&[b'a'; 100_000])).unwrap();
        assert_eq!(fs::read(&path).unwrap(), [b'a'; 100_000]);
        let failed = write_atomic_with(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("the serializer failed"))
        });
        assert!(matches!(failed, Err(FileError::Io { op: "write", .. })), "{failed:?}");
        assert_eq!(fs::read(&path).unwrap(), [b'a'; 100_000]);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["live.json"], "no temporary file left behind");
    }

    #[test]
    fn read_capped_refuses_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_new(&path, &[b'a'; 100]).unwrap();
        assert!(read_capped(&path, 100).unwrap().is_some());
        assert!(matches!(read_capped(&path, 99), Err(FileError::TooLarge { .. })));
        assert!(!create_new(&path, b"other").unwrap());
    }

    #[test]
    fn secrets_readable_by_others_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        create_new(&key, b"k").unwrap();
        assert!(read_secret(&key, 10).unwrap().is_some());
        fs::set_permissions(&key, Permissions::from_mode(0o640)).unwrap();
        let err = read_secret(&key, 10).unwrap_err();
        assert!(matches!(err, FileError::Unsafe { why: Unsafe::Readable { .. }, .. }), "{err}");
        assert!(read_capped(&key, 10).is_ok(), "a non-secret file may be readable");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(open_read(&fifo), Err(FileError::Unsafe { why: Unsafe::WrongType, .. })));
        assert!(open_append(&fifo).is_err());
    }
}
