//! Small purpose-built guests that drive the VMM directly, without Linux: they boot in
//! well under a second, even where guest kernel mode is emulated.

mod common;

use common::*;

const MEM: &str = "64";

/// Boots `image` as a test guest with `extra` hvlite options; None (after a loud skip
/// notice) where /dev/kvm is missing.
fn run_guest(test: &str, image: &[u8], extra: &[&str]) -> Option<std::process::Output> {
    if !kvm_available(test) {
        return None;
    }
    let dir = scratch(test);
    let guest = write_guest(&dir, "guest.elf", image);
    let mut args = vec!["run", "--kernel", guest.to_str().unwrap(), "--memory", MEM];
    args.extend_from_slice(extra);
    Some(run_hvlite(&args))
}

#[test]
fn serial_output_and_exit_port() {
    let mut code = Vec::new();
    for b in b"hello from a test guest\n" {
        code.extend(out_byte(0x3f8, *b));
    }
    code.extend(out_byte(EXIT_PORT, 42));
    code.extend(HALT_FOREVER);
    let Some(out) = run_guest("serial_output_and_exit_port", &code, &[]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello from a test guest"),
        "stdout: {stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn all_vcpus_stop_when_one_ends_the_vm() {
    // The boot vCPU reports at once; the others sit in the in-kernel wait for INIT/SIPI
    // and must be kicked out of KVM_RUN for hvlite to exit.
    let mut code = out_byte(EXIT_PORT, 3);
    code.extend(HALT_FOREVER);
    let Some(out) = run_guest(
        "all_vcpus_stop_when_one_ends_the_vm",
        &code,
        &["--cpus", "4"],
    ) else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn i8042_reset_ends_the_vm() {
    let mut code = out_byte(0x64, 0xfe);
    code.extend(HALT_FOREVER);
    let Some(out) = run_guest("i8042_reset_ends_the_vm", &code, &[]) else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stac_and_clac_complete() {
    let smap = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" smap"));
    if !is_pvm() && !smap {
        eprintln!("SKIPPED stac_and_clac_complete: hardware host without SMAP");
        return;
    }
    // status = 0x10 | AC after stac | (AC after clac) << 1; expected 0x11.
    let mut code = vec![
        0x0f, 0x01, 0xcb, // stac
        0x9c, 0x58, // pushfq; pop rax
        0x48, 0xc1, 0xe8, 0x12, // shr rax, 18
        0x24, 0x01, // and al, 1
        0x88, 0xc3, // mov bl, al
        0x0f, 0x01, 0xca, // clac
        0x9c, 0x58, // pushfq; pop rax
        0x48, 0xc1, 0xe8, 0x12, // shr rax, 18
        0x24, 0x01, // and al, 1
        0xd0, 0xe0, // shl al, 1
        0x08, 0xd8, // or al, bl
        0x0c, 0x10, // or al, 0x10
        0x66, 0xba,
    ];
    code.extend(EXIT_PORT.to_le_bytes());
    code.push(0xee); // out dx, al
    code.extend(HALT_FOREVER);
    let Some(out) = run_guest("stac_and_clac_complete", &code, &[]) else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(0x11),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn int3_reaches_the_guest_breakpoint_handler() {
    // Layout (offsets from GUEST_BASE): 0x00 code, 0x40 #BP handler, 0xf0 IDTR, 0x100 IDT.
    let mut image = vec![0x90u8; 0x140];
    let idtr = GUEST_BASE + 0xf0;
    let mut code = vec![0x0f, 0x01, 0x1c, 0x25]; // lidt [abs32]
    code.extend((idtr as u32).to_le_bytes());
    code.push(0xcc); // int3
    code.extend(out_byte(EXIT_PORT, 1)); // not reached if the handler runs
    code.extend(HALT_FOREVER);
    image[..code.len()].copy_from_slice(&code);
    let mut handler = out_byte(EXIT_PORT, 33);
    handler.extend(HALT_FOREVER);
    image[0x40..0x40 + handler.len()].copy_from_slice(&handler);
    // IDTR: limit (4 gates of 16 bytes) and base.
    image[0xf0..0xf2].copy_from_slice(&(4u16 * 16 - 1).to_le_bytes());
    image[0xf2..0xfa].copy_from_slice(&(GUEST_BASE + 0x100).to_le_bytes());
    // Gate 3: 64-bit interrupt gate to the handler, code selector 0x08.
    let target = GUEST_BASE + 0x40;
    let gate = &mut image[0x100 + 3 * 16..0x100 + 4 * 16];
    gate[0..2].copy_from_slice(&(target as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    gate[4] = 0;
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
    gate[12..16].fill(0);
    let Some(out) = run_guest("int3_reaches_the_guest_breakpoint_handler", &image, &[]) else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(33),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_emulation_failure_names_bytes_and_rip() {
    let mut code = vec![0xf3, 0x48, 0x0f, 0xb8, 0xc0]; // popcnt rax, rax
    code.extend(out_byte(EXIT_PORT, 0));
    code.extend(HALT_FOREVER);
    let Some(out) = run_guest("unknown_emulation_failure_names_bytes_and_rip", &code, &[]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if is_pvm() {
        // KVM's emulator on PVM lacks popcnt: hvlite must stop with a precise message.
        assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
        assert!(stderr.contains("emulation failure"), "stderr: {stderr}");
        assert!(stderr.contains("f3 48 0f b8 c0"), "stderr: {stderr}");
        assert!(stderr.contains("0x1000000"), "stderr: {stderr}");
    } else {
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    }
}

#[test]
fn triple_fault_is_an_error_naming_the_vcpu() {
    // An empty IDT (limit 0), then ud2: #UD cannot be delivered, nor the #GP and #DF that
    // follow, so the vCPU shuts down (KVM_EXIT_SHUTDOWN).
    let mut image = vec![0x90u8; 0x100];
    let idtr = GUEST_BASE + 0xf0;
    let mut code = vec![0x0f, 0x01, 0x1c, 0x25]; // lidt [abs32]
    code.extend((idtr as u32).to_le_bytes());
    let ud2_at = GUEST_BASE + code.len() as u64;
    code.extend([0x0f, 0x0b]); // ud2
    code.extend(out_byte(EXIT_PORT, 1)); // not reached
    code.extend(HALT_FOREVER);
    image[..code.len()].copy_from_slice(&code);
    image[0xf0..0xfa].fill(0); // IDTR: limit 0, base 0
    let Some(out) = run_guest("triple_fault_is_an_error_naming_the_vcpu", &image, &[]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    let expected = format!(
        "hvlite: error: guest triple fault on vCPU 0 at RIP {ud2_at:#x} (KVM shutdown exit)"
    );
    assert!(stderr.contains(&expected), "want {expected:?} in: {stderr}");
}
