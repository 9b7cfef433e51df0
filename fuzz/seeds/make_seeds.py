#!/usr/bin/env python3
"""Writes the seed inputs of the mmio_transport, net_chains, vsock_packets and
agent_frames fuzz targets (fuzz/README.md): one well-formed guest per target, so the
fuzzer starts from inputs that reach deep into the device code. Run from fuzz/."""
import os
import struct


def write(target, name, data):
    os.makedirs(f"seeds/{target}", exist_ok=True)
    with open(f"seeds/{target}/{name}", "wb") as f:
        f.write(data)


def frame(kind, payload=b""):
    return struct.pack("<I", len(payload) + 1) + bytes([kind]) + payload


# agent_frames: byte 0 = read size - 1, then the agent's side of a session.
session = (frame(0x81, struct.pack("<I", 1)) + frame(0x82, struct.pack("<I", 42))
           + frame(0x83, b"hello\n") + frame(0x84, b"warn\n") + frame(0x85, bytes([0, 3])))
write("agent_frames", "session", bytes([255]) + session)
write("agent_frames", "byte_at_a_time", bytes([0]) + session)
write("agent_frames", "start_error", bytes([7]) + frame(0x81, struct.pack("<I", 1))
      + frame(0x86, bytes([127]) + b"not found"))

# Guest memory image helpers: queue of 16 at desc 0x1000, avail 0x1200, used 0x1400.
DESC, AVAIL, USED = 0x1000, 0x1200, 0x1400


def queue_header(desc=DESC, avail=AVAIL, used=USED, log2=4, event_idx=False):
    return bytes([log2 | (0x80 if event_idx else 0)]) + struct.pack("<HHH", desc, avail, used)


class Mem:
    def __init__(self):
        self.b = bytearray(0x4000)

    def put(self, addr, data):
        self.b[addr:addr + len(data)] = data

    def chains(self, desc, avail, chains):
        """chains: list of lists of (addr, len, writable)."""
        i = 0
        heads = []
        for chain in chains:
            heads.append(i)
            for j, (addr, ln, w) in enumerate(chain):
                last = j == len(chain) - 1
                flags = (0 if last else 1) | (2 if w else 0)
                self.put(desc + 16 * i, struct.pack("<QIHH", addr, ln, flags, 0 if last else i + 1))
                i += 1
        self.put(avail, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))

    def image(self):
        return bytes(self.b).rstrip(b"\0")


# mmio_transport: a driver doing the whole negotiation and one notify.
def op(write, width, offset, value):
    w = {1: 0, 2: 1, 4: 2, 8: 3}[width]
    return bytes([(1 if write else 0) | (w << 1)]) + struct.pack("<HBI", offset, 0, value)


ops = [op(False, 4, 0x00, 0), op(True, 4, 0x70, 1), op(True, 4, 0x70, 3),
       op(True, 4, 0x14, 0), op(False, 4, 0x10, 0), op(True, 4, 0x14, 1), op(False, 4, 0x10, 0),
       op(True, 4, 0x24, 0), op(True, 4, 0x20, 0b101), op(True, 4, 0x24, 1), op(True, 4, 0x20, 1),
       op(True, 4, 0x70, 11), op(False, 4, 0x70, 0)]
for q, (d, a, u) in enumerate([(DESC, AVAIL, USED), (0x1800, 0x1a00, 0x1c00)]):
    ops += [op(True, 4, 0x30, q), op(False, 4, 0x34, 0), op(True, 4, 0x38, 16),
            op(True, 4, 0x80, d), op(True, 4, 0x84, 0), op(True, 4, 0x90, a), op(True, 4, 0x94, 0),
            op(True, 4, 0xa0, u), op(True, 4, 0xa4, 0), op(True, 4, 0x44, 1)]
ops += [op(True, 4, 0x70, 15), op(True, 4, 0x50, 0), op(False, 4, 0x60, 0), op(True, 4, 0x64, 1),
        op(False, 1, 0x100, 0), op(True, 2, 0x102, 0xbeef), op(False, 4, 0xfc, 0), op(True, 4, 0x70, 0)]
m = Mem()
m.chains(DESC, AVAIL, [[(0x2000, 64, False), (0x2100, 64, True)]])
write("mmio_transport", "negotiate_activate_reset", bytes([len(ops)]) + b"".join(ops) + m.image())

# net_chains: one TX frame (virtio-net header + 60-byte frame) and RX buffers for 2 frames.
m = Mem()
m.chains(DESC, AVAIL, [[(0x2000, 12, False), (0x2100, 60, False)]])
m.put(0x2100, bytes(range(60)))
m.chains(0x1800, 0x1a00, [[(0x3000, 1600, True)], [(0x3800, 1600, True)]])
head = bytes([0, 2]) + struct.pack("<H", 60)
write("net_chains", "tx_one_rx_two", head + queue_header() + queue_header(0x1800, 0x1a00, 0x1c00) + m.image())
head = bytes([1 | 2, 3]) + struct.pack("<H", 1514)
write("net_chains", "mergeable_event_idx", head + queue_header(event_idx=True)
      + queue_header(0x1800, 0x1a00, 0x1c00, event_idx=True) + m.image())

# vsock_packets: REQUEST to host port 1024, then RW with data; RX buffers for the replies.
def vsock_hdr(op, length=0, src_port=5000, dst_port=1024):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, 0, 65536, 0)


m = Mem()
m.put(0x2000, vsock_hdr(1))
m.put(0x2100, vsock_hdr(5, 5))
m.put(0x2140, b"hello")
m.put(0x2200, vsock_hdr(6))
m.chains(DESC, AVAIL, [[(0x2000, 44, False)], [(0x2100, 44, False), (0x2140, 5, False)],
                       [(0x2200, 44, False)]])
m.chains(0x1800, 0x1a00, [[(0x3000, 256, True)], [(0x3100, 256, True)], [(0x3200, 256, True)]])
write("vsock_packets", "request_rw_credit", queue_header() + queue_header(0x1800, 0x1a00, 0x1c00)
      + bytes([2]) + m.image())
