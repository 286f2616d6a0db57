//! From a request to rows: ids resolved against the catalog, the prompt prefix (template text,
//! soft prompt rows, history titles) and each candidate's scored tokens.

use std::collections::HashSet;

use delrec_format::pack::Part;
use delrec_format::Pack;

use super::catalog::Catalog;

use super::{PrefixRow, RankRequest};
use crate::error::{Error, RequestError, Result};

/// A validated request: catalog indices instead of ids.
pub(crate) struct Resolved {
    pub history: Vec<u32>,
    pub soft_override: Option<usize>,
    pub candidates: Vec<u32>,
    /// The candidates were given (not the whole catalog), so a `{candidates}` slot may list them.
    pub listed: bool,
}

pub(crate) fn item(cat: &Catalog, id: &str) -> Result<u32> {
    cat.index(id).ok_or_else(|| RequestError::UnknownItem { id: id.to_string() }.into())
}

pub(crate) fn soft_prompt(pack: &Pack, name: &str) -> Result<usize> {
    pack.soft_prompt_index(name).ok_or_else(|| {
        RequestError::UnknownSoftPrompt { name: name.to_string(), available: pack.soft_prompt_names() }.into()
    })
}

pub(crate) fn resolve(cat: &Catalog, req: &RankRequest) -> Result<Resolved> {
    let pack = cat.pack;
    if req.history.is_empty() {
        return Err(RequestError::EmptyHistory.into());
    }
    if req.top_k == Some(0) {
        return Err(Error::invalid("top_k", "must be at least 1"));
    }
    let history = req.history.iter().map(|h| item(cat, h)).collect::<Result<Vec<_>>>()?;
    let soft_override = req.soft_prompt.as_deref().map(|s| soft_prompt(pack, s)).transpose()?;
    // Inline items come last in the snapshot; the whole catalog here is the rest.
    let n_catalog = (cat.n_items() - cat.extra.len()) as u32;
    let mut candidates: Vec<u32> = match &req.candidates {
        Some(c) => {
            let mut seen = HashSet::with_capacity(c.len());
            let mut out = Vec::with_capacity(c.len());
            for id in c {
                let i = item(cat, id)?;
                if !seen.insert(i) {
                    return Err(RequestError::DuplicateCandidate { id: id.clone() }.into());
                }
                if i >= n_catalog {
                    return Err(Error::invalid(
                        "candidates",
                        format!("{id:?} is an inline item: list it once, in inline"),
                    ));
                }
                if !cat.is_live(i) {
                    return Err(Error::invalid("candidates", format!("item {id:?} was removed from recommendation")));
                }
                out.push(i);
            }
            out
        }
        None => (0..n_catalog).filter(|&i| cat.is_live(i) && !(req.exclude_history && history.contains(&i))).collect(),
    };
    candidates.extend(n_catalog..cat.n_items() as u32);
    if candidates.is_empty() {
        return Err(RequestError::EmptyCandidates.into());
    }
    let listed = req.candidates.is_some() && candidates.len() <= MAX_LISTED;
    Ok(Resolved { history, soft_override, candidates, listed })
}

fn tokens<'a>(cat: &'a Catalog, i: u32) -> Result<&'a [i32]> {
    cat.tokens(i).ok_or_else(|| Error::internal(format!("catalog index {i} out of range")))
}

/// The most candidates a `{candidates}` slot lists: a prompt, not a catalog.
pub(crate) const MAX_LISTED: usize = 1024;

/// The prompt prefix rows for a request: everything before `{candidate}` (title templates) or
/// `{mask}` (mask templates, whose `{candidates}` lists the request's candidates). A pack with
/// `max_history` takes the latest that many items.
pub(crate) fn prefix_rows(cat: &Catalog, r: &Resolved, soft_override: Option<usize>) -> Result<Vec<PrefixRow>> {
    template_rows(cat, r, soft_override, None)
}

/// An encoder-decoder model's encoder input: the whole template, `{mask}` as the mask token, and
/// the end-of-sequence token last (as OpenPrompt's T5 wrapper builds it).
pub(crate) fn encoder_rows(
    cat: &Catalog,
    r: &Resolved,
    soft_override: Option<usize>,
    eos: Option<i32>,
) -> Result<Vec<PrefixRow>> {
    let mask = cat
        .pack
        .template
        .mask_token
        .ok_or_else(|| Error::internal("an encoder-decoder pack without its mask token"))?;
    let mut rows = template_rows(cat, r, soft_override, Some(mask))?;
    rows.extend(eos.map(PrefixRow::Token));
    Ok(rows)
}

/// The template's rows up to `{candidate}` / `{mask}`, or all of them with the mask token at
/// `{mask}` when `mask` is given.
fn template_rows(
    cat: &Catalog,
    r: &Resolved,
    soft_override: Option<usize>,
    mask: Option<i32>,
) -> Result<Vec<PrefixRow>> {
    let pack = cat.pack;
    let t = &pack.template;
    let history = r.history.as_slice();
    let history = match t.max_history {
        Some(h) => &history[history.len().saturating_sub(h)..],
        None => history,
    };
    let mut rows: Vec<PrefixRow> = t.bos.map(PrefixRow::Token).into_iter().collect();
    for part in &t.parts {
        match part {
            Part::Text(toks) => rows.extend(toks.iter().map(|&x| PrefixRow::Token(x))),
            Part::Soft(idx) => {
                let p = soft_override.unwrap_or(*idx);
                let sp = pack.soft_prompts.get(p).ok_or_else(|| Error::internal(format!("soft prompt {p} missing")))?;
                rows.extend((0..sp.n_virtual as u32).map(|row| PrefixRow::Soft { prompt: p as u32, row }));
            }
            Part::History => {
                for (i, &h) in history.iter().enumerate() {
                    if i > 0 {
                        rows.extend(t.separator_tokens.iter().map(|&x| PrefixRow::Token(x)));
                    }
                    rows.extend(tokens(cat, h)?.iter().map(|&x| PrefixRow::Token(x)));
                }
            }
            Part::Candidates => {
                if !r.listed {
                    return Err(Error::invalid(
                        "candidates",
                        format!("the pack's template lists the candidates in the prompt ({{candidates}}): give 1..={MAX_LISTED}"),
                    ));
                }
                for (i, &c) in r.candidates.iter().enumerate() {
                    if i > 0 {
                        rows.extend(t.candidates_separator_tokens.iter().map(|&x| PrefixRow::Token(x)));
                    }
                    rows.extend(tokens(cat, c)?.iter().map(|&x| PrefixRow::Token(x)));
                }
            }
            Part::Mask => match mask {
                Some(m) => rows.push(PrefixRow::Token(m)),
                None => break,
            },
            Part::Candidate => break,
        }
    }
    if rows.is_empty() {
        return Err(Error::internal("the template produces an empty prompt prefix"));
    }
    Ok(rows)
}

/// What is scored for each candidate: its title tokens, then the template's terminator (an
/// encoder-decoder model's decoder: the end-of-sequence token, `eos`).
pub(crate) fn candidate_sequences(cat: &Catalog, candidates: &[u32], eos: Option<i32>) -> Result<Vec<Vec<i32>>> {
    let terminator = match eos {
        Some(t) => vec![t],
        None => cat.pack.template.terminator(),
    };
    candidates
        .iter()
        .map(|&c| {
            let mut s = tokens(cat, c)?.to_vec();
            s.extend_from_slice(&terminator);
            Ok(s)
        })
        .collect()
}
