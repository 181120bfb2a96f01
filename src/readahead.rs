//! Telling the kernel what the converter reads next, so that reading from disk overlaps with
//! encoding. Advice only: a kernel that ignores it costs the reader page faults, nothing else.

use std::fs::File;

use memmap2::Mmap;

/// Brings `len` bytes at `offset` of a mapping into memory, reading them from disk if needed,
/// so that the thread that reads them next finds them mapped: `MADV_POPULATE_READ` (Linux 5.14
/// and later), after `MADV_WILLNEED` has started the disk reads of the whole range at once.
pub fn populate(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        use memmap2::Advice;
        let _ = map.advise_range(Advice::WillNeed, offset, len);
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(Advice::PopulateRead, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// Starts reading a range of a mapping from disk, without waiting (`MADV_WILLNEED`).
pub fn will_need_mapped(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    let _ = map.advise_range(memmap2::Advice::WillNeed, offset, len);
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// Starts reading a range of a file from disk, without waiting (`posix_fadvise(WILLNEED)`).
pub fn will_need_file(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a file descriptor we own; it reads no memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset as _, len as _, libc::POSIX_FADV_WILLNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
