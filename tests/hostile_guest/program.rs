//! A tiny table-driven test guest: 64-bit code that walks a table of operations (MMIO and
//! memory writes of each width, reads, port I/O, waits, prints), so a test can describe a
//! hostile driver in Rust and run it without Linux. Built into one image loaded at
//! `GUEST_BASE`: the interpreter, a page directory that maps the 3-4 GiB MMIO gap (the boot
//! page tables map only the first GiB), then the table.

use std::collections::HashMap;

/// Guest address of the page directory for 3-4 GiB inside the image.
const PD_OFFSET: u64 = 0x1000;
/// Offset of the operation table inside the image.
const TABLE_OFFSET: u64 = 0x2000;
/// The boot page directory pointer table (hvlite's `PDPTE_START`).
const BOOT_PDPT: u64 = 0xa000;

/// One operation of the table; each is 24 bytes in the image (kind, address, value).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Write8(u64, u8),
    Write16(u64, u16),
    Write32(u64, u32),
    Write64(u64, u64),
    Read32(u64),
    Out8(u16, u8),
    In8(u16),
    /// Waits (bounded, about 2^26 polls) until the u16 at the address differs from the value.
    WaitChange16(u64, u16),
    /// Writes `len` bytes from guest memory at the address to the serial port.
    Print(u64, u64),
    /// Writes the u32 value to the address `n` times.
    Repeat32(u64, u32, u32),
    /// Reloads CR3 (after page-table changes).
    FlushTlb,
}

impl Op {
    fn encode(self) -> (u32, u64, u64) {
        match self {
            Op::Write32(a, v) => (1, a, u64::from(v)),
            Op::Read32(a) => (2, a, 0),
            Op::Out8(p, v) => (3, u64::from(p), u64::from(v)),
            Op::In8(p) => (4, u64::from(p), 0),
            Op::Write64(a, v) => (5, a, v),
            Op::Write16(a, v) => (7, a, u64::from(v)),
            Op::WaitChange16(a, v) => (8, a, u64::from(v)),
            Op::Print(a, n) => (9, a, n),
            Op::Write8(a, v) => (10, a, u64::from(v)),
            Op::Repeat32(a, v, n) => (11, a, u64::from(v) | (u64::from(n) << 32)),
            Op::FlushTlb => (12, 0, 0),
        }
    }
}

/// A minimal assembler: bytes plus rel32 jumps to named labels.
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.code.len());
    }
    /// `op` (an opcode taking a rel32) to `label`.
    fn rel32(&mut self, op: &[u8], label: &'static str) {
        self.bytes(op);
        self.fixups.push((self.code.len(), label));
        self.bytes(&[0; 4]);
    }
    fn jmp(&mut self, label: &'static str) {
        self.rel32(&[0xe9], label);
    }
    fn finish(mut self) -> Vec<u8> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label] as i64;
            let rel = i32::try_from(target - (at as i64 + 4)).expect("jump in range");
            self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        self.code
    }
}

/// The interpreter: rsi walks the table; eax = kind, rdi = address, rcx = value.
fn interpreter(table: u64) -> Vec<u8> {
    let mut a = Asm::default();
    a.bytes(&[0xfa]); // cli
    a.bytes(&[0x48, 0xbe]); // mov rsi, imm64
    a.bytes(&table.to_le_bytes());
    a.label("loop");
    a.bytes(&[0x8b, 0x06]); // mov eax, [rsi]
    a.bytes(&[0x48, 0x8b, 0x7e, 0x08]); // mov rdi, [rsi+8]
    a.bytes(&[0x48, 0x8b, 0x4e, 0x10]); // mov rcx, [rsi+16]
    a.bytes(&[0x48, 0x83, 0xc6, 0x18]); // add rsi, 24
    const KINDS: [(u8, &str); 12] = [
        (0, "end"),
        (1, "w32"),
        (2, "r32"),
        (3, "out8"),
        (4, "in8"),
        (5, "w64"),
        (7, "w16"),
        (8, "wait16"),
        (9, "print"),
        (10, "w8"),
        (11, "repeat"),
        (12, "flush"),
    ];
    for (kind, label) in KINDS {
        a.bytes(&[0x83, 0xf8, kind]); // cmp eax, kind
        a.rel32(&[0x0f, 0x84], label); // je label
    }
    a.jmp("loop");
    a.label("w32");
    a.bytes(&[0x89, 0x0f]); // mov [rdi], ecx
    a.jmp("loop");
    a.label("r32");
    a.bytes(&[0x8b, 0x17]); // mov edx, [rdi]
    a.jmp("loop");
    a.label("out8");
    a.bytes(&[0x89, 0xfa, 0x89, 0xc8, 0xee]); // mov edx, edi; mov eax, ecx; out dx, al
    a.jmp("loop");
    a.label("in8");
    a.bytes(&[0x89, 0xfa, 0xec]); // mov edx, edi; in al, dx
    a.jmp("loop");
    a.label("w64");
    a.bytes(&[0x48, 0x89, 0x0f]); // mov [rdi], rcx
    a.jmp("loop");
    a.label("w16");
    a.bytes(&[0x66, 0x89, 0x0f]); // mov [rdi], cx
    a.jmp("loop");
    a.label("wait16");
    a.bytes(&[0x89, 0xca]); // mov edx, ecx
    a.bytes(&[0xb9, 0x00, 0x00, 0x00, 0x04]); // mov ecx, 1 << 26
    // 1: cmp [rdi], dx; jne 2f; dec ecx; jnz 1b; 2:
    a.bytes(&[0x66, 0x39, 0x17, 0x75, 0x04, 0xff, 0xc9, 0x75, 0xf7]);
    a.jmp("loop");
    a.label("print");
    // 1: test rcx, rcx; jz 2f; mov al, [rdi]; mov dx, 0x3f8; out dx, al; inc rdi; dec rcx;
    // jmp 1b; 2:
    a.bytes(&[
        0x48, 0x85, 0xc9, 0x74, 0x0f, 0x8a, 0x07, 0x66, 0xba, 0xf8, 0x03, 0xee, 0x48, 0xff, 0xc7,
        0x48, 0xff, 0xc9, 0xeb, 0xec,
    ]);
    a.jmp("loop");
    a.label("w8");
    a.bytes(&[0x88, 0x0f]); // mov [rdi], cl
    a.jmp("loop");
    a.label("repeat");
    // mov rdx, rcx; shr rdx, 32; 1: test rdx, rdx; jz 2f; mov [rdi], ecx; dec rdx; jmp 1b; 2:
    a.bytes(&[
        0x48, 0x89, 0xca, 0x48, 0xc1, 0xea, 0x20, 0x48, 0x85, 0xd2, 0x74, 0x07, 0x89, 0x0f, 0x48,
        0xff, 0xca, 0xeb, 0xf4,
    ]);
    a.jmp("loop");
    a.label("flush");
    a.bytes(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8]); // mov rax, cr3; mov cr3, rax
    a.jmp("loop");
    a.label("end");
    a.bytes(&[0xf4, 0xeb, 0xfd]); // 1: hlt; jmp 1b
    a.finish()
}

/// The guest image for `ops` (loaded at `base`), with memory blobs placed at image offsets.
pub fn image(base: u64, ops: &[Op]) -> Vec<u8> {
    let mut img = interpreter(base + TABLE_OFFSET);
    assert!(img.len() as u64 <= PD_OFFSET, "interpreter too large");
    img.resize(PD_OFFSET as usize, 0);
    // 2 MiB pages for 3-4 GiB, present and writable, caching off (PCD | PWT).
    for i in 0..512u64 {
        let entry = (0xc000_0000 + (i << 21)) | 0x1 | 0x2 | 0x8 | 0x10 | 0x80;
        img.extend_from_slice(&entry.to_le_bytes());
    }
    img.resize(TABLE_OFFSET as usize, 0);
    let mut all = vec![
        // PDPT entry 3 -> our page directory.
        Op::Write64(BOOT_PDPT + 3 * 8, (base + PD_OFFSET) | 0x3),
        Op::FlushTlb,
    ];
    all.extend_from_slice(ops);
    for op in all {
        let (kind, addr, value) = op.encode();
        img.extend_from_slice(&u64::from(kind).to_le_bytes());
        img.extend_from_slice(&addr.to_le_bytes());
        img.extend_from_slice(&value.to_le_bytes());
    }
    img.extend_from_slice(&[0; 24]); // end
    img
}
