//! Cutting a document into chunks of at most N tokens, with overlap.
//!
//! The text is split into sentences (Unicode sentence boundaries, UAX #29, which also break at
//! line ends), a sentence longer than a chunk into words, and a word longer than a chunk into
//! characters. Chunks are runs of those pieces, taken greedily; a chunk that is at least half
//! full ends at the last paragraph break (a blank line) it holds, so paragraphs stay whole when
//! they can. The next chunk starts with the whole sentences of the previous one's end that fit
//! in the overlap. Tokens are counted as `ceil(bytes / bytes_per_token)`, like the approximate
//! counter of packing, so the count is known before any tokenizer is chosen.

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

/// How documents are cut.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    pub max_tokens: u64,
    pub overlap_tokens: u64,
    pub bytes_per_token: f64,
}

impl Chunker {
    fn tokens(&self, bytes: usize) -> u64 {
        (bytes as f64 / self.bytes_per_token).ceil() as u64
    }

    fn max_bytes(&self) -> usize {
        ((self.max_tokens as f64 * self.bytes_per_token).floor() as usize).max(4)
    }

    /// The chunks of `text`, trimmed, none empty, each at most `max_tokens`.
    pub fn chunk(&self, text: &str) -> Vec<String> {
        let units = self.units(text);
        let len = |r: &Range<usize>| r.end - r.start;
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < units.len() {
            let (mut j, mut bytes) = (i, 0);
            while j < units.len() && (j == i || self.tokens(bytes + len(&units[j])) <= self.max_tokens) {
                bytes += len(&units[j]);
                j += 1;
            }
            if j < units.len() {
                j = self.paragraph_cut(text, &units, i, j);
            }
            let piece = text[units[i].start..units[j - 1].end].trim();
            if !piece.is_empty() {
                chunks.push(piece.to_string());
            }
            if j == units.len() {
                break;
            }
            // Step back over whole sentences for the overlap, always moving forward.
            let (mut k, mut back) = (j, 0);
            while k > i + 1 && self.tokens(back + len(&units[k - 1])) <= self.overlap_tokens {
                back += len(&units[k - 1]);
                k -= 1;
            }
            i = k;
        }
        chunks
    }

    /// The end of a chunk of units `i..j`: the last paragraph break in its second half, if any.
    fn paragraph_cut(&self, text: &str, units: &[Range<usize>], i: usize, j: usize) -> usize {
        let span = units[j - 1].end - units[i].start;
        (i + 1..j)
            .rev()
            .take_while(|&k| units[k].start - units[i].start >= span / 2)
            .find(|&k| {
                let before = &text[units[i].start..units[k].start];
                let gap = &before[before.trim_end().len()..];
                gap.matches('\n').count() >= 2
            })
            .unwrap_or(j)
    }

    /// Byte ranges of the pieces: sentences, or words or characters of sentences too long.
    fn units(&self, text: &str) -> Vec<Range<usize>> {
        let max = self.max_bytes();
        let mut out = Vec::new();
        for (at, sentence) in text.split_sentence_bound_indices() {
            if sentence.len() <= max {
                out.push(at..at + sentence.len());
                continue;
            }
            for (w_at, word) in sentence.split_word_bound_indices() {
                let w_at = at + w_at;
                if word.len() <= max {
                    push_or_merge(&mut out, w_at..w_at + word.len(), at, max);
                    continue;
                }
                // A "word" longer than a chunk (a URL, base64): cut at character boundaries.
                let mut start = 0;
                for (c_at, c) in word.char_indices() {
                    if c_at + c.len_utf8() - start > max {
                        out.push(w_at + start..w_at + c_at);
                        start = c_at;
                    }
                }
                out.push(w_at + start..w_at + word.len());
            }
        }
        out
    }
}

/// Adds a word of the sentence starting at `sentence_at` to the last piece when that piece
/// belongs to the same sentence and stays under `max` bytes (a sentence cut into words is
/// packed back into pieces as long as allowed, not one piece per word).
fn push_or_merge(out: &mut Vec<Range<usize>>, word: Range<usize>, sentence_at: usize, max: usize) {
    match out.last_mut() {
        Some(last) if last.start >= sentence_at && last.end == word.start && word.end - last.start <= max => {
            last.end = word.end;
        }
        _ => out.push(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunker(max: u64, overlap: u64) -> Chunker {
        Chunker { max_tokens: max, overlap_tokens: overlap, bytes_per_token: 1.0 }
    }

    #[test]
    fn a_short_text_is_one_chunk_and_blank_text_none() {
        assert_eq!(chunker(100, 10).chunk("  One sentence. Two.  "), ["One sentence. Two."]);
        assert!(chunker(100, 10).chunk(" \n\n ").is_empty());
    }

    #[test]
    fn chunks_stay_under_the_limit_and_cover_every_word_in_order() {
        let text: String = (0..200).map(|i| format!("Sentence number {i} says a thing. ")).collect();
        let c = chunker(120, 40);
        let chunks = c.chunk(&text);
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|ch| ch.len() <= 120), "{chunks:?}");
        // Every sentence is in some chunk, and chunks follow the text's order.
        let mut last = 0;
        for i in 0..200 {
            let s = format!("Sentence number {i} says a thing.");
            let first = chunks.iter().position(|ch| ch.contains(&s)).unwrap_or_else(|| panic!("{s} lost"));
            assert!(first >= last);
            last = first;
        }
    }

    #[test]
    fn consecutive_chunks_overlap_by_whole_sentences() {
        let text: String = (0..40).map(|i| format!("Fact {i:02} is here. ")).collect();
        let chunks = chunker(80, 40).chunk(&text);
        assert!(chunks.len() > 3, "{chunks:?}");
        for pair in chunks.windows(2) {
            // The longest end of one chunk that starts the next: whole sentences, within 40 bytes.
            let overlap = (0..pair[0].len())
                .filter(|&i| pair[0].is_char_boundary(i))
                .map(|i| &pair[0][i..])
                .find(|end| pair[1].starts_with(end))
                .unwrap_or("");
            assert!(overlap.starts_with("Fact") && overlap.ends_with('.') && overlap.len() <= 40, "{pair:?}");
        }
    }

    #[test]
    fn a_paragraph_break_in_the_second_half_ends_the_chunk() {
        let text = "Alpha one. Alpha two. Alpha three.\n\nBeta one. Beta two. Beta three. Beta four.";
        let chunks = chunker(60, 0).chunk(text);
        assert_eq!(chunks[0], "Alpha one. Alpha two. Alpha three.");
        assert!(chunks[1].starts_with("Beta one."));
    }

    #[test]
    fn a_sentence_or_a_word_longer_than_a_chunk_is_cut_without_splitting_characters() {
        let long_sentence = "word ".repeat(100);
        let chunks = chunker(50, 0).chunk(&long_sentence);
        assert!(chunks.iter().all(|c| c.len() <= 50) && chunks.len() >= 10);
        let blob = "é".repeat(100); // 200 bytes, no spaces
        let chunks = chunker(31, 0).chunk(&blob);
        assert!(chunks.iter().all(|c| c.len() <= 31));
        assert_eq!(chunks.concat(), blob);
    }
}
