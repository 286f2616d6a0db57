//! Prompt templates: literal text with `{soft:NAME}`, `{history}`, `{candidate}`, `{candidates}`
//! and `{mask}` placeholders.
//!
//! Two kinds ([`Kind`]):
//! - **title** templates (`{candidate}`): everything before `{candidate}` is the prefix shared by
//!   all candidates of one request; the text after it is the terminator, scored with each
//!   candidate (it tells the model the title has ended, so a title that is a prefix of another
//!   does not win by being short);
//! - **mask** templates (`{mask}`, OpenPrompt's style): one pass, and a verbalizer reads the
//!   model's prediction at the mask; `{candidates}` lists the request's candidates as text, and
//!   soft prompts may sit anywhere.
//!
//! `{{` and `}}` stand for literal braces.

use crate::error::{Error, Result};

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Soft(String),
    History,
    Candidate,
    /// The request's candidates as text (mask templates).
    Candidates,
    /// Where the model's prediction is read (mask templates).
    Mask,
}

/// What a template scores with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `{candidate}`: each candidate's title likelihood after the prefix.
    Title,
    /// `{mask}`: one prediction at the mask, read by a verbalizer.
    Mask,
}

impl Piece {
    /// The kind tag stored in a pack (`text`, `soft:NAME`, `history`, `candidate`).
    pub fn tag(&self) -> String {
        match self {
            Piece::Text(_) => "text".into(),
            Piece::Soft(n) => format!("soft:{n}"),
            Piece::History => "history".into(),
            Piece::Candidate => "candidate".into(),
            Piece::Candidates => "candidates".into(),
            Piece::Mask => "mask".into(),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidInput(format!("template: {}", msg.into()))
}

/// Parses and validates a template (rules in [`validate`]); soft prompt names are non-empty
/// `[A-Za-z0-9_.-]`.
pub fn parse(text: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") {
            lit.push('{');
            rest = &rest[2..];
        } else if rest.starts_with("}}") {
            lit.push('}');
            rest = &rest[2..];
        } else if c == '{' {
            let end = rest.find('}').ok_or_else(|| bad("unclosed '{'"))?;
            let name = &rest[1..end];
            let piece = match name {
                "history" => Piece::History,
                "candidate" => Piece::Candidate,
                "candidates" => Piece::Candidates,
                "mask" => Piece::Mask,
                _ => match name.strip_prefix("soft:") {
                    Some(n) if valid_name(n) => Piece::Soft(n.to_string()),
                    _ => return Err(bad(format!("unknown placeholder {{{name}}} (use {{soft:NAME}}, {{history}}, {{candidate}}, {{candidates}}, {{mask}}, or {{{{ for a literal brace)"))),
                },
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(piece);
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err(bad("stray '}' (write }} for a literal brace)"));
        } else {
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Text(lit));
    }
    validate(&pieces)?;
    Ok(pieces)
}

/// Soft prompt names: what a pack key and a CLI flag can carry without quoting.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The structural rules, shared by the parser and the pack reader: exactly one `{history}`, and
/// either exactly one `{candidate}` after it with only text following (a title template), or
/// exactly one `{mask}`, no `{candidate}` and at most one `{candidates}` (a mask template).
pub fn validate(pieces: &[Piece]) -> Result<Kind> {
    let at = |want: &Piece| -> Vec<usize> {
        pieces.iter().enumerate().filter(|(_, p)| *p == want).map(|(i, _)| i).collect()
    };
    let (hist, cand, cands, mask) =
        (at(&Piece::History), at(&Piece::Candidate), at(&Piece::Candidates), at(&Piece::Mask));
    if hist.len() != 1 {
        return Err(bad(format!("needs exactly one {{history}}, found {}", hist.len())));
    }
    if !mask.is_empty() {
        if mask.len() != 1 {
            return Err(bad(format!("needs at most one {{mask}}, found {}", mask.len())));
        }
        if !cand.is_empty() {
            return Err(bad("{candidate} (title scoring) and {mask} (verbalizer scoring) do not mix"));
        }
        if cands.len() > 1 {
            return Err(bad(format!("needs at most one {{candidates}}, found {}", cands.len())));
        }
        return Ok(Kind::Mask);
    }
    if !cands.is_empty() {
        return Err(bad("{candidates} needs a {mask} template (verbalizer scoring)"));
    }
    if cand.len() != 1 {
        return Err(bad(format!("needs exactly one {{candidate}} (or a {{mask}}), found {}", cand.len())));
    }
    if cand[0] < hist[0] {
        return Err(bad("{candidate} must come after {history}"));
    }
    for p in &pieces[cand[0] + 1..] {
        if !matches!(p, Piece::Text(_)) {
            return Err(bad("only literal text may follow {candidate}"));
        }
    }
    Ok(Kind::Title)
}

/// A decoder-only model reads its prediction at the last input row, so in a mask template
/// nothing may follow `{mask}` there (an encoder-decoder model sees the whole input).
pub fn check_for_decoder_only(pieces: &[Piece]) -> Result<()> {
    match pieces.iter().position(|p| *p == Piece::Mask) {
        Some(i) if i + 1 != pieces.len() => {
            Err(bad("a decoder-only model predicts at the end of its input: {mask} must end the template"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_placeholders_and_escapes() {
        let p = parse("{soft:user}Seen:{history}.\nNext {{x}}:{candidate}\n").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Soft("user".into()),
                Piece::Text("Seen:".into()),
                Piece::History,
                Piece::Text(".\nNext {x}:".into()),
                Piece::Candidate,
                Piece::Text("\n".into()),
            ]
        );
    }

    #[test]
    fn mask_templates() {
        let p = parse("Seen:{history}{soft:p}Pick from {candidates}:{mask}").unwrap();
        assert_eq!(validate(&p).unwrap(), Kind::Mask);
        assert!(check_for_decoder_only(&p).is_ok());
        let mid = parse("{history}{mask} and more").unwrap();
        assert_eq!(validate(&mid).unwrap(), Kind::Mask);
        assert!(check_for_decoder_only(&mid).is_err());
        assert_eq!(validate(&parse("{history}{candidate}").unwrap()).unwrap(), Kind::Title);
    }

    #[test]
    fn rejects_bad_templates() {
        for t in [
            "no placeholders",
            "{history}",
            "{candidate}{history}",
            "{history}{history}{candidate}",
            "{history}{candidate}{candidate}",
            "{history}{candidate}{soft:x}",
            "{history}{oops}{candidate}",
            "{history}{candidate",
            "{history}}{candidate}",
            "{soft:}{history}{candidate}",
            "{soft:a b}{history}{candidate}",
            "{history}{mask}{mask}",
            "{history}{candidate}{mask}",
            "{history}{candidates}{candidate}",
            "{history}{candidates}{candidates}{mask}",
            "{mask}",
        ] {
            assert!(matches!(parse(t), Err(Error::InvalidInput(_))), "{t:?} parsed");
        }
    }
}
