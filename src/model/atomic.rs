//! Output files that only appear under their final names once every output of the command is
//! complete, and never replace what they must not.
//!
//! Data goes to `.{name}.partial-{pid}` in the destination folder (same file system, so the
//! final `rename` is atomic). [`AtomicFile::finish`] flushes and syncs it into a [`Staged`]
//! file; [`Staged::commit`] renames it. A command with several outputs (the model and its
//! report) stages them all before it renames any. Whatever is dropped before its rename (an
//! error, a panic, a Python KeyboardInterrupt raised from a progress callback, a failed rename)
//! removes its temporary file. A hard kill can leave a `.partial` file behind, never a partial
//! file under a final name.
//!
//! An existing destination that is not a regular file (a directory, a device, a FIFO) is never
//! replaced, and [`refuse_same_file`] stops a command from writing over its own input.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{QuantError, Result};

pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Bytes written so far, and up to where the disk writes have been started.
    written: u64,
    kicked: u64,
}

/// Start the disk writes of every this many bytes as they are written, so that the final sync
/// waits for the last piece only, not for the whole file.
const WRITE_BEHIND: u64 = 64 << 20;

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| QuantError::value(format!("output path {} has no file name", dest.display())))?;
        if let Ok(meta) = std::fs::metadata(dest) {
            if !meta.is_file() {
                return Err(QuantError::value(format!(
                    "output path {} exists and is not a regular file (a directory, device or FIFO); refusing to replace it",
                    dest.display()
                )));
            }
        }
        let tmp = dest.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| {
            // Name the output the user gave, and its missing folder where that is the cause.
            let folder = dest.parent().filter(|p| !p.as_os_str().is_empty());
            let context = match folder {
                Some(f) if !f.is_dir() => format!("cannot write {}: its folder {} does not exist", dest.display(), f.display()),
                _ => format!("cannot write {} (through the temporary file {})", dest.display(), tmp.display()),
            };
            QuantError::Io { context, source: e }
        })?;
        Ok(Self { tmp, dest: dest.to_path_buf(), writer: Some(BufWriter::with_capacity(1 << 20, file)), written: 0, kicked: 0 })
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("not finished")
    }

    /// Flushes and syncs the data; the file keeps its temporary name until [`Staged::commit`].
    pub fn finish(mut self) -> Result<Staged> {
        let io = |what: &str, e| QuantError::Io { context: format!("cannot {what} {}", self.tmp.display()), source: e };
        let w = self.writer.take().expect("finished once");
        let file = w.into_inner().map_err(|e| io("write", e.into_error()))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        Ok(Staged { tmp: std::mem::take(&mut self.tmp), dest: std::mem::take(&mut self.dest), renamed: false })
    }

    /// [`finish`](Self::finish) and [`Staged::commit`], for a command with one output.
    pub fn commit(self) -> Result<()> {
        self.finish()?.commit()
    }
}

impl AtomicFile {
    /// Starts writing what has been written so far to the disk, without waiting for it
    /// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`; elsewhere the final sync does it all).
    fn write_behind(&mut self) -> std::io::Result<()> {
        let w = self.writer.as_mut().expect("not finished");
        w.flush()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (from, len) = (self.kicked as i64, (self.written - self.kicked) as i64);
            // SAFETY: a plain system call on a file descriptor we own; it reads no memory of ours.
            // Advice only: if it fails, the final sync writes everything.
            unsafe { libc::sync_file_range(w.get_ref().as_raw_fd(), from as _, len as _, libc::SYNC_FILE_RANGE_WRITE) };
        }
        self.kicked = self.written;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.writer().write(buf)?;
        self.written += n as u64;
        if self.written - self.kicked >= WRITE_BEHIND {
            self.write_behind()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A complete output under its temporary name.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    renamed: bool,
}

impl Staged {
    /// Renames the file to its final name. If the rename fails, the temporary file is removed
    /// and whatever was at the final name is untouched.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| QuantError::Io {
            context: format!("cannot rename {} to {}", self.tmp.display(), self.dest.display()),
            source: e,
        })?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Refuses an output that is one of the inputs: the same file under any path (links, `..`,
/// another mount of it). Only an existing output can be an input.
pub fn refuse_same_file<'a>(output: &Path, inputs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    for input in inputs {
        if let Ok(inp) = std::fs::metadata(input) {
            if same_file(&out, &inp) {
                return Err(QuantError::value(format!(
                    "output {} is the input file {}; choose another output path",
                    output.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}
