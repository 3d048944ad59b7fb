//! The synthetic vocabulary of the retrieval examples, the same on every run.
//! Shared by path (`#[path = "support/words.rs"] mod words;`), since examples are separate crates.

/// Distinct words in the vocabulary.
const VOCABULARY: usize = 5_000;

/// Ranks left out at the head of the distribution: English text follows Zipf's law, but its head
/// (the, of, and…) is stop words the search configuration drops, so content words start at rank
/// ~100.
const STOP_RANKS: f64 = 100.0;

/// Words drawn Zipf-like: rank r with weight 1/(r + 1 + STOP_RANKS), by inverting the cumulative
/// sum.
pub struct Zipf {
    vocab: Vec<String>,
    cumulative: Vec<f64>,
    total: f64,
}

impl Zipf {
    pub fn new() -> Self {
        let cumulative: Vec<f64> = (0..VOCABULARY)
            .scan(0.0, |acc, r| {
                *acc += 1.0 / (r as f64 + 1.0 + STOP_RANKS);
                Some(*acc)
            })
            .collect();
        let total = *cumulative.last().unwrap_or(&1.0);
        Self { vocab: vocabulary(), cumulative, total }
    }

    pub fn draw(&self, rng: &mut impl rand::Rng) -> &str {
        let x = rng.random_range(0.0..self.total);
        &self.vocab[self.cumulative.partition_point(|&c| c < x).min(VOCABULARY - 1)]
    }
}

/// 5,000 distinct pronounceable words (three syllables each).
fn vocabulary() -> Vec<String> {
    const SYL: [&str; 20] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "go", "fi", "be", "zu", "ha", "jo", "wi", "xe",
        "qu", "ty",
    ];
    let mut out = Vec::with_capacity(VOCABULARY);
    'all: for a in SYL {
        for b in SYL {
            for c in SYL {
                out.push(format!("{a}{b}{c}"));
                if out.len() == VOCABULARY {
                    break 'all;
                }
            }
        }
    }
    out
}
