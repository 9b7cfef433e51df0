//! Snapshots: the state file format, the sparse memory file and the checks a restore makes.
//!
//! A state file is, in order:
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 | magic `HVLSNAP\0` |
//! | 4 | format version, little-endian ([`FORMAT_VERSION`]) |
//! | 4 + n | header length, then the [`Header`] (postcard) |
//! | 4 + n | state length, then the [`state::VmState`] (postcard) |
//! | 8 | CRC-64/XZ of everything before it, little-endian |
//!
//! Every field is checked in that order, so a damaged file is refused with the first thing
//! wrong in it; nothing in it is trusted before the CRC matched.

pub mod cpu_check;
pub mod memory;
pub mod state;

use serde::{Deserialize, Serialize};

use crate::host::HostKind;
pub use state::VmState;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HVLSNAP\0";
/// Version of the state file layout and of [`VmState`]; another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The largest state file read (a VM's state is a few tens of KiB).
pub const MAX_STATE_FILE: u64 = 64 << 20;

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// The host a snapshot was taken on, as far as a restore cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostTag {
    /// VT-x or AMD-V.
    Hardware,
    /// PVM.
    Pvm,
}

impl From<HostKind> for HostTag {
    fn from(h: HostKind) -> Self {
        match h {
            HostKind::Hardware => HostTag::Hardware,
            HostKind::Pvm => HostTag::Pvm,
        }
    }
}

impl std::fmt::Display for HostTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostTag::Hardware => "hardware",
            HostTag::Pvm => "pvm",
        })
    }
}

/// Who wrote the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// hvlite's version.
    pub hvlite_version: String,
    /// The host kind.
    pub host: HostTag,
}

impl Header {
    /// The header of a snapshot taken now, on `host`.
    pub fn current(host: HostKind) -> Self {
        Self {
            hvlite_version: env!("CARGO_PKG_VERSION").to_string(),
            host: host.into(),
        }
    }
}

/// The parts of a state file, to name where a file ends too early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Magic,
    Version,
    HeaderLength,
    Header,
    StateLength,
    State,
    Crc,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Magic => "magic",
            Section::Version => "format version",
            Section::HeaderLength => "header length",
            Section::Header => "header",
            Section::StateLength => "state length",
            Section::State => "state",
            Section::Crc => "CRC",
        })
    }
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an hvlite snapshot state file (wrong magic)")]
    Magic,
    #[error(
        "snapshot format version {found} is not supported (this hvlite reads version {FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("the state file is truncated in its {0}")]
    Truncated(Section),
    #[error("the state file has {0} bytes after its CRC")]
    TrailingBytes(usize),
    #[error("the state file is corrupt: CRC-64 {found:#018x}, expected {expected:#018x}")]
    Crc { found: u64, expected: u64 },
    #[error("the state file's {section} cannot be decoded: {message}")]
    Decode { section: Section, message: String },
    #[error("cannot encode the snapshot state: {0}")]
    Encode(String),
}

/// Serializes `header` and `state` into a state file's bytes.
pub fn encode(header: &Header, state: &VmState) -> Result<Vec<u8>, FormatError> {
    let enc = |e: postcard::Error| FormatError::Encode(e.to_string());
    let header = postcard::to_allocvec(header).map_err(enc)?;
    let state = postcard::to_allocvec(state).map_err(enc)?;
    frame(&header, &state)
}

/// Puts serialized header and state bytes into a state file: magic, version, lengths and
/// CRC (also for tests and the fuzzer, which need valid frames around any bytes).
pub fn frame(header: &[u8], state: &[u8]) -> Result<Vec<u8>, FormatError> {
    let len32 = |n: usize| u32::try_from(n).map_err(|_| FormatError::Encode("too large".into()));
    let mut out = Vec::with_capacity(8 + 4 + 4 + header.len() + 4 + state.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&len32(header.len())?.to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&len32(state.len())?.to_le_bytes());
    out.extend_from_slice(state);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A cursor over the file that names the section it runs out in.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, section: Section) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(FormatError::Truncated(section))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self, section: Section) -> Result<u32, FormatError> {
        let b = self.take(4, section)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Parses a state file's bytes: checks magic, version, lengths and CRC, then decodes the
/// header and the state. Any damage is an error, never a panic.
pub fn decode(data: &[u8]) -> Result<(Header, VmState), FormatError> {
    let mut r = Reader { data, pos: 0 };
    let magic = r.take(MAGIC.len(), Section::Magic);
    match magic {
        Ok(m) if m == MAGIC => {}
        // A short file that starts like a state file is truncated; anything else is not one.
        Err(e) if MAGIC.starts_with(data) => return Err(e),
        _ => return Err(FormatError::Magic),
    }
    let version = r.u32(Section::Version)?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let header_len = r.u32(Section::HeaderLength)? as usize;
    let header = r.take(header_len, Section::Header)?;
    let state_len = r.u32(Section::StateLength)? as usize;
    let state = r.take(state_len, Section::State)?;
    let covered = r.pos;
    let crc = r.take(8, Section::Crc)?;
    let found = u64::from_le_bytes([
        crc[0], crc[1], crc[2], crc[3], crc[4], crc[5], crc[6], crc[7],
    ]);
    if r.pos != data.len() {
        return Err(FormatError::TrailingBytes(data.len() - r.pos));
    }
    let expected = CRC.checksum(&data[..covered]);
    if found != expected {
        return Err(FormatError::Crc { found, expected });
    }
    let header: Header = postcard::from_bytes(header).map_err(|e| FormatError::Decode {
        section: Section::Header,
        message: e.to_string(),
    })?;
    let state: VmState = postcard::from_bytes(state).map_err(|e| FormatError::Decode {
        section: Section::State,
        message: e.to_string(),
    })?;
    Ok((header, state))
}

/// Where each section of a state file starts (for tests that cut files at each one).
pub fn section_offsets(data: &[u8]) -> Vec<(Section, usize)> {
    let mut out = vec![(Section::Magic, 0), (Section::Version, 8)];
    let rd = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    out.push((Section::HeaderLength, 12));
    let Some(h) = rd(12) else { return out };
    out.push((Section::Header, 16));
    let state_len_at = 16 + h;
    out.push((Section::StateLength, state_len_at));
    let Some(s) = rd(state_len_at) else {
        return out;
    };
    out.push((Section::State, state_len_at + 4));
    out.push((Section::Crc, state_len_at + 4 + s));
    out
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
