//! Disk full: with the data directory's filesystem at ENOSPC, weir keeps serving; progress and
//! the completion wait in memory; one error line and the `weir_journal_failing` metric say so;
//! once space returns, the completion is written, exactly once.
//!
//! The data directory is a small tmpfs the test mounts (CI runs as root) and unmounts when
//! dropped. One driver level (`disk_full_on_uring`): the scenario is about the journal, not the
//! event loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_tests::{
    curl, eventually, sha256_file, sha256_hex, DataDir, Driver, Metrics, Server, ALICE,
};

const TOKEN: &str = "enospc-admin-token-0123456789abcdef";
const LOG_LINE: &str = "the journal cannot be written";

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root): {st}"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    path
}

fn history(data: &DataDir) -> Vec<String> {
    data.ok(&["history", "alice", "--json"], None)
        .lines()
        .filter(|l| l.contains("\"item\""))
        .map(str::to_string)
        .collect()
}

#[test]
fn disk_full_on_uring() {
    let driver = Driver::Uring;
    // Declared after the data dir: unmounted (dropped) before its temp dir is removed.
    let data = DataDir::new();
    let mount = Tmpfs::mount(&data.path().join("data"), "48m");
    let file = data.alice_with_item("movie", 8 << 20, 21);
    let log = data.path().join("weir.log");
    let wrapper = format!("exec \"$0\" \"$@\" 2>>{}", log.display());
    let mut args = driver.args().to_vec();
    args.extend(["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN]);
    let srv = Server::start_wrapped(
        &data.path().join("data"),
        &args,
        &[],
        None,
        &["sh", "-c", &wrapper],
    );
    driver.check_listen_line(&srv.listen_line);
    let admin = srv.admin_url();

    let filler = fill(&mount.0);
    // Serving goes on: the whole item, byte-exact.
    let r = curl(&srv.url("/d/movie"), &["-u", ALICE]);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_file(&file));
    // The completion cannot be written: the metric says so, and nothing completed yet.
    assert!(
        eventually(Duration::from_secs(15), || {
            Metrics::fetch(&admin, TOKEN).value("weir_journal_failing") == 1
        }),
        "the journal never reported failing: {}",
        Metrics::fetch(&admin, TOKEN).0
    );
    assert_eq!(
        Metrics::fetch(&admin, TOKEN).value("weir_completions_total"),
        0
    );
    // A few failed flushes later, still one error line.
    assert!(eventually(Duration::from_secs(15), || {
        Metrics::fetch(&admin, TOKEN).value("weir_journal_errors_total") >= 3
    }));

    // Space returns: the completion kept in memory is written, once.
    std::fs::remove_file(filler).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || history(&data).len() == 1),
        "the completion was lost: {}",
        Metrics::fetch(&admin, TOKEN).0
    );
    let m = Metrics::fetch(&admin, TOKEN);
    assert_eq!(m.value("weir_journal_failing"), 0);
    assert_eq!(m.value("weir_completions_total"), 1);
    srv.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches(LOG_LINE).count(),
        1,
        "one error line for the whole outage:\n{text}"
    );
    // And once across a restart.
    let srv = data.serve(driver, &[]);
    srv.stop();
    assert_eq!(history(&data).len(), 1, "completed more than once");
    drop(mount);
}
