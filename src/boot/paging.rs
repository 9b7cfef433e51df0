//! Identity-mapped boot page tables and the control-register bits for long mode.
//!
//! The first 1 GiB of guest physical memory is identity-mapped with 2 MiB pages, which
//! covers the kernel, the zero page and the command line. The kernel switches to its own
//! page tables early.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
pub const PTE_RW: u64 = 1 << 1;
/// Page-directory entry bit: this entry maps a large (2 MiB) page.
pub const PTE_PS: u64 = 1 << 7;

/// Size of one large page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Entries per page table.
const ENTRIES: u64 = 512;
/// Bytes identity-mapped by the boot page tables (1 GiB).
pub const IDENTITY_MAPPED_SIZE: u64 = ENTRIES * LARGE_PAGE_SIZE;

/// Errors while writing the boot page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// The PML4 could not be written.
    #[error("failed to write the PML4 to guest memory")]
    WritePml4(#[source] GuestMemoryError),
    /// The page-directory-pointer table could not be written.
    #[error("failed to write the PDPTE table to guest memory")]
    WritePdpte(#[source] GuestMemoryError),
    /// The page directory could not be written.
    #[error("failed to write the page directory to guest memory")]
    WritePde(#[source] GuestMemoryError),
}

/// Writes page tables identity-mapping the first 1 GiB with 2 MiB pages and returns
/// the value for CR3 ([`PML4_START`]).
pub fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    mem.write_obj(PDPTE_START | PTE_PRESENT | PTE_RW, GuestAddress(PML4_START))
        .map_err(PagingError::WritePml4)?;
    mem.write_obj(PDE_START | PTE_PRESENT | PTE_RW, GuestAddress(PDPTE_START))
        .map_err(PagingError::WritePdpte)?;
    // Write the directory in one go: 4 KiB of little-endian entries.
    let mut pde = Vec::with_capacity((ENTRIES * 8) as usize);
    for i in 0..ENTRIES {
        let entry = (i * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_RW | PTE_PS;
        pde.extend_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&pde, GuestAddress(PDE_START))
        .map_err(PagingError::WritePde)?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Walks the 4-level tables from `cr3` like the MMU does (2 MiB leaves only).
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        const ADDR: u64 = 0x000f_ffff_ffff_f000;
        let read = |table: u64, idx: u64| -> u64 {
            mem.read_obj(GuestAddress((table & ADDR) + idx * 8))
                .unwrap()
        };
        let pml4e = read(cr3, (va >> 39) & 0x1ff);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read(pml4e, (va >> 30) & 0x1ff);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read(pdpte, (va >> 21) & 0x1ff);
        if pde & PTE_PRESENT == 0 || pde & PTE_PS == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & (LARGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn entries_point_to_next_level() {
        let mem = mem();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, 0xb003);
        let first: u64 = mem.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(first, 0x83);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn translations_are_identity_below_1gib() {
        let mem = mem();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        for va in [0, 0x1000, 0x10_0000, 0x123_4567, 0x3fff_ffff] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, IDENTITY_MAPPED_SIZE), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn fails_when_tables_are_outside_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa800)]).unwrap();
        assert!(matches!(
            setup_identity_page_tables(&mem),
            Err(PagingError::WritePde(_))
        ));
    }
}
