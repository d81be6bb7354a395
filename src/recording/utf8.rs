//! A byte stream decoded as UTF-8 in chunks, as a pty hands it over: a
//! character split between two reads is kept back until its end comes,
//! and invalid bytes become U+FFFD (as [`String::from_utf8_lossy`] does for
//! a whole buffer), so valid UTF-8 split anywhere decodes to the same text.

/// The most bytes an incomplete UTF-8 sequence can hold (RFC 3629 §3: a
/// character is at most 4 bytes).
const MAX_PENDING: usize = 3;

/// The tail of the last chunk that may be the start of a character.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `chunk` after what was kept back; keeps back an incomplete
    /// sequence at its end (at most 3 bytes).
    pub(crate) fn decode(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(chunk);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("from_utf8 said this prefix is valid"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // Only the end is cut short: it may finish in the next chunk.
                        None => {
                            debug_assert!(after.len() <= MAX_PENDING);
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What was kept back, decoded as it is (U+FFFD for an unfinished
    /// sequence), at the end of the stream; empty when nothing was.
    pub(crate) fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_split_at_every_byte_decodes_to_the_same_text() {
        let text = "a é € 😀 z";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = Utf8Stream::default();
            let mut got = s.decode(&bytes[..cut]);
            got.push_str(&s.decode(&bytes[cut..]));
            got.push_str(&s.finish());
            assert_eq!(got, text, "cut at {cut}");
        }
        let mut s = Utf8Stream::default();
        let got: String = bytes.iter().map(|b| s.decode(&[*b])).collect();
        assert_eq!(got, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_an_unfinished_end_too() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.decode(b"a\xffb\xc3"), "a\u{FFFD}b");
        assert_eq!(s.decode(b"("), "\u{FFFD}(");
        assert_eq!(s.decode(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{FFFD}");
        assert_eq!(s.finish(), "");
    }
}
