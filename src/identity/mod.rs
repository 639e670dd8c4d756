//! Who a client is (SPEC §10): the token sources, the identity a token proves, and what keeps
//! a per-user connection honest while it is open.
//!
//! Three sources, usable together: the shared secret (its holders are guests and pick their own
//! name), the users file (a name per token) and signed tokens (the name is the JWT's `sub`).
//! [`Authenticator::authenticate`] turns a presented token into an [`Identity`] or a refusal;
//! the handshake (`handshake.rs`) decides what the refusal is answered with.
//!
//! An open connection of a per-user identity carries a [`Session`]: the slot it takes in the
//! per-user connection limit, and the one thing that can end it early. For the users file that
//! is a change of the file that drops the user's token (a `watch` channel, woken on reload);
//! for a JWT it is one timer, set to the next due point (`expiring`, then the deadline), so no
//! loop ever walks over all connections. Guests carry nothing.
//!
//! Reading the users file again (on SIGHUP and when it changes) is [`watch_users_file`]'s job.

pub mod jwt;
pub mod users;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::config::{Config, ConfigError, Token, DEVELOPMENT_TOKEN};
use crate::hub::lock;
use crate::metrics::Metrics;
use jwt::{millis_since_epoch, JwtRejection, JwtVerifier, RoomGrant};
use users::{Users, UsersFileError};

/// The prefix of every guest's name when per-user sources are configured; no user may have it.
pub const GUEST_PREFIX: &str = "guest-";

/// What a token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Holds the shared secret: a guest, who picks a name.
    Guest,
    /// A user with a name of their own.
    User(Credential),
}

/// A per-user identity: the name, and what backs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub proof: Proof,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// A line of the users file; the digest of the token tells whether it is still there.
    UsersFile { digest: [u8; 32] },
    /// A verified JWT.
    Jwt {
        expires_at_ms: u64,
        rooms: Option<RoomGrant>,
    },
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::UsersFile { .. } => f.write_str("UsersFile"),
            Proof::Jwt {
                expires_at_ms,
                rooms,
            } => f
                .debug_struct("Jwt")
                .field("expires_at_ms", expires_at_ms)
                .field("rooms", rooms)
                .finish(),
        }
    }
}

impl Credential {
    /// Whether this identity may join `room` (a JWT's `rooms` claim).
    pub fn allows_room(&self, room: &str) -> bool {
        match &self.proof {
            Proof::Jwt {
                rooms: Some(grant), ..
            } => grant.allows(room),
            _ => true,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Invalid,
    /// A JWT whose only fault is its `exp`.
    Expired,
    /// A per-user name starting with `guest-`.
    ReservedName,
}

/// The configured token sources. Shared by every handshake.
pub struct Authenticator {
    shared_secret: Option<Token>,
    users: Option<UsersSource>,
    jwt: Option<Arc<JwtVerifier>>,
    refresh_window: Duration,
    per_user: Arc<UserConnections>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("shared_secret", &self.shared_secret.is_some())
            .field("users_file", &self.users.as_ref().map(|users| &users.path))
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the users file and the JWT key the configuration names.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let users = config
            .users_file
            .as_deref()
            .map(UsersSource::load)
            .transpose()
            .map_err(|error| ConfigError::Identity(error.to_string()))?;
        let jwt = config
            .jwt_key
            .as_ref()
            .map(|key| JwtVerifier::load(key, &config.jwt_rules()))
            .transpose()
            .map_err(|error| ConfigError::Identity(error.to_string()))?
            .map(Arc::new);
        Ok(Self {
            shared_secret: config.shared_secret(),
            users,
            jwt,
            refresh_window: config.jwt_refresh_window,
            per_user: Arc::new(UserConnections {
                limit: config.max_connections_per_user,
                open: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A shared secret alone: every client is a guest.
    pub fn shared_secret_only(token: Token) -> Self {
        Self {
            shared_secret: Some(token),
            users: None,
            jwt: None,
            refresh_window: Duration::ZERO,
            per_user: Arc::new(UserConnections {
                limit: usize::MAX,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether a users file or a JWT key is configured: guests are then named `guest-…`.
    pub fn has_per_user_source(&self) -> bool {
        self.users.is_some() || self.jwt.is_some()
    }

    /// What `token` proves as of `now`. Every source is tried; the shared secret is compared in
    /// constant time, the users file by the token's digest, and only a token shaped like a JWT
    /// (three dot-separated parts) is verified as one.
    pub fn authenticate(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        if let Some(secret) = &self.shared_secret {
            if secret.matches(token.as_bytes()) {
                return Ok(Identity::Guest);
            }
        }
        if let Some(users) = &self.users {
            let digest = Users::digest(token.as_bytes());
            if let Some(name) = users.current.borrow().name_of_digest(&digest) {
                return Ok(Identity::User(Credential {
                    name: name.to_string(),
                    proof: Proof::UsersFile { digest },
                }));
            }
        }
        match &self.jwt {
            Some(verifier) if token.split('.').count() == 3 => {
                let verified =
                    verifier
                        .verify(token, now)
                        .map_err(|rejection| match rejection {
                            JwtRejection::Invalid => AuthError::Invalid,
                            JwtRejection::Expired => AuthError::Expired,
                        })?;
                if is_guest_name(&verified.subject) {
                    return Err(AuthError::ReservedName);
                }
                Ok(Identity::User(Credential {
                    name: verified.subject,
                    proof: Proof::Jwt {
                        expires_at_ms: verified.expires_at_ms,
                        rooms: verified.rooms,
                    },
                }))
            }
            _ => Err(AuthError::Invalid),
        }
    }

    /// Takes one of the user's connection slots (`--max-connections-per-user`), or `None` when
    /// they are all in use.
    pub fn open_slot(&self, name: &str) -> Option<UserSlot> {
        self.per_user.take(name)
    }

    /// The watch state an open connection of `credential` needs, holding `slot`.
    pub fn session(&self, credential: &Credential, slot: UserSlot) -> Session {
        let watch = match &credential.proof {
            Proof::UsersFile { digest } => match &self.users {
                Some(users) => {
                    let mut current = users.current.subscribe();
                    // The token was checked against the users of some moment before now; a
                    // reload since then must not pass unseen, so the first wait looks at once.
                    current.mark_changed();
                    Watch::UsersFile {
                        change: ReusableBoxFuture::new(next_users_change(current)),
                        digest: *digest,
                    }
                }
                None => Watch::Nothing,
            },
            Proof::Jwt {
                expires_at_ms,
                rooms,
            } => match &self.jwt {
                Some(verifier) => {
                    let mut expiry = Expiry {
                        verifier: Arc::clone(verifier),
                        refresh_window: self.refresh_window,
                        expires_at_ms: *expires_at_ms,
                        rooms: rooms.clone(),
                        warned: false,
                        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                    };
                    expiry.arm();
                    Watch::Jwt(expiry)
                }
                None => Watch::Nothing,
            },
        };
        Session {
            name: credential.name.clone(),
            watch,
            _slot: slot,
        }
    }

    /// The users file source, if one is configured.
    pub fn users(&self) -> Option<&UsersSource> {
        self.users.as_ref()
    }
}

/// Whether `name` is in the guests' namespace.
pub fn is_guest_name(name: &str) -> bool {
    name.get(..GUEST_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(GUEST_PREFIX))
}

/// The users file and its current contents. Reloads replace the contents as a whole; open
/// connections watch for that.
pub struct UsersSource {
    path: PathBuf,
    current: watch::Sender<Arc<Users>>,
}

impl UsersSource {
    fn load(path: &Path) -> Result<Self, UsersFileError> {
        let users = Users::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: watch::Sender::new(Arc::new(users)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. On success the new set replaces the old one (waking the open
    /// connections of users only if it differs); on failure the old set stays.
    pub fn reload(&self) -> Result<usize, UsersFileError> {
        let users = Users::load(&self.path)?;
        let count = users.len();
        self.current.send_if_modified(|current| {
            if **current == users {
                return false;
            }
            *current = Arc::new(users);
            true
        });
        Ok(count)
    }
}

/// How long the users file must stay unchanged after a change before it is read again.
const RELOAD_QUIET: Duration = Duration::from_millis(100);

/// Reads the users file again on SIGHUP and whenever it changes, until `stop`. A file that does
/// not load keeps the old set; the failure is logged and counted.
///
/// The watcher and the SIGHUP handler are set up before this returns (so a SIGHUP sent once the
/// server is up never meets the default action, which would end the process); the returned
/// future does the reloading. `None` when no users file is configured.
pub fn watch_users_file(
    auth: Arc<Authenticator>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let path = auth.users()?.path().to_owned();
    // Without a watcher (no inotify, say), SIGHUP still works.
    let (watcher, mut changed) = match users::watch(&path) {
        Ok((watcher, changed)) => (Some(watcher), Some(changed)),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the users file for changes; reload it with SIGHUP");
            (None, None)
        }
    };
    let mut hangup = hangup_signal();
    Some(async move {
        let _watcher = watcher;
        let Some(source) = auth.users() else { return };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = next_change(&mut changed) => {
                    // An editor writing in place sends several events; reading between them
                    // could see half a file. Wait for a quiet moment first.
                    while let Ok(Some(())) =
                        tokio::time::timeout(RELOAD_QUIET, next_change(&mut changed)).await
                    {}
                }
                Some(()) = next_hangup(&mut hangup) => {}
            }
            match source.reload() {
                Ok(count) => {
                    metrics.reloaded("users_file", true);
                    tracing::info!(users = count, path = %path.display(), "users file reloaded");
                }
                Err(error) => {
                    metrics.reloaded("users_file", false);
                    tracing::error!(%error, "users file not reloaded; keeping the previous users");
                }
            }
        }
    })
}

async fn next_change(changed: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match changed {
        Some(changed) => changed.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        return signal.recv().await;
    }
    let _ = hangup;
    std::future::pending().await
}

/// Open connections per user, for `--max-connections-per-user`.
struct UserConnections {
    limit: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl UserConnections {
    fn take(self: &Arc<Self>, name: &str) -> Option<UserSlot> {
        let mut open = lock(&self.open);
        let count = open.entry(name.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            owner: Arc::clone(self),
            name: name.to_owned(),
        })
    }
}

/// One of a user's connection slots; given back on drop.
pub struct UserSlot {
    owner: Arc<UserConnections>,
    name: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.owner.open);
        if let Some(count) = open.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.name);
            }
        }
    }
}

/// What an open per-user connection watches: its slot, and what may end it.
pub struct Session {
    name: String,
    watch: Watch,
    _slot: UserSlot,
}

enum Watch {
    Nothing,
    UsersFile {
        /// The next change of the users, owning the receiver while it waits.
        change: ReusableBoxFuture<'static, UsersChange>,
        digest: [u8; 32],
    },
    Jwt(Expiry),
}

/// Whether the users can still change (the server is not going away), and the receiver.
type UsersChange = (bool, watch::Receiver<Arc<Users>>);

async fn next_users_change(mut users: watch::Receiver<Arc<Users>>) -> UsersChange {
    let open = users.changed().await.is_ok();
    (open, users)
}

/// A JWT connection's expiry: one timer, set to the next thing due.
struct Expiry {
    verifier: Arc<JwtVerifier>,
    refresh_window: Duration,
    expires_at_ms: u64,
    rooms: Option<RoomGrant>,
    /// Whether `expiring` has been sent for the current `exp`.
    warned: bool,
    timer: Pin<Box<Sleep>>,
}

impl Expiry {
    /// Sets the timer to the next due point: the start of the refresh window, or the deadline.
    fn arm(&mut self) {
        let window_ms = u64::try_from(self.refresh_window.as_millis()).unwrap_or(u64::MAX);
        let due_ms = if self.warned {
            self.deadline_ms()
        } else {
            self.expires_at_ms.saturating_sub(window_ms)
        };
        let wait =
            Duration::from_millis(due_ms.saturating_sub(millis_since_epoch(SystemTime::now())));
        let now = Instant::now();
        // An `exp` centuries away would overflow the clock: a year from now is as good.
        let due = now
            .checked_add(wait)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 60 * 60));
        self.timer.as_mut().reset(due);
    }

    fn deadline_ms(&self) -> u64 {
        let leeway_ms = u64::try_from(self.verifier.leeway().as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms.saturating_add(leeway_ms)
    }
}

/// Something a session asks its connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// Send `{"type":"expiring","exp":…}`.
    Expiring { expires_at_ms: u64 },
    /// Close `1008` `token expired`.
    Expired,
    /// Close `1008` `token revoked`.
    Revoked,
}

/// Why a `refresh` changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// The connection's identity does not expire (users file).
    NotRefreshable,
    /// The token is not valid, or is another user's.
    Invalid(&'static str),
}

/// What a valid `refresh` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// The connection lives until this new `exp`.
    Until { expires_at_ms: u64 },
    /// The new token's `rooms` claim does not allow the connection's room.
    RoomNotAllowed,
}

impl Session {
    /// Polls for the next thing the connection must act on; never ready for a session with
    /// nothing to watch. A poll function rather than an `async fn`: the connection's `select!`
    /// keeps each branch's future inline, and every idle connection would pay for the space.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<SessionEvent> {
        match &mut self.watch {
            Watch::Nothing => Poll::Pending,
            Watch::UsersFile { change, digest } => loop {
                let (open, mut users) = ready!(change.poll(cx));
                if !open {
                    // The server is going away; its shutdown ends the connection.
                    self.watch = Watch::Nothing;
                    return Poll::Pending;
                }
                let still_valid = users
                    .borrow_and_update()
                    .name_of_digest(digest)
                    .is_some_and(|name| **name == *self.name);
                change.set(next_users_change(users));
                if !still_valid {
                    return Poll::Ready(SessionEvent::Revoked);
                }
            },
            Watch::Jwt(expiry) => loop {
                ready!(expiry.timer.as_mut().poll(cx));
                if !expiry.warned {
                    expiry.warned = true;
                    expiry.arm();
                    return Poll::Ready(SessionEvent::Expiring {
                        expires_at_ms: expiry.expires_at_ms,
                    });
                }
                if millis_since_epoch(SystemTime::now()) >= expiry.deadline_ms() {
                    return Poll::Ready(SessionEvent::Expired);
                }
                // The wall clock moved against the monotonic one: wait the rest.
                expiry.arm();
            },
        }
    }

    /// Waits for the next thing the connection must act on (see [`Session::poll_event`]).
    pub async fn next_event(&mut self) -> SessionEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Applies a `refresh` command's token to a connection in `room`.
    pub fn refresh(&mut self, token: &str, room: &str) -> Result<Refreshed, RefreshError> {
        let Watch::Jwt(expiry) = &mut self.watch else {
            return Err(RefreshError::NotRefreshable);
        };
        let verified = expiry
            .verifier
            .verify(token, SystemTime::now())
            .map_err(|rejection| match rejection {
                JwtRejection::Invalid => RefreshError::Invalid("the token is not valid"),
                JwtRejection::Expired => RefreshError::Invalid("the token has expired"),
            })?;
        if verified.subject != self.name {
            return Err(RefreshError::Invalid("the token is for another user"));
        }
        expiry.expires_at_ms = verified.expires_at_ms;
        expiry.rooms = verified.rooms;
        expiry.warned = false;
        expiry.arm();
        if expiry
            .rooms
            .as_ref()
            .is_some_and(|grant| !grant.allows(room))
        {
            return Ok(Refreshed::RoomNotAllowed);
        }
        Ok(Refreshed::Until {
            expires_at_ms: expiry.expires_at_ms,
        })
    }
}

/// The development token is a guest's secret only when no per-user source is configured.
pub(crate) fn default_shared_secret(per_user: bool) -> Option<Token> {
    (!per_user).then(|| Token::new(DEVELOPMENT_TOKEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names_are_recognised_in_any_case() {
        assert!(is_guest_name("guest-1"));
        assert!(is_guest_name("GUEST-alice"));
        assert!(!is_guest_name("guest"));
        assert!(!is_guest_name("guestalice"));
        assert!(!is_guest_name("alice"));
    }

    /// A user removed by a reload between the handshake's check and the start of the session
    /// is caught by the session's first wait.
    #[tokio::test]
    async fn a_reload_before_the_session_starts_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let token = users::add_user(&path, "alice").unwrap();
        let config = Config {
            users_file: Some(path.clone()),
            ..Config::default()
        };
        let auth = Authenticator::from_config(&config).unwrap();
        let Ok(Identity::User(credential)) = auth.authenticate(&token, SystemTime::now()) else {
            panic!("alice's token is valid");
        };
        users::remove_user(&path, "alice").unwrap();
        auth.users().unwrap().reload().unwrap();
        let slot = auth.open_slot("alice").unwrap();
        let mut session = auth.session(&credential, slot);
        let event = tokio::time::timeout(Duration::from_secs(1), session.next_event()).await;
        assert_eq!(event, Ok(SessionEvent::Revoked));
    }

    #[test]
    fn user_slots_are_limited_per_user_and_given_back_on_drop() {
        let connections = Arc::new(UserConnections {
            limit: 2,
            open: Mutex::new(HashMap::new()),
        });
        let first = connections.take("alice").unwrap();
        let _second = connections.take("alice").unwrap();
        assert!(connections.take("alice").is_none());
        assert!(connections.take("bob").is_some());
        drop(first);
        assert!(connections.take("alice").is_some());
    }
}
