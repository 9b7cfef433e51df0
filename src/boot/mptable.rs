//! Intel MultiProcessor Specification 1.4 table, so a Linux guest without ACPI finds
//! every vCPU, the IOAPIC and the interrupt routing.
//!
//! Layout at [`MPTABLE_START`] (in the EBDA, where Linux scans for it): the 16-byte
//! floating pointer structure, then the configuration table (header and entries).
//!
//! Interrupt routing: IOAPIC pin `n` (0..=23) gets an INT entry from ISA IRQ `n`,
//! identity-mapped, IRQ0 included (no IRQ0 -> pin 2 override): KVM's default GSI routing
//! (no KVM_SET_GSI_ROUTING) drives IOAPIC pin `n` from GSI `n`, and the in-kernel PIT
//! raises GSI 0, so an IRQ0 -> pin 2 entry would make Linux's `check_timer()` wait on a
//! pin that never fires. Pins 16..=23 carry virtio-mmio IRQs above 15. "Conforms to bus"
//! flags on ISA mean edge-triggered, active high, as irqfd delivers them. ExtINT goes
//! to LINT0 and NMI to LINT1 of every local APIC (virtual-wire mode).

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_NUM_PINS, LEGACY_AREA_END, MPTABLE_START};

/// Most vCPUs the MP table built here describes.
pub const MAX_CPUS: u8 = 32;

/// MP specification revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// Local APIC version of an integrated (xAPIC) local APIC.
const APIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel IOAPIC (82093AA compatible).
const IOAPIC_VERSION: u8 = 0x11;
/// Bus id of the only bus, ISA.
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs".
const ALL_LOCAL_APICS: u8 = 0xff;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Processor entry flag: this processor is usable.
pub const CPU_ENABLED: u8 = 1 << 0;
/// Processor entry flag: this is the bootstrap processor.
pub const CPU_BOOTPROCESSOR: u8 = 1 << 1;
/// CPU signature in processor entries: family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 6 << 8;
/// Feature flags in processor entries: FPU (bit 0) and on-chip APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// A VM needs at least one vCPU.
    #[error("an MP table needs at least one CPU")]
    NoCpus,
    /// More vCPUs than the table supports.
    #[error("{0} CPUs requested, at most {MAX_CPUS} are supported")]
    TooManyCpus(u8),
    /// The table would reach past the end of the legacy area (first byte after it).
    #[error("the MP table would end at {0:#x}, past {LEGACY_AREA_END:#x}")]
    TooLarge(u64),
    /// The table could not be written to guest memory.
    #[error("failed to write the MP table to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature1: u8,
    feature2_5: [u8; 4],
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    product: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    entry_type: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// Bus entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    entry_type: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// IOAPIC entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    entry_type: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// IO interrupt and local interrupt entries share this layout.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcInterrupt {
    entry_type: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

// SAFETY: all of these are `repr(C, packed)` structs of plain integers and integer
// arrays: no padding, and every bit pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: see `MpfIntel`.
unsafe impl ByteValued for MpcTable {}
// SAFETY: see `MpfIntel`.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: see `MpfIntel`.
unsafe impl ByteValued for MpcBus {}
// SAFETY: see `MpfIntel`.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: see `MpfIntel`.
unsafe impl ByteValued for MpcInterrupt {}

/// Value that makes the bytes of `data` plus itself sum to 0 mod 256.
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Size in bytes of the whole MP table (floating pointer and configuration table).
pub fn mptable_size(num_cpus: u8) -> usize {
    std::mem::size_of::<MpfIntel>()
        + std::mem::size_of::<MpcTable>()
        + usize::from(num_cpus) * std::mem::size_of::<MpcCpu>()
        + std::mem::size_of::<MpcBus>()
        + std::mem::size_of::<MpcIoapic>()
        + (IOAPIC_NUM_PINS as usize + 2) * std::mem::size_of::<MpcInterrupt>()
}

/// Appends the bytes of `entry` to `buf`.
fn push<T: ByteValued>(buf: &mut Vec<u8>, entry: T) {
    buf.extend_from_slice(entry.as_slice());
}

/// An IO or local interrupt entry with "conforms to bus" polarity and trigger mode.
fn interrupt(entry_type: u8, irqtype: u8, srcbusirq: u8, dstapic: u8, dstirq: u8) -> MpcInterrupt {
    MpcInterrupt {
        entry_type,
        irqtype,
        irqflag: 0,
        srcbus: ISA_BUS_ID,
        srcbusirq,
        dstapic,
        dstirq,
    }
}

/// Builds the configuration table (header and entries).
fn config_table(num_cpus: u8) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        let entry = MpcCpu {
            entry_type: ENTRY_PROCESSOR,
            apicid: cpu,
            apicver: APIC_VERSION,
            cpuflag: CPU_ENABLED | bsp,
            cpufeature: CPU_SIGNATURE,
            featureflag: CPU_FEATURES,
            reserved: [0; 2],
        };
        push(&mut entries, entry);
    }
    let bus = MpcBus {
        entry_type: ENTRY_BUS,
        busid: ISA_BUS_ID,
        bustype: *b"ISA   ",
    };
    push(&mut entries, bus);
    let ioapic_id = num_cpus;
    let ioapic = MpcIoapic {
        entry_type: ENTRY_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: 1,
        apicaddr: IOAPIC_ADDR as u32,
    };
    push(&mut entries, ioapic);
    for pin in 0..IOAPIC_NUM_PINS as u8 {
        let int = interrupt(ENTRY_IO_INTERRUPT, INT_TYPE_INT, pin, ioapic_id, pin);
        push(&mut entries, int);
    }
    for (irqtype, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        let int = interrupt(ENTRY_LOCAL_INTERRUPT, irqtype, 0, ALL_LOCAL_APICS, lint);
        push(&mut entries, int);
    }
    let count = usize::from(num_cpus) + 2 + IOAPIC_NUM_PINS as usize + 2;

    let length = std::mem::size_of::<MpcTable>() + entries.len();
    // Both values are bounded by MAX_CPUS to a few hundred.
    let mut header = MpcTable {
        signature: *b"PCMP",
        length: length as u16,
        spec: MP_SPEC_REV,
        oem: *b"HVLITE  ",
        product: *b"MICROVM     ",
        oemcount: count as u16,
        lapic: APIC_ADDR as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..std::mem::size_of::<MpcTable>()].copy_from_slice(header.as_slice());
    table
}

/// Writes the MP table describing `num_cpus` vCPUs at `base`.
fn setup_mptable_at(mem: &GuestMemoryMmap, base: u64, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let end = base + mptable_size(num_cpus) as u64;
    if end > LEGACY_AREA_END {
        return Err(MptableError::TooLarge(end));
    }

    let table_addr = base + std::mem::size_of::<MpfIntel>() as u64;
    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        // Below 1 MiB, so it fits.
        physptr: table_addr as u32,
        length: 1,
        specification: MP_SPEC_REV,
        ..Default::default()
    };
    mpf.checksum = checksum(mpf.as_slice());

    mem.write_obj(mpf, GuestAddress(base))
        .map_err(MptableError::Write)?;
    mem.write_slice(&config_table(num_cpus), GuestAddress(table_addr))
        .map_err(MptableError::Write)
}

/// Writes the MP table for `num_cpus` vCPUs (1..=[`MAX_CPUS`]) at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    setup_mptable_at(mem, MPTABLE_START, num_cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Returns the floating pointer, the table header and the entry bytes.
    fn parse(mem: &GuestMemoryMmap) -> (MpfIntel, MpcTable, Vec<u8>) {
        let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        let hdr: MpcTable = mem.read_obj(GuestAddress(u64::from(mpf.physptr))).unwrap();
        let table = read(mem, u64::from(mpf.physptr), usize::from(hdr.length));
        (mpf, hdr, table[std::mem::size_of::<MpcTable>()..].to_vec())
    }

    #[test]
    fn checksums_and_signatures() {
        for n in [1, 2, 7, MAX_CPUS] {
            let mem = mem();
            setup_mptable(&mem, n).unwrap();
            let (mpf, hdr, _) = parse(&mem);
            assert_eq!(&mpf.signature, b"_MP_");
            assert_eq!((mpf.length, mpf.specification), (1, 4));
            assert_eq!(checksum(&read(&mem, MPTABLE_START, 16)), 0);
            assert_eq!(&hdr.signature, b"PCMP");
            assert_eq!(hdr.spec, 4);
            assert_eq!({ hdr.lapic }, APIC_ADDR as u32);
            let table = read(&mem, u64::from(mpf.physptr), usize::from(hdr.length));
            assert_eq!(checksum(&table), 0, "{n} cpus");
            assert_eq!(16 + usize::from(hdr.length), mptable_size(n));
            assert!(MPTABLE_START + mptable_size(n) as u64 <= LEGACY_AREA_END);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_with_bsp_first() {
        let mem = mem();
        setup_mptable(&mem, 4).unwrap();
        let (_, hdr, entries) = parse(&mem);
        for cpu in 0..4u8 {
            let e = &entries[usize::from(cpu) * 20..][..4];
            let bsp = if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
            assert_eq!(e, [ENTRY_PROCESSOR, cpu, 0x14, CPU_ENABLED | bsp]);
        }
        // The entry after the last processor is the bus.
        assert_eq!(entries[4 * 20], ENTRY_BUS);
        // 4 cpus + bus + ioapic + 24 io interrupts + 2 local interrupts.
        assert_eq!({ hdr.oemcount }, 4 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn ioapic_and_interrupt_entries() {
        let mem = mem();
        setup_mptable(&mem, 2).unwrap();
        let (_, _, entries) = parse(&mem);
        let rest = &entries[2 * 20..];
        assert_eq!(
            &rest[..8],
            &[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']
        );
        let ioapic = &rest[8..16];
        assert_eq!(&ioapic[..4], &[ENTRY_IOAPIC, 2, 0x11, 1]);
        assert_eq!(ioapic[4..8], (IOAPIC_ADDR as u32).to_le_bytes());
        for pin in 0..24u8 {
            let e = &rest[16 + usize::from(pin) * 8..][..8];
            assert_eq!(e, &[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, 2, pin]);
        }
        let lint = &rest[16 + 24 * 8..];
        assert_eq!(lint.len(), 16);
        assert_eq!(
            lint[..8],
            [ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]
        );
        assert_eq!(
            lint[8..],
            [ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]
        );
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let mem = mem();
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&mem, 33),
            Err(MptableError::TooManyCpus(33))
        ));
        assert!(matches!(
            setup_mptable_at(&mem, LEGACY_AREA_END - 0x100, 8),
            Err(MptableError::TooLarge(_))
        ));
        // Nothing was written.
        assert_eq!(read(&mem, MPTABLE_START, 4), vec![0; 4]);
    }

    #[test]
    fn reports_memory_write_failure() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MptableError::Write(_))
        ));
    }
}
