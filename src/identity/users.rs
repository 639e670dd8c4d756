//! The users file of SPEC §10: one `NAME:HEX` line per user, HEX being the SHA-256 of the
//! user's token. This module owns the format, loading it into a lookup table, the edits behind
//! `wschat users add` / `users remove`, and watching the file for changes. It does not decide
//! when to reload (SIGHUP or a watch event; the server schedules that) nor close the connections
//! of a removed user: the server compares the new [`Users`] with the digests its connections
//! keep, through [`Users::name_of_digest`].
//!
//! A fast hash is right because tokens are 256 random bits, not passwords: a stolen file reveals
//! no token, and a handshake costs one SHA-256. Edits write a temporary file beside the original
//! and rename it over it, so a server reloading at that moment reads the old file or the new
//! one, never half of one.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::is_guest_name;
use crate::handshake::is_valid_name;

/// Bytes of a SHA-256 digest, the HEX part of a line.
const DIGEST_LEN: usize = 32;

/// Random bytes in a generated token: 256 bits, the least SPEC §10 allows.
const TOKEN_LEN: usize = 32;

/// The users of one reading of the file, keyed by the digest of their token.
///
/// Equality tells a reload that changed nothing, so open connections need not be woken.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_digest: HashMap<[u8; DIGEST_LEN], Arc<str>>,
}

impl fmt::Debug for Users {
    // A digest lets its reader test candidate tokens offline; logs get the count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users").field("len", &self.len()).finish()
    }
}

impl Users {
    pub fn empty() -> Users {
        Users::default()
    }

    pub fn parse(text: &str) -> Result<Users, UsersFileError> {
        let mut by_digest: HashMap<_, Arc<str>> = HashMap::new();
        let mut names = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let fail = |problem| UsersFileError::line(None, index + 1, problem);
            let Some(content) = content(raw) else {
                continue;
            };
            let (name, hex) = content
                .split_once(':')
                .ok_or_else(|| fail(LineProblem::Syntax))?;
            let name = name.trim();
            check_name(name).map_err(fail)?;
            let mut digest = [0; DIGEST_LEN];
            hex::decode_to_slice(hex.trim(), &mut digest).map_err(|_| fail(LineProblem::Digest))?;
            if !names.insert(name) {
                return Err(fail(LineProblem::DuplicateName(name.into())));
            }
            if let Some(other) = by_digest.insert(digest, Arc::from(name)) {
                return Err(fail(LineProblem::DuplicateDigest(other.to_string())));
            }
        }
        Ok(Users { by_digest })
    }

    pub fn load(path: &Path) -> Result<Users, UsersFileError> {
        let text = fs::read_to_string(path).map_err(|source| read_error(path, source))?;
        Users::parse(&text).map_err(|error| error.in_file(path))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The user whose token this is. A plain hash-map lookup is safe against timing attacks:
    /// the attacker chooses only the preimage of the key, so how long the lookup takes tells
    /// them nothing about the stored digests, let alone the tokens behind them.
    pub fn find(&self, token: &[u8]) -> Option<&Arc<str>> {
        self.name_of_digest(&Users::digest(token))
    }

    pub fn digest(token: &[u8]) -> [u8; DIGEST_LEN] {
        Sha256::digest(token).into()
    }

    /// Connections keep only their token's digest; after a reload they ask whether it still
    /// belongs to their user.
    pub fn name_of_digest(&self, digest: &[u8; DIGEST_LEN]) -> Option<&Arc<str>> {
        self.by_digest.get(digest)
    }

    fn has_name(&self, name: &str) -> bool {
        self.by_digest.values().any(|user| &**user == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// `path` is `None` from [`Users::parse`], which reads text, not a file.
    #[error("users file{}: line {line}: {problem}", file_label(path.as_deref()))]
    Line {
        path: Option<PathBuf>,
        line: usize,
        problem: LineProblem,
    },
    #[error("cannot read users file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write users file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot watch users file {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot add user: {0}")]
    Name(LineProblem),
    #[error("users file {}: user {name:?} already exists", path.display())]
    Exists { path: PathBuf, name: String },
    #[error("users file {}: no user {name:?}", path.display())]
    NoSuchUser { path: PathBuf, name: String },
}

/// What is wrong with one line. Never quotes the line: a token pasted by mistake stays secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected NAME:HEX")]
    Syntax,
    #[error("a name is 1 to 32 of A-Z a-z 0-9 _ . -")]
    InvalidName,
    #[error("name {0:?} is reserved for guests")]
    ReservedName(String),
    #[error("HEX must be 64 hex digits, a SHA-256 digest")]
    Digest,
    #[error("duplicate user {0:?}")]
    DuplicateName(String),
    #[error("same token as user {0:?}")]
    DuplicateDigest(String),
}

impl UsersFileError {
    fn line(path: Option<PathBuf>, line: usize, problem: LineProblem) -> UsersFileError {
        UsersFileError::Line {
            path,
            line,
            problem,
        }
    }

    fn in_file(self, path: &Path) -> UsersFileError {
        match self {
            UsersFileError::Line { line, problem, .. } => {
                UsersFileError::line(Some(path.to_owned()), line, problem)
            }
            other => other,
        }
    }
}

fn file_label(path: Option<&Path>) -> String {
    path.map(|path| format!(" {}", path.display()))
        .unwrap_or_default()
}

fn read_error(path: &Path, source: io::Error) -> UsersFileError {
    UsersFileError::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> UsersFileError {
    UsersFileError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The line without surrounding white space, or `None` for a blank or comment line.
fn content(raw: &str) -> Option<&str> {
    let trimmed = raw.trim();
    (!trimmed.is_empty() && !trimmed.starts_with('#')).then_some(trimmed)
}

fn check_name(name: &str) -> Result<(), LineProblem> {
    if !is_valid_name(name) {
        return Err(LineProblem::InvalidName);
    }
    if is_guest_name(name) {
        return Err(LineProblem::ReservedName(name.into()));
    }
    Ok(())
}

/// Adds `name` with a fresh random token and returns the token, which exists nowhere else:
/// the file keeps only its digest. A missing file is created.
pub fn add_user(path: &Path, name: &str) -> Result<String, UsersFileError> {
    check_name(name).map_err(UsersFileError::Name)?;
    let (mut text, permissions) = match read_with_permissions(path) {
        Ok((text, permissions)) => (text, Some(permissions)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(source) => return Err(read_error(path, source)),
    };
    if Users::parse(&text)
        .map_err(|error| error.in_file(path))?
        .has_name(name)
    {
        return Err(UsersFileError::Exists {
            path: path.to_owned(),
            name: name.into(),
        });
    }
    // rand's default generator is a CSPRNG seeded from the operating system.
    let token = hex::encode(rand::random::<[u8; TOKEN_LEN]>());
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{name}:{}\n",
        hex::encode(Users::digest(token.as_bytes()))
    ));
    replace(path, &text, permissions).map_err(|source| write_error(path, source))?;
    Ok(token)
}

/// Removes `name`'s line, leaving every other line, comments included, byte for byte.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersFileError> {
    let (text, permissions) = read_with_permissions(path).map_err(|e| read_error(path, e))?;
    Users::parse(&text).map_err(|error| error.in_file(path))?;
    let mut kept = String::with_capacity(text.len());
    let mut found = false;
    for raw in text.split_inclusive('\n') {
        let line_name = content(raw).and_then(|line| line.split_once(':'));
        if line_name.is_some_and(|(line_name, _)| line_name.trim() == name) {
            found = true;
        } else {
            kept.push_str(raw);
        }
    }
    if !found {
        return Err(UsersFileError::NoSuchUser {
            path: path.to_owned(),
            name: name.into(),
        });
    }
    replace(path, &kept, Some(permissions)).map_err(|source| write_error(path, source))
}

fn read_with_permissions(path: &Path) -> io::Result<(String, fs::Permissions)> {
    let mut file = fs::File::open(path)?;
    let permissions = file.metadata()?.permissions();
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, permissions))
}

/// Writes `text` to a new file in `path`'s directory and renames it over `path`: a rename
/// within one directory is atomic, so readers never see a half-written file.
fn replace(path: &Path, text: &str, permissions: Option<fs::Permissions>) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    // A dot file with a random suffix: two concurrent edits never share a temporary file, and
    // its name differs from the watched one.
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let temp = parent_dir(path).join(temp_name);
    let result = write_new(&temp, text, permissions).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the error worth reporting is the one that got us here.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_new(path: &Path, text: &str, permissions: Option<fs::Permissions>) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    // A new users file is its owner's alone: it says who may log in.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    if let Some(permissions) = permissions {
        file.set_permissions(permissions)?;
    }
    file.write_all(text.as_bytes())?;
    // On disk before the rename, or a crash could leave an empty file under the real name.
    file.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Watches `path` and sends `()` after it changes; the caller reloads on each. The receiver
/// ends when the watcher is dropped.
pub fn watch(
    path: &Path,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), UsersFileError> {
    let watch_error = |source| UsersFileError::Watch {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| watch_error(notify::Error::generic("not a file path")))?
        .to_owned();
    // Capacity 1: a burst of events (an editor's write, chmod and rename) needs one reload.
    let (changes, receiver) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // An error may mean lost events (a full kernel queue): reloading is the safe answer.
        let changed = match event {
            Ok(event) => touches(&event, &file_name),
            Err(_) => true,
        };
        if changed {
            // Full means a reload is already pending; closed means nobody listens any more.
            let _ = changes.try_send(());
        }
    })
    .map_err(watch_error)?;
    // The directory, not the file: editors and `add_user` replace the file by rename, and a
    // watch on the file would keep looking at the old one.
    watcher
        .watch(parent_dir(path), RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok((watcher, receiver))
}

fn touches(event: &Event, file_name: &OsStr) -> bool {
    // Opening and reading are not changes, and the server's own reload would otherwise trigger
    // the next one; closing a file opened for writing is.
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    changes && (event.need_rescan() || event.paths.iter().any(|p| p.file_name() == Some(file_name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;

    /// Looks like a token or digest: no error message may contain it.
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn entry(name: &str, token: &str) -> String {
        format!("{name}:{}", hex::encode(Users::digest(token.as_bytes())))
    }

    fn name_of<'a>(users: &'a Users, token: &str) -> Option<&'a str> {
        users.find(token.as_bytes()).map(|name| &**name)
    }

    fn temp_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        (dir, path)
    }

    #[test]
    fn parse_accepts_comments_blank_lines_crlf_and_uppercase_hex() {
        let bob = entry("bob", "b").to_uppercase().replace("BOB:", "bob:");
        let text = format!("# staff\r\n\r\n  {}  \r\n{bob}\r\n", entry("alice", "a"));
        let users = Users::parse(&text).unwrap();
        assert_eq!((users.len(), name_of(&users, "b")), (2, Some("bob")));
    }

    #[rstest]
    #[case::no_colon(format!("# c\n{SECRET}"), 2, LineProblem::Syntax)]
    #[case::invalid_name(format!("al ice:{SECRET}"), 1, LineProblem::InvalidName)]
    #[case::guest_name(entry("Guest-x", "a"), 1, LineProblem::ReservedName("Guest-x".into()))]
    #[case::short_hex(format!("alice:{SECRET}"), 1, LineProblem::Digest)]
    #[case::bad_hex(format!("alice:{SECRET}{}", "zz".repeat(16)), 1, LineProblem::Digest)]
    #[case::duplicate_name(
        format!("{}\n\n{}", entry("alice", "a"), entry("alice", "b")),
        3,
        LineProblem::DuplicateName("alice".into())
    )]
    #[case::duplicate_digest(
        format!("{}\n{}", entry("alice", "a"), entry("bob", "a")),
        2,
        LineProblem::DuplicateDigest("alice".into())
    )]
    fn parse_reports_line_and_problem(
        #[case] text: String,
        #[case] line: usize,
        #[case] problem: LineProblem,
    ) {
        let error = Users::parse(&text).unwrap_err();
        let message = error.to_string();
        assert_eq!(
            message,
            UsersFileError::line(None, line, problem).to_string()
        );
        assert!(message.starts_with(&format!("users file: line {line}: ")));
        assert!(!message.contains(SECRET), "{message}");
    }

    #[test]
    fn find_knows_the_right_token_only() {
        let users = Users::parse(&entry("alice", "right")).unwrap();
        assert_eq!(name_of(&users, "right"), Some("alice"));
        assert_eq!(name_of(&users, "wrong"), None);
        let by_digest = users.name_of_digest(&Users::digest(b"right"));
        assert_eq!(by_digest, users.find(b"right"));
    }

    #[test]
    fn added_users_are_found_by_the_returned_tokens() {
        let (_dir, path) = temp_file();
        let alice = add_user(&path, "alice").unwrap();
        assert!(
            alice.len() == 64
                && alice
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"# no line break at the end").unwrap();
        let bob = add_user(&path, "bob").unwrap();
        let users = Users::load(&path).unwrap();
        assert_eq!(name_of(&users, &alice), Some("alice"));
        assert_eq!(name_of(&users, &bob), Some("bob"));
    }

    #[test]
    fn add_refuses_an_existing_name() {
        let (_dir, path) = temp_file();
        add_user(&path, "alice").unwrap();
        let error = add_user(&path, "alice").unwrap_err();
        assert!(matches!(error, UsersFileError::Exists { .. }), "{error:?}");
    }

    #[test]
    fn add_refuses_a_guest_name() {
        let (_dir, path) = temp_file();
        let error = add_user(&path, "GUEST-x").unwrap_err();
        assert!(matches!(
            error,
            UsersFileError::Name(LineProblem::ReservedName(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn remove_keeps_every_other_line_byte_for_byte() {
        let (_dir, path) = temp_file();
        let (alice, bob) = (entry("alice", "a"), entry("bob", "b"));
        fs::write(&path, format!("# staff\r\n{alice}\r\n\n  # ops  \n{bob}")).unwrap();
        remove_user(&path, "alice").unwrap();
        let left = fs::read_to_string(&path).unwrap();
        assert_eq!(left, format!("# staff\r\n\n  # ops  \n{bob}"));
    }

    #[test]
    fn remove_of_a_missing_user_is_an_error() {
        let (_dir, path) = temp_file();
        fs::write(&path, entry("alice", "a")).unwrap();
        let error = remove_user(&path, "bob").unwrap_err();
        assert!(matches!(error, UsersFileError::NoSuchUser { .. }));
    }

    #[tokio::test]
    async fn watch_reports_add_user() {
        let (_dir, path) = temp_file();
        let (_watcher, mut changes) = watch(&path).unwrap();
        add_user(&path, "alice").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
        assert_eq!(changed, Ok(Some(())));
    }

    #[rstest]
    #[case::open(EventKind::Access(AccessKind::Open(AccessMode::Any)), "users", false)]
    #[case::read_done(EventKind::Access(AccessKind::Close(AccessMode::Read)), "users", false)]
    #[case::write_done(EventKind::Access(AccessKind::Close(AccessMode::Write)), "users", true)]
    #[case::rename(EventKind::Any, "users", true)]
    #[case::other_file(EventKind::Any, ".users.0123.tmp", false)]
    fn only_changes_to_the_file_count(
        #[case] kind: EventKind,
        #[case] file: &str,
        #[case] counts: bool,
    ) {
        let event = Event::new(kind).add_path(Path::new("/etc/wschat").join(file));
        assert_eq!(touches(&event, OsStr::new("users")), counts);
    }

    #[test]
    fn debug_shows_the_count_not_the_digests() {
        let users = Users::parse(&entry("alice", "a")).unwrap();
        assert_eq!(format!("{users:?}"), "Users { len: 1 }");
    }
}
