//! [`TestUsers`]: a users file (SPEC §10) made fresh for one test, written with the server's own
//! `users add` / `users remove` code, holding the tokens it handed out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use wschat::identity::users;

/// A users file in a temporary directory (removed on drop), and the token of each user in it.
///
/// ```
/// use wschat_testkit::{TestServer, TestUsers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let users = TestUsers::new(&["alice", "bob"]);
/// let server = TestServer::start_with(|config| {
///     config.token = None; // users only: no shared secret
///     users.configure(config);
/// })
/// .await;
/// let alice = server.client().bearer(users.token("alice")).connect_ok().await;
/// assert_eq!(alice.user(), "alice");
/// # }
/// ```
pub struct TestUsers {
    path: PathBuf,
    tokens: HashMap<String, String>,
    _dir: TempDir,
}

impl TestUsers {
    /// A users file with `names`, each given a fresh token.
    pub fn new(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wschat-users-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot make a temporary directory: {error}"));
        let path = dir.path().join("users");
        std::fs::write(&path, "# wschat users, made by the testkit\n")
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        let mut users = Self {
            path,
            tokens: HashMap::new(),
            _dir: dir,
        };
        for name in names {
            users.add(name);
        }
        users
    }

    /// Adds `name` (as `wschat users add` does) and returns its token.
    pub fn add(&mut self, name: &str) -> String {
        let token = users::add_user(&self.path, name)
            .unwrap_or_else(|error| panic!("cannot add {name}: {error}"));
        self.tokens.insert(name.to_owned(), token.clone());
        token
    }

    /// Removes `name` (as `wschat users remove` does); a server watching the file closes the
    /// user's connections `1008` `token revoked`.
    pub fn remove(&mut self, name: &str) {
        users::remove_user(&self.path, name)
            .unwrap_or_else(|error| panic!("cannot remove {name}: {error}"));
        self.tokens.remove(name);
    }

    /// The token `name` was given. Panics for a name that is not in the file.
    pub fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the test users file"))
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points `config` at this file (`--users-file`).
    pub fn configure(&self, config: &mut wschat::Config) {
        config.users_file = Some(self.path.clone());
    }
}
