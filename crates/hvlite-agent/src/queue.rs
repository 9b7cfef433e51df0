//! A FIFO of bytes waiting for a non-blocking writer (frames for the host, data for the
//! process's stdin), with the limit that tells the event loop when to stop producing.

/// Bytes waiting to be written, oldest first.
#[derive(Debug, Default)]
pub struct ByteQueue {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    start: usize,
}

impl ByteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue with room for `capacity` bytes before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            start: 0,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue holds at least `limit` bytes: the producer should pause.
    pub fn is_full(&self, limit: usize) -> bool {
        self.len() >= limit
    }

    /// The bytes waiting, to hand to `write`.
    pub fn front(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Appends bytes at the end.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Appends through a closure that writes into the buffer (e.g. `Message::encode_into`).
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        self.compact();
        fill(&mut self.buf);
    }

    /// Drops the first `n` bytes (as many as were written); more than `len()` drops all.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.clear();
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Moves the waiting bytes to the front once the written part dominates, so the buffer
    /// does not grow without bound and each byte is moved O(1) times on average.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_accounting() {
        let mut q = ByteQueue::new();
        assert!(q.is_empty());
        assert!(q.is_full(0));
        q.push(b"hello ");
        q.push_with(|b| b.extend_from_slice(b"world"));
        assert_eq!(q.len(), 11);
        assert!(q.is_full(11));
        assert!(!q.is_full(12));
        q.consume(6);
        assert_eq!(q.front(), b"world");
        q.push(b"!");
        assert_eq!(q.front(), b"world!");
        q.consume(100);
        assert!(q.is_empty());
        assert_eq!(q.front(), b"");
    }

    #[test]
    fn partial_writes_keep_order_and_bound_memory() {
        let mut q = ByteQueue::new();
        let mut out = Vec::new();
        let mut next = 0u8;
        for round in 0..1000 {
            let chunk: Vec<u8> = (0..37)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            q.push(&chunk);
            assert!(q.buf.len() <= 2 * q.len() + 37, "round {round}");
            // A writer that takes a bit less than what arrives, then catches up.
            let take = if round % 10 == 9 { q.len() } else { 30 };
            let n = take.min(q.len());
            out.extend_from_slice(&q.front()[..n]);
            q.consume(n);
        }
        out.extend_from_slice(q.front());
        let expected: Vec<u8> = (1..=37 * 1000).map(|i| (i % 256) as u8).collect();
        assert_eq!(out, expected);
    }
}
