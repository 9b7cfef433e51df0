//! Fuzzes the snapshot state file parser: damaged or hostile state files must be refused
//! with an error, never a panic or an unbounded allocation.
//!
//! Input layout: byte 0 picks the mode.
//! - odd: the rest is a whole state file, as read from disk (magic, version, lengths and
//!   CRC are checked first);
//! - even: byte 1 splits the rest into header and state bytes, which get a valid frame
//!   (magic, version, lengths, CRC) so that the serialized header and state are reached.
//!
//! A state that decodes is then checked as a restore would check it.

#![no_main]

use hvlite::snapshot::{self, cpu_check, memory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let Some((&split, body)) = rest.split_first() else {
            return;
        };
        let at = usize::from(split).min(body.len());
        let (header, state) = body.split_at(at);
        match snapshot::frame(header, state) {
            Ok(f) => f,
            Err(_) => return,
        }
    };
    if let Ok((_, state)) = snapshot::decode(&file) {
        let _ = memory::check_layout(&state.memory);
        for v in &state.vcpus {
            let _ = cpu_check::missing_features(&v.cpuid, &v.cpuid);
        }
    }
});
