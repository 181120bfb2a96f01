//! Output buffers for whole batches.
//!
//! Results go into freshly allocated buffers that are handed to the caller, so every call
//! touches new pages. Two things keep that cheap:
//! * the buffers are `Vec`s of the element type (byte or f32 alignment), which the allocator
//!   zero-fills with `calloc`: fresh pages come zeroed from the kernel, lazily, and are first
//!   touched by the worker threads that write results, in parallel. (Arrow's own
//!   `MutableBuffer::from_len_zeroed` asks for 64-byte alignment, which makes the allocator
//!   `memset` the whole buffer on one thread first: that alone halved the speed of the Python
//!   path on 256 MiB of weights.)
//! * on Linux, large buffers ask for transparent huge pages, cutting page faults 512-fold where
//!   the system allows it (THP "madvise" mode).
//!
//! The `Vec`s become Arrow buffers without a copy (`Buffer::from_vec`).

/// Below this, 4 KiB pages are fine.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// `len` zeros of `T`.
pub fn zeroed<T: bytemuck::Zeroable>(len: usize) -> Vec<T> {
    let mut v: Vec<T> = bytemuck::zeroed_vec(len);
    if len * size_of::<T>() >= HUGE_PAGE_MIN {
        advise_huge_pages(v.as_mut_ptr().cast::<u8>(), len * size_of::<T>());
    }
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = ptr as usize;
    let aligned = start.next_multiple_of(HUGE);
    let end = (start + len) / HUGE * HUGE;
    if end > aligned {
        // SAFETY: the range lies inside the allocation of `len` bytes at `ptr`, which the caller
        // owns; madvise only changes how the kernel backs the pages (advice: contents are
        // unchanged), and a refusal (no THP support) is harmless, so its result is ignored.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}
