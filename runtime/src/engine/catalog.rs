//! The catalog a call sees: the pack's items (indices `0..pack.n_items()`), then the items added
//! on the device with [`Engine::add_item`] (the indices after), then a request's own inline items
//! ([`RankRequest::inline`], that request only). Items can be retitled ([`Engine::replace_item`])
//! and taken out of recommendation ([`Engine::remove_item`]). Each call takes a snapshot at its
//! start, so a change meanwhile never alters a running call; a change copies the small live
//! part (copy on write) and never touches the pack.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use delrec_format::seq::ItemPooling;
use delrec_format::Pack;

use super::{Engine, InlineItem};
use crate::error::{Error, RequestError, Result};
use crate::llm::Pooling;

/// The most items one engine accepts on top of its pack.
pub(crate) const MAX_ADDED: usize = 1 << 20;
/// The most inline items of one request.
pub(crate) const MAX_INLINE: usize = 4096;
const MAX_ID_BYTES: usize = 256;
const MAX_TITLE_BYTES: usize = 4096;
/// Longest title in tokens: a title is a candidate's scored tokens and part of prompts.
const MAX_TITLE_TOKENS: usize = 256;

#[derive(Clone, Debug)]
pub(crate) struct AddedItem {
    pub id: String,
    pub title: String,
    pub tokens: Vec<i32>,
    /// Its verbalizer label words, tokenized (packs with verbalizer scoring).
    pub label_words: Vec<Vec<i32>>,
    /// The sequential model's vector (`hidden` wide), when the pack's model has an item
    /// projection; without one the item can be ranked by the LLM but not retrieved.
    pub vector: Option<Vec<f32>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Added {
    pub items: Vec<AddedItem>,
    pub index: HashMap<String, u32>,
    /// Taken out of recommendation ([`Engine::remove_item`]): never a candidate nor retrieved,
    /// still known in histories (a user's past does not change).
    pub removed: HashSet<u32>,
    /// New titles of pack items ([`Engine::replace_item`]; their sequential-model vectors stay).
    pub retitled: HashMap<u32, AddedItem>,
}

/// A snapshot of the whole catalog.
pub(crate) struct Catalog<'a> {
    pub pack: &'a Pack,
    pub added: Arc<Added>,
    /// One request's inline items, after the added ones.
    pub extra: Vec<AddedItem>,
}

impl Catalog<'_> {
    pub fn n_items(&self) -> usize {
        self.pack.n_items() + self.added.items.len() + self.extra.len()
    }

    /// The item's own record: an added or inline item, or a retitled pack item.
    fn entry(&self, i: u32) -> Option<&AddedItem> {
        match (i as usize).checked_sub(self.pack.n_items()) {
            None => self.added.retitled.get(&i),
            Some(k) => self.added.items.get(k).or_else(|| self.extra.get(k - self.added.items.len())),
        }
    }

    pub fn index(&self, id: &str) -> Option<u32> {
        self.pack.item_index(id).or_else(|| self.added.index.get(id).copied()).or_else(|| {
            let first = self.pack.n_items() + self.added.items.len();
            self.extra.iter().position(|e| e.id == id).and_then(|k| u32::try_from(first + k).ok())
        })
    }

    /// Whether the item may be recommended (not removed).
    pub fn is_live(&self, i: u32) -> bool {
        !self.added.removed.contains(&i)
    }

    pub fn id(&self, i: u32) -> Option<&str> {
        self.pack.item_id(i).or_else(|| self.entry(i).map(|a| a.id.as_str()))
    }

    pub fn title(&self, i: u32) -> Option<&str> {
        self.entry(i).map(|a| a.title.as_str()).or_else(|| self.pack.item_title(i))
    }

    /// `item_prefix + title`, tokenized.
    pub fn tokens(&self, i: u32) -> Option<&[i32]> {
        self.entry(i).map(|a| a.tokens.as_slice()).or_else(|| self.pack.item_tokens(i))
    }

    /// Calls `f` with each label word of item `i` (verbalizer packs); `false` when it has none.
    pub fn each_label_word(&self, i: u32, f: &mut dyn FnMut(&[i32])) -> bool {
        let mut any = false;
        if let Some(a) = self.entry(i) {
            for w in &a.label_words {
                f(w);
                any = true;
            }
        } else if let Some(words) = self.pack.verbalizer.as_ref().and_then(|v| v.words(i)) {
            for w in words {
                f(w);
                any = true;
            }
        }
        any
    }

    /// The sequential model's vector of an added item (pack items, retitled or not, are in the
    /// model's table).
    pub fn added_vector(&self, i: u32) -> Option<&[f32]> {
        if (i as usize) < self.pack.n_items() {
            return None;
        }
        self.entry(i).and_then(|a| a.vector.as_deref())
    }
}

/// What [`Engine::add_item`] made of an item.
#[derive(Clone, Debug, PartialEq)]
pub struct AddedInfo {
    /// Its catalog index (after the pack's items).
    pub index: u32,
    /// Tokens of `item_prefix + title`.
    pub n_tokens: usize,
    /// Whether the sequential model can retrieve it (the pack's model has an item projection).
    pub retrievable: bool,
}

impl Engine {
    pub(crate) fn catalog(&self) -> Catalog<'_> {
        let added = self.inner.added.read().map(|a| a.clone()).unwrap_or_else(|e| e.into_inner().clone());
        Catalog { pack: &self.inner.pack, added, extra: Vec::new() }
    }

    /// The catalog of one request: with its inline items (ids must be new to the catalog).
    pub(crate) fn catalog_with(&self, inline: &[InlineItem]) -> Result<Catalog<'_>> {
        let mut cat = self.catalog();
        if inline.len() > MAX_INLINE {
            return Err(Error::invalid("inline", format!("{} items (at most {MAX_INLINE})", inline.len())));
        }
        for item in inline {
            if cat.index(&item.id).is_some() {
                return Err(RequestError::DuplicateItem { id: item.id.clone() }.into());
            }
            let entry = self.prepare(&item.id, &item.title, false)?;
            cat.extra.push(entry);
        }
        Ok(cat)
    }

    /// Items in the catalog: the pack's plus those added on the device.
    pub fn n_items(&self) -> usize {
        self.catalog().n_items()
    }

    /// Catalog index of an item id (the pack's or an added one).
    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.catalog().index(id)
    }

    /// Id and title of the item at a catalog index.
    pub fn item(&self, index: u32) -> Option<(String, String)> {
        let c = self.catalog();
        c.id(index).zip(c.title(index)).map(|(i, t)| (i.to_string(), t.to_string()))
    }

    /// Adds an item that is not in the pack: `rank` scores its title like any other, and when
    /// the pack's sequential model has a TSLRec item projection, `recommend` retrieves it too,
    /// with the vector `proj(LLM embedding of item_prefix + title)`, pooled as the recipe did,
    /// with no retraining. The title is tokenized with the model's own vocabulary, exactly as
    /// `delrec-convert pack` does by default. Kept for the engine's lifetime (not written to
    /// the pack).
    ///
    /// Errors (`BadRequest`): an empty or over-long id or title (256 / 4096 bytes; 256 tokens),
    /// an id already in the catalog (`DuplicateItem`), more than 2^20 added items.
    pub fn add_item(&self, id: &str, title: &str) -> Result<AddedInfo> {
        let item = self.prepare(id, title, true)?;
        let pack = &self.inner.pack;
        let mut guard = self.inner.added.write().unwrap_or_else(|e| e.into_inner());
        if pack.item_index(id).is_some() || guard.index.contains_key(id) {
            return Err(RequestError::DuplicateItem { id: id.to_string() }.into());
        }
        if guard.items.len() >= MAX_ADDED {
            return Err(Error::invalid("id", format!("at most {MAX_ADDED} items can be added")));
        }
        let mut next = (**guard).clone();
        let index =
            u32::try_from(pack.n_items() + next.items.len()).map_err(|_| Error::invalid("id", "catalog full"))?;
        let info = AddedInfo { index, n_tokens: item.tokens.len(), retrievable: item.vector.is_some() };
        next.index.insert(id.to_string(), index);
        next.items.push(item);
        *guard = Arc::new(next);
        Ok(info)
    }

    /// Gives an item (the pack's or an added one) a new title, tokenized as [`Engine::add_item`]
    /// does; calls that started before keep the old one. A pack item keeps its sequential-model
    /// vector (the item is the same, its text changed); an added item gets a new one.
    ///
    /// Errors (`BadRequest`): an unknown id (`UnknownItem`), a bad title as for `add_item`.
    pub fn replace_item(&self, id: &str, title: &str) -> Result<AddedInfo> {
        let index = self.item_index(id).ok_or_else(|| RequestError::UnknownItem { id: id.to_string() })?;
        let pack = &self.inner.pack;
        let is_pack = (index as usize) < pack.n_items();
        let item = self.prepare(id, title, !is_pack)?;
        let info = AddedInfo {
            index,
            n_tokens: item.tokens.len(),
            retrievable: is_pack && pack.seq.is_some() || item.vector.is_some(),
        };
        let mut guard = self.inner.added.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**guard).clone();
        if is_pack {
            next.retitled.insert(index, item);
        } else {
            let slot = next
                .items
                .get_mut(index as usize - pack.n_items())
                .ok_or_else(|| Error::internal(format!("added item {index} missing")))?;
            *slot = item;
        }
        *guard = Arc::new(next);
        Ok(info)
    }

    /// Takes an item (the pack's or an added one) out of recommendation: no later `rank` or
    /// `recommend` returns it (a candidate list naming it is `BadRequest` on `candidates`), while
    /// histories that hold it still work. Returns whether it was in recommendation before.
    /// Errors: an unknown id (`UnknownItem`).
    pub fn remove_item(&self, id: &str) -> Result<bool> {
        let index = self.item_index(id).ok_or_else(|| RequestError::UnknownItem { id: id.to_string() })?;
        let mut guard = self.inner.added.write().unwrap_or_else(|e| e.into_inner());
        if guard.removed.contains(&index) {
            return Ok(false);
        }
        let mut next = (**guard).clone();
        next.removed.insert(index);
        *guard = Arc::new(next);
        Ok(true)
    }

    /// Items that can be recommended: the catalog less the removed ones.
    pub fn n_live_items(&self) -> usize {
        let c = self.catalog();
        c.n_items() - c.added.removed.len()
    }

    /// An item's record, checked and tokenized (its sequential-model vector too, when `vector`
    /// and the pack's model has an item projection).
    fn prepare(&self, id: &str, title: &str, vector: bool) -> Result<AddedItem> {
        if id.trim().is_empty() || id.len() > MAX_ID_BYTES {
            return Err(Error::invalid("id", format!("must be 1..={MAX_ID_BYTES} bytes and not blank")));
        }
        if title.trim().is_empty() || title.len() > MAX_TITLE_BYTES {
            return Err(Error::invalid("title", format!("must be 1..={MAX_TITLE_BYTES} bytes and not blank")));
        }
        let pack = &self.inner.pack;
        let text = format!("{}{}", pack.template.item_prefix, title);
        let tokens = self.inner.model.tokenize(&text, false)?;
        if tokens.is_empty() || tokens.len() > MAX_TITLE_TOKENS {
            return Err(Error::invalid("title", format!("{} tokens (1..={MAX_TITLE_TOKENS})", tokens.len())));
        }
        let n_vocab = pack.base.n_vocab as i64;
        if tokens.iter().any(|&t| t < 0 || t as i64 >= n_vocab) {
            return Err(Error::internal("the tokenizer produced a token outside the vocabulary"));
        }
        // A verbalizer pack's label words, made by the pack's rule and tokenized like the title.
        let mut label_words = Vec::new();
        if let Some(v) = &pack.verbalizer {
            for word in v.rule.words(title) {
                let t = self.inner.model.tokenize(&format!("{}{word}", v.prefix), false)?;
                if t.is_empty() || t.len() > MAX_TITLE_TOKENS || t.iter().any(|&x| x < 0 || x as i64 >= n_vocab) {
                    return Err(Error::invalid("title", format!("label word {word:?} gives {} tokens", t.len())));
                }
                label_words.push(t);
            }
        }
        let vector = match pack.seq.as_ref().and_then(|m| m.item_proj.as_ref()).filter(|_| vector) {
            None => None,
            Some(p) => {
                let pooling = match p.pooling {
                    ItemPooling::Mean => Pooling::Mean,
                    ItemPooling::Last => Pooling::Last,
                };
                let e = self.embed_tokens(std::slice::from_ref(&tokens), pooling)?;
                let e = e.first().ok_or_else(|| Error::internal("no embedding returned"))?;
                let l = &p.linear;
                if e.len() != l.n_in {
                    return Err(Error::internal(format!("embedding width {} ≠ projection input {}", e.len(), l.n_in)));
                }
                let v: Vec<f32> = l
                    .weight
                    .chunks_exact(l.n_in)
                    .zip(&l.bias)
                    .map(|(w, b)| crate::seq::sasrec::dot(w, e) + b)
                    .collect();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::internal("the item projection produced a non-finite vector"));
                }
                Some(v)
            }
        };
        Ok(AddedItem { id: id.to_string(), title: title.to_string(), tokens, label_words, vector })
    }
}
