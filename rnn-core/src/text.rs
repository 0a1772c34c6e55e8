//! Character-level text as training data: a corpus of byte ids and the parallel streams a
//! truncated-BPTT run reads it through.
//!
//! Any byte sequence is a corpus; its alphabet is the set of bytes that occur, sorted, so a
//! model's input and output size is [`CharCorpus::classes`]. [`CharStreams`] cuts the corpus
//! into `B` contiguous rows and hands out one-hot chunks `[k, B, V]` with next-character labels
//! `[k, B]`, the layout [`crate::tbptt::Tbptt::step`] takes.
//!
//! ```
//! use rnn_core::text::{CharCorpus, CharStreams};
//! let corpus = CharCorpus::from_bytes(b"abracadabra, abracadabra")?;
//! assert_eq!(corpus.alphabet(), b" ,abcdr");
//! let mut streams = CharStreams::new(&corpus, 2, 5)?; // 2 rows of 12 characters, 5 per chunk
//! let (mut x, mut y) = (vec![0.0f32; 5 * 2 * 7], vec![0usize; 5 * 2]);
//! assert!(!streams.next_chunk(&corpus, &mut x, &mut y)?);
//! assert_eq!(y[0], corpus.id_of(b'b').unwrap()); // row 0 reads "abrac", labels "braca"
//! # Ok::<(), rnn_core::RnnError>(())
//! ```

use kernels::Float;

use crate::error::{Result, RnnError};

/// A text as ids into its own alphabet (the bytes that occur in it, sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharCorpus {
    ids: Vec<u8>,
    alphabet: Vec<u8>,
    index: [u8; 256],
}

impl CharCorpus {
    /// Reads `bytes` as they are (no encoding is assumed). Fails when fewer than two
    /// different bytes occur: there is nothing to predict.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut seen = [false; 256];
        for &b in bytes {
            seen[b as usize] = true;
        }
        let alphabet: Vec<u8> = (0..=255u8).filter(|&b| seen[b as usize]).collect();
        if alphabet.len() < 2 {
            return Err(RnnError::Config(format!(
                "a text needs at least two different characters, this one ({} bytes) has {}",
                bytes.len(),
                alphabet.len()
            )));
        }
        let mut index = [0u8; 256];
        for (i, &b) in alphabet.iter().enumerate() {
            // At most 256 distinct bytes, so every id fits a u8.
            index[b as usize] = i as u8;
        }
        Ok(Self {
            ids: bytes.iter().map(|&b| index[b as usize]).collect(),
            alphabet,
            index,
        })
    }

    /// The text cut in two at character `at`, both parts keeping this corpus's alphabet (so
    /// a model of one reads the other): a training part and a held-out part for validation.
    ///
    /// ```
    /// use rnn_core::text::CharCorpus;
    /// let corpus = CharCorpus::from_bytes(b"abababab, xyz")?;
    /// let (train, held_out) = corpus.split_at(8)?;
    /// assert_eq!((train.len(), held_out.len()), (8, 5));
    /// assert_eq!(held_out.classes(), corpus.classes()); // ',', ' ', 'x', ... stay known
    /// assert_eq!(train.id_of(b'z'), corpus.id_of(b'z'));
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] unless both parts hold at least two characters (one to read,
    /// one to predict).
    pub fn split_at(&self, at: usize) -> Result<(Self, Self)> {
        if at < 2 || at.saturating_add(2) > self.ids.len() {
            return Err(RnnError::Config(format!(
                "cutting a text of {} characters at {at} leaves a part under two characters",
                self.ids.len()
            )));
        }
        let part = |ids: &[u8]| Self {
            ids: ids.to_vec(),
            alphabet: self.alphabet.clone(),
            index: self.index,
        };
        Ok((part(&self.ids[..at]), part(&self.ids[at..])))
    }

    /// The number of characters.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the corpus has no characters (never true for a constructed corpus).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The alphabet size `V`: the model's input and output width.
    pub fn classes(&self) -> usize {
        self.alphabet.len()
    }

    /// The bytes that occur, sorted; id `i` stands for `alphabet()[i]`.
    pub fn alphabet(&self) -> &[u8] {
        &self.alphabet
    }

    /// The id of every character, in order.
    pub fn ids(&self) -> &[u8] {
        &self.ids
    }

    /// The id of byte `c`, or `None` when it does not occur in the corpus.
    pub fn id_of(&self, c: u8) -> Option<usize> {
        let id = self.index[c as usize] as usize;
        (self.alphabet[id] == c).then_some(id)
    }

    /// Nats per character of the best context-free model, `-Σ p ln p` over the alphabet: the
    /// loss a model that ignores context cannot beat.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts = [0usize; 256];
        for &i in &self.ids {
            counts[i as usize] += 1;
        }
        let n = self.ids.len() as f64;
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.ln()
            })
            .sum()
    }
}

/// `B` streams over a corpus, each a contiguous row of `⌊len / B⌋` characters, read `k`
/// characters at a time. Row `s` starts at `s·row`; when a chunk and its next-character
/// labels would run past a row's end, every stream goes back to its row's start (a new epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CharStreams {
    streams: usize,
    chunk: usize,
    row: usize,
    pos: usize,
}

impl CharStreams {
    /// `streams` rows of `chunk`-character chunks over `corpus`. Fails when either is zero
    /// or a row is too short for one chunk and its labels (`chunk + 1` characters).
    pub fn new(corpus: &CharCorpus, streams: usize, chunk: usize) -> Result<Self> {
        if streams == 0 {
            return Err(RnnError::Empty { what: "streams" });
        }
        if chunk == 0 {
            return Err(RnnError::Empty { what: "chunk" });
        }
        let row = corpus.len() / streams;
        if row <= chunk {
            return Err(RnnError::Config(format!(
                "the text ({} characters) is too short for {streams} streams of {chunk}-character chunks",
                corpus.len()
            )));
        }
        Ok(Self {
            streams,
            chunk,
            row,
            pos: 0,
        })
    }

    /// Where the next chunk starts in every row: save it with a checkpoint to resume exactly.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Continues from `pos`, a value [`CharStreams::position`] returned for the same corpus
    /// and shape. Fails for a position no such run reaches: not a multiple of the chunk, or
    /// past a row's end.
    pub fn set_position(&mut self, pos: usize) -> Result<()> {
        if !pos.is_multiple_of(self.chunk) || pos >= self.row {
            return Err(RnnError::Config(format!(
                "stream position {pos} is not a chunk start in rows of {} characters read {} at a time",
                self.row, self.chunk
            )));
        }
        self.pos = pos;
        Ok(())
    }

    /// Fills one-hot inputs `x` `[k, B, V]` and next-character labels `y` `[k, B]` with the
    /// next chunk of every stream, and returns whether the streams first went back to their
    /// rows' starts (a new epoch: reset the recurrent state).
    pub fn next_chunk<T: Float>(
        &mut self,
        corpus: &CharCorpus,
        x: &mut [T],
        y: &mut [usize],
    ) -> Result<bool> {
        let (k, b, v) = (self.chunk, self.streams, corpus.classes());
        check_len("x", x.len(), k * b * v)?;
        x.fill(T::zero());
        self.advance(corpus, y, |row, id| x[row * v + id] = T::one())
    }

    /// [`CharStreams::next_chunk`] for a model with an embedding: the characters' ids
    /// `tokens` `[k, B]` instead of one-hot vectors.
    ///
    /// ```
    /// use rnn_core::text::{CharCorpus, CharStreams};
    /// let corpus = CharCorpus::from_bytes(b"abcabcabcabc")?;
    /// let mut streams = CharStreams::new(&corpus, 2, 2)?;
    /// let (mut tokens, mut next) = ([0; 4], [0; 4]);
    /// streams.next_chunk_tokens(&corpus, &mut tokens, &mut next)?;
    /// // Rows "abcabc" and "abcabc", steps time-major: a a, b b; then b b, c c.
    /// assert_eq!((tokens, next), ([0, 0, 1, 1], [1, 1, 2, 2]));
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// As [`CharStreams::next_chunk`].
    pub fn next_chunk_tokens(
        &mut self,
        corpus: &CharCorpus,
        tokens: &mut [usize],
        y: &mut [usize],
    ) -> Result<bool> {
        check_len("tokens", tokens.len(), self.chunk * self.streams)?;
        self.advance(corpus, y, |row, id| tokens[row] = id)
    }

    /// Moves every stream on by a chunk: `input(t·B + s, id)` for each step's character,
    /// its next character's id into `y`.
    fn advance(
        &mut self,
        corpus: &CharCorpus,
        y: &mut [usize],
        mut input: impl FnMut(usize, usize),
    ) -> Result<bool> {
        let (k, b) = (self.chunk, self.streams);
        if corpus.len() / b != self.row {
            return Err(RnnError::ShapeMismatch {
                what: "corpus".into(),
                expected: format!("{} to {} characters", self.row * b, self.row * b + b - 1),
                got: corpus.len().to_string(),
            });
        }
        check_len("labels", y.len(), k * b)?;
        // `pos < row` always holds (new, set_position, the wrap below), so this cannot
        // overflow, and a chunk that does not wrap ends inside its row.
        let wrapped = self.pos + k + 1 > self.row;
        if wrapped {
            self.pos = 0;
        }
        let ids = corpus.ids();
        for t in 0..k {
            for s in 0..b {
                let at = s * self.row + self.pos + t;
                input(t * b + s, ids[at] as usize);
                y[t * b + s] = ids[at + 1] as usize;
            }
        }
        self.pos += k;
        Ok(wrapped)
    }
}

/// [`RnnError::ShapeMismatch`] naming `what` unless it holds `expected` values.
fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(RnnError::ShapeMismatch {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_is_the_sorted_set_of_bytes() {
        let c = CharCorpus::from_bytes(&[200, 3, 200, 0, 3]).unwrap();
        assert_eq!(c.alphabet(), &[0, 3, 200]);
        assert_eq!(c.ids(), &[2, 1, 2, 0, 1]);
        assert_eq!((c.id_of(200), c.id_of(4)), (Some(2), None));
        let h = c.unigram_entropy();
        let want = -(0.4f64 * 0.4f64.ln() * 2.0 + 0.2 * 0.2f64.ln());
        assert!((h - want).abs() < 1e-12);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(CharCorpus::from_bytes(&all).unwrap().classes(), 256);
    }

    #[test]
    fn a_split_keeps_the_alphabet_and_refuses_parts_under_two_characters() {
        let c = CharCorpus::from_bytes(b"aabbc").unwrap();
        let (train, held) = c.split_at(3).unwrap();
        assert_eq!((train.ids(), held.ids()), (&[0, 0, 1][..], &[1, 2][..]));
        // 'c' occurs only in the held-out part, yet both parts know it.
        assert_eq!((train.classes(), train.id_of(b'c')), (3, Some(2)));
        for at in [0, 1, 4, 5, usize::MAX] {
            let err = c.split_at(at).unwrap_err().to_string();
            assert!(err.contains("under two characters"), "{at}: {err}");
        }
    }

    #[test]
    fn texts_without_two_characters_are_refused() {
        for text in [&b""[..], b"aaaa"] {
            let err = CharCorpus::from_bytes(text).unwrap_err().to_string();
            assert!(err.contains("two different characters"), "{err}");
        }
    }

    #[test]
    fn streams_read_their_rows_chunk_by_chunk_and_wrap() {
        // Rows "abcdefg" and "hijklmn" (the 15th byte is left over), chunks of 3.
        let c = CharCorpus::from_bytes(b"abcdefghijklmno").unwrap();
        let mut s = CharStreams::new(&c, 2, 3).unwrap();
        let (mut x, mut y) = (vec![0.0f64; 3 * 2 * 15], vec![0usize; 6]);
        let text =
            |ids: &[usize]| -> String { ids.iter().map(|&i| (b'a' + i as u8) as char).collect() };
        let mut seen = Vec::new();
        for _ in 0..3 {
            let wrapped = s.next_chunk(&c, &mut x, &mut y).unwrap();
            let (r0, r1): (Vec<_>, Vec<_>) = y.chunks(2).map(|p| (p[0], p[1])).unzip();
            seen.push((wrapped, text(&r0), text(&r1)));
            // Each input row is one-hot at the character before its label.
            for (t, row) in x.chunks(15).enumerate() {
                assert_eq!(row.iter().sum::<f64>(), 1.0);
                let label = y[t];
                assert_eq!(row.iter().position(|&v| v == 1.0), Some(label - 1));
            }
        }
        let want = [
            (false, "bcd".to_string(), "ijk".to_string()),
            (false, "efg".into(), "lmn".into()),
            (true, "bcd".into(), "ijk".into()),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn positions_resume_exactly_and_bad_ones_are_refused() {
        let c = CharCorpus::from_bytes(b"abcdefghijklmnopqrstu").unwrap();
        let mut a = CharStreams::new(&c, 3, 2).unwrap(); // rows of 7
        let (mut x, mut y) = (vec![0.0f32; 2 * 3 * 21], vec![0usize; 6]);
        a.next_chunk(&c, &mut x, &mut y).unwrap();
        let mut b = CharStreams::new(&c, 3, 2).unwrap();
        b.set_position(a.position()).unwrap();
        assert_eq!(a, b);
        b.set_position(6).unwrap(); // the last start a run reaches: the next chunk wraps
        assert!(b.next_chunk(&c, &mut x, &mut y).unwrap());
        for bad in [1, 8, 14, usize::MAX] {
            let err = b.set_position(bad).unwrap_err().to_string();
            assert!(err.contains("stream position"), "{err}");
        }
        let other = CharCorpus::from_bytes(b"abcdefghij").unwrap();
        assert!(matches!(
            b.next_chunk(&other, &mut x, &mut y),
            Err(RnnError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            b.next_chunk(&c, &mut x[1..], &mut y),
            Err(RnnError::ShapeMismatch { .. })
        ));
        for (streams, chunk) in [(0, 2), (3, 0), (3, 7), (22, 1)] {
            assert!(
                CharStreams::new(&c, streams, chunk).is_err(),
                "{streams} {chunk}"
            );
        }
    }
}
