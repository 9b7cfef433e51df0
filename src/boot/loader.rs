//! Loading the kernel (ELF `vmlinux` or `bzImage`, through linux-loader) and the initrd
//! into guest memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::loader::{self, KernelLoader, bzimage::BzImage, elf::Elf};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::HIMEM_START;
use super::zeropage;

/// Guest memory the kernel needs beyond its image and the initrd to get to user space.
pub const RUNTIME_HEADROOM: u64 = 16 << 20;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// "HdrS" at offset 0x202 marks a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";

/// Errors loading the kernel or the initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open {}", .0.display())]
    Open(PathBuf, #[source] io::Error),
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("{} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)", .0.display())]
    NotAKernel(PathBuf),
    #[error("cannot load kernel {}", .0.display())]
    Load(PathBuf, #[source] loader::Error),
    #[error(
        "guest memory of {mem_mib} MiB is too small for kernel {} and initrd ({need_mib} MiB needed)",
        .path.display()
    )]
    MemoryTooSmall {
        path: PathBuf,
        mem_mib: u64,
        need_mib: u64,
    },
    #[error("initrd {} is empty", .0.display())]
    EmptyInitrd(PathBuf),
    #[error("cannot place initrd {}", .0.display())]
    PlaceInitrd(PathBuf, #[source] zeropage::ZeroPageError),
    #[error("cannot copy initrd {} into guest memory", .0.display())]
    CopyInitrd(PathBuf, #[source] vm_memory::GuestMemoryError),
}

/// The kernel format hvlite recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF `vmlinux`, entered at its ELF entry point.
    Elf,
    /// `bzImage`, entered at the 64-bit entry of its decompressor.
    BzImage,
}

/// Where a loaded kernel sits and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The format that was loaded.
    pub format: KernelFormat,
    /// Guest physical address of the 64-bit entry point.
    pub entry: u64,
    /// End of the memory the kernel needs before it can allocate (image or, for a
    /// bzImage, the decompression buffer).
    pub end: u64,
    /// The bzImage's setup header, to seed the zero page.
    pub setup_header: Option<setup_header>,
}

fn open_regular(path: &Path) -> Result<File, LoaderError> {
    let file = File::open(path).map_err(|e| LoaderError::Open(path.to_owned(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| LoaderError::Read(path.to_owned(), e))?;
    if !meta.is_file() {
        return Err(LoaderError::NotAFile(path.to_owned()));
    }
    Ok(file)
}

/// Checks that `path` is a regular file this process can read.
pub fn check_readable(path: &Path) -> Result<(), LoaderError> {
    open_regular(path).map(drop)
}

/// Tells the kernel format from the file's magic numbers.
pub fn detect_format<R: Read + Seek>(image: &mut R) -> io::Result<Option<KernelFormat>> {
    let mut magic = [0u8; 4];
    image.seek(SeekFrom::Start(0))?;
    if image.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC {
        return Ok(Some(KernelFormat::Elf));
    }
    image.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))?;
    if image.read_exact(&mut magic).is_ok() && magic == BZIMAGE_MAGIC {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

fn too_small(path: &Path, mem_size: u64, need: u64) -> LoaderError {
    LoaderError::MemoryTooSmall {
        path: path.to_owned(),
        mem_mib: mem_size >> 20,
        need_mib: mib_up(need),
    }
}

/// Loads the kernel at `path` into `mem` (of `mem_size` bytes).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = open_regular(path)?;
    let format = detect_format(&mut file)
        .map_err(|e| LoaderError::Read(path.to_owned(), e))?
        .ok_or_else(|| LoaderError::NotAKernel(path.to_owned()))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, himem),
    };
    let result = result.map_err(|e| match e {
        // The image's segments did not fit into guest memory.
        loader::Error::Elf(loader::elf::Error::ReadKernelImage)
        | loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageCompressedKernel) => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            too_small(path, mem_size, HIMEM_START + size + RUNTIME_HEADROOM)
        }
        other => LoaderError::Load(path.to_owned(), other),
    })?;
    let (entry, end) = match (format, result.setup_header) {
        (KernelFormat::BzImage, Some(hdr)) => {
            let entry = result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
            // The decompressor unpacks to pref_address and needs init_size bytes there.
            let unpacked_end = hdr.pref_address.saturating_add(u64::from(hdr.init_size));
            (entry, result.kernel_end.max(unpacked_end))
        }
        _ => (result.kernel_load.0, result.kernel_end),
    };
    Ok(LoadedKernel {
        format,
        entry,
        end,
        setup_header: result.setup_header,
    })
}

/// Checks that `mem_size` holds the kernel, the initrd and the headroom the kernel needs.
pub fn check_fits(
    kernel: &LoadedKernel,
    initrd_size: u64,
    mem_size: u64,
    path: &Path,
) -> Result<(), LoaderError> {
    let need = kernel
        .end
        .saturating_add(initrd_size)
        .saturating_add(RUNTIME_HEADROOM);
    if need > mem_size {
        return Err(too_small(path, mem_size, need));
    }
    Ok(())
}

/// An initrd, opened and sized but not yet copied.
pub struct Initrd {
    path: PathBuf,
    file: File,
    /// Size in bytes.
    pub size: u64,
}

impl Initrd {
    /// Opens the initrd at `path`.
    pub fn open(path: &Path) -> Result<Self, LoaderError> {
        let file = open_regular(path)?;
        let size = file
            .metadata()
            .map_err(|e| LoaderError::Read(path.to_owned(), e))?
            .len();
        if size == 0 {
            return Err(LoaderError::EmptyInitrd(path.to_owned()));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
        })
    }

    /// Copies the initrd to the top of low memory; returns its guest address.
    pub fn load(mut self, mem: &GuestMemoryMmap, mem_size: u64) -> Result<u64, LoaderError> {
        let addr = zeropage::initrd_load_addr(mem_size, self.size)
            .map_err(|e| LoaderError::PlaceInitrd(self.path.clone(), e))?;
        let len = usize::try_from(self.size).map_err(|_| {
            LoaderError::Read(self.path.clone(), io::Error::other("initrd too large"))
        })?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut self.file, len)
            .map_err(|e| LoaderError::CopyInitrd(self.path.clone(), e))?;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn detects_formats_by_magic() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        let mut text = Cursor::new(b"#!/bin/sh\necho not a kernel\n".to_vec());
        assert_eq!(detect_format(&mut text).unwrap(), None);
        assert_eq!(detect_format(&mut Cursor::new(Vec::new())).unwrap(), None);
    }

    #[test]
    fn fit_check_counts_initrd_and_headroom() {
        let k = LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let p = Path::new("k");
        assert!(check_fits(&k, 4 << 20, 128 << 20, p).is_ok());
        let err = check_fits(&k, 4 << 20, 48 << 20, p).unwrap_err();
        assert!(err.to_string().contains("52 MiB needed"), "{err}");
    }
}
