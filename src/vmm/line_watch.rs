//! A console writer that passes everything through and hands each complete line to an
//! observer, so watchers of the guest console need no buffering of their own.

use std::io::{self, Write};

/// Longest line handed to the observer; the rest of a longer line is dropped.
pub const LINE_MAX: usize = 512;

/// Passes output through to `inner` and calls `on_line` with each complete line, without
/// its line ending (`\n`, or `\r\n` as the guest's tty writes it).
pub struct LineWatch<W, F> {
    inner: W,
    line: Vec<u8>,
    on_line: F,
}

impl<W: Write, F: FnMut(&str)> LineWatch<W, F> {
    /// Watches what is written to `inner`.
    pub fn new(inner: W, on_line: F) -> Self {
        Self {
            inner,
            line: Vec::new(),
            on_line,
        }
    }
}

impl<W: Write, F: FnMut(&str)> Write for LineWatch<W, F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        for &b in &data[..n] {
            match b {
                b'\n' => {
                    let text = String::from_utf8_lossy(&self.line);
                    (self.on_line)(text.trim_end_matches('\r'));
                    self.line.clear();
                }
                _ if self.line.len() < LINE_MAX => self.line.push(b),
                _ => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_handed_over_whole_and_output_passes_through() {
        let mut lines = Vec::new();
        let mut out = Vec::new();
        {
            let mut w = LineWatch::new(&mut out, |l: &str| lines.push(l.to_string()));
            for piece in b"one\r\ntw".chunks(3) {
                w.write_all(piece).unwrap();
            }
            w.write_all(b"o\nthree").unwrap();
            w.write_all(&vec![b'x'; LINE_MAX * 2]).unwrap();
            w.write_all(b"\n").unwrap();
        }
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), LINE_MAX);
        assert!(lines[2].starts_with("threex"));
        assert!(out.starts_with(b"one\r\ntwo\nthree"));
        assert_eq!(out.len(), 14 + LINE_MAX * 2 + 1);
    }
}
