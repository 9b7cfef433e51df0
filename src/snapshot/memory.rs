//! The guest memory file: every RAM region's bytes, one after the other. Written sparse
//! (all-zero pages become holes) and loaded with `MAP_PRIVATE | MAP_NORESERVE`: pages come
//! from the page cache on first touch and are copied only when the guest writes them, so
//! VMs restored from one file share its unmodified pages.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use super::state::MemoryRegion;

const PAGE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;

/// Errors writing or loading a memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot create the memory file {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot write the memory file {0}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot read guest memory at {0:#x}")]
    ReadGuest(u64, String),
    #[error("cannot open the memory file {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("the memory file {path} has {found} bytes; the snapshot's memory is {expected} bytes")]
    Size {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the snapshot's memory layout is invalid: {0}")]
    Layout(String),
    #[error("cannot map the memory file {0}: {1}")]
    Map(PathBuf, String),
}

/// The regions of `mem`, in order.
pub fn layout(mem: &GuestMemoryMmap) -> Vec<MemoryRegion> {
    mem.iter()
        .map(|r| MemoryRegion {
            guest_addr: r.start_addr().0,
            len: r.len(),
        })
        .collect()
}

/// Total bytes of `regions`, if it fits.
pub fn total_len(regions: &[MemoryRegion]) -> Option<u64> {
    regions
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.len))
}

/// Writes `mem` to a new file at `path` (replacing one that is there), leaving holes for
/// all-zero pages. Returns the bytes actually written.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemoryFileError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| MemoryFileError::Create(path.into(), e))?;
    let werr = |e| MemoryFileError::Write(path.into(), e);
    let total = total_len(&layout(mem)).unwrap_or(0);
    file.set_len(total).map_err(werr)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_off = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut off = 0u64;
        while off < len {
            let n = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, MemoryRegionAddress(off))
                .map_err(|e| {
                    MemoryFileError::ReadGuest(region.start_addr().0 + off, e.to_string())
                })?;
            written += write_nonzero_runs(&file, chunk, file_off + off).map_err(werr)?;
            off += n as u64;
        }
        file_off += len;
    }
    file.sync_data().map_err(werr)?;
    Ok(written)
}

/// Writes the runs of non-zero pages of `chunk` at `at`; returns the bytes written.
fn write_nonzero_runs(file: &File, chunk: &[u8], at: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut run_start: Option<usize> = None;
    let pages = chunk.len().div_ceil(PAGE);
    for p in 0..=pages {
        let page = chunk.get(p * PAGE..((p + 1) * PAGE).min(chunk.len()));
        let nonzero = page.is_some_and(|pg| !pg.is_empty() && pg.iter().any(|&b| b != 0));
        match (nonzero, run_start) {
            (true, None) => run_start = Some(p * PAGE),
            (false, Some(s)) => {
                let end = (p * PAGE).min(chunk.len());
                file.write_all_at(&chunk[s..end], at + s as u64)?;
                written += (end - s) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Checks a snapshot's memory layout: page-aligned, non-empty, non-overlapping regions in
/// ascending order; returns the total size.
pub fn check_layout(regions: &[MemoryRegion]) -> Result<u64, MemoryFileError> {
    let bad = |m: String| MemoryFileError::Layout(m);
    if regions.is_empty() {
        return Err(bad("no memory regions".into()));
    }
    let mut end = 0u64;
    for r in regions {
        if r.len == 0 || r.len % PAGE as u64 != 0 || r.guest_addr % PAGE as u64 != 0 {
            return Err(bad(format!(
                "region at {:#x} of {:#x} bytes is not page-aligned",
                r.guest_addr, r.len
            )));
        }
        if r.guest_addr < end {
            return Err(bad(format!("region at {:#x} overlaps", r.guest_addr)));
        }
        end = r
            .guest_addr
            .checked_add(r.len)
            .ok_or_else(|| bad(format!("region at {:#x} wraps", r.guest_addr)))?;
    }
    total_len(regions).ok_or_else(|| bad("too large".into()))
}

/// Maps the memory file at `path` as guest memory laid out as `regions`, copy-on-write.
pub fn load(path: &Path, regions: &[MemoryRegion]) -> Result<GuestMemoryMmap, MemoryFileError> {
    let expected = check_layout(regions)?;
    let file = File::open(path).map_err(|e| MemoryFileError::Open(path.into(), e))?;
    let found = file
        .metadata()
        .map_err(|e| MemoryFileError::Open(path.into(), e))?
        .len();
    if found != expected {
        return Err(MemoryFileError::Size {
            path: path.into(),
            found,
            expected,
        });
    }
    let file = Arc::new(file);
    let map_err = |m: String| MemoryFileError::Map(path.into(), m);
    let mut mapped = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for r in regions {
        let len = usize::try_from(r.len).map_err(|_| map_err("region too large".into()))?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err("region wraps the address space".into()))?;
        mapped.push(region);
        offset += r.len;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn memory_round_trips_sparse_and_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mem = guest(16 * PAGE);
        mem.write_slice(b"hello", GuestAddress(3 * PAGE as u64 + 7))
            .unwrap();
        mem.write_slice(&[1u8; PAGE], GuestAddress(10 * PAGE as u64))
            .unwrap();
        let written = write(&mem, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * PAGE as u64);
        let loaded = load(&path, &layout(&mem)).unwrap();
        let mut got = [0u8; 5];
        loaded
            .read_slice(&mut got, GuestAddress(3 * PAGE as u64 + 7))
            .unwrap();
        assert_eq!(&got, b"hello");
        // A guest write stays private to the restored VM.
        loaded.write_slice(b"XX", GuestAddress(0)).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..2], &[0, 0]);
        assert_eq!(on_disk[10 * PAGE], 1);
    }

    #[test]
    fn a_file_of_the_wrong_size_or_a_bad_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, vec![0u8; 3 * PAGE]).unwrap();
        let regions = [MemoryRegion {
            guest_addr: 0,
            len: 4 * PAGE as u64,
        }];
        let e = load(&path, &regions).unwrap_err();
        assert!(e.to_string().contains("has 12288 bytes"), "{e}");
        let e = load(&dir.path().join("none"), &regions).unwrap_err();
        assert!(matches!(e, MemoryFileError::Open(..)), "{e}");
        for bad in [
            vec![],
            vec![MemoryRegion {
                guest_addr: 1,
                len: PAGE as u64,
            }],
            vec![
                MemoryRegion {
                    guest_addr: 0,
                    len: 2 * PAGE as u64,
                },
                MemoryRegion {
                    guest_addr: PAGE as u64,
                    len: PAGE as u64,
                },
            ],
            vec![MemoryRegion {
                guest_addr: u64::MAX - 4095,
                len: 2 * PAGE as u64,
            }],
        ] {
            assert!(matches!(
                check_layout(&bad),
                Err(MemoryFileError::Layout(_))
            ));
        }
    }
}
