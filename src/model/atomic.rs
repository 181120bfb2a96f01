//! An output file that only appears under its final name once complete.
//!
//! Data goes to `.{name}.partial-{pid}` in the destination folder (same file system, so the
//! final `rename` is atomic). If the writer is dropped without [`AtomicFile::commit`] (an
//! error, a panic, a Python KeyboardInterrupt raised from a progress callback) the temporary
//! file is removed. A hard kill can leave the `.partial` file behind, never a partial file under
//! the final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{QuantError, Result};

pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| QuantError::value(format!("output path {} has no file name", dest.display())))?;
        let tmp = dest.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| QuantError::Io { context: format!("cannot create {}", tmp.display()), source: e })?;
        Ok(Self { tmp, dest: dest.to_path_buf(), writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("not committed")
    }

    /// Flushes, syncs and renames to the final name.
    pub fn commit(mut self) -> Result<()> {
        let io = |what: &str, e| QuantError::Io { context: format!("cannot {what} {}", self.tmp.display()), source: e };
        let w = self.writer.take().expect("committed once");
        let file = w.into_inner().map_err(|e| io("write", e.into_error()))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| QuantError::Io { context: format!("cannot rename {} to {}", self.tmp.display(), self.dest.display()), source: e })?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
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
