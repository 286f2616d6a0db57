//! The verbalizer of a mask template (OpenPrompt's `ManualVerbalizer`, as DELRec ranks): every
//! catalog item is a class with one or more label words, each word a token sequence; the
//! model's logits at the mask score each word (by its first token, or the mean or max over its
//! tokens), a softmax runs over every label word of the catalog, and a class scores the mean of
//! its words' log-probabilities. The runtime computes it (`engine/plan/verbalizer.rs`); the pack
//! stores the words pre-tokenized, and the rule that made them so items added on the device get
//! theirs the same way.

use crate::error::{bad_file, Error, Result};
use crate::gguf::{GgufFile, TensorType};

pub(crate) const K_HANDLER: &str = "delrec.verbalizer.handler";
pub(crate) const K_RULE: &str = "delrec.verbalizer.label_words";
pub(crate) const K_PREFIX: &str = "delrec.verbalizer.prefix";
pub(crate) const T_WORD_OFFSETS: &str = "verbalizer.word_offsets";
pub(crate) const T_TOKEN_OFFSETS: &str = "verbalizer.token_offsets";
pub(crate) const T_TOKENS: &str = "verbalizer.tokens";

/// How a label word of several tokens is scored from the logits at the mask (OpenPrompt's
/// `multi_token_handler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// The logit of the word's first token (OpenPrompt's default; words sharing a first token
    /// tie exactly).
    First,
    /// The mean of its tokens' logits.
    Mean,
    /// The largest of its tokens' logits.
    Max,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::First => "first",
            Handler::Mean => "mean",
            Handler::Max => "max",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "first" => Ok(Handler::First),
            "mean" => Ok(Handler::Mean),
            "max" => Ok(Handler::Max),
            _ => Err(Error::InvalidInput(format!("verbalizer handler {s:?} (expected first, mean or max)"))),
        }
    }
}

/// Which label words an item's title gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelRule {
    /// The title alone.
    Title,
    /// The title and the title without a trailing `" (YYYY)"` (DELRec's label words).
    TitleAndNoYear,
}

impl LabelRule {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelRule::Title => "title",
            LabelRule::TitleAndNoYear => "title+no-year",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "title" => Ok(LabelRule::Title),
            "title+no-year" => Ok(LabelRule::TitleAndNoYear),
            _ => Err(Error::InvalidInput(format!("label word rule {s:?} (expected title or title+no-year)"))),
        }
    }

    /// The label words of a title, before the verbalizer's prefix. Both of DELRec's words are
    /// kept when they are equal (as its code builds them, a title without a year counts twice).
    pub fn words(self, title: &str) -> Vec<String> {
        match self {
            LabelRule::Title => vec![title.to_string()],
            LabelRule::TitleAndNoYear => vec![title.to_string(), strip_year(title).to_string()],
        }
    }
}

/// `title` without a trailing `" (YYYY)"`.
pub fn strip_year(title: &str) -> &str {
    let b = title.as_bytes();
    let n = b.len();
    if n >= 7
        && b[n - 7] == b' '
        && b[n - 6] == b'('
        && b[n - 1] == b')'
        && b[n - 5..n - 1].iter().all(u8::is_ascii_digit)
    {
        &title[..n - 7]
    } else {
        title
    }
}

/// A pack's verbalizer: the label words of every catalog item, pre-tokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct Verbalizer {
    pub handler: Handler,
    pub rule: LabelRule,
    /// Put before each label word before tokenization (OpenPrompt's `" "`).
    pub prefix: String,
    /// Item `i`'s words are `word_offsets[i]..word_offsets[i + 1]`.
    word_offsets: Vec<u32>,
    /// Word `w`'s tokens are `tokens[token_offsets[w]..token_offsets[w + 1]]`.
    token_offsets: Vec<u32>,
    tokens: Vec<i32>,
}

impl Verbalizer {
    /// Builds one from each item's label words (token sequences, each non-empty).
    pub fn new(handler: Handler, rule: LabelRule, prefix: &str, items: &[Vec<Vec<i32>>]) -> Result<Self> {
        let mut v = Verbalizer {
            handler,
            rule,
            prefix: prefix.to_string(),
            word_offsets: vec![0],
            token_offsets: vec![0],
            tokens: vec![],
        };
        for (i, words) in items.iter().enumerate() {
            if words.is_empty() {
                return Err(Error::InvalidInput(format!("verbalizer: item {i} has no label word")));
            }
            for w in words {
                if w.is_empty() {
                    return Err(Error::InvalidInput(format!("verbalizer: a label word of item {i} has no tokens")));
                }
                v.tokens.extend_from_slice(w);
                v.token_offsets.push(u32::try_from(v.tokens.len()).map_err(|_| too_big())?);
            }
            v.word_offsets.push(u32::try_from(v.token_offsets.len() - 1).map_err(|_| too_big())?);
        }
        Ok(v)
    }

    pub fn n_items(&self) -> usize {
        self.word_offsets.len() - 1
    }

    pub fn n_words(&self) -> usize {
        self.token_offsets.len() - 1
    }

    /// The label words of item `i` (token sequences); `None` outside the catalog.
    pub fn words(&self, i: u32) -> Option<impl Iterator<Item = &[i32]> + '_> {
        let a = *self.word_offsets.get(i as usize)? as usize;
        let b = *self.word_offsets.get(i as usize + 1)? as usize;
        Some((a..b).map(move |w| &self.tokens[self.token_offsets[w] as usize..self.token_offsets[w + 1] as usize]))
    }

    pub(crate) fn read(f: &GgufFile, n_items: usize, n_vocab: i64) -> Result<Self> {
        let handler = Handler::parse(f.req_str(K_HANDLER)?).map_err(|e| bad_file(f, e.to_string()))?;
        let rule = LabelRule::parse(f.req_str(K_RULE)?).map_err(|e| bad_file(f, e.to_string()))?;
        let prefix = f.req_str(K_PREFIX)?.to_string();
        let i32s = |name: &str| -> Result<Vec<i32>> {
            let t = f.tensor(name).ok_or_else(|| bad_file(f, format!("{name} is missing")))?;
            if t.ty != TensorType::I32 || t.dims.len() != 1 {
                return Err(bad_file(f, format!("{name} must be a 1-D I32 tensor")));
            }
            let b = f.tensor_bytes(t).ok_or_else(|| bad_file(f, format!("{name} is unreadable")))?;
            Ok(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let word_offsets = offsets(f, T_WORD_OFFSETS, &i32s(T_WORD_OFFSETS)?, n_items)?;
        let n_words = *word_offsets.last().unwrap_or(&0) as usize;
        let token_offsets = offsets(f, T_TOKEN_OFFSETS, &i32s(T_TOKEN_OFFSETS)?, n_words)?;
        let tokens = i32s(T_TOKENS)?;
        if token_offsets.last().map(|&o| o as usize) != Some(tokens.len()) {
            return Err(bad_file(f, format!("{T_TOKEN_OFFSETS} does not end at the token count")));
        }
        if let Some(t) = tokens.iter().find(|&&t| t < 0 || t as i64 >= n_vocab) {
            return Err(bad_file(f, format!("{T_TOKENS}: token id {t} outside the vocabulary ({n_vocab})")));
        }
        Ok(Verbalizer { handler, rule, prefix, word_offsets, token_offsets, tokens })
    }

    #[cfg(feature = "build")]
    pub(crate) fn write(&self, w: &mut crate::gguf::GgufWriter) -> Result<()> {
        use crate::gguf::{i32_bytes, TensorData, Value};
        w.set(K_HANDLER, Value::Str(self.handler.as_str().into()));
        w.set(K_RULE, Value::Str(self.rule.as_str().into()));
        w.set(K_PREFIX, Value::Str(self.prefix.clone()));
        for (name, v) in [(T_WORD_OFFSETS, &self.word_offsets), (T_TOKEN_OFFSETS, &self.token_offsets)] {
            let v: Vec<i32> = v.iter().map(|&o| o as i32).collect();
            w.add_tensor(name, &[v.len() as u64], TensorType::I32, TensorData::Owned(i32_bytes(&v)))?;
        }
        w.add_tensor(
            T_TOKENS,
            &[self.tokens.len() as u64],
            TensorType::I32,
            TensorData::Owned(i32_bytes(&self.tokens)),
        )?;
        Ok(())
    }
}

fn too_big() -> Error {
    Error::InvalidInput("verbalizer: too many label words or tokens".into())
}

/// An offsets array of `n + 1` entries, starting at 0 and strictly increasing (no empty entry).
fn offsets(f: &GgufFile, name: &str, v: &[i32], n: usize) -> Result<Vec<u32>> {
    if v.len() != n + 1 || v.first() != Some(&0) {
        return Err(bad_file(f, format!("{name}: expected {} entries starting at 0, found {}", n + 1, v.len())));
    }
    if let Some(i) = v.windows(2).position(|w| w[1] <= w[0]) {
        return Err(bad_file(
            f,
            format!("{name}[{}] = {} is not increasing (an entry without words/tokens?)", i + 1, v[i + 1]),
        ));
    }
    Ok(v.iter().map(|&o| o as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_words_and_years() {
        assert_eq!(strip_year("Heat (1995)"), "Heat");
        assert_eq!(strip_year("Heat(1995)"), "Heat(1995)");
        assert_eq!(strip_year("Heat (95)"), "Heat (95)");
        assert_eq!(strip_year("(1995)"), "(1995)");
        assert_eq!(strip_year("Ünïcode (2001)"), "Ünïcode");
        assert_eq!(LabelRule::TitleAndNoYear.words("Heat (1995)"), vec!["Heat (1995)", "Heat"]);
        assert_eq!(LabelRule::TitleAndNoYear.words("Heat"), vec!["Heat", "Heat"]);
        assert_eq!(LabelRule::Title.words("Heat (1995)"), vec!["Heat (1995)"]);
        for h in [Handler::First, Handler::Mean, Handler::Max] {
            assert_eq!(Handler::parse(h.as_str()).unwrap(), h);
        }
        assert!(Handler::parse("sum").is_err());
        assert!(LabelRule::parse("titles").is_err());
    }

    #[test]
    fn words_round_trip_in_memory() {
        let v =
            Verbalizer::new(Handler::Mean, LabelRule::Title, " ", &[vec![vec![1, 2], vec![3]], vec![vec![4]]]).unwrap();
        assert_eq!((v.n_items(), v.n_words()), (2, 3));
        assert_eq!(v.words(0).unwrap().collect::<Vec<_>>(), vec![&[1, 2][..], &[3][..]]);
        assert_eq!(v.words(1).unwrap().collect::<Vec<_>>(), vec![&[4][..]]);
        assert!(v.words(2).is_none());
        assert!(Verbalizer::new(Handler::First, LabelRule::Title, " ", &[vec![]]).is_err());
        assert!(Verbalizer::new(Handler::First, LabelRule::Title, " ", &[vec![vec![]]]).is_err());
    }
}
