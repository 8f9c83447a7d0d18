//! Message texts for the `messages` workload: real English and Russian sentences from
//! Debian's `fortunes` and `fortunes-ru` packages when installed, generated words otherwise.
//!
//! Two ways to make texts ([`Texts`]):
//! * `cut` — English and Russian fortunes, whitespace collapsed, joined and cut into texts of
//!   exactly the requested size at a UTF-8 boundary;
//! * `ru` — every Russian fortune (`fortunes-ru`) whole: the `%` separators stripped, tabs
//!   turned into spaces, other control characters but the newline dropped, capped at the
//!   requested size at a UTF-8 boundary (with a 300-byte cap the mean is about 157 bytes).
//!
//! Texts hold no TAB, so koshka never sees a subject. Each is tokenised once into lowercase
//! words for the Redis model's inverted index and for search queries.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Where Debian installs the fortunes.
const FORTUNES_DIR: &str = "/usr/share/games/fortunes";

/// Most texts kept in the pool.
const POOL_TEXTS_MAX: usize = 40_000;

/// Where Debian installs `fortunes-ru`.
const FORTUNES_RU_DIR: &str = "/usr/share/games/fortunes/ru";

/// How texts are made from the fortunes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Texts {
    /// English and Russian fortunes joined and cut to exactly `--text-size` bytes.
    Cut,
    /// Each Russian fortune whole, capped at `--text-size` bytes.
    Ru,
}

/// Shortest word offered as a search query word (bytes).
const QUERY_WORD_BYTES_MIN: usize = 3;

/// One message text with its words.
#[derive(Debug)]
pub(crate) struct Text {
    /// The text, at most the requested size.
    pub(crate) body: Box<[u8]>,
    /// Distinct lowercase words (what the Redis model indexes).
    pub(crate) words: Vec<Box<[u8]>>,
    /// Indexes into `words` usable as query words (a koshka `search(…)` key escapes them).
    pub(crate) query_words: Vec<usize>,
}

/// The pool of texts, shared read-only by every connection.
#[derive(Debug)]
pub(crate) struct TextPool {
    /// The texts (never empty).
    pub(crate) texts: Vec<Text>,
    /// Where the texts came from (for the report).
    pub(crate) source: String,
}

impl TextPool {
    /// Builds the pool the way `texts` says.
    pub(crate) fn new(texts: Texts, size: usize, seed: u64) -> TextPool {
        match texts {
            Texts::Cut => TextPool::load(size, seed),
            Texts::Ru => TextPool::load_whole(size, seed),
        }
    }

    /// Every Russian fortune as one text, capped at `cap` bytes, in a seeded order; falls
    /// back to [`TextPool::load`] when `fortunes-ru` is not installed.
    pub(crate) fn load_whole(cap: usize, seed: u64) -> TextPool {
        let mut entries = whole_entries(Path::new(FORTUNES_RU_DIR));
        if entries.len() < 100 {
            return TextPool::load(cap, seed);
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7e47);
        entries.shuffle(&mut rng);
        entries.truncate(POOL_TEXTS_MAX);
        let texts: Vec<Text> = entries
            .iter()
            .map(|entry| {
                let mut cut = cap.min(entry.len());
                while !entry.is_char_boundary(cut) {
                    cut -= 1;
                }
                Text::new(entry[..cut].trim_end().as_bytes())
            })
            .collect();
        let mean = texts.iter().map(|text| text.body.len()).sum::<usize>() / texts.len();
        TextPool {
            source: format!(
                "{} whole fortunes from {FORTUNES_RU_DIR}, capped at {cap} B, mean {mean} B",
                texts.len()
            ),
            texts,
        }
    }

    /// Builds texts of about `size` bytes from the fortunes, or generated words.
    pub(crate) fn load(size: usize, seed: u64) -> TextPool {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7e47);
        let mut entries = fortune_entries(Path::new(FORTUNES_DIR));
        let source = if entries.len() >= 100 {
            format!("{} fortunes from {FORTUNES_DIR}", entries.len())
        } else {
            entries = generated_entries(&mut rng);
            "generated words (no fortunes installed)".to_owned()
        };
        entries.shuffle(&mut rng);
        let mut texts = Vec::new();
        let mut current = String::new();
        for entry in entries.iter().cycle().take(entries.len() * 4) {
            if texts.len() >= POOL_TEXTS_MAX {
                break;
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(entry);
            if current.len() >= size {
                let mut cut = size.min(current.len());
                while !current.is_char_boundary(cut) {
                    cut -= 1;
                }
                texts.push(Text::new(current[..cut].trim_end().as_bytes()));
                current.clear();
            }
        }
        if texts.is_empty() {
            texts.push(Text::new(b"hello world"));
        }
        TextPool { texts, source }
    }

    /// A random text index.
    #[inline]
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> usize {
        rng.gen_range(0..self.texts.len())
    }

    /// Two distinct query words that occur together in one text: `(text, word, word)`.
    pub(crate) fn query(&self, rng: &mut SmallRng) -> (usize, usize, usize) {
        for _ in 0..64 {
            let index = self.pick(rng);
            if let Some(query) = self.query_in(index, rng) {
                return query;
            }
        }
        (0, 0, 0)
    }

    /// Two distinct query words of text `index`, if it has two.
    pub(crate) fn query_in(
        &self,
        index: usize,
        rng: &mut SmallRng,
    ) -> Option<(usize, usize, usize)> {
        let text = &self.texts[index];
        if text.query_words.len() < 2 {
            return None;
        }
        let first = rng.gen_range(0..text.query_words.len());
        let mut second = rng.gen_range(0..text.query_words.len() - 1);
        if second >= first {
            second += 1;
        }
        Some((index, text.query_words[first], text.query_words[second]))
    }
}

impl Text {
    fn new(body: &[u8]) -> Text {
        let words = tokenize(&String::from_utf8_lossy(body));
        let query_words = words
            .iter()
            .enumerate()
            .filter(|(_, word)| {
                word.len() >= QUERY_WORD_BYTES_MIN && !word.iter().all(u8::is_ascii_digit)
            })
            .map(|(index, _)| index)
            .collect();
        Text {
            body: body.into(),
            words,
            query_words,
        }
    }
}

/// Distinct lowercase words (`ё` folded to `е`), split at anything not alphanumeric.
pub(crate) fn tokenize(text: &str) -> Vec<Box<[u8]>> {
    let mut words: Vec<Box<[u8]>> = Vec::new();
    for raw in text.split(|c: char| !c.is_alphanumeric()) {
        if raw.is_empty() {
            continue;
        }
        let word: String = raw
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c == 'ё' { 'е' } else { c })
            .collect();
        let word: Box<[u8]> = word.into_bytes().into();
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// Entries of every fortune file under `dir` (and `dir/ru`), whitespace collapsed.
fn fortune_entries(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("ru")] {
        let Ok(listing) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in listing.flatten() {
            let path = entry.path();
            let plain = path
                .extension()
                .is_none_or(|ext| ext != "dat" && ext != "u8");
            if plain && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut entries = Vec::new();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        for entry in text.split("\n%\n") {
            let collapsed = entry
                .split_whitespace()
                .filter(|word| !word.chars().any(char::is_control))
                .collect::<Vec<_>>()
                .join(" ");
            if collapsed.len() >= 20 {
                entries.push(collapsed);
            }
        }
    }
    entries
}

/// Every entry of every fortune file in `dir`: separators stripped, tabs as spaces, other
/// control characters but the newline dropped, trimmed; empty entries skipped.
fn whole_entries(dir: &Path) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = listing
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_none_or(|ext| ext != "dat" && ext != "u8")
        })
        .collect();
    files.sort();
    let mut entries = Vec::new();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        for entry in text.split("\n%\n") {
            let clean: String = entry
                .chars()
                .filter_map(|c| match c {
                    '\t' => Some(' '),
                    '\n' => Some('\n'),
                    c if c.is_control() => None,
                    c => Some(c),
                })
                .collect();
            let clean = clean.trim_matches(|c: char| c == '%' || c.is_whitespace());
            if !clean.is_empty() {
                entries.push(clean.to_owned());
            }
        }
    }
    entries
}

/// Pseudo-words from syllables, when no fortunes are installed.
fn generated_entries(rng: &mut SmallRng) -> Vec<String> {
    const SYLLABLES: [&str; 16] = [
        "ka", "to", "ri", "mo", "sa", "ne", "lu", "po", "vi", "da", "ze", "shu", "ro", "mi", "te",
        "gor",
    ];
    (0..5000)
        .map(|_| {
            let words = rng.gen_range(8..20);
            (0..words)
                .map(|_| {
                    let syllables = rng.gen_range(1..4);
                    (0..syllables)
                        .map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())])
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes() {
        let words = tokenize("Ёлка, ёлка! Hello-world hello");
        let words: Vec<&[u8]> = words.iter().map(|word| &word[..]).collect();
        assert_eq!(words, vec!["елка".as_bytes(), b"hello", b"world"]);
    }

    #[test]
    fn whole_russian_texts_are_capped_and_clean() {
        let pool = TextPool::load_whole(300, 1);
        for text in &pool.texts {
            assert!(!text.body.is_empty() && text.body.len() <= 300);
            assert!(!text.body.contains(&b'\t'));
            assert!(std::str::from_utf8(&text.body).is_ok());
        }
    }

    #[test]
    fn pool_texts_fit_and_queries_co_occur() {
        let pool = TextPool::load(100, 1);
        assert!(!pool.texts.is_empty());
        for text in &pool.texts {
            assert!(text.body.len() <= 100);
            assert!(!text.body.contains(&b'\t'));
            assert!(std::str::from_utf8(&text.body).is_ok());
        }
        let mut rng = SmallRng::seed_from_u64(3);
        let (text, first, second) = pool.query(&mut rng);
        assert_ne!(first, second);
        assert!(pool.texts[text].words.len() > first.max(second));
    }
}
