//! `--volume HOST_DIR:GUEST_DIR[:ro]`: a host directory copied into the guest before the command
//! (a tar stream through the agent into a tmpfs directory), and for a writable volume copied
//! back after a command that exited 0 (the guest's tar stream unpacked beside the host directory,
//! then mirrored into it: new and changed files written, files the command deleted deleted).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::agent::shell_quote;

/// One `--volume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it (absolute).
    pub guest: PathBuf,
    /// Read-only in the guest, never copied back.
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOST_DIR:GUEST_DIR[:ro|:rw]`.
    pub fn parse(spec: &str) -> Result<Volume, String> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() == 3 => true,
            Some(&"rw") if parts.len() == 3 => false,
            _ if parts.len() == 2 => false,
            _ => return Err(format!("--volume {spec}: expected HOST_DIR:GUEST_DIR[:ro]")),
        };
        parts.truncate(2);
        let (host, guest) = (parts[0], parts[1]);
        if host.is_empty() || !guest.starts_with('/') || guest == "/" {
            return Err(format!(
                "--volume {spec}: expected HOST_DIR:GUEST_DIR[:ro], GUEST_DIR absolute and not /"
            ));
        }
        Ok(Volume {
            host: PathBuf::from(host),
            guest: PathBuf::from(guest),
            read_only,
        })
    }

    /// Checks that the host side is a directory.
    pub fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.host) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!(
                "--volume: {} is not a directory",
                self.host.display()
            )),
            Err(e) => Err(format!("--volume: {}: {e}", self.host.display())),
        }
    }

    /// The guest script that unpacks the tar stream on stdin into `root` + GUEST_DIR (a tmpfs
    /// mounted there when the directory is on a read-only root file system).
    pub fn unpack_script(&self, root: &Path) -> Vec<u8> {
        let dir = quoted(&root.join(self.guest.strip_prefix("/").unwrap_or(&self.guest)));
        let mut s = Vec::new();
        s.extend_from_slice(b"set -e\nd=");
        s.extend_from_slice(&dir);
        s.extend_from_slice(b"\nmkdir -p \"$d\"\n");
        s.extend_from_slice(b"touch \"$d\" 2>/dev/null || mount -t tmpfs tmpfs \"$d\"\n");
        s.extend_from_slice(b"tar -x -C \"$d\"\n");
        if self.read_only {
            s.extend_from_slice(b"mount --bind \"$d\" \"$d\"\nmount -o remount,bind,ro \"$d\"\n");
        }
        s
    }

    /// The guest script that writes GUEST_DIR as a tar stream on stdout.
    pub fn pack_script(&self, root: &Path) -> Vec<u8> {
        let dir = quoted(&root.join(self.guest.strip_prefix("/").unwrap_or(&self.guest)));
        let mut s = b"tar -c -C ".to_vec();
        s.extend_from_slice(&dir);
        s.extend_from_slice(b" .\n");
        s
    }

    /// The host's tar writing the host directory on its stdout.
    pub fn spawn_pack(&self) -> io::Result<Child> {
        Command::new("tar")
            .args(["-c", "--numeric-owner", "-C"])
            .arg(&self.host)
            .arg(".")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// A fresh directory beside the host directory to unpack the guest's copy into.
    pub fn staging(&self) -> io::Result<PathBuf> {
        let host = std::fs::canonicalize(&self.host)?;
        let name = host.file_name().unwrap_or(OsStr::new("volume"));
        let mut staging_name = OsStr::new(".").to_os_string();
        staging_name.push(name);
        staging_name.push(format!(".ember-run.{}", std::process::id()));
        let staging = host.parent().unwrap_or(Path::new("/")).join(staging_name);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)?;
        Ok(staging)
    }

    /// The host's tar unpacking a stream on its stdin into `dir`.
    pub fn spawn_unpack(dir: &Path) -> io::Result<Child> {
        Command::new("tar")
            .args(["-x", "--no-same-owner", "-C"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    }
}

fn quoted(path: &Path) -> Vec<u8> {
    shell_quote(path.as_os_str().as_bytes())
}

/// Makes `dst` hold what `src` holds: entries only in `dst` are removed, the others replaced by
/// `src`'s (moved, so `src` is emptied). Symbolic links are copied as links, never followed.
pub fn mirror(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        let there = src.join(entry.file_name());
        if std::fs::symlink_metadata(&there).is_err() {
            remove_any(&entry.path())?;
        }
    }
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        let old = std::fs::symlink_metadata(&to).ok();
        if kind.is_dir() {
            match old {
                Some(m) if m.is_dir() => {
                    std::fs::set_permissions(&to, std::fs::metadata(&from)?.permissions())?;
                    mirror(&from, &to)?;
                }
                Some(_) => {
                    remove_any(&to)?;
                    std::fs::rename(&from, &to)?;
                }
                None => std::fs::rename(&from, &to)?,
            }
        } else {
            if old.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(&to)?;
            }
            // A rename replaces a file or link atomically.
            std::fs::rename(&from, &to)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_volume_parse() {
        let v = Volume::parse("./dir:/work").expect("ok");
        assert_eq!(
            (v.host, v.guest, v.read_only),
            ("./dir".into(), "/work".into(), false)
        );
        assert!(Volume::parse("/a:/b:ro").expect("ok").read_only);
        assert!(!Volume::parse("/a:/b:rw").expect("ok").read_only);
        for bad in ["/a", "/a:b", "/a:/", ":/b", "/a:/b:xx", "/a:/b:ro:ro"] {
            assert!(Volume::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_mirror_adds_changes_and_deletes() {
        let base = std::env::temp_dir().join(format!("ember-mirror-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (src, dst) = (base.join("src"), base.join("dst"));
        for d in [&src, &dst] {
            std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        }
        std::fs::write(dst.join("kept"), b"old").expect("w");
        std::fs::write(dst.join("gone"), b"x").expect("w");
        std::fs::write(dst.join("sub/gone"), b"x").expect("w");
        std::fs::create_dir_all(dst.join("olddir/deep")).expect("mkdir");
        std::fs::write(src.join("kept"), b"new").expect("w");
        std::fs::write(src.join("sub/added"), b"a").expect("w");
        std::fs::create_dir_all(src.join("newdir")).expect("mkdir");
        std::os::unix::fs::symlink("kept", src.join("link")).expect("symlink");
        mirror(&src, &dst).expect("mirror");
        assert_eq!(std::fs::read(dst.join("kept")).expect("r"), b"new");
        assert_eq!(std::fs::read(dst.join("sub/added")).expect("r"), b"a");
        assert!(!dst.join("gone").exists() && !dst.join("sub/gone").exists());
        assert!(!dst.join("olddir").exists() && dst.join("newdir").is_dir());
        assert_eq!(
            std::fs::read_link(dst.join("link")).expect("link"),
            Path::new("kept")
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
