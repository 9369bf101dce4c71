//! The raw `bpf(2)` commands userspace needs beyond what aya 0.14 wraps: the map batch
//! commands (one syscall for thousands of entries) and `BPF_OBJ_GET` (open a pin by path).
//! Shared by the loader's sweeper and the bench's table filler, so the attribute layouts are
//! written once.

use core::ffi::{c_uint, CStr};

pub const BPF_OBJ_GET: i64 = 7;
pub const BPF_MAP_LOOKUP_BATCH: i64 = 24;
pub const BPF_MAP_UPDATE_BATCH: i64 = 26;
pub const BPF_MAP_DELETE_BATCH: i64 = 27;

/// The attribute block of the `BPF_MAP_*_BATCH` commands (`union bpf_attr`'s `batch`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchAttr {
    /// Pointer to the token to resume from (0: from the start).
    pub in_batch: u64,
    /// Pointer to where the kernel writes the token to resume from next time.
    pub out_batch: u64,
    /// Pointer to the keys, back to back.
    pub keys: u64,
    /// Pointer to the values, back to back (0 for a delete).
    pub values: u64,
    /// In: how many entries the buffers hold; out: how many were done.
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `bpf(2)` command `cmd` on the attribute block `attr`: its return value, or the errno.
///
/// # Safety
///
/// `attr` must be the attribute block of `cmd`, and every pointer in it must refer to a live
/// buffer of the size that the command reads or writes (for a batch: `count` keys and values
/// of the map's sizes, and 8-byte tokens).
pub unsafe fn bpf<T>(cmd: i64, attr: &mut T) -> Result<i64, i32> {
    // SAFETY: the caller vouches for the attribute block and the buffers it points at.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            core::mem::size_of::<T>() as c_uint,
        )
    };
    if ret < 0 {
        // SAFETY: the calling thread's errno, read right after the failed call.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(ret)
}

/// Open the BPF object pinned at `path`: a new descriptor, or the errno.
pub fn obj_get(path: &CStr) -> Result<i32, i32> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: BPF_OBJ_GET's attribute block, whose only pointer is to `path`, a live
    // NUL-terminated string.
    unsafe { bpf(BPF_OBJ_GET, &mut attr) }.map(|fd| fd as i32)
}
