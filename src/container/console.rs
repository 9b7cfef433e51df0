//! The guest console of a container run: quiet by default, but its last lines are kept so
//! that a guest that fails before its agent reports (a kernel panic, an agent that dies)
//! still leaves an explanation.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Bytes of console output kept.
pub const TAIL_BYTES: usize = 8 * 1024;

/// A writer that keeps the last [`TAIL_BYTES`] bytes written to it (shared by clones).
#[derive(Clone, Debug, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// An empty tail.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kept output, as text.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = buf.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }
}

impl Write for ConsoleTail {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let keep = &data[data.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (buf.len() + keep.len()).saturating_sub(TAIL_BYTES);
        let drop = overflow.min(buf.len());
        buf.drain(..drop);
        buf.extend(keep);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail() {
        let tail = ConsoleTail::new();
        let mut w = tail.clone();
        w.write_all(b"first\r\n").unwrap();
        assert_eq!(tail.text(), "first\n");
        let big = vec![b'x'; TAIL_BYTES + 10];
        w.write_all(&big).unwrap();
        w.write_all(b"end").unwrap();
        let t = tail.text();
        assert_eq!(t.len(), TAIL_BYTES);
        assert!(t.ends_with("xend") && !t.contains("first"));
    }
}
