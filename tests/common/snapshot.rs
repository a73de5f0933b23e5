//! Snapshot helpers: the files of one snapshot in the scratch directory, and saving a running
//! `TestVm` through its API socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::http;
use super::{TestVm, scratch_dir};

const QUICK: Duration = Duration::from_secs(60);
const SIGTERM: i32 = 15;

/// The files of one snapshot, in the scratch directory (removed first).
pub struct Files {
    /// The state file.
    pub snap: PathBuf,
    /// The memory file.
    pub mem: PathBuf,
}

impl Files {
    /// `NAME.snap` and `NAME.mem`.
    pub fn new(name: &str) -> Self {
        let dir = scratch_dir();
        let files = Files {
            snap: dir.join(format!("{name}.snap")),
            mem: dir.join(format!("{name}.mem")),
        };
        let _ = std::fs::remove_file(&files.snap);
        let _ = std::fs::remove_file(&files.mem);
        files
    }

    /// The `--restore` value for these files.
    pub fn spec(&self, resume: bool) -> String {
        format!(
            "snapshot={},mem={}{}",
            self.snap.display(),
            self.mem.display(),
            if resume { ",resume=on" } else { "" }
        )
    }

    /// A `PUT /snapshot/load` body for these files.
    pub fn load_body(&self, resume: bool) -> String {
        format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": {resume}}}"#,
            self.snap.display(),
            self.mem.display()
        )
    }

    /// The `PUT /snapshot/create` body for these files.
    pub fn create_body(&self) -> String {
        format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            self.snap.display(),
            self.mem.display()
        )
    }
}

/// One request that must be answered `status`; returns the body.
pub fn expect(sock: &Path, method: &str, target: &str, body: &str, status: u16) -> String {
    let (got, answer) = http(sock, method, target, body);
    assert_eq!(got, status, "{method} {target} {body} -> {answer}");
    answer
}

/// Pauses `vm` (serving its API on `sock`), snapshots it into `files` and stops it.
pub fn save_and_stop(vm: &mut TestVm, sock: &Path, files: &Files) {
    expect(sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    expect(sock, "PUT", "/snapshot/create", &files.create_body(), 204);
    vm.signal(SIGTERM);
    vm.wait_exit(QUICK);
}
