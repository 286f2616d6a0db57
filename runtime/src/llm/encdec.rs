//! Encoder-decoder models (T5): the encoder input, its checks, and the token-embedding lookup
//! that lets one encoder input mix token ids and embedding rows.
//!
//! llama.cpp's batch carries either token ids or embedding rows, and the whole encoder input
//! must be one `llama_encode` (one ubatch: a larger one is a `GGML_ASSERT`, which aborts the
//! process). So a mixed input is passed as embedding rows, the token rows looked up here from
//! the model file's `token_embd.weight`, dequantized as ggml's `get_rows` does (the T5 graph
//! does not scale input embeddings, so the rows are used as they are).

use delrec_format::gguf::{GgufFile, TensorType};
use half::{bf16, f16};

use super::error::{LlamaError, Result};

/// One piece of an encoder input, in order.
#[derive(Clone, Copy, Debug)]
pub enum EncoderSegment<'a> {
    Tokens(&'a [i32]),
    /// Row-major rows of width `n_embd_inp`.
    Embeddings(&'a [f32]),
}

/// The token embedding matrix of a model file, read row by row.
pub struct TokenEmbeddings {
    ty: TensorType,
    width: usize,
    n_vocab: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl TokenEmbeddings {
    /// Bytes of the copied table (`n_vocab` rows in the file's type).
    pub fn byte_len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Copies `token_embd.weight` out of `f` (types F32, F16, BF16, Q8_0).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let t = f
            .tensor("token_embd.weight")
            .ok_or_else(|| LlamaError::Refused("the model has no token_embd.weight".into()))?;
        let (width, n_vocab) = match t.dims.as_slice() {
            [w, v] => (*w as usize, *v as usize),
            d => return Err(LlamaError::Refused(format!("token_embd.weight has dims {d:?}"))),
        };
        let row_bytes = match t.ty {
            TensorType::F32 => width * 4,
            TensorType::F16 | TensorType::BF16 => width * 2,
            TensorType::Q8_0 if width.is_multiple_of(32) => width / 32 * 34,
            other => {
                return Err(LlamaError::Refused(format!(
                    "token embeddings of type {} cannot be looked up here (F32, F16, BF16, Q8_0)",
                    other.name()
                )))
            }
        };
        let bytes = f
            .tensor_bytes(t)
            .filter(|b| b.len() == row_bytes * n_vocab)
            .ok_or_else(|| LlamaError::Refused("token_embd.weight's data is not inside the file".into()))?;
        Ok(TokenEmbeddings { ty: t.ty, width, n_vocab, row_bytes, data: bytes.to_vec() })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Appends the row of `token` (dequantized to f32) to `out`.
    pub fn push_row(&self, token: i32, out: &mut Vec<f32>) -> Result<()> {
        let i = usize::try_from(token).ok().filter(|&i| i < self.n_vocab).ok_or_else(|| {
            LlamaError::Refused(format!("token id {token} outside the vocabulary of {}", self.n_vocab))
        })?;
        let b = &self.data[i * self.row_bytes..(i + 1) * self.row_bytes];
        match self.ty {
            TensorType::F32 => out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            TensorType::F16 => out.extend(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
            TensorType::BF16 => out.extend(b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            // Q8_0 block: an f16 scale, then 32 signed bytes.
            _ => {
                for blk in b.chunks_exact(34) {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * d));
                }
            }
        }
        Ok(())
    }

    /// The segments as one run of embedding rows.
    pub fn rows(&self, segments: &[EncoderSegment]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for s in segments {
            match s {
                EncoderSegment::Tokens(t) => {
                    for &tok in *t {
                        self.push_row(tok, &mut out)?;
                    }
                }
                EncoderSegment::Embeddings(e) => {
                    if !e.len().is_multiple_of(self.width) {
                        return Err(LlamaError::Refused(format!(
                            "{} embedding values are not whole rows of width {}",
                            e.len(),
                            self.width
                        )));
                    }
                    if e.iter().any(|v| !v.is_finite()) {
                        return Err(LlamaError::Refused("an encoder embedding row holds NaN or ±inf".into()));
                    }
                    out.extend_from_slice(e);
                }
            }
        }
        Ok(out)
    }
}

/// Logits of several decoder sequences over one encoder pass, on the exact path (F32 cache,
/// classic attention): for checking a conversion against a reference. `embeddings` is needed
/// when the input has embedding segments (token segments are then looked up in it). Returns
/// one row per decoder position per sequence, and the context's encoder pass count.
pub fn encoder_decoder_logits(
    model: &std::sync::Arc<super::Model>,
    embeddings: Option<&TokenEmbeddings>,
    encoder: &[EncoderSegment],
    decoders: &[Vec<i32>],
    threads: i32,
) -> Result<(Vec<Vec<Vec<f32>>>, u64)> {
    use super::{Batch, Context, ContextParams};
    if decoders.is_empty() || decoders.iter().any(|d| d.is_empty()) {
        return Err(LlamaError::Refused("every decoder sequence needs at least one token".into()));
    }
    let n_seq = u32::try_from(decoders.len()).map_err(|_| LlamaError::Refused("too many decoder sequences".into()))?;
    let all_tokens = encoder.iter().all(|s| matches!(s, EncoderSegment::Tokens(_)));
    let mut enc = if all_tokens {
        Batch::tokens()
    } else {
        let e = embeddings
            .ok_or_else(|| LlamaError::Refused("embedding segments need the model's token embeddings".into()))?;
        if e.width() != model.n_embd_inp() {
            return Err(LlamaError::Refused(format!(
                "token embeddings of width {} for a model input of width {}",
                e.width(),
                model.n_embd_inp()
            )));
        }
        Batch::embeddings(model.n_embd_inp())
    };
    let seqs: Vec<i32> = (0..n_seq as i32).collect();
    if all_tokens {
        let toks = encoder.iter().flat_map(|s| match s {
            EncoderSegment::Tokens(t) => t.iter().copied(),
            EncoderSegment::Embeddings(_) => [].iter().copied(),
        });
        for (i, t) in toks.enumerate() {
            enc.add_token(t, i as i32, &seqs, false);
        }
    } else if let Some(e) = embeddings {
        let rows = e.rows(encoder)?;
        for (i, r) in rows.chunks_exact(e.width()).enumerate() {
            enc.add_embedding(r, i as i32, &seqs, false)?;
        }
    }
    let n_dec: usize = decoders.iter().map(Vec::len).sum();
    let n = u32::try_from(enc.len().max(n_dec)).map_err(|_| LlamaError::Refused("input too long".into()))?;
    let mut p = ContextParams::exact(n, threads);
    p.n_seq_max = n_seq;
    let mut ctx = Context::new(std::sync::Arc::clone(model), &p)?;
    ctx.encode(&mut enc)?;
    let mut b = Batch::tokens();
    for (s, d) in decoders.iter().enumerate() {
        for (j, &t) in d.iter().enumerate() {
            b.add_token(t, j as i32, &[s as i32], true);
        }
    }
    ctx.decode(&mut b)?;
    let mut out = Vec::with_capacity(decoders.len());
    let mut row = 0;
    for d in decoders {
        let mut rows = Vec::with_capacity(d.len());
        for _ in d {
            rows.push(ctx.logits(&b, row)?.to_vec());
            row += 1;
        }
        out.push(rows);
    }
    Ok((out, ctx.encoder_passes()))
}
