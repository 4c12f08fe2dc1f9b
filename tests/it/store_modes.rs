//! The store holds refresh tokens and notification bodies: its folder is 0700 and its files
//! 0600 whatever the umask the daemon or the CLI starts under, and a store left readable by an
//! earlier version is made private again when it is opened.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::dropbox::{account_id, post_notification};
use crate::support::{App, Daemon, InstanceConfig, TestConfig};

/// Nothing listens there; the instance is paused anyway, so every event stays in the store.
const NOWHERE: &str = "http://127.0.0.1:9/hooks";
/// Runs the binary (its arguments appended) under the usual default umask; the shell stays its
/// parent (no `exec`), as the harness expects of a wrapper.
const UMASK_022: [&str; 3] = ["sh", "-c", "umask 022; \"$0\" \"$@\"; exit $?"];
const WAIT: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every entry of the store (folders and files, `blobs/` included), with its mode.
fn modes(store: &Path) -> Vec<(PathBuf, u32)> {
    let mut all = vec![(store.to_path_buf(), mode(store))];
    let mut folders = vec![store.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("reading the store") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path.clone());
            }
            let mode = mode(&path);
            all.push((path, mode));
        }
    }
    all.sort();
    all
}

/// The entries whose mode is not 0700 (folders) or 0600 (files).
fn loose(store: &Path) -> Vec<String> {
    modes(store)
        .into_iter()
        .filter(|(path, mode)| *mode != if path.is_dir() { 0o700 } else { 0o600 })
        .map(|(path, mode)| format!("{} {mode:o}", path.display()))
        .collect()
}

/// A notification of about 60 KiB: a few of them in one leaf make sled write a blob file.
fn large_body(account: &str, marker: usize) -> String {
    format!(
        "{{\"list_folder\": {{\"accounts\": [\"{account}\"]}}, \"delta\": {{\"users\": [{marker}]}}, \"pad\": \"{}\"}}",
        "p".repeat(60 * 1024)
    )
}

/// `hookrelay --config CONFIG ARGS…` under umask 022, bounded; its exit code.
fn cli_under_umask_022(d: &Daemon, args: &[&str]) -> Option<i32> {
    let mut child = Command::new(UMASK_022[0])
        .args(&UMASK_022[1..])
        .arg(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("--config")
        .arg(d.config_path())
        .args(args)
        .current_dir(d.dir())
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the CLI");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`hookrelay {}` did not finish", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_private_whatever_the_umask() {
    let app = App::new("app-key");
    let cfg = TestConfig::new()
        .max_body_bytes("96KiB")
        .shutdown_timeout("2s")
        .instance(
            InstanceConfig::new("acme", 1, &app)
                .callback(NOWHERE)
                .paused(true)
                .coalesce(false),
        );
    let wrapper: Vec<String> = UMASK_022.iter().map(|s| (*s).to_owned()).collect();
    let mut d = Daemon::launch(&cfg, &wrapper);
    if let Err(status) = d.wait_ready_or_exit().await {
        panic!("hookrelay exited with {status}\n{}", d.logs());
    }
    let store = d.store_path();

    // Large notifications until sled has written a blob file (created while running).
    let account = account_id();
    let blobs = store.join("blobs");
    let mut sent = 0;
    while std::fs::read_dir(&blobs).map_or(0, |entries| entries.count()) == 0 {
        assert!(sent < 200, "no blob file after {sent} large notifications");
        let status =
            post_notification(&d.ingest_url(), &app.secret, &large_body(&account, sent)).await;
        assert_eq!(status, 200, "notification {sent}\n{}", d.logs());
        sent += 1;
    }
    for name in ["db", "conf", "journal"] {
        assert!(store.join(name).is_file(), "no {name} in the store");
    }
    assert_eq!(format!("{:o}", mode(&store)), "700", "the store folder");
    assert_eq!(
        loose(&store),
        Vec::<String>::new(),
        "entries readable by others"
    );

    // A store an earlier version left readable is made private when it is opened: offline by
    // the CLI, and by the daemon.
    d.stop().await;
    let loosen = |store: &Path| {
        for (path, _) in modes(store) {
            let mode = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("loosening a mode");
        }
    };
    loosen(&store);
    assert_eq!(cli_under_umask_022(&d, &["dead", "list"]), Some(0));
    assert_eq!(loose(&store), Vec::<String>::new(), "after an offline open");
    loosen(&store);
    d.restart().await;
    assert_eq!(
        loose(&store),
        Vec::<String>::new(),
        "after the daemon's open"
    );
    d.stop().await;
}
