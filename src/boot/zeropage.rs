//! The Linux x86 boot protocol "zero page" (`struct boot_params`) for a 64-bit entry.
//!
//! E820 map: RAM is [0, EBDA_START), [HIMEM_START, min(size, 3 GiB)) and, for more than
//! 3 GiB, [4 GiB, 4 GiB + size - 3 GiB). The EBDA, where the MP table lives, and the
//! legacy VGA/BIOS area up to 1 MiB get no entry at all: memory without an E820 RAM entry
//! is never handed to the kernel's allocator, so the MP table stays intact, and Linux
//! still maps it to read it.

use linux_loader::loader::bootparam::{
    CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, boot_e820_entry, boot_params,
    setup_header,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// `boot_flag` value required by the boot protocol.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` value "HdrS" required by the boot protocol.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Physical alignment the kernel is relocated to (16 MiB).
pub const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Boot protocol version from which `cmdline_size` holds the kernel's limit.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// Guest page size, the initrd alignment.
const PAGE_SIZE: u64 = 0x1000;

/// Errors while building or writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The E820 table of the zero page holds at most 128 entries.
    #[error("{0} E820 entries do not fit in the zero page (at most {E820_MAX_ENTRIES_ZEROPAGE})")]
    TooManyE820Entries(usize),
    /// The command line is longer than the kernel's header allows.
    #[error("command line of {size} bytes exceeds the kernel's limit of {max} bytes")]
    CmdlineTooLong {
        /// Command line length without the NUL.
        size: usize,
        /// The kernel's limit (`setup_header.cmdline_size`).
        max: u32,
    },
    /// The initrd does not fit between high memory and the end of low RAM.
    #[error("an initrd of {size} bytes does not fit in guest RAM between {floor:#x} and {end:#x}")]
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// Lowest allowed address.
        floor: u64,
        /// End of RAM below the MMIO gap.
        end: u64,
    },
    /// The zero page could not be written to guest memory.
    #[error("failed to write the zero page to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// What the zero page must describe.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroPageConfig {
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Guest address of the command line.
    pub cmdline_addr: u64,
    /// Command line size including the terminating NUL.
    pub cmdline_size: usize,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// Setup header of a bzImage; its fields are kept unless overridden here.
    pub setup_header: Option<setup_header>,
}

fn ram(addr: u64, end: u64) -> boot_e820_entry {
    boot_e820_entry {
        addr,
        size: end - addr,
        r#type: E820_RAM,
    }
}

/// The E820 memory map of a guest with `mem_size` bytes of RAM (see the module docs).
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![ram(0, mem_size.min(EBDA_START))];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end));
    }
    if mem_size > MMIO_GAP_START {
        map.push(ram(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_size - MMIO_GAP_START),
        ));
    }
    map
}

/// Stores `entries` as the E820 table of `params`.
pub fn set_e820(
    params: &mut boot_params,
    entries: &[boot_e820_entry],
) -> Result<(), ZeroPageError> {
    if entries.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(ZeroPageError::TooManyE820Entries(entries.len()));
    }
    let mut table = [boot_e820_entry::default(); E820_MAX_ENTRIES_ZEROPAGE];
    table[..entries.len()].copy_from_slice(entries);
    params.e820_table = table;
    // At most 128, checked above.
    params.e820_entries = entries.len() as u8;
    Ok(())
}

/// Builds the zero page for a 64-bit boot: the loader fields of the setup header
/// (starting from the bzImage's header if there is one), command line, initrd and E820.
///
/// `loadflags` gets LOADED_HIGH (the kernel sits at 1 MiB) and loses CAN_USE_HEAP: the
/// heap only matters to the real-mode setup code, which a 64-bit entry skips, and
/// `heap_end_ptr` is not set up.
pub fn build_boot_params(cfg: &ZeroPageConfig) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params::default();
    if let Some(hdr) = cfg.setup_header {
        let max = hdr.cmdline_size;
        let len = cfg.cmdline_size.saturating_sub(1);
        if hdr.version >= PROTOCOL_CMDLINE_SIZE && max != 0 && len > max as usize {
            return Err(ZeroPageError::CmdlineTooLong { size: len, max });
        }
        params.hdr = hdr;
    }
    let hdr = &mut params.hdr;
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG_MAGIC;
    hdr.header = HDRS_MAGIC;
    hdr.kernel_alignment = KERNEL_ALIGNMENT;
    hdr.loadflags = (hdr.loadflags | LOADED_HIGH) & !CAN_USE_HEAP;
    // Addresses above 4 GiB continue in the ext_* fields.
    hdr.cmd_line_ptr = cfg.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (cfg.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = cfg.cmdline_size as u32;
    if let Some((addr, size)) = cfg.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    set_e820(&mut params, &e820_map(cfg.mem_size))?;
    Ok(params)
}

/// Writes `params` at [`ZERO_PAGE_START`]; RSI points there at kernel entry.
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ZeroPageError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(ZeroPageError::Write)
}

/// Highest page-aligned address at which `initrd_size` bytes fit below the end of low
/// RAM (`min(mem_size, MMIO_GAP_START)`) and at or above `floor`.
pub fn initrd_load_addr_above(
    mem_size: u64,
    initrd_size: u64,
    floor: u64,
) -> Result<u64, ZeroPageError> {
    let end = mem_size.min(MMIO_GAP_START);
    let err = ZeroPageError::InitrdDoesNotFit {
        size: initrd_size,
        floor,
        end,
    };
    let addr = end.checked_sub(initrd_size).ok_or(err)? & !(PAGE_SIZE - 1);
    if addr < floor {
        return Err(ZeroPageError::InitrdDoesNotFit {
            size: initrd_size,
            floor,
            end,
        });
    }
    Ok(addr)
}

/// Highest page-aligned address for the initrd below the end of low RAM and above
/// [`HIMEM_START`]. The caller must still make sure it does not overlap the kernel; use
/// [`initrd_load_addr_above`] with the kernel's end for that.
pub fn initrd_load_addr(mem_size: u64, initrd_size: u64) -> Result<u64, ZeroPageError> {
    initrd_load_addr_above(mem_size, initrd_size, HIMEM_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::KASLR_FLAG;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn triples(map: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        map.iter().map(|e| (e.addr, e.size, e.r#type)).collect()
    }

    fn cfg() -> ZeroPageConfig {
        ZeroPageConfig {
            mem_size: 128 * MIB,
            cmdline_addr: 0x20000,
            cmdline_size: 20,
            ..Default::default()
        }
    }

    #[test]
    fn e820_128mib() {
        assert_eq!(
            triples(&e820_map(128 * MIB)),
            vec![(0, 0x9fc00, 1), (0x10_0000, 127 * MIB, 1)]
        );
    }

    #[test]
    fn e820_3gib_and_5gib() {
        let three = vec![(0, 0x9fc00, 1), (MIB, 3 * GIB - MIB, 1)];
        assert_eq!(triples(&e820_map(3 * GIB)), three);
        let mut five = three.clone();
        five.push((4 * GIB, 2 * GIB, 1));
        assert_eq!(triples(&e820_map(5 * GIB)), five);
    }

    #[test]
    fn header_fields_without_bzimage() {
        let mut c = cfg();
        c.initrd = Some((0x700_0000, 0x12345));
        let p = build_boot_params(&c).unwrap();
        let h = p.hdr;
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.kernel_alignment }, 0x0100_0000);
        assert_eq!({ h.loadflags }, LOADED_HIGH);
        assert_eq!(({ h.cmd_line_ptr }, { h.cmdline_size }), (0x20000, 20));
        assert_eq!(
            ({ h.ramdisk_image }, { h.ramdisk_size }),
            (0x700_0000, 0x12345)
        );
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!(p.e820_entries, 2);
        let second = p.e820_table[1];
        assert_eq!(({ second.addr }, { second.size }), (MIB, 127 * MIB));
    }

    #[test]
    fn keeps_bzimage_header_fields() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            cmdline_size: 2047,
            loadflags: LOADED_HIGH | KASLR_FLAG | CAN_USE_HEAP,
            init_size: 0x1234_5000,
            type_of_loader: 0x12,
            ..Default::default()
        };
        let p = build_boot_params(&ZeroPageConfig {
            setup_header: Some(hdr),
            ..cfg()
        })
        .unwrap();
        assert_eq!(({ p.hdr.setup_sects }, { p.hdr.version }), (27, 0x020f));
        assert_eq!({ p.hdr.init_size }, 0x1234_5000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.loadflags }, LOADED_HIGH | KASLR_FLAG);
        assert_eq!({ p.hdr.cmdline_size }, 20);
    }

    #[test]
    fn rejects_cmdline_longer_than_kernel_limit() {
        let hdr = setup_header {
            version: 0x020f,
            cmdline_size: 255,
            ..Default::default()
        };
        let mut c = ZeroPageConfig {
            setup_header: Some(hdr),
            cmdline_size: 257,
            ..cfg()
        };
        assert!(matches!(
            build_boot_params(&c),
            Err(ZeroPageError::CmdlineTooLong {
                size: 256,
                max: 255
            })
        ));
        c.cmdline_size = 256;
        assert!(build_boot_params(&c).is_ok());
    }

    #[test]
    fn e820_table_capacity() {
        let mut p = boot_params::default();
        let many = vec![ram(0, 0x1000); E820_MAX_ENTRIES_ZEROPAGE + 1];
        assert!(matches!(
            set_e820(&mut p, &many),
            Err(ZeroPageError::TooManyE820Entries(129))
        ));
        set_e820(&mut p, &many[1..]).unwrap();
        assert_eq!(p.e820_entries, 128);
    }

    #[test]
    fn writes_zero_page() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let p = build_boot_params(&cfg()).unwrap();
        write_zero_page(&mem, &p).unwrap();
        let base = ZERO_PAGE_START;
        let flag: u16 = mem.read_obj(GuestAddress(base + 0x1fe)).unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(base + 0x202)).unwrap();
        let cmdline: u32 = mem.read_obj(GuestAddress(base + 0x228)).unwrap();
        let entries: u8 = mem.read_obj(GuestAddress(base + 0x1e8)).unwrap();
        let ram2: u64 = mem.read_obj(GuestAddress(base + 0x2d0 + 20)).unwrap();
        assert_eq!(
            (flag, magic, cmdline, entries),
            (0xaa55, HDRS_MAGIC, 0x20000, 2)
        );
        assert_eq!(ram2, HIMEM_START);
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x7800)]).unwrap();
        assert!(matches!(
            write_zero_page(&small, &p),
            Err(ZeroPageError::Write(_))
        ));
    }

    #[test]
    fn initrd_placement() {
        assert_eq!(
            initrd_load_addr(128 * MIB, 0x1000).unwrap(),
            128 * MIB - 0x1000
        );
        assert_eq!(
            initrd_load_addr(128 * MIB, 0x1001).unwrap(),
            128 * MIB - 0x2000
        );
        assert_eq!(
            initrd_load_addr(5 * GIB, 10 * MIB).unwrap(),
            3 * GIB - 10 * MIB
        );
        assert_eq!(initrd_load_addr(2 * MIB, MIB).unwrap(), MIB);
        assert!(matches!(
            initrd_load_addr(2 * MIB, MIB + 1),
            Err(ZeroPageError::InitrdDoesNotFit { .. })
        ));
        assert!(initrd_load_addr(MIB / 2, 0x1000).is_err());
        assert!(initrd_load_addr_above(128 * MIB, 100 * MIB, 30 * MIB).is_err());
    }
}
