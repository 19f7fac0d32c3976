//! What the end-to-end tests share: scratch directories, the real binary and the server
//! in process.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A server process that is killed when the handle drops, so a failing test
/// leaves nothing running behind it; it keeps the lines of standard error after the
/// address. While it lives, a watchdog ends the whole test binary if it outlives
/// [`SERVER_LIFETIME_LIMIT`].
pub struct Running {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// While set, its standard error is not read: its pipe fills.
    stderr_stalled: Arc<AtomicBool>,
    /// The thread reading standard error, which ends at its end.
    reader: Option<JoinHandle<()>>,
    /// Dropped with the handle, which tells the watchdog the test is over.
    _watched: mpsc::Sender<()>,
}

/// The longest any test keeps one server: each takes seconds, so a server still held
/// after this means a test hung. It ends the test binary with the server's log, rather
/// than hold CI until its own limit.
const SERVER_LIFETIME_LIMIT: Duration = Duration::from_secs(300);

/// The longest a server may take to stop after SIGTERM: its drain of open connections
/// (30 s) and a final snapshot, with room.
const STOP_LIMIT: Duration = Duration::from_secs(45);

impl Running {
    /// The lines of standard error so far, after the one naming the address.
    pub fn logs(&self) -> Vec<String> {
        lines_of(&self.logs)
    }

    /// Whether a line holding `text` comes within `limit`: the server writes its log on a
    /// thread of its own, so a line may come after the answer of the request behind it.
    pub fn logged_within(&self, text: &str, limit: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.logs().iter().any(|line| line.contains(text)) {
                return true;
            }
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops reading the server's standard error (after the line being read), as a
    /// stalled log reader would.
    pub fn stall_stderr(&self) {
        self.stderr_stalled.store(true, Ordering::SeqCst);
    }
}

fn lines_of(logs: &Mutex<Vec<String>>) -> Vec<String> {
    logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An empty directory under the target's scratch space.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `quiver serve ARGS`, started and ready: the child and its base URL.
pub fn start_binary(args: &[&str]) -> (Running, String) {
    start_binary_with_env(&[], args)
}

/// [`start_binary`] with these environment variables set.
pub fn start_binary_with_env(env: &[(&str, &str)], args: &[&str]) -> (Running, String) {
    start_command(
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// `quiver serve ARGS` under a limit of `files` open files (`ulimit -n`).
pub fn start_binary_with_file_limit(files: u32, args: &[&str]) -> (Running, String) {
    let script = format!("ulimit -n {files} && exec \"$0\" serve \"$@\"");
    start_command(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_quiver"))
            .args(args),
    )
}

/// Starts `command` and waits for the line that names its address; the rest of its
/// standard error is read on a thread and kept for [`Running::logs`]. The server is
/// killed if the test binary ends first (a test that a watchdog ended included).
fn start_command(command: &mut Command) -> (Running, String) {
    // SAFETY: prctl is async-signal-safe and touches only the calling process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut starting = Vec::new();
    let addr = loop {
        let line = next_line(&mut stderr).expect("server output");
        if let Some(addr) = line.strip_prefix("quiver serve: listening on ") {
            break addr.to_string();
        }
        starting.push(line);
    };
    let logs = Arc::new(Mutex::new(starting));
    let kept = Arc::clone(&logs);
    let stderr_stalled = Arc::new(AtomicBool::new(false));
    let stalled = Arc::clone(&stderr_stalled);
    // Read to the end, unless a test stalls the reading on purpose.
    let reader = std::thread::spawn(move || {
        while let Some(line) = next_line(&mut stderr) {
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            while stalled.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let (watched, ended) = mpsc::channel();
    let watched_logs = Arc::clone(&logs);
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(SERVER_LIFETIME_LIMIT) {
            eprintln!(
                "{test} still holds its server after {SERVER_LIFETIME_LIMIT:?}: the test hung. \
                 The server's log:\n{}",
                lines_of(&watched_logs).join("\n")
            );
            std::process::exit(101);
        }
    });
    let running = Running {
        child,
        logs,
        stderr_stalled,
        reader: Some(reader),
        _watched: watched,
    };
    (running, addr)
}

/// `quiver serve ARGS` expected to fail at start: its standard error.
pub fn failing_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the server started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The next line of `reader`, whatever its bytes; `None` at its end.
fn next_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&line).trim_end().to_string()),
        _ => None,
    }
}

/// Sends SIGTERM and waits, at most [`STOP_LIMIT`], for a clean exit.
pub fn terminate(child: Running) {
    ask_to_stop(&child);
    wait_for_clean_stop(child);
}

/// Sends SIGTERM.
pub fn ask_to_stop(child: &Running) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits, at most [`STOP_LIMIT`] from now, for a server asked to stop to exit cleanly.
pub fn wait_for_clean_stop(child: Running) {
    let (status, logs) = wait_for_stop(child);
    assert!(
        status.success(),
        "the server did not stop cleanly: {status}; its log:\n{}",
        logs.join("\n")
    );
}

/// Waits, at most [`STOP_LIMIT`] from now, for a server asked to stop to exit: its exit
/// status and, unless its standard error is stalled, every line it wrote to the end.
pub fn wait_for_stop(mut child: Running) -> (ExitStatus, Vec<String>) {
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < STOP_LIMIT,
            "the server did not stop within {STOP_LIMIT:?} of SIGTERM; its log:\n{}",
            child.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if !child.stderr_stalled.load(Ordering::SeqCst) {
        if let Some(reader) = child.reader.take() {
            reader.join().unwrap();
        }
    }
    (status, child.logs())
}

/// The peak resident memory of process `pid` so far, bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// An outside tool a test runs (`started`: what starting it gave), or `None` with a
/// message when it cannot run: CI installs each tool and sets its `require` variable, which
/// makes a tool that cannot run fail the test instead.
pub fn outside_tool<T>(started: std::io::Result<T>, tool: &str, require: &str, package: &str) -> Option<T> {
    match started {
        Ok(running) => Some(running),
        Err(e) if std::env::var_os(require).is_none() => {
            eprintln!("skipped: {tool} not runnable ({e}); install Debian's {package} package");
            None
        }
        Err(e) => panic!("{tool} is required here: {e}"),
    }
}

/// Checks a metrics exposition with `promtool check metrics`, as Prometheus would lint it.
/// CI installs promtool and sets `QUIVER_REQUIRE_PROMTOOL`; elsewhere a missing promtool
/// skips the check with a message.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Some(mut child) = outside_tool(child, "promtool", "QUIVER_REQUIRE_PROMTOOL", "prometheus") else {
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server in process on a free 127.0.0.1 port with `config` (its `log_dir` and
/// `listen` set here, the log under `dir`) and returns its base URL.
pub async fn start_app(mut config: serde_json::Value, dir: &Path) -> String {
    config["log_dir"] = serde_json::json!(dir.join("log"));
    config["listen"] = serde_json::json!("127.0.0.1:0");
    let config: quiver_serve::ServeConfig = serde_json::from_value(config).unwrap();
    let state = quiver_serve::server::state(config).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        quiver_serve::server::run(state, std::future::pending(), move |addr| {
            let _ = tx.send(addr);
        })
        .await
        .unwrap()
    });
    format!("http://{}", rx.await.unwrap())
}

/// The sum of `metric`'s samples with all of `labels` in a Prometheus text (0 if none).
pub fn sample(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts that a Prometheus text holds `line` as a whole line (a substring would take
/// `... 4` for `... 40`).
pub fn assert_line(metrics: &str, line: &str) {
    assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
}

/// A metric's value on the server at `base` (0 when absent).
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    sample(&get_text(client, format!("{base}/metrics"), "").await, name, &[])
}

/// Waits until `name` on the server at `base` satisfies `done`.
pub async fn wait_for_metric(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    done: impl Fn(f64) -> bool,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(client, base, name).await;
        if done(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {value} on {base} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET url` with a bearer token.
async fn get(client: &reqwest::Client, url: String, token: &str) -> reqwest::Response {
    client.get(url).bearer_auth(token).send().await.unwrap()
}

/// `GET url` with a bearer token: the answer's JSON.
pub async fn get_json(client: &reqwest::Client, url: String, token: &str) -> serde_json::Value {
    get(client, url, token).await.json().await.unwrap()
}

/// `GET url` with a bearer token: the answer's text.
pub async fn get_text(client: &reqwest::Client, url: String, token: &str) -> String {
    get(client, url, token).await.text().await.unwrap()
}

/// `POST url` with a bearer token and a JSON body.
pub async fn post(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `POST url` with a bearer token and a JSON body: the answer's JSON.
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    post(client, url, token, body).await.json().await.unwrap()
}

/// The browser the dashboard test drives: `QUIVER_CHROMIUM`, else Debian's `chromium`. CI
/// installs it and sets `QUIVER_REQUIRE_CHROMIUM`; elsewhere a missing one skips the test.
pub fn chromium() -> Option<String> {
    let browser = std::env::var("QUIVER_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let version = std::process::Command::new(&browser)
        .arg("--version")
        .output()
        .and_then(|out| match out.status.success() {
            true => Ok(browser.clone()),
            false => Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )),
        });
    outside_tool(version, &browser, "QUIVER_REQUIRE_CHROMIUM", "chromium")
}

/// Headless Chromium on `url` after the page's scripts have run for 10 s of virtual time
/// (which waits for its requests): the DOM, and with `screenshot`, a PNG there too.
pub fn browse(browser: &str, url: &str, screenshot: Option<&Path>) -> String {
    let profile = scratch("dashboard_profile");
    let mut command = std::process::Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1500,1300",
        "--virtual-time-budget=10000",
        &format!("--user-data-dir={}", profile.display()),
    ]);
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command.arg(url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
