//! The request/response framing spoken by `tcp-rr`, `tcp-crr` and
//! `tcp-rr-server`.
//!
//! Every message starts with a 4-byte header and is echoed back whole:
//!
//! ```text
//! byte 0     flags (bit 0: CLOSE, the server closes after echoing this message)
//! byte 1     magic 0x4c ('L'), to catch a client pointed at the wrong server
//! bytes 2-3  total message length, header included, big endian (4..=65535)
//! ```
//!
//! The length makes the server independent of the client's `--size`; the
//! CLOSE flag is what lets `tcp-crr` make the *server* close first (see
//! `rr.rs` for why that matters for TIME_WAIT).

pub const HEADER_LEN: usize = 4;
pub const MAGIC: u8 = 0x4c;
pub const FLAG_CLOSE: u8 = 0x01;
pub const MIN_SIZE: usize = HEADER_LEN;
pub const MAX_SIZE: usize = u16::MAX as usize;

/// A request of `size` bytes (MIN_SIZE..=MAX_SIZE): header, then a fixed
/// filler pattern. Built once per connection or thread, never per message.
pub fn request(size: usize, flags: u8) -> Vec<u8> {
    let size = size.clamp(MIN_SIZE, MAX_SIZE);
    let mut msg: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    msg[0] = flags;
    msg[1] = MAGIC;
    msg[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    msg
}

/// Incremental parser for a byte stream of messages (headers may be split
/// across reads). It only tracks boundaries; the bytes themselves are echoed
/// by the caller as they arrive.
#[derive(Default, Clone, Debug)]
pub struct Framer {
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Bytes of the current message's body still to come; meaningful only
    /// once the header is complete (`in_body`).
    remaining: usize,
    in_body: bool,
    flags: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadHeader;

/// What one chunk of bytes completed.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Fed {
    pub messages: u64,
    /// A completed message carried FLAG_CLOSE.
    pub close: bool,
}

impl Framer {
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Fed, BadHeader> {
        let mut fed = Fed::default();
        // Each pass consumes at least one byte, so this ends after at most
        // data.len() passes.
        while !data.is_empty() {
            if !self.in_body {
                let take = (HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < HEADER_LEN {
                    break;
                }
                self.header_len = 0;
                if self.header[1] != MAGIC {
                    return Err(BadHeader);
                }
                let len = u16::from_be_bytes([self.header[2], self.header[3]]) as usize;
                if len < HEADER_LEN {
                    return Err(BadHeader);
                }
                self.flags = self.header[0];
                self.remaining = len - HEADER_LEN;
                self.in_body = true;
            } else {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
            }
            if self.in_body && self.remaining == 0 {
                self.in_body = false;
                fed.messages += 1;
                fed.close |= self.flags & FLAG_CLOSE != 0;
            }
        }
        Ok(fed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let msg = request(64, FLAG_CLOSE);
        assert_eq!(msg.len(), 64);
        assert_eq!(&msg[..4], &[FLAG_CLOSE, MAGIC, 0, 64]);
        let mut f = Framer::default();
        assert_eq!(
            f.feed(&msg),
            Ok(Fed {
                messages: 1,
                close: true
            })
        );
    }

    #[test]
    fn split_anywhere_and_back_to_back() {
        let mut stream = request(10, 0);
        stream.extend(request(4, 0));
        stream.extend(request(300, FLAG_CLOSE));
        for cut in 0..stream.len() {
            let mut f = Framer::default();
            let a = f.feed(&stream[..cut]).unwrap();
            let b = f.feed(&stream[cut..]).unwrap();
            assert_eq!(a.messages + b.messages, 3, "cut {cut}");
            assert!(b.close, "cut {cut}");
        }
        // One byte at a time.
        let mut f = Framer::default();
        let n: u64 = stream
            .iter()
            .map(|b| f.feed(std::slice::from_ref(b)).unwrap().messages)
            .sum();
        assert_eq!(n, 3);
    }

    #[test]
    fn rejects_garbage() {
        let mut f = Framer::default();
        assert_eq!(f.feed(b"GET / HTTP/1.1\r\n"), Err(BadHeader));
        let mut f = Framer::default();
        assert_eq!(f.feed(&[0, MAGIC, 0, 2]), Err(BadHeader));
    }
}
