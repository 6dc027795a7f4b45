//! Headless Chromium through WebDriver: starts `chromedriver` on a free loopback port
//! in its own process group, connects a `fantoccini` client with a fresh profile, and
//! on drop kills the whole group (chromedriver and every Chromium process it started),
//! so a failing test leaves no browser behind.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/install-deps.sh`).

use crate::free_port;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's Chromium and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// chromedriver answers `/status` within a second; allow for a busy two-core machine.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running chromedriver; its process group is killed on drop.
pub struct ChromeDriver {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The child leads its own process group (see `start`): kill the group, browser included.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChromeDriver {
    /// Starts chromedriver with its log in `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> ChromeDriver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install the Debian packages chromium and chromium-driver (scripts/install-deps.sh)"
            );
        }
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
        let driver = ChromeDriver { child, port, log };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("reqwest client");
        let start = Instant::now();
        loop {
            let status = http.get(format!("{}/status", driver.url())).send().await;
            if status.map(|r| r.status().is_success()).unwrap_or(false) {
                return driver;
            }
            assert!(start.elapsed() < START_LIMIT, "chromedriver did not answer on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process group id (chromedriver's pid): every browser process it starts is in it.
    pub fn process_group(&self) -> u32 {
        self.child.id()
    }

    /// A headless session with a fresh profile in `dir/profile`, nothing in the background.
    pub async fn session(&self, dir: &Path) -> Client {
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).unwrap_or_else(|e| panic!("create {}: {e}", profile.display()));
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--no-first-run".to_string(),
            "--window-size=1280,1600".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        ClientBuilder::new(HttpConnector::new()).capabilities(capabilities).connect(&self.url()).await.unwrap_or_else(
            |e| panic!("no WebDriver session: {e}\n{}", std::fs::read_to_string(&self.log).unwrap_or_default()),
        )
    }
}

/// Pids of the live processes in process group `group` (from /proc; zombies excluded).
pub fn processes_in_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces, so split after ')'.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group)
        })
        .collect()
}
