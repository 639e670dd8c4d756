//! The chat page at `/` in a real browser: headless Chromium driven over WebDriver
//! (chromedriver + fantoccini), against a real server from the testkit.
//!
//! Each test owns its server, its chromedriver (on a port chromedriver picks itself) and a
//! fresh browser profile, so the tests run in parallel. chromedriver starts in a process group
//! of its own, and the whole group (chromedriver and every Chromium process it launched) is
//! killed when the [`Browser`] drops, on success and on panic alike; nothing else is touched.
//!
//! Nothing sleeps. A wait is one asynchronous script that resolves when the page reaches the
//! expected state (checked on every DOM mutation), bounded by WebDriver's script timeout, so
//! the tests are as fast as the page and fail with a snapshot of what the page showed instead.
//!
//! Without chromium and chromedriver the tests print a loud notice and pass, so a plain
//! `cargo test` works on a machine without a browser; `WSCHAT_REQUIRE_BROWSER=1` (set by
//! `.ci/run`) makes that a failure, so CI cannot silently stop testing the page.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use wschat_testkit::{AuthFailureMode, Claims, JwtKey, ServerEvent, TestServer, TestUsers, Token};

/// How long any one expected state may take to appear; generous for a loaded 2-core CI box.
const WAIT: Duration = Duration::from_secs(10);

/// How long chromedriver may take to announce its port.
const DRIVER_START: Duration = Duration::from_secs(10);

/// The window most tests use.
const DESKTOP_WINDOW: (u32, u32) = (1000, 640);

/// The phone the narrow-screen test emulates (CSS pixels and density of a common phone);
/// emulation, because a headless window does not shrink below 500 px.
const PHONE_SCREEN: (u32, u32, u32) = (375, 720, 2);

/// The screen a browser gets.
#[derive(Clone, Copy)]
enum Screen {
    Desktop,
    Phone,
}

/// The line chromedriver prints once it listens (it picks the port itself with `--port=0`).
const DRIVER_READY: &str = "started successfully on port ";

/// Printed (uncaptured) when the browser tests skip.
const SKIP_NOTICE: &str = "
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! SKIPPED browser test: chromium and chromedriver were not found.         !!
!! The chat page is NOT tested. Install them (Debian:                      !!
!!   apt-get install -y chromium chromium-driver) or set CHROMEDRIVER and  !!
!!   CHROME_BIN; WSCHAT_REQUIRE_BROWSER=1 turns this skip into a failure.  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
";

/// Flags for a quiet, reproducible headless Chromium: no sandbox (containers run as root), no
/// GPU, and nothing that phones home or updates itself while a test runs.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--password-store=basic",
];

/// Where the screenshots go: the `target` directory (the parent of Cargo's test scratch dir).
fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or_else(|| Path::new("target"))
        .join(name)
}

/// The chromedriver and Chromium binaries, from `CHROMEDRIVER` / `CHROME_BIN` or the `PATH`.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |variable: &str, names: &[&str]| {
        if let Some(path) = std::env::var_os(variable) {
            return Some(PathBuf::from(path)).filter(|path| path.is_file());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    };
    let driver = find("CHROMEDRIVER", &["chromedriver"])?;
    let chromium = find(
        "CHROME_BIN",
        &["chromium", "chromium-browser", "google-chrome"],
    )?;
    Some((driver, chromium))
}

/// One headless Chromium behind its own chromedriver.
struct Browser {
    client: Client,
    driver: Child,
    /// Drains chromedriver's stdout so it can never block on a full pipe.
    drain: JoinHandle<()>,
    _profile: TempDir,
}

impl Browser {
    /// A browser with a desktop-sized window, or `None` when the test should be skipped.
    async fn launch() -> Option<Self> {
        Self::launch_on(Screen::Desktop).await
    }

    async fn launch_on(screen: Screen) -> Option<Self> {
        let Some((driver_path, chromium)) = browser_binaries() else {
            let required = std::env::var("WSCHAT_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "WSCHAT_REQUIRE_BROWSER=1 but chromium/chromedriver were not found \
                 (apt-get install -y chromium chromium-driver)"
            );
            // Straight to stderr, once per test binary: libtest captures `eprintln!` of
            // passing tests, and this notice must be seen.
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                let _ = std::io::stderr().write_all(SKIP_NOTICE.as_bytes());
            });
            return None;
        };
        let profile = tempfile::Builder::new()
            .prefix("wschat-chromium-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a browser profile dir: {error}"));

        let mut driver = Command::new(&driver_path)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own group, so Drop can end chromedriver and the browser it started together.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", driver_path.display()));
        let stdout = driver
            .stdout
            .take()
            .unwrap_or_else(|| panic!("chromedriver stdout was not captured"));
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(DRIVER_START, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split(DRIVER_READY).nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromedriver did not report its port"));
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let (width, height) = DESKTOP_WINDOW;
        args.push(format!("--window-size={width},{height}"));
        let mut chrome_options = json!({ "binary": chromium, "args": args });
        if let Screen::Phone = screen {
            let (width, height, pixel_ratio) = PHONE_SCREEN;
            chrome_options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": pixel_ratio, "touch": true },
            });
        }
        let capabilities: Capabilities = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options,
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": { "script": WAIT.as_millis() as u64, "pageLoad": WAIT.as_millis() as u64 },
        }))
        .unwrap_or_else(|error| panic!("capabilities: {error}"));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|error| panic!("chromedriver refused a session: {error}"));
        Some(Self {
            client,
            driver,
            drain,
            _profile: profile,
        })
    }

    /// Opens the chat page of `server`.
    async fn open(&self, server: &TestServer) {
        self.client
            .goto(&server.http_url("/"))
            .await
            .unwrap_or_else(|error| panic!("cannot load the page: {error}"));
    }

    /// Fills in the connect form and submits it.
    async fn join(&self, token: &str, name: &str, room: &str) {
        for (id, value) in [("token", token), ("name", name), ("room", room)] {
            let field = self.find(&format!("#{id}")).await;
            field
                .clear()
                .await
                .unwrap_or_else(|error| panic!("clear #{id}: {error}"));
            if !value.is_empty() {
                field
                    .send_keys(value)
                    .await
                    .unwrap_or_else(|error| panic!("type into #{id}: {error}"));
            }
        }
        self.click("#connect-button").await;
    }

    /// Opens the page, joins, and waits until the page says it is connected.
    async fn join_chat(&self, server: &TestServer, name: &str, room: &str) {
        self.open(server).await;
        self.join(server.token(), name, room).await;
        self.wait_for(
            &format!("{name} connected"),
            "document.getElementById('status').dataset.state === 'connected'",
        )
        .await;
    }

    /// Types `text` into the send box and presses Enter, as a user does (Shift+Enter between
    /// lines, since Enter alone sends).
    async fn say(&self, text: &str) {
        let input = self.find("#text").await;
        // Shift, Enter, then Null to release Shift: WebDriver keeps modifiers down until then.
        let new_line = format!("{}{}{}", &*Key::Shift, &*Key::Enter, &*Key::Null);
        let keys = text.split('\n').collect::<Vec<_>>().join(&new_line);
        input
            .send_keys(&(keys + &Key::Enter))
            .await
            .unwrap_or_else(|error| panic!("type a message: {error}"));
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css}: {error}"))
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    /// Runs `body` (a function body) in the page and returns its result.
    async fn eval(&self, body: &str) -> Value {
        self.client
            .execute(body, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{body}"))
    }

    /// Waits until the JavaScript expression `condition` is truthy and returns its value.
    ///
    /// The check runs now and after every DOM mutation, inside one asynchronous script; the
    /// session's script timeout ([`WAIT`]) bounds it. On timeout the test fails showing what
    /// the page displayed.
    async fn wait_for(&self, what: &str, condition: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const check = () => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }};
             const now = check();
             if (now) {{ done(now); return; }}
             const observer = new MutationObserver(() => {{
               const value = check();
               if (value) {{ observer.disconnect(); done(value); }}
             }});
             observer.observe(document.documentElement,
               {{ subtree: true, childList: true, characterData: true, attributes: true }});"
        );
        match self.client.execute_async(&script, Vec::new()).await {
            Ok(value) => value,
            Err(error) => panic!(
                "timed out waiting for {what} ({error})\nthe page showed: {:#}",
                self.snapshot().await
            ),
        }
    }

    /// What a user sees: status line, members, messages and events.
    async fn snapshot(&self) -> Value {
        self.client
            .execute(
                "const all = (css) => [...document.querySelectorAll(css)];
                 return {
                   status: document.getElementById('status').textContent,
                   state: document.getElementById('status').dataset.state,
                   form_hidden: document.getElementById('connect').hidden,
                   chat_hidden: document.getElementById('chat').hidden,
                   members: all('#members li').map((li) => li.dataset.user),
                   items: all('#messages li').map((li) => li.classList.contains('msg')
                     ? [li.querySelector('.who').textContent, li.querySelector('.text').textContent]
                     : li.textContent),
                 };",
                Vec::new(),
            )
            .await
            .unwrap_or_else(|error| json!(format!("(no snapshot: {error})")))
    }

    async fn members(&self) -> Vec<String> {
        serde_json::from_value(self.snapshot().await["members"].clone()).unwrap_or_default()
    }

    /// Waits until the member list is exactly `expected`, in order.
    async fn wait_for_members(&self, expected: &[&str]) {
        let expected_json = json!(expected).to_string();
        self.wait_for(
            &format!("members {expected_json}"),
            &format!(
                "JSON.stringify([...document.querySelectorAll('#members li')]
                   .map((li) => li.dataset.user)) === JSON.stringify({expected_json})"
            ),
        )
        .await;
    }

    /// Waits until a chat message from `user` with exactly `text` is shown.
    async fn wait_for_message(&self, user: &str, text: &str) {
        let (user_js, text_js) = (json!(user), json!(text));
        self.wait_for(
            &format!("message {user_js}: {text_js}"),
            &format!(
                "[...document.querySelectorAll('#messages .msg')].some((m) =>
                   m.querySelector('.who').textContent === {user_js}
                   && m.querySelector('.text').textContent === {text_js})"
            ),
        )
        .await;
    }

    /// Waits until an event line (join, leave, error, …) with exactly `text` is shown.
    async fn wait_for_event(&self, text: &str) {
        let text_js = json!(text);
        self.wait_for(
            &format!("event {text_js}"),
            &format!(
                "[...document.querySelectorAll('#messages .event')]
                   .some((e) => e.textContent === {text_js})"
            ),
        )
        .await;
    }

    /// Waits until the status line is in `state` and returns its text.
    async fn wait_for_status(&self, state: &str) -> String {
        let status = self
            .wait_for(
                &format!("status {state:?}"),
                &format!(
                    "document.getElementById('status').dataset.state === {} \
                     && document.getElementById('status').textContent",
                    json!(state)
                ),
            )
            .await;
        status.as_str().unwrap_or_default().to_owned()
    }

    /// Makes the page's `WebSocket` constructor record what it is called with; read it with
    /// [`Browser::opened_sockets`]. Scripts run through WebDriver are not bound by the page's
    /// CSP, so this works on the real page.
    async fn record_sockets(&self) {
        self.eval(
            "const Native = window.WebSocket;
             window.openedSockets = [];
             window.WebSocket = class extends Native {
               constructor(url, protocols) {
                 window.openedSockets.push({ url: String(url), protocols });
                 super(url, protocols);
                 window.openedSockets[window.openedSockets.length - 1].socket = this;
               }
             };",
        )
        .await;
    }

    /// Every socket the page opened since [`Browser::record_sockets`]: the URL and protocols it
    /// asked for, and the protocol the server chose.
    async fn opened_sockets(&self) -> Value {
        self.eval(
            "return window.openedSockets.map(({ url, protocols, socket }) =>
               ({ url, protocols, protocol: socket ? socket.protocol : null }))",
        )
        .await
    }

    /// Waits until the page shows its expiry countdown and returns the seconds it shows, which
    /// must be fewer than `below`.
    async fn wait_for_countdown_below(&self, below: u64) -> u64 {
        let shown = self
            .wait_for(
                &format!("session expires in fewer than {below} s"),
                &format!(
                    "(() => {{
                       const expiry = document.getElementById('expiry');
                       const seconds = /^session expires in (\\d+) s$/.exec(expiry.textContent);
                       return !expiry.hidden && seconds && Number(seconds[1]) < {below}
                         && expiry.textContent;
                     }})()"
                ),
            )
            .await;
        let shown = shown.as_str().unwrap_or_default();
        shown
            .strip_prefix("session expires in ")
            .and_then(|rest| rest.strip_suffix(" s"))
            .and_then(|seconds| seconds.parse().ok())
            .unwrap_or_else(|| panic!("not a countdown: {shown:?}"))
    }

    /// Asserts that `token` is nowhere the page could leak it from: not in its address (so
    /// not in its history either), its cookies, or its storage.
    async fn assert_token_kept_private(&self, token: &str) {
        let places = self
            .eval(
                "const stored = (storage) => Object.keys(storage)
                   .map((key) => `${key}=${storage.getItem(key)}`).join('&');
                 return {
                   address: location.href,
                   cookies: document.cookie,
                   local_storage: stored(localStorage),
                   session_storage: stored(sessionStorage),
                 }",
            )
            .await;
        let places = places.as_object().expect("an object");
        assert_eq!(places.len(), 4);
        for (place, value) in places {
            let value = value.as_str().expect("text");
            assert!(
                !value.contains(token),
                "the token is in the page's {place}: {value:?}"
            );
        }
        assert!(
            !places["address"].as_str().unwrap_or_default().contains('?'),
            "the page's address has no query: {places:?}"
        );
    }

    /// The browser console's error entries (CSP violations, script errors, failed loads).
    async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|error| panic!("cannot read the browser log: {error}"));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|error| panic!("screenshot failed: {error}"));
        let path = artifact(name);
        std::fs::write(&path, png)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.drain.abort();
        if let Some(pid) = self.driver.id() {
            // The group was created for this chromedriver (process_group(0) above), and its
            // leader is not reaped before this runs, so the id cannot belong to anyone else.
            // SAFETY: killpg only sends a signal; it touches no memory of this process.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// chromedriver's endpoint for the browser console log (not part of W3C WebDriver).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// Launches two browsers at once (startup dominates these tests), or `None` to skip.
async fn launch_two() -> Option<(Browser, Browser)> {
    let (a, b) = tokio::join!(Browser::launch(), Browser::launch());
    Some((a?, b?))
}

#[tokio::test]
async fn two_browsers_chat_and_see_each_other_join_and_leave() {
    let Some((alice, bob)) = launch_two().await else {
        return;
    };
    let server = TestServer::start().await;

    alice.join_chat(&server, "alice", "lobby").await;
    alice.wait_for_members(&["alice"]).await;
    bob.join_chat(&server, "bob", "lobby").await;
    bob.wait_for_members(&["alice", "bob"]).await;
    alice.wait_for_event("bob joined").await;
    alice.wait_for_members(&["alice", "bob"]).await;

    alice.say("hi bob, the page works").await;
    bob.wait_for_message("alice", "hi bob, the page works")
        .await;
    alice
        .wait_for_message("alice", "hi bob, the page works")
        .await;
    bob.say("hello alice, ça va?\nthis is a second line").await;
    alice
        .wait_for_message("bob", "hello alice, ça va?\nthis is a second line")
        .await;
    alice.say("see you").await;
    bob.wait_for_message("alice", "see you").await;
    alice.screenshot("browser-chat.png").await;
    alice.assert_token_kept_private(server.token()).await;

    bob.click("#leave").await;
    bob.wait_for_status("idle").await;
    alice.wait_for_event("bob left").await;
    alice.wait_for_members(&["alice"]).await;
    assert_eq!(alice.console_errors().await, Vec::<String>::new());
    assert_eq!(bob.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn member_list_follows_joins_and_leaves() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let carol = server.client().name("carol").connect_ok().await;

    browser.join_chat(&server, "alice", "lobby").await;
    browser.wait_for_members(&["carol", "alice"]).await;
    let dave = server.client().name("dave").connect_ok().await;
    browser.wait_for_members(&["carol", "alice", "dave"]).await;
    carol.close().await;
    browser.wait_for_members(&["alice", "dave"]).await;
    browser.wait_for_event("carol left").await;
    drop(dave);
    browser.wait_for_members(&["alice"]).await;
    assert_eq!(browser.members().await, ["alice"]);
}

#[tokio::test]
async fn wrong_token_says_so_and_never_shows_a_chat() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    browser.open(&server).await;
    browser.join("not-the-token", "alice", "lobby").await;

    let status = browser.wait_for_status("failed").await;
    assert!(
        status.contains("could not connect") && status.contains("wrong token"),
        "{status}"
    );
    let page = browser.snapshot().await;
    assert_eq!(page["chat_hidden"], true, "{page:#}");
    assert_eq!(page["form_hidden"], false, "{page:#}");
    assert_eq!(page["items"], json!([]), "{page:#}");
    browser.screenshot("browser-connect-failed.png").await;
    assert!(server
        .metrics()
        .render()
        .contains("wschat_connections_accepted_total 0"));
}

#[tokio::test]
async fn close_mode_shows_the_servers_reason_and_does_not_retry() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server =
        TestServer::start_with(|config| config.auth_failure = AuthFailureMode::Close).await;
    browser.open(&server).await;
    browser.join("not-the-token", "alice", "lobby").await;

    let status = browser.wait_for_status("failed").await;
    assert_eq!(status, "could not connect: invalid token (close 1008)");
    let page = browser.snapshot().await;
    assert_eq!(page["chat_hidden"], true, "{page:#}");
    // "failed" is final: a retry would have put the status into "reconnecting".
    let enabled = browser
        .eval("return !document.getElementById('connect-button').disabled")
        .await;
    assert_eq!(enabled, true);
}

#[tokio::test]
async fn markup_in_messages_is_shown_as_text() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let payload = r#"<img src=x onerror="document.title='pwned';window.pwned=1"><b>bold</b>"#;
    let live = r#"<script>window.pwned=2</script><a href="javascript:alert(1)">x</a> & &amp;"#;
    let mut mallory = server.client().name("mallory").connect_ok().await;
    mallory.say(payload).await; // reaches the page in the welcome's history

    browser.join_chat(&server, "alice", "lobby").await;
    browser.wait_for_message("mallory", payload).await;
    mallory.say(live).await; // and this one live
    browser.wait_for_message("mallory", live).await;

    let injected = browser
        .eval(
            "return {
               elements: document.querySelectorAll('#messages img, #messages b, #messages script, #messages a').length,
               title: document.title,
               pwned: window.pwned ?? null,
             }",
        )
        .await;
    assert_eq!(
        injected,
        json!({ "elements": 0, "title": "wschat", "pwned": null })
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let (addr, token) = (server.addr(), server.token().to_owned());
    browser.join_chat(&server, "alice", "lobby").await;
    browser.say("before the restart").await;
    browser
        .wait_for_message("alice", "before the restart")
        .await;

    server.shutdown().await;
    let status = browser.wait_for_status("reconnecting").await;
    assert!(
        status.contains("server shutting down (close 1001)"),
        "{status}"
    );

    // Same port and token: to the page this is the same server coming back.
    let _server = TestServer::start_with(|config| {
        config.listen = vec![addr];
        config.token = Some(Token::new(token));
    })
    .await;
    browser.wait_for_status("connected").await;
    browser.wait_for_event("reconnected").await;
    browser.say("after the restart").await;
    browser.wait_for_message("alice", "after the restart").await;
    // The old message is still on screen, once.
    let count = browser
        .eval(
            "return [...document.querySelectorAll('#messages .text')]
               .filter((t) => t.textContent === 'before the restart').length",
        )
        .await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_guest_keeps_its_name_when_it_reconnects() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    // No pings and a short idle timeout: the server drops the page (1001) soon after every
    // welcome, and the page reconnects.
    let server = TestServer::start_with(|config| {
        config.ping_interval = Duration::from_secs(60);
        config.idle_timeout = Duration::from_millis(300);
    })
    .await;
    browser.open(&server).await;
    browser.join(server.token(), "", "lobby").await;
    let status = browser.wait_for_status("connected").await;
    assert_eq!(status, "connected as guest-1 in #lobby");
    browser.wait_for_event("reconnected").await;
    let status = browser.wait_for_status("connected").await;
    // Without the name, the server would have made it guest-2.
    assert_eq!(status, "connected as guest-1 in #lobby", "the same guest");
}

#[tokio::test]
async fn flooding_shows_the_errors_then_the_1008_without_reconnecting() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start_with(|config| {
        config.rate_limit = 1;
        config.rate_burst = 1;
    })
    .await;
    browser.join_chat(&server, "alice", "lobby").await;
    // Faster than typing: the page's own Enter handler, fired in a burst.
    browser
        .eval(
            "const box = document.getElementById('text');
             for (let i = 0; i < 15; i++) {
               box.value = `flood ${i}`;
               box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
             }",
        )
        .await;
    browser
        .wait_for(
            "a visible rate_limited error",
            "[...document.querySelectorAll('#messages .event.error')]
               .some((e) => e.textContent.startsWith('error rate_limited: '))",
        )
        .await;
    let status = browser.wait_for_status("closed").await;
    assert_eq!(status, "closed: rate limit exceeded (close 1008)");
    let page = browser.snapshot().await;
    assert_eq!(page["form_hidden"], false, "{page:#}");
}

#[tokio::test]
async fn fits_a_phone_screen() {
    let Some(browser) = Browser::launch_on(Screen::Phone).await else {
        return;
    };
    let server = TestServer::start().await;
    let mut bob = server.client().name("bob").connect_ok().await;
    browser.join_chat(&server, "alice", "lobby").await;
    let long_line =
        "a long line without spaces: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    bob.say(long_line).await;
    browser.wait_for_message("bob", long_line).await;
    browser.say("short answer").await;
    browser.wait_for_message("alice", "short answer").await;
    browser.screenshot("browser-chat-phone.png").await;

    let layout = browser
        .eval(
            "const box = (id) => document.getElementById(id).getBoundingClientRect();
             return {
               horizontal_scroll: document.documentElement.scrollWidth > window.innerWidth,
               send_box_visible: box('send').bottom <= window.innerHeight && box('send').right <= window.innerWidth,
               members_above_messages: box('members-panel').bottom <= box('messages').top,
             }",
        )
        .await;
    assert_eq!(
        layout,
        json!({ "horizontal_scroll": false, "send_box_visible": true, "members_above_messages": true })
    );
}

#[tokio::test]
async fn page_runs_under_its_own_csp() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    browser.open(&server).await;
    // The script ran (it fills in this example with the real host) and the style applied.
    let host = server.addr().to_string();
    browser
        .wait_for(
            "the script to run",
            &format!(
                "document.getElementById('cli-example').textContent.includes({})",
                json!(host)
            ),
        )
        .await;
    let checks = browser
        .eval(
            "let trusted_types;
             try { document.body.insertAdjacentHTML('beforeend', '<i>x</i>'); trusted_types = 'not enforced'; }
             catch (e) { trusted_types = e.name; }
             return {
               styled: getComputedStyle(document.getElementById('connect')).display,
               trusted_types,
             }",
        )
        .await;
    assert_eq!(
        checks,
        json!({ "styled": "grid", "trusted_types": "TypeError" })
    );
    // The console holds the Trusted Types refusal just provoked (so the log is really read)
    // and nothing else: no CSP violation from the page itself.
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("TrustedHTML")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().all(|e| e.contains("TrustedHTML")),
        "{errors:#?}"
    );
}

#[tokio::test]
async fn a_personal_token_goes_in_the_subprotocol_and_in_no_url() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let mut users = TestUsers::new(&["alice", "bob"]);
    let server = TestServer::start_with(|config| {
        config.token = None; // users only
        users.configure(config);
    })
    .await;
    let mut bob = server
        .client()
        .bearer(users.token("bob"))
        .connect_ok()
        .await;
    let token = users.token("alice").to_owned();

    browser.open(&server).await;
    browser.record_sockets().await;
    // The name field is for guests: whatever is typed there, the token's name is the one used.
    browser.join(&token, "mallory", "lobby").await;
    let status = browser.wait_for_status("connected").await;
    assert_eq!(status, "connected as alice in #lobby");
    browser.wait_for_members(&["bob", "alice"]).await;
    browser.wait_for_event("you appear as alice").await;
    let you = browser
        .eval("return document.querySelector('#members li[data-user=\"alice\"]').textContent")
        .await;
    assert_eq!(you, "alice (you)");

    let opened = browser.opened_sockets().await;
    assert_eq!(
        opened,
        json!([{
            "url": format!("ws://{}/?room=lobby&name=mallory", server.addr()),
            "protocols": ["wschat", format!("bearer.{token}")],
            "protocol": "wschat",
        }]),
        "one socket, the token only in its subprotocols, and the server chose wschat"
    );
    let url = opened[0]["url"].as_str().unwrap_or_default();
    assert!(!url.contains("token=") && !url.contains(&token), "{url}");
    browser.assert_token_kept_private(&token).await;

    assert!(matches!(bob.recv().await, ServerEvent::Join { user, .. } if user == "alice"));
    browser.say("hello from the page").await;
    let message = bob.recv_message().await;
    assert_eq!(
        (message.user.as_str(), message.text.as_str()),
        ("alice", "hello from the page")
    );
    bob.say("hello alice").await;
    browser.wait_for_message("bob", "hello alice").await;

    // Taken out of the users file: the server closes the page's socket, which says why and
    // does not try again.
    users.remove("alice");
    let status = browser.wait_for_status("closed").await;
    assert_eq!(
        status,
        "closed: access revoked (close 1008); a new token is needed to connect again"
    );
    browser
        .wait_for_event("disconnected: access revoked (close 1008)")
        .await;
    assert_eq!(
        browser.opened_sockets().await.as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn an_expiring_token_counts_down_then_the_page_says_the_session_expired() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let key = JwtKey::hs256();
    // Told it is expiring right after the welcome (the window is longer than the token's life),
    // and closed right at exp.
    let server = TestServer::start_with(|config| {
        config.token = None;
        config.jwt_leeway = Duration::ZERO;
        config.jwt_refresh_window = Duration::from_secs(60);
        key.configure(config);
    })
    .await;
    browser.open(&server).await;
    // Minted last, so the browser's start does not eat the token's life.
    let token = key.mint(&Claims::for_user("alice").expires_in(Duration::from_secs(4)));
    browser.join(&token, "", "lobby").await;
    let status = browser.wait_for_status("connected").await;
    assert_eq!(status, "connected as alice in #lobby");

    let first = browser.wait_for_countdown_below(6).await;
    assert!(first >= 1, "the page connected too late to see a countdown");
    browser.screenshot("browser-session-expiring.png").await;
    // Counted down while connected.
    browser.wait_for_countdown_below(first).await;

    let status = browser.wait_for_status("closed").await;
    assert_eq!(
        status,
        "closed: session expired (close 1008); a new token is needed to connect again"
    );
    browser
        .wait_for_event("disconnected: session expired (close 1008)")
        .await;
    let page = browser
        .eval(
            "const expiry = document.getElementById('expiry');
             return {
               countdown_hidden: expiry.hidden,
               form_hidden: document.getElementById('connect').hidden,
               can_connect_again: !document.getElementById('connect-button').disabled,
             }",
        )
        .await;
    assert_eq!(
        page,
        json!({ "countdown_hidden": true, "form_hidden": false, "can_connect_again": true })
    );
    browser.assert_token_kept_private(&token).await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_guest_beside_a_users_file_is_shown_as_a_guest() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let users = TestUsers::new(&["alice"]);
    // The shared secret stays (TestServer::config sets one): its holders are guests.
    let server = TestServer::start_with(|config| users.configure(config)).await;
    let mut alice = server
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;

    browser.open(&server).await;
    // Asking for a user's name with the shared secret gets a guest's name.
    browser.join(server.token(), "alice", "lobby").await;
    let status = browser.wait_for_status("connected").await;
    assert_eq!(status, "connected as guest-alice in #lobby");
    browser.wait_for_members(&["alice", "guest-alice"]).await;
    browser.wait_for_event("you appear as guest-alice").await;

    assert!(matches!(alice.recv().await, ServerEvent::Join { user, .. } if user == "guest-alice"));
    browser.say("only a guest").await;
    let message = alice.recv_message().await;
    assert_eq!(
        (message.user.as_str(), message.text.as_str()),
        ("guest-alice", "only a guest")
    );
    browser
        .wait_for_message("guest-alice", "only a guest")
        .await;
    alice.say("welcome, guest").await;
    browser.wait_for_message("alice", "welcome, guest").await;
    browser.assert_token_kept_private(server.token()).await;
}

#[tokio::test]
async fn a_token_a_browser_cannot_send_is_explained() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    browser.open(&server).await;
    browser.record_sockets().await;
    // A space is not allowed in a subprotocol; the WebSocket constructor would throw.
    browser.join("two words", "alice", "lobby").await;
    let status = browser.wait_for_status("failed").await;
    assert!(
        status.starts_with("invalid token: a browser can send only"),
        "{status}"
    );
    assert_eq!(browser.opened_sockets().await, json!([]));
    let page = browser.snapshot().await;
    assert_eq!(page["form_hidden"], false, "{page:#}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}
