//! Guest physical memory map and fixed interrupt numbers of an hvlite guest.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            BOOT_GDT_START
//! 0x0000_0520  IDT (empty)                BOOT_IDT_START
//! 0x0000_7000  zero page (boot_params)    ZERO_PAGE_START
//! 0x0000_8ff0  initial stack pointer      BOOT_STACK_POINTER
//! 0x0000_9000  PML4                       PML4_START
//! 0x0000_a000  PDPTE                      PDPTE_START
//! 0x0000_b000  PDE (512 x 2 MiB)          PDE_START
//! 0x0002_0000  kernel command line        CMDLINE_START
//! 0x0009_fc00  EBDA / MP table            EBDA_START, MPTABLE_START
//! 0x0010_0000  kernel (high memory)       HIMEM_START
//! 0xc000_0000  MMIO gap (no RAM) ...      MMIO_GAP_START
//! 0xd000_0000  virtio-mmio windows        MMIO_DEVICES_START
//! 0xfec0_0000  IOAPIC                     IOAPIC_ADDR
//! 0xfee0_0000  local APIC                 APIC_ADDR
//! 0x1_0000_0000 ... RAM above 4 GiB       MMIO_GAP_END
//! ```

use vm_memory::GuestAddress;

/// Guest address of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Guest address of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Initial RSP/RBP of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest address of the Linux zero page (`boot_params`); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Guest address of the PML4 table; the boot CR3.
pub const PML4_START: u64 = 0x9000;
/// Guest address of the page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Guest address of the page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Guest address of the kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum size of the kernel command line, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Guest address of the MP table (Linux scans the EBDA for it).
pub const MPTABLE_START: u64 = EBDA_START;
/// End of the legacy area the MP table must fit below (VGA hole starts here).
pub const LEGACY_AREA_END: u64 = 0xa0000;
/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (3 GiB): no RAM between here and [`MMIO_GAP_END`].
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB): RAM beyond 3 GiB continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Guest address of the IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Guest address of the local APIC registers.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// Address handed to KVM_SET_TSS_ADDR (three pages, inside the MMIO gap).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Address handed to KVM_SET_IDENTITY_MAP_ADDR (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// IRQ (GSI, IOAPIC pin) of the i8042 keyboard.
pub const KEYBOARD_IRQ: u32 = 1;
/// IRQ (GSI, IOAPIC pin) of the serial console (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// IRQ of the first virtio-mmio device; device `n` uses `VIRTIO_MMIO_IRQ_BASE + n`.
pub const VIRTIO_MMIO_IRQ_BASE: u32 = 5;
/// Number of IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_NUM_PINS: u32 = 24;
/// Last usable IRQ for virtio-mmio devices (the last IOAPIC pin).
pub const VIRTIO_MMIO_IRQ_MAX: u32 = IOAPIC_NUM_PINS - 1;
/// Maximum number of virtio-mmio devices (one IRQ each).
pub const MAX_VIRTIO_MMIO_DEVICES: u32 = VIRTIO_MMIO_IRQ_MAX - VIRTIO_MMIO_IRQ_BASE + 1;

// The fixed areas must not overlap; checked at build time.
const _: () = {
    assert!(BOOT_IDT_START >= BOOT_GDT_START + 4 * 8);
    assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START);
    assert!(KVM_IDENTITY_MAP_ADDR + 0x1000 <= KVM_TSS_ADDR);
    assert!(KVM_TSS_ADDR >= MMIO_GAP_START && KVM_TSS_ADDR + 3 * 0x1000 <= MMIO_GAP_END);
    assert!(KVM_TSS_ADDR > APIC_ADDR);
    assert!(IOAPIC_ADDR >= MMIO_DEVICES_START);
};

/// Guest RAM regions for `mem_size` bytes of RAM, as `(start, length)` pairs for
/// `GuestMemoryMmap::from_ranges`: RAM is split around the 3-4 GiB MMIO gap.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Guest address of the MMIO window of virtio-mmio device `index`.
pub fn virtio_mmio_addr(index: u32) -> u64 {
    MMIO_DEVICES_START + u64::from(index) * MMIO_DEVICE_SIZE
}

/// IRQ of virtio-mmio device `index`, or `None` if there is no pin left for it.
pub fn virtio_mmio_irq(index: u32) -> Option<u32> {
    let irq = VIRTIO_MMIO_IRQ_BASE.checked_add(index)?;
    (irq <= VIRTIO_MMIO_IRQ_MAX).then_some(irq)
}

/// One past the highest guest physical address backed by RAM.
pub fn ram_end(mem_size: u64) -> u64 {
    if mem_size <= MMIO_GAP_START {
        mem_size
    } else {
        MMIO_GAP_END + (mem_size - MMIO_GAP_START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn small_memory_is_one_region() {
        let r = ram_regions(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START).len(), 1);
        assert_eq!(ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let size = 5u64 << 30;
        let r = ram_regions(size);
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30),]
        );
        assert_eq!(ram_end(size), 6 << 30);
    }

    #[test]
    fn regions_build_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(64 << 20)).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
        assert!(!mem.address_in_range(GuestAddress(64 << 20)));
    }

    #[test]
    fn virtio_irqs_stay_on_ioapic_pins() {
        assert_eq!(virtio_mmio_irq(0), Some(5));
        assert_eq!(virtio_mmio_irq(MAX_VIRTIO_MMIO_DEVICES - 1), Some(23));
        assert_eq!(virtio_mmio_irq(MAX_VIRTIO_MMIO_DEVICES), None);
        assert_eq!(virtio_mmio_irq(u32::MAX), None);
        assert_ne!(virtio_mmio_irq(0), Some(SERIAL_IRQ));
        assert_eq!(virtio_mmio_addr(2), 0xd000_2000);
        let last = virtio_mmio_addr(MAX_VIRTIO_MMIO_DEVICES - 1) + MMIO_DEVICE_SIZE;
        assert!(last <= IOAPIC_ADDR);
    }
}
