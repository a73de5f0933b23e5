//! The snapshot cache of `ember run`: a booted, idle agent VM per kernel + initrd + VM shape +
//! Ember build, so that a repeated run restores instead of booting.
//!
//! An entry is a directory `<cache>/<key>/` holding `vm.snap`, `vm.mem` and `key` (the text the
//! key was hashed from). It is written in a temporary directory and renamed into place, so a
//! reader sees a whole entry or none; two runs that miss at once both boot and the first rename
//! wins. Restores map `vm.mem` copy-on-write and never change it, so any number of runs can use
//! one entry at once. Deleting the directory is always safe. Each entry is as big as the guest's
//! memory: when a run saves one, all but the `KEEP` most recently used entries of the cache go
//! (a restore marks its entry used; a VM running from a removed entry keeps its mapping).

use std::fs::File;
use std::hash::Hasher;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// How many snapshots a cache directory keeps.
pub const KEEP: usize = 4;

/// The files of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The directory.
    pub dir: PathBuf,
    /// What the key was made from (kept in `<dir>/key` to check against).
    pub key_text: String,
}

impl Entry {
    /// The state file.
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("vm.snap")
    }

    /// The memory file.
    pub fn memory(&self) -> PathBuf {
        self.dir.join("vm.mem")
    }

    /// Whether a whole snapshot for this key is there. A directory made for another key is an
    /// error (an explicit `--from-snapshot` directory reused with other settings).
    pub fn is_ready(&self) -> Result<bool, String> {
        match std::fs::read_to_string(self.dir.join("key")) {
            Ok(text) if text == self.key_text => {
                Ok(self.snapshot().is_file() && self.memory().is_file())
            }
            Ok(_) => Err(format!(
                "{} holds a snapshot made with another kernel, initrd, VM shape or Ember build; \
                 remove it or use another directory",
                self.dir.display()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("{}: {e}", self.dir.join("key").display())),
        }
    }

    /// Marks the entry as used now (pruning keeps the most recently used).
    pub fn touch(&self) {
        let _ = File::options()
            .write(true)
            .open(self.dir.join("key"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }

    /// A fresh directory next to the entry to write a snapshot into, then `commit`.
    pub fn staging(&self) -> io::Result<PathBuf> {
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)?;
        std::fs::write(staging.join("key"), &self.key_text)?;
        Ok(staging)
    }

    /// Moves a filled `staging` directory into place; when another run got there first, its
    /// entry stays and `staging` is removed.
    pub fn commit(&self, staging: &Path) -> io::Result<()> {
        if self.dir.exists() && !self.is_ready().unwrap_or(false) {
            // An unfinished or foreign directory (an explicit one): replaced.
            for file in ["vm.snap", "vm.mem", "key"] {
                let _ = std::fs::remove_file(self.dir.join(file));
            }
            let _ = std::fs::remove_dir(&self.dir);
        }
        match std::fs::rename(staging, &self.dir) {
            Ok(()) => Ok(()),
            Err(_) if self.is_ready().unwrap_or(false) => {
                let _ = std::fs::remove_dir_all(staging);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(staging);
                Err(e)
            }
        }
    }
}

/// Removes all but the `keep` most recently used entries of `cache` (directories named by
/// `key_name` that hold a `key` file), never `current`; returns how many went.
pub fn prune(cache: &Path, keep: usize, current: &Path) -> io::Result<usize> {
    let mut entries = Vec::new();
    for item in std::fs::read_dir(cache)? {
        let path = item?.path();
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !named || path == current {
            continue;
        }
        if let Ok(used) = std::fs::metadata(path.join("key")).and_then(|m| m.modified()) {
            entries.push((used, path));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut removed = 0;
    for (_, path) in entries.into_iter().skip(keep.saturating_sub(1)) {
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The default cache directory: `$EMBER_CACHE_DIR/run`, else `$XDG_CACHE_HOME/ember/run`, else
/// `~/.cache/ember/run` (the guest kernel's cache lives beside it).
pub fn default_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("EMBER_CACHE_DIR") {
        return dir.join("run");
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ember").join("run")
}

/// A 64-bit hash of a file's bytes (FNV-1a: stable across builds and Rust versions).
pub fn hash_file(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut hasher = Fnv1a::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.write(&buf[..n]);
    }
}

/// The entry directory name for `key_text`.
pub fn key_name(key_text: &str) -> String {
    let mut hasher = Fnv1a::default();
    hasher.write(key_text.as_bytes());
    format!("{:016x}", hasher.finish())
}

/// FNV-1a, 64 bits.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn test_key_name_is_stable_and_distinct() {
        assert_eq!(key_name(""), "cbf29ce484222325");
        assert_ne!(key_name("a"), key_name("b"));
        let dir = scratch("hash");
        let file = dir.join("f");
        std::fs::write(&file, b"a").expect("write");
        assert_eq!(hash_file(&file).expect("hash"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn test_prune_keeps_the_most_recently_used() {
        let dir = scratch("prune");
        let entry = |n: u64| Entry {
            dir: dir.join(format!("{n:016x}")),
            key_text: format!("k{n}"),
        };
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for n in 0..6u64 {
            let e = entry(n);
            let staging = e.staging().expect("staging");
            e.commit(&staging).expect("commit");
            File::options()
                .write(true)
                .open(e.dir.join("key"))
                .and_then(|f| f.set_modified(base + std::time::Duration::from_secs(n)))
                .expect("mtime");
        }
        std::fs::create_dir(dir.join("not-an-entry")).expect("mkdir");
        entry(1).touch(); // used just now
        assert_eq!(prune(&dir, 3, &entry(0).dir).expect("prune"), 3);
        for (n, kept) in [
            (0, true),
            (1, true),
            (5, true),
            (4, false),
            (3, false),
            (2, false),
        ] {
            assert_eq!(entry(n).dir.exists(), kept, "entry {n}");
        }
        assert!(dir.join("not-an-entry").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_entry_staging_commit_and_foreign_key() {
        let dir = scratch("entry");
        let entry = Entry {
            dir: dir.join("k1"),
            key_text: "kernel=1".into(),
        };
        assert_eq!(entry.is_ready(), Ok(false));
        let staging = entry.staging().expect("staging");
        std::fs::write(staging.join("vm.snap"), b"s").expect("snap");
        std::fs::write(staging.join("vm.mem"), b"m").expect("mem");
        entry.commit(&staging).expect("commit");
        assert_eq!(entry.is_ready(), Ok(true));
        assert!(!staging.exists());
        // A second writer that lost the race: its staging goes, the entry stays.
        let late = entry.staging().expect("staging");
        entry.commit(&late).expect("commit");
        assert_eq!(entry.is_ready(), Ok(true));
        assert!(!late.exists());
        let other = Entry {
            dir: entry.dir.clone(),
            key_text: "kernel=2".into(),
        };
        assert!(
            other
                .is_ready()
                .expect_err("foreign")
                .contains("another kernel")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
