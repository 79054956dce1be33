//! A small filesystem that fills up: a size-limited tmpfs mounted on a
//! fresh directory (needs root), for disk-fault tests through the real
//! write paths.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs of a few pages; unmounted on drop.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel).
    pub fn mount(bytes: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount")
            .success();
        assert!(ok, "cannot mount a tmpfs (the disk-fault tests need root)");
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// Fills the filesystem, leaving at most `leave` bytes free.
    pub fn fill(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler");
        let page = [0u8; 4096];
        while self.free() > leave {
            if f.write_all(&page).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }

    /// Frees what `fill` took.
    pub fn free_up(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    /// Bytes free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.dir.path())
            .output()
            .expect("stat");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        it.next().unwrap_or(0) * it.next().unwrap_or(0)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
