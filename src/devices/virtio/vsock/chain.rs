//! Byte ranges of a descriptor chain already mapped to guest memory (a list of
//! (address, length) pieces, see [`MappedChain`](crate::devices::virtio::queue::MappedChain)),
//! and copies between them and host buffers.

use std::collections::VecDeque;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// The bytes `[offset, offset + len)` of the chain made of `pieces`, as guest memory
/// slices; `None` if the chain is shorter or a piece is not in `mem`.
pub fn range<'m>(
    mem: &'m GuestMemoryMmap,
    pieces: &[(GuestAddress, usize)],
    mut offset: usize,
    mut len: usize,
) -> Option<Vec<VolatileSlice<'m>>> {
    let mut out = Vec::new();
    for &(addr, piece_len) in pieces {
        if len == 0 {
            break;
        }
        if offset >= piece_len {
            offset -= piece_len;
            continue;
        }
        let n = (piece_len - offset).min(len);
        out.push(mem.get_slice(addr.checked_add(offset as u64)?, n).ok()?);
        len -= n;
        offset = 0;
    }
    (len == 0).then_some(out)
}

/// Copies the slices, in order, into `buf`; returns the bytes copied.
pub fn copy_out(slices: &[VolatileSlice<'_>], buf: &mut [u8]) -> usize {
    let mut done = 0;
    for s in slices {
        if done == buf.len() {
            break;
        }
        done += s.copy_to(&mut buf[done..]);
    }
    done
}

/// Copies `data` into the slices, in order; returns the bytes copied.
pub fn copy_in(slices: &[VolatileSlice<'_>], data: &[u8]) -> usize {
    let mut done = 0;
    for s in slices {
        if done == data.len() {
            break;
        }
        let n = s.len().min(data.len() - done);
        s.copy_from(&data[done..done + n]);
        done += n;
    }
    done
}

/// Appends the bytes of the slices after the first `skip` to `buf`.
pub fn append_from(slices: &[VolatileSlice<'_>], mut skip: usize, buf: &mut VecDeque<u8>) {
    let mut chunk = Vec::new();
    for s in slices {
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        chunk.resize(s.len() - skip, 0);
        match s.subslice(skip, chunk.len()) {
            Ok(sub) => {
                let n = sub.copy_to(&mut chunk[..]);
                buf.extend(&chunk[..n]);
            }
            Err(e) => log::debug!("virtio-vsock: cannot read a TX payload: {e}"),
        }
        skip = 0;
    }
}

/// Total bytes of the slices.
pub fn total_len(slices: &[VolatileSlice<'_>]) -> usize {
    slices.iter().map(|s| s.len()).sum()
}
