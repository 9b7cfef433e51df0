//! Boot GDT and IDT for entering a Linux kernel directly in 64-bit long mode.
//!
//! The GDT holds four entries: null, a 64-bit code segment, a flat data segment and a
//! TSS descriptor (KVM requires a usable TR). The IDT is empty: the kernel installs its
//! own before it enables interrupts.

use kvm_bindings::{kvm_dtable, kvm_segment};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START};

/// Access/flags word of the 64-bit code segment (G, L, present, DPL 0, execute/read, accessed).
pub const CODE_FLAGS: u16 = 0xa09b;
/// Access/flags word of the data segment (G, D/B, present, DPL 0, read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Access/flags word of the TSS (G, present, busy 64-bit TSS).
pub const TSS_FLAGS: u16 = 0x808b;
/// Segment limit (in units of the granularity) of every boot segment.
pub const SEGMENT_LIMIT: u32 = 0xfffff;

/// GDT index of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// GDT index of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// The four boot GDT entries, in table order.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(CODE_FLAGS, 0, SEGMENT_LIMIT),
    gdt_entry(DATA_FLAGS, 0, SEGMENT_LIMIT),
    gdt_entry(TSS_FLAGS, 0, SEGMENT_LIMIT),
];

/// Errors while writing the boot descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// The GDT could not be written to guest memory.
    #[error("failed to write the boot GDT to guest memory")]
    WriteGdt(#[source] GuestMemoryError),
    /// The IDT could not be written to guest memory.
    #[error("failed to write the boot IDT to guest memory")]
    WriteIdt(#[source] GuestMemoryError),
}

/// Segment registers and descriptor-table registers for the boot vCPU's `kvm_sregs`.
#[derive(Clone, Copy, Debug)]
pub struct BootSegments {
    /// CS.
    pub code: kvm_segment,
    /// DS, ES, FS, GS and SS.
    pub data: kvm_segment,
    /// TR.
    pub tss: kvm_segment,
    /// GDTR.
    pub gdt: kvm_dtable,
    /// IDTR.
    pub idt: kvm_dtable,
}

/// Encodes a GDT descriptor from the 16-bit access/flags word (`flags` bits 0-7 are the
/// access byte, bits 12-15 the G/DB/L/AVL nibble), a 32-bit base and a 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Base address encoded in a GDT entry.
fn entry_base(entry: u64) -> u64 {
    ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)
}

/// Raw 20-bit limit encoded in a GDT entry.
fn entry_limit(entry: u64) -> u32 {
    ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32
}

/// Decodes GDT entry `entry` at table index `index` into the `kvm_segment` KVM expects.
///
/// The limit is given in bytes, as KVM reports it: with G set it is scaled by 4 KiB.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = entry_limit(entry);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base: entry_base(entry),
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the boot GDT at [`BOOT_GDT_START`] and an empty IDT at [`BOOT_IDT_START`], and
/// returns the segment and table registers to load into the boot vCPU.
pub fn setup_gdt(mem: &GuestMemoryMmap) -> Result<BootSegments, GdtError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START + (i as u64) * 8);
        mem.write_obj(*entry, addr).map_err(GdtError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(GdtError::WriteIdt)?;

    let gdt_size = std::mem::size_of_val(&BOOT_GDT) as u16;
    Ok(BootSegments {
        code: kvm_segment_from_gdt(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX),
        data: kvm_segment_from_gdt(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX),
        tss: kvm_segment_from_gdt(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX),
        gdt: kvm_dtable {
            base: BOOT_GDT_START,
            limit: gdt_size - 1,
            padding: [0; 3],
        },
        idt: kvm_dtable {
            base: BOOT_IDT_START,
            limit: std::mem::size_of::<u64>() as u16 - 1,
            padding: [0; 3],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn encodes_known_entries() {
        assert_eq!(
            gdt_entry(CODE_FLAGS, 0, SEGMENT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            gdt_entry(DATA_FLAGS, 0, SEGMENT_LIMIT),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(
            gdt_entry(TSS_FLAGS, 0, SEGMENT_LIMIT),
            0x008f_8b00_0000_ffff
        );
        assert_eq!(gdt_entry(0, 0, 0), 0);
        // Base and limit bits land in the split fields.
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn decodes_code_segment() {
        let s = kvm_segment_from_gdt(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(s.selector, 0x08);
        assert_eq!(s.type_, 0xb);
        assert_eq!(
            (s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl),
            (1, 0, 0, 1, 1, 1, 0)
        );
        assert_eq!(s.unusable, 0);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
    }

    #[test]
    fn decodes_data_and_tss_segments() {
        let d = kvm_segment_from_gdt(BOOT_GDT[2], DATA_INDEX);
        assert_eq!((d.selector, d.type_, d.db, d.l, d.s), (0x10, 0x3, 1, 0, 1));
        let t = kvm_segment_from_gdt(BOOT_GDT[3], TSS_INDEX);
        assert_eq!((t.selector, t.type_, t.s, t.present), (0x18, 0xb, 0, 1));
        let n = kvm_segment_from_gdt(0, 0);
        assert_eq!((n.present, n.unusable), (0, 1));
    }

    #[test]
    fn decodes_base_and_byte_limit() {
        let s = kvm_segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        assert_eq!(s.selector, 40);
    }

    #[test]
    fn writes_tables_to_memory() {
        let mem = mem();
        // Dirty the IDT slot so the test proves it is cleared.
        mem.write_obj(u64::MAX, GuestAddress(BOOT_IDT_START))
            .unwrap();
        let segs = setup_gdt(&mem).unwrap();
        for (i, want) in BOOT_GDT.iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(BOOT_GDT_START + i as u64 * 8))
                .unwrap();
            assert_eq!(got, *want, "entry {i}");
        }
        let mut raw = [0u8; 8];
        mem.read_slice(&mut raw, GuestAddress(BOOT_GDT_START + 8))
            .unwrap();
        assert_eq!(raw, [0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0x00]);
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
        assert_eq!((segs.gdt.base, segs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((segs.idt.base, segs.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!(segs.code.selector, 8);
        assert_eq!(segs.tss.selector, 0x18);
    }

    #[test]
    fn fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(setup_gdt(&mem), Err(GdtError::WriteGdt(_))));
    }
}
