//! Rows for one `llama_decode`: token ids or input embeddings, with positions, sequence ids and
//! output flags kept in step.

use super::error::{LlamaError, Result};

/// A batch of rows: token ids, or embedding rows (never both: llama.cpp takes one kind per batch).
pub struct Batch {
    pub(super) tokens: Vec<i32>,
    pub(super) embd: Option<Vec<f32>>,
    pub(super) width: usize,
    pub(super) pos: Vec<i32>,
    pub(super) seqs: Vec<Vec<i32>>,
    pub(super) out: Vec<i8>,
    pub(super) outputs: Vec<bool>,
}

impl Batch {
    pub fn tokens() -> Self {
        Self { tokens: vec![], embd: None, width: 0, pos: vec![], seqs: vec![], out: vec![], outputs: vec![] }
    }

    pub fn embeddings(width: usize) -> Self {
        Self { embd: Some(vec![]), width, ..Self::tokens() }
    }

    pub fn len(&self) -> usize {
        self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        if let Some(e) = &mut self.embd {
            e.clear();
        }
        self.pos.clear();
        self.seqs.clear();
        self.out.clear();
        self.outputs.clear();
    }

    pub fn add_token(&mut self, token: i32, pos: i32, seqs: &[i32], logits: bool) {
        debug_assert!(self.embd.is_none());
        self.tokens.push(token);
        self.push_meta(pos, seqs, logits);
    }

    /// Adds one embedding row; its length must be the batch width.
    pub fn add_embedding(&mut self, row: &[f32], pos: i32, seqs: &[i32], logits: bool) -> Result<()> {
        match &mut self.embd {
            Some(e) if row.len() == self.width => e.extend_from_slice(row),
            _ => return Err(LlamaError::Refused("embedding row of the wrong width or in a token batch".into())),
        }
        self.push_meta(pos, seqs, logits);
        Ok(())
    }

    fn push_meta(&mut self, pos: i32, seqs: &[i32], logits: bool) {
        self.pos.push(pos);
        self.seqs.push(seqs.to_vec());
        self.out.push(logits as i8);
    }
}
