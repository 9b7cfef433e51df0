//! Boot time: the guest console is watched for the guest init's start marker
//! ([`crate::initcmd::INIT_MARKER`]); when it appears, the time since the process started
//! is logged and recorded in the metrics.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Metrics;

/// A console writer that passes everything through to `inner` and notices `marker`.
pub struct MarkerWatch<W> {
    inner: W,
    marker: &'static [u8],
    /// The last `marker.len()` bytes written, oldest first.
    tail: Vec<u8>,
    seen: bool,
    start: Instant,
    metrics: Option<Arc<Metrics>>,
}

impl<W: Write> MarkerWatch<W> {
    /// Watches for `marker`; times are measured from `start`.
    pub fn new(
        inner: W,
        marker: &'static str,
        start: Instant,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            inner,
            marker: marker.as_bytes(),
            tail: Vec::with_capacity(marker.len()),
            seen: false,
            start,
            metrics,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if self.tail.len() == self.marker.len() {
                self.tail.remove(0);
            }
            self.tail.push(b);
            if self.tail == self.marker {
                self.seen = true;
                let ms = self.start.elapsed().as_millis();
                log::info!("guest init started {ms} ms after process start");
                if let Some(m) = &self.metrics {
                    m.set_boot_time_ms(u64::try_from(ms).unwrap_or(u64::MAX));
                }
                return;
            }
        }
    }
}

impl<W: Write> Write for MarkerWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if !self.seen {
            self.scan(&buf[..n]);
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
    fn finds_the_marker_across_writes() {
        let metrics = Arc::new(Metrics::new("t"));
        let mut w = MarkerWatch::new(
            Vec::new(),
            "init: go",
            Instant::now(),
            Some(metrics.clone()),
        );
        for b in b"boot...init: init: g" {
            w.write_all(&[*b]).unwrap();
        }
        assert!(metrics.boot_time_ms().is_none());
        w.write_all(b"o\nmore").unwrap();
        assert!(metrics.boot_time_ms().is_some());
        assert_eq!(w.inner, b"boot...init: init: go\nmore");
    }
}
