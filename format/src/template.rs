//! Prompt templates: literal text with `{soft:NAME}`, `{history}` and `{candidate}` placeholders.
//!
//! Everything before `{candidate}` is the prefix shared by all candidates of one request; the text
//! after `{candidate}` is the terminator, scored with each candidate (it tells the model the title
//! has ended, so a title that is a prefix of another does not win by being short). `{{` and `}}`
//! stand for literal braces.

use crate::error::{Error, Result};

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Soft(String),
    History,
    Candidate,
}

impl Piece {
    /// The kind tag stored in a pack (`text`, `soft:NAME`, `history`, `candidate`).
    pub fn tag(&self) -> String {
        match self {
            Piece::Text(_) => "text".into(),
            Piece::Soft(n) => format!("soft:{n}"),
            Piece::History => "history".into(),
            Piece::Candidate => "candidate".into(),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidInput(format!("template: {}", msg.into()))
}

/// Parses and validates a template: exactly one `{history}`, then exactly one `{candidate}`, soft
/// prompts only before `{candidate}`, soft prompt names non-empty `[A-Za-z0-9_.-]`.
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
                _ => match name.strip_prefix("soft:") {
                    Some(n) if valid_name(n) => Piece::Soft(n.to_string()),
                    _ => return Err(bad(format!("unknown placeholder {{{name}}} (use {{soft:NAME}}, {{history}}, {{candidate}}, or {{{{ for a literal brace)"))),
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

/// The structural rules, shared by the parser and the pack reader.
pub fn validate(pieces: &[Piece]) -> Result<()> {
    let hist: Vec<usize> = pieces.iter().enumerate().filter(|(_, p)| **p == Piece::History).map(|(i, _)| i).collect();
    let cand: Vec<usize> = pieces.iter().enumerate().filter(|(_, p)| **p == Piece::Candidate).map(|(i, _)| i).collect();
    if hist.len() != 1 {
        return Err(bad(format!("needs exactly one {{history}}, found {}", hist.len())));
    }
    if cand.len() != 1 {
        return Err(bad(format!("needs exactly one {{candidate}}, found {}", cand.len())));
    }
    if cand[0] < hist[0] {
        return Err(bad("{candidate} must come after {history}"));
    }
    for p in &pieces[cand[0] + 1..] {
        if !matches!(p, Piece::Text(_)) {
            return Err(bad("only literal text may follow {candidate}"));
        }
    }
    Ok(())
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
        ] {
            assert!(matches!(parse(t), Err(Error::InvalidInput(_))), "{t:?} parsed");
        }
    }
}
