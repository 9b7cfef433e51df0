//! The virtio-fs configuration space (virtio 1.2, 5.11.4): the mount tag (36 bytes,
//! NUL-padded) and the number of request queues (little-endian u32).

/// Longest mount tag the configuration space holds.
pub const MAX_TAG_LEN: usize = 36;

/// The guest-visible configuration of one share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfigSpace {
    bytes: [u8; MAX_TAG_LEN + 4],
}

/// Why a tag cannot be a mount tag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    #[error("the tag is empty")]
    Empty,
    #[error("the tag {0:?} is longer than {MAX_TAG_LEN} bytes")]
    TooLong(String),
    #[error("the tag {0:?} holds a NUL, ',' or whitespace")]
    BadChar(String),
}

/// Checks a mount tag: 1 to 36 bytes, no NUL, comma or whitespace (it is written in
/// mount commands and in hvlite's option lists).
pub fn check_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong(tag.to_string()));
    }
    if tag
        .bytes()
        .any(|b| b == 0 || b == b',' || b.is_ascii_whitespace())
    {
        return Err(TagError::BadChar(tag.to_string()));
    }
    Ok(())
}

impl FsConfigSpace {
    /// The configuration of a share with mount tag `tag` and `request_queues` request
    /// queues.
    pub fn new(tag: &str, request_queues: u32) -> Result<Self, TagError> {
        check_tag(tag)?;
        let mut bytes = [0u8; MAX_TAG_LEN + 4];
        bytes[..tag.len()].copy_from_slice(tag.as_bytes());
        bytes[MAX_TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
        Ok(Self { bytes })
    }

    /// Reads at `offset`; bytes beyond the space read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.bytes.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_queue_count_are_laid_out() {
        let c = FsConfigSpace::new("share", 1).unwrap();
        let mut tag = [0xffu8; 36];
        c.read(0, &mut tag);
        assert_eq!(&tag[..5], b"share");
        assert!(tag[5..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        c.read(36, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        let mut past = [0xffu8; 8];
        c.read(38, &mut past);
        assert_eq!(past, [0, 0, 0, 0, 0, 0, 0, 0]);
        c.read(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn bad_tags_are_refused() {
        assert_eq!(check_tag(""), Err(TagError::Empty));
        assert!(matches!(
            check_tag(&"a".repeat(37)),
            Err(TagError::TooLong(_))
        ));
        assert!(check_tag(&"a".repeat(36)).is_ok());
        for bad in ["a b", "a,b", "a\0b", "a\tb"] {
            assert!(
                matches!(check_tag(bad), Err(TagError::BadChar(_))),
                "{bad:?}"
            );
        }
    }
}
