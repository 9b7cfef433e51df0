//! virtio-blk requests: parsing one descriptor chain and executing it against a
//! [`DiskImage`]. Knows nothing about eventfds, interrupts or the rings; the caller puts
//! the returned [`Completion::used_len`] into the used ring.
//!
//! Framing: the header (16 bytes) is at the start of the first descriptor, which the
//! device reads; the status byte is the last byte of the last descriptor, which the device
//! writes; every descriptor in between is data. (This is the layout Linux and every other
//! common driver uses.)
//!
//! Whatever the guest put in the chain, the result is one of: success, a status of
//! VIRTIO_BLK_S_UNSUPP or VIRTIO_BLK_S_IOERR (nothing read from or written to the disk
//! unless the request was valid), or — when there is no writable status byte — a dropped
//! request that touched neither guest memory nor the disk.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileMemory,
    VolatileSlice,
};

use super::config::{MAX_REQUEST_BYTES, SECTOR_SHIFT, SECTOR_SIZE, SEG_MAX};
use super::disk::{DiskError, DiskImage};

/// Length of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;

/// Why a request failed (with an IOERR status) or was dropped.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the descriptor chain is empty or unreadable")]
    EmptyChain,
    #[error("the descriptor chain has no status descriptor")]
    NoStatusDescriptor,
    #[error("the status descriptor is not device-writable")]
    StatusReadOnly,
    #[error("the status descriptor has length 0")]
    StatusEmpty,
    #[error("the status byte at {0:#x} is outside guest memory")]
    StatusOutOfMemory(u64),
    #[error("cannot write the status byte")]
    StatusWrite(#[source] GuestMemoryError),
    #[error("the header descriptor is device-writable")]
    HeaderWriteOnly,
    #[error("the header descriptor is {0} bytes, need 16")]
    HeaderTooShort(u32),
    #[error("cannot read the request header")]
    HeaderRead(#[source] GuestMemoryError),
    #[error("a data descriptor has the wrong direction for a {0} request")]
    DataDirection(&'static str),
    #[error("{0} data segments, at most {SEG_MAX} allowed")]
    TooManySegments(usize),
    #[error("data length {0} exceeds the {MAX_REQUEST_BYTES}-byte request limit")]
    DataTooLarge(u64),
    #[error("data length {0} is not a multiple of 512")]
    DataUnaligned(u64),
    #[error("{len} bytes at sector {sector} reach past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("data buffer of {len} bytes at {addr:#x} is outside guest memory")]
    DataOutOfMemory { addr: u64, len: u32 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("disk I/O failed")]
    Disk(#[source] DiskError),
}

/// The request type from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN: read from the disk into guest memory.
    In,
    /// VIRTIO_BLK_T_OUT: write guest memory to the disk.
    Out,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the device ID string.
    GetId,
    /// Any other type.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::In => "read",
            Self::Out => "write",
            Self::Flush => "flush",
            Self::GetId => "get-id",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

/// How a request ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Status VIRTIO_BLK_S_OK.
    Ok,
    /// Status VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
    /// Status VIRTIO_BLK_S_IOERR.
    Failed(RequestError),
    /// No status could be written; the chain is returned to the driver untouched.
    Dropped(RequestError),
}

/// The result of [`process_request`].
#[derive(Debug)]
pub struct Completion {
    /// Bytes written into the chain (data and status), for the used ring.
    pub used_len: u32,
    /// How the request ended.
    pub outcome: RequestOutcome,
    /// Bytes read from the disk into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the disk.
    pub bytes_written: u64,
}

impl Completion {
    fn new(used_len: u32, outcome: RequestOutcome) -> Self {
        Self {
            used_len,
            outcome,
            bytes_read: 0,
            bytes_written: 0,
        }
    }
}

/// A parsed, validated request whose status byte can be written.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request type.
    pub request_type: RequestType,
    /// The first sector (IN and OUT).
    pub sector: u64,
    /// The data buffers, in order, in guest memory (empty for FLUSH and unsupported types).
    data: DataBuffers<'a>,
    /// Total data length in bytes.
    data_len: u64,
}

/// The data buffers of a request. One buffer (the common case: a 4 KiB page, or a
/// contiguous multi-page buffer) needs no heap allocation.
#[derive(Debug, Default)]
enum DataBuffers<'a> {
    #[default]
    Empty,
    One(VolatileSlice<'a>),
    Many(Vec<VolatileSlice<'a>>),
}

impl<'a> DataBuffers<'a> {
    fn push(&mut self, slice: VolatileSlice<'a>) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(slice),
            Self::One(first) => {
                let mut all = Vec::with_capacity(8);
                all.push(first);
                all.push(slice);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.push(slice);
                Self::Many(all)
            }
        };
    }

    fn as_slice(&self) -> &[VolatileSlice<'a>] {
        match self {
            Self::Empty => &[],
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(all) => all,
        }
    }
}

/// Where the status byte goes; found first, so that later errors can be reported.
#[derive(Debug, Clone, Copy)]
struct StatusByte<'a>(VolatileSlice<'a>);

/// Parses, executes and completes the request in `chain`: writes the data and the status
/// into guest memory `mem` (the memory `chain` was built on) and returns what to put in
/// the used ring. Never panics, whatever the chain holds.
pub fn process_request(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &DiskImage,
) -> Completion {
    let (status, result) = match parse(mem, chain, disk) {
        Ok(parsed) => parsed,
        Err(error) => return Completion::new(0, RequestOutcome::Dropped(error)),
    };
    let mut completion = match result.and_then(|request| request.execute(disk)) {
        Ok(completion) => completion,
        Err(error) => Completion::new(0, RequestOutcome::Failed(error)),
    };
    let code = match completion.outcome {
        RequestOutcome::Ok => VIRTIO_BLK_S_OK,
        RequestOutcome::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
        _ => VIRTIO_BLK_S_IOERR,
    };
    // The status byte was mapped during parsing; the guest cannot unmap memory.
    // A single-byte store: the slice is exactly the status byte.
    if let Err(e) = status.0.store(code as u8, 0, Ordering::Relaxed) {
        return Completion::new(
            0,
            RequestOutcome::Dropped(RequestError::StatusWrite(e.into())),
        );
    }
    completion.used_len = completion.used_len.saturating_add(1);
    completion
}

/// Splits the chain into header, data and status, and validates it, in one walk over the
/// chain: the header is read first, then every data descriptor is checked and mapped as
/// it goes by (nothing is collected: the status descriptor is only known at the end of
/// the chain). The outer error means there is no usable status byte (drop the request);
/// the inner one is reported through it.
fn parse<'a>(
    mem: &'a GuestMemoryMmap,
    mut chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &DiskImage,
) -> Result<(StatusByte<'a>, Result<Request<'a>, RequestError>), RequestError> {
    let header = chain.next().ok_or(RequestError::EmptyChain)?;
    let header = read_header(mem, &header);
    let mut data = DataChecker::new(mem, header.as_ref().ok().copied());
    // Walk the whole chain (bounded by virtio-queue) to find the last descriptor, the
    // status descriptor; every one before it is data.
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        if let Some(prev) = last.replace(desc) {
            data.add(&prev);
        }
    }
    let status_desc = last.ok_or(RequestError::NoStatusDescriptor)?;
    let status = status_byte(mem, &status_desc)?;
    let request = header.and_then(|(request_type, sector)| data.finish(request_type, sector, disk));
    Ok((status, request))
}

fn status_byte<'a>(
    mem: &'a GuestMemoryMmap,
    desc: &Descriptor,
) -> Result<StatusByte<'a>, RequestError> {
    if !desc.is_write_only() {
        return Err(RequestError::StatusReadOnly);
    }
    let last = desc.len().checked_sub(1).ok_or(RequestError::StatusEmpty)?;
    desc.addr()
        .checked_add(u64::from(last))
        .and_then(|addr| mem.get_slice(addr, 1).ok())
        .map(StatusByte)
        .ok_or(RequestError::StatusOutOfMemory(desc.addr().0))
}

/// Checks the header descriptor and reads the request type and sector.
fn read_header(
    mem: &GuestMemoryMmap,
    header: &Descriptor,
) -> Result<(RequestType, u64), RequestError> {
    if header.is_write_only() {
        return Err(RequestError::HeaderWriteOnly);
    }
    if header.len() < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(header.len()));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    // Fast path: the header in one region; else the generic (region-crossing) read.
    // (`get_ref` of a byte array needs no alignment; `load` is one 16-byte volatile read.)
    match mem
        .get_slice(header.addr(), raw.len())
        .and_then(|slice| Ok(slice.get_ref::<[u8; HEADER_LEN as usize]>(0)?.load()))
    {
        Ok(bytes) => raw = bytes,
        Err(_) => mem
            .read_slice(&mut raw, header.addr())
            .map_err(RequestError::HeaderRead)?,
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    let request_type = RequestType::from_raw(u32::from_le_bytes([t0, t1, t2, t3]));
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    Ok((request_type, sector))
}

/// Validates and maps the data descriptors one at a time. Errors are recorded, not
/// returned at once, so that [`DataChecker::finish`] reports them in a fixed order
/// (direction, segment count, extent, read-only, guest memory) whatever the order of the
/// descriptors.
struct DataChecker<'a> {
    mem: &'a GuestMemoryMmap,
    /// Whether the data descriptors must be device-writable; `None` when they are not
    /// looked at (no valid header, or a request type without data).
    device_writes: Option<bool>,
    segments: usize,
    len: u64,
    wrong_direction: bool,
    out_of_memory: Option<RequestError>,
    buffers: DataBuffers<'a>,
}

impl<'a> DataChecker<'a> {
    fn new(mem: &'a GuestMemoryMmap, header: Option<(RequestType, u64)>) -> Self {
        let device_writes = match header.map(|(request_type, _)| request_type) {
            Some(RequestType::In | RequestType::GetId) => Some(true),
            Some(RequestType::Out) => Some(false),
            // No data expected; any data descriptors are ignored.
            Some(RequestType::Flush | RequestType::Unsupported(_)) | None => None,
        };
        Self {
            mem,
            device_writes,
            segments: 0,
            len: 0,
            wrong_direction: false,
            out_of_memory: None,
            buffers: DataBuffers::Empty,
        }
    }

    fn add(&mut self, desc: &Descriptor) {
        let Some(device_writes) = self.device_writes else {
            return;
        };
        self.segments += 1;
        self.wrong_direction |= desc.is_write_only() != device_writes;
        self.len += u64::from(desc.len());
        // Map only what a valid request can use: the request fails otherwise.
        if self.wrong_direction
            || self.out_of_memory.is_some()
            || self.segments > SEG_MAX as usize
            || self.len > MAX_REQUEST_BYTES
            || desc.len() == 0
        {
            return;
        }
        if let Err(e) = self.map(desc) {
            self.out_of_memory = Some(e);
        }
    }

    /// Maps one data descriptor to host memory (it may span several regions).
    fn map(&mut self, desc: &Descriptor) -> Result<(), RequestError> {
        let out_of_memory = || RequestError::DataOutOfMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        let len = usize::try_from(desc.len()).map_err(|_| out_of_memory())?;
        // Fast path: the buffer in one region.
        if let Ok(slice) = self.mem.get_slice(desc.addr(), len) {
            self.buffers.push(slice);
            return Ok(());
        }
        for slice in GuestMemoryBackend::get_slices(self.mem, desc.addr(), len) {
            self.buffers.push(slice.map_err(|_| out_of_memory())?);
        }
        Ok(())
    }

    fn finish(
        self,
        request_type: RequestType,
        sector: u64,
        disk: &DiskImage,
    ) -> Result<Request<'a>, RequestError> {
        let mut request = Request {
            request_type,
            sector,
            data: DataBuffers::Empty,
            data_len: 0,
        };
        if self.device_writes.is_none() {
            return Ok(request);
        }
        if self.wrong_direction {
            return Err(RequestError::DataDirection(request_type.name()));
        }
        if self.segments > SEG_MAX as usize {
            return Err(RequestError::TooManySegments(self.segments));
        }
        if request_type != RequestType::GetId {
            check_extent(sector, self.len, disk)?;
            if request_type == RequestType::Out && disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
        }
        if let Some(e) = self.out_of_memory {
            return Err(e);
        }
        request.data = self.buffers;
        request.data_len = self.len;
        Ok(request)
    }
}

/// Checks the length and position of an IN or OUT transfer.
fn check_extent(sector: u64, len: u64, disk: &DiskImage) -> Result<(), RequestError> {
    if len > MAX_REQUEST_BYTES {
        return Err(RequestError::DataTooLarge(len));
    }
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::DataUnaligned(len));
    }
    let in_range = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(len))
        .is_some_and(|end| end <= disk.size());
    if !in_range {
        return Err(RequestError::OutOfRange { sector, len });
    }
    Ok(())
}

impl Request<'_> {
    /// Runs the request against `disk`. The data buffers are filled (IN, GET_ID) or
    /// written out (OUT); the status byte is left to the caller.
    pub fn execute(&self, disk: &DiskImage) -> Result<Completion, RequestError> {
        let mut completion = Completion::new(0, RequestOutcome::Ok);
        let offset = self.sector << SECTOR_SHIFT;
        match self.request_type {
            RequestType::In => {
                disk.read_into(offset, self.data.as_slice())
                    .map_err(RequestError::Disk)?;
                completion.bytes_read = self.data_len;
                completion.used_len = self.used_data_len();
            }
            RequestType::Out => {
                disk.write_from(offset, self.data.as_slice())
                    .map_err(RequestError::Disk)?;
                completion.bytes_written = self.data_len;
            }
            RequestType::Flush => disk.flush().map_err(RequestError::Disk)?,
            RequestType::GetId => {
                let mut id: &[u8] = disk.device_id();
                let mut copied = 0usize;
                for slice in self.data.as_slice() {
                    if id.is_empty() {
                        break;
                    }
                    let n = id.len().min(slice.len());
                    slice.copy_from(&id[..n]);
                    id = &id[n..];
                    copied += n;
                }
                // At most DEVICE_ID_LEN bytes.
                completion.used_len = copied as u32;
            }
            RequestType::Unsupported(raw) => completion.outcome = RequestOutcome::Unsupported(raw),
        }
        Ok(completion)
    }

    /// Total data length (bounded by MAX_REQUEST_BYTES once validated).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn used_data_len(&self) -> u32 {
        u32::try_from(self.data_len).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
