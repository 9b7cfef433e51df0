//! What a snapshot's state file holds: plain data, serialized with serde (postcard). The
//! KVM structures are kvm-bindings' own, which serialize as their raw bytes.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

/// Everything a restore needs besides guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Guest memory: the regions, in the order they follow each other in the memory file.
    pub memory: Vec<MemoryRegion>,
    /// The VM's resources as configured (devices are rebuilt from this).
    pub config: SavedConfig,
    /// In-kernel interrupt controllers, timer and clock.
    pub vm: KvmVmState,
    /// One entry per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The COM1 UART.
    pub serial: SerialState,
    /// The i8042 controller.
    pub i8042: I8042State,
    /// The virtio devices, in their MMIO slot order.
    pub virtio: Vec<VirtioState>,
    /// Metrics counters.
    pub counters: SavedCounters,
}

/// The metrics counters of the VM, so that a restored VM counts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCounters {
    /// Each virtio device's counters, in slot order (the device's counter order).
    pub devices: Vec<Vec<u64>>,
    /// vCPU exits by kind (empty when the VM had no metrics).
    pub vcpu_exits: Vec<(String, u64)>,
}

/// One guest RAM region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The resources of the snapshotted VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Whether the guest reports a command's status (hvlite then exits with it).
    pub has_command: bool,
    /// Disks, in slot order.
    pub disks: Vec<SavedDisk>,
    /// Network interfaces, in slot order.
    pub nets: Vec<SavedNet>,
    /// The vsock device.
    pub vsock: Option<SavedVsock>,
}

/// A disk as it was when snapshotted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    /// Its id (`drive_id` on the API).
    pub id: String,
    /// The host file.
    pub path: String,
    /// Read-only for the guest.
    pub read_only: bool,
    /// Size in bytes, as the guest saw it.
    pub size: u64,
}

/// A network interface as it was when snapshotted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    /// Its id (`iface_id` on the API).
    pub id: String,
    /// The host TAP device.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The vsock device as it was when snapshotted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVsock {
    /// The guest's CID.
    pub cid: u64,
    /// The host-side socket.
    pub uds: Option<String>,
}

/// VM-wide KVM state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvmVmState {
    /// PIC master (chip 0).
    pub pic_master: kvm_irqchip,
    /// PIC slave (chip 1).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// The in-kernel PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// One MSR: its index and value, or why it could not be read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedMsrs {
    /// MSRs read.
    pub entries: Vec<kvm_msr_entry>,
    /// MSRs KVM lists as saveable but refused to read (recorded, not restored).
    pub unreadable: Vec<u32>,
}

/// Everything of one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID hvlite gave the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the legacy FPU area is part of it).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Model-specific registers.
    pub msrs: SavedMsrs,
    /// The local APIC.
    pub lapic: kvm_lapic_state,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// TSC frequency in kHz (0: unknown).
    pub tsc_khz: u32,
}

/// The COM1 UART's registers and receive FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low and high.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

/// The i8042's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Output port.
    pub output_port: u8,
    /// A controller command waiting for its parameter.
    pub pending: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pub kbd_pending: Option<u8>,
    /// Whether the last write was to the command port.
    pub last_was_command: bool,
    /// Bytes for the guest, and whether each came from the keyboard.
    pub output: Vec<(u8, bool)>,
    /// The last byte the guest read.
    pub last_read: u8,
}

/// One virtio device: its transport registers and queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    /// Virtio device ID (2 block, 1 net, 19 vsock).
    pub device_type: u32,
    /// Features the device offered.
    pub avail_features: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// What the driver wrote to DriverFeatures so far.
    pub driver_features: u64,
    /// The driver wrote a feature word beyond bit 63.
    pub driver_features_invalid: bool,
    /// Device status register.
    pub status: u32,
    /// QueueSel, DeviceFeaturesSel, DriverFeaturesSel.
    pub selectors: [u32; 3],
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET raised.
    pub needs_reset: bool,
    /// Whether the device was running (activated on DRIVER_OK).
    pub activated: bool,
    /// The queues, one per queue of the device.
    pub queues: Vec<QueueState>,
}

/// One virtqueue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The device's maximum size.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u32,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub driver: u64,
    /// Used ring address.
    pub device: u64,
    /// Next available-ring entry the device will take (chains taken but not used are
    /// given back: this equals `next_used` in a saved device).
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
}

impl Clone for VcpuState {
    /// kvm_xsave has no Clone (it ends in a flexible array, unused by KVM_GET_XSAVE).
    fn clone(&self) -> Self {
        Self {
            cpuid: self.cpuid.clone(),
            regs: self.regs,
            sregs: self.sregs,
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            msrs: self.msrs.clone(),
            lapic: self.lapic,
            mp_state: self.mp_state,
            events: self.events,
            debugregs: self.debugregs,
            tsc_khz: self.tsc_khz,
        }
    }
}
