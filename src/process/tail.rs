//! Bounded output tail: keeps the last N lines and at most M bytes of a byte
//! stream, whatever the stream's size or shape.
//!
//! Owns: the ring of recent lines, the rendering to a `String` (lossy
//! UTF-8, cut at a char boundary), and the counters live output needs: a
//! version that changes with every chunk, and the lines pushed since the last
//! live snapshot.
//! Must never: grow with the stream (memory stays O(max_bytes + max_lines),
//! also for one endless line without a newline), do I/O, or panic on input.

use std::collections::VecDeque;

/// The last lines of one output stream.
#[derive(Debug)]
pub(crate) struct Tail {
    max_lines: usize,
    max_bytes: usize,
    /// Complete lines, without their `\n`, oldest first.
    lines: VecDeque<Vec<u8>>,
    /// Sum of `lines` lengths plus one separator per line.
    bytes: usize,
    /// The current line, not yet ended by `\n`.
    partial: Vec<u8>,
    /// Bumped by every non-empty chunk: a live snapshot is taken only when it moved.
    version: u64,
    /// Lines ended since the last live snapshot (`snapshot`).
    unseen_lines: usize,
}

impl Tail {
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Tail {
        Tail {
            max_lines,
            max_bytes,
            lines: VecDeque::new(),
            bytes: 0,
            partial: Vec::new(),
            version: 0,
            unseen_lines: 0,
        }
    }

    /// Changes with every chunk pushed (whatever the bounds keep of it).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Lines ended since the last `snapshot`.
    pub(crate) fn unseen_lines(&self) -> usize {
        self.unseen_lines
    }

    /// The rendered tail and its version, for a live flush; restarts the count of unseen lines.
    pub(crate) fn snapshot(&mut self) -> (u64, String) {
        self.unseen_lines = 0;
        (self.version, self.render())
    }

    fn disabled(&self) -> bool {
        self.max_lines == 0 || self.max_bytes == 0
    }

    /// Appends a chunk of the stream.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.disabled() || data.is_empty() {
            return;
        }
        self.version += 1;
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..nl]);
            self.finish_line();
            self.unseen_lines += 1;
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        // Amortised: trim only at twice the bound, so a long line costs O(1)
        // per byte instead of a memmove per chunk.
        if self.partial.len() > self.max_bytes.saturating_mul(2) {
            keep_last(&mut self.partial, self.max_bytes);
        }
        self.enforce();
    }

    fn finish_line(&mut self) {
        let mut line = std::mem::take(&mut self.partial);
        if line.len() > self.max_bytes {
            keep_last(&mut line, self.max_bytes);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        self.enforce();
    }

    fn enforce(&mut self) {
        while self.lines.len() > self.max_lines
            || (!self.lines.is_empty() && self.bytes + self.partial.len() > self.max_bytes)
        {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    /// The tail as text: the last `max_lines` lines joined by `\n` (no
    /// trailing newline), invalid UTF-8 replaced, at most `max_bytes` bytes.
    pub(crate) fn render(&self) -> String {
        if self.disabled() {
            return String::new();
        }
        let mut segs: Vec<&[u8]> = self.lines.iter().map(Vec::as_slice).collect();
        if !self.partial.is_empty() {
            segs.push(&self.partial);
        }
        let start = segs.len().saturating_sub(self.max_lines);
        let joined = segs[start..].join(&b'\n');
        let text = String::from_utf8_lossy(&joined);
        cut_front(&text, self.max_bytes).to_owned()
    }
}

/// Keeps the last `max` bytes of `buf`, starting at a UTF-8 char start when
/// one is within reach (so the cut does not leave a replacement character).
fn keep_last(buf: &mut Vec<u8>, max: usize) {
    if buf.len() <= max {
        return;
    }
    let mut cut = buf.len() - max;
    let limit = (cut + 3).min(buf.len());
    while cut < limit && (buf[cut] & 0xC0) == 0x80 {
        cut += 1;
    }
    buf.drain(..cut);
}

/// The longest suffix of `s` of at most `max` bytes that starts at a char
/// boundary.
fn cut_front(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(chunks: &[&[u8]], lines: usize, bytes: usize) -> String {
        let mut t = Tail::new(lines, bytes);
        for c in chunks {
            t.push(c);
        }
        t.render()
    }

    #[test]
    fn keeps_last_lines_across_chunks() {
        assert_eq!(tail_of(&[b"a\nb", b"b\nc\nd\n"], 2, 100), "c\nd");
        assert_eq!(tail_of(&[b"a\nb", b"b\nc\nd"], 2, 100), "c\nd");
        assert_eq!(tail_of(&[b"hello\n"], 5, 100), "hello");
    }

    #[test]
    fn bytes_bound_and_char_boundary() {
        // "é" is two bytes: a 3-byte cut must not split it.
        let out = tail_of(&["xé\néé".as_bytes()], 10, 3);
        assert!(out.len() <= 3, "{out:?}");
        assert_eq!(out, "é");
        let out = tail_of(&[&[b'a'; 10_000]], 10, 100);
        assert_eq!(out.len(), 100);
    }

    #[test]
    fn long_line_memory_is_bounded() {
        let mut t = Tail::new(5, 1000);
        let chunk = [b'z'; 8192];
        for _ in 0..1000 {
            t.push(&chunk);
            assert!(t.partial.len() <= 2 * 1000 + 8192);
        }
        assert_eq!(t.render().len(), 1000);
    }

    #[test]
    fn invalid_utf8_is_lossy_and_zero_bounds_give_empty() {
        assert_eq!(tail_of(&[b"a\xffb"], 1, 100), "a\u{fffd}b");
        assert_eq!(tail_of(&[b"abc\n"], 0, 100), "");
        assert_eq!(tail_of(&[b"abc\n"], 3, 0), "");
    }

    #[test]
    fn versions_and_unseen_lines_follow_the_chunks() {
        let mut t = Tail::new(5, 1000);
        assert_eq!(t.version(), 0);
        t.push(b"");
        assert_eq!(t.version(), 0, "an empty chunk changes nothing");
        t.push(b"a\nb\nc");
        assert_eq!((t.version(), t.unseen_lines()), (1, 2));
        assert_eq!(t.snapshot(), (1, "a\nb\nc".to_owned()));
        assert_eq!(t.unseen_lines(), 0);
        t.push(b"\n");
        assert_eq!((t.version(), t.unseen_lines()), (2, 1));
    }

    #[test]
    fn front_cut_skips_continuation_bytes() {
        let mut v = "éé".as_bytes().to_vec(); // c3 a9 c3 a9
        keep_last(&mut v, 3); // would start at a9
        assert_eq!(v, "é".as_bytes());
    }
}
