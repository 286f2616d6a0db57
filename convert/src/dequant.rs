//! ggml tensor types → f32, written from ggml's block layouts (`ggml-common.h`) and
//! `dequantize_row_*` (`ggml-quants.c`), in the same arithmetic order so the values are
//! llama.cpp's own (checked against llama.cpp's dequantization in `tests/merge_gguf.rs`).
//!
//! Every function works on whole blocks and never panics: a byte slice that is not a whole number
//! of blocks, or a type without a dequantizer here, gives `None`.

use delrec_format::gguf::TensorType;
use half::{bf16, f16};

/// ggml type ids that [`TensorType`] only knows as `Other`.
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;

/// Names of the types [`dequantize`] handles, for error messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

/// (elements per block, bytes per block) of a type this module dequantizes.
pub fn block(ty: TensorType) -> Option<(usize, usize)> {
    Some(match ty {
        TensorType::F32 => (1, 4),
        TensorType::F16 | TensorType::BF16 => (1, 2),
        TensorType::Q8_0 => (32, 34),
        TensorType::Q4_0 => (32, 18),
        TensorType::Q4_1 => (32, 20),
        TensorType::Other(Q5_0) => (32, 22),
        TensorType::Other(Q5_1) => (32, 24),
        TensorType::Q4K => (256, 144),
        TensorType::Q5K => (256, 176),
        TensorType::Q6K => (256, 210),
        _ => return None,
    })
}

/// Whether [`dequantize`] handles `ty`.
pub fn supported(ty: TensorType) -> bool {
    block(ty).is_some()
}

/// Bytes of `n_elements` values of `ty` in rows of `ne0`, when `ty` is supported and the rows are
/// whole blocks.
pub fn byte_size(ty: TensorType, ne0: u64, n_elements: u64) -> Option<u64> {
    let (be, bb) = block(ty)?;
    let (be, bb) = (be as u64, bb as u64);
    if be == 0 || !ne0.is_multiple_of(be) || !n_elements.is_multiple_of(be) {
        return None;
    }
    (n_elements / be).checked_mul(bb)
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) to f32; `None` when `ty` is unsupported or `bytes`
/// is not a whole number of blocks.
pub fn dequantize(ty: TensorType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (be, bb) = block(ty)?;
    if !bytes.len().is_multiple_of(bb) {
        return None;
    }
    let mut y = Vec::with_capacity(bytes.len() / bb * be);
    let blocks = bytes.chunks_exact(bb);
    match ty {
        TensorType::F32 => y.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        TensorType::F16 => y.extend(blocks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        TensorType::BF16 => y.extend(blocks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        TensorType::Q8_0 => {
            for b in blocks {
                let d = h(b, 0);
                y.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        TensorType::Q4_0 => {
            for b in blocks {
                let d = h(b, 0);
                let qs = &b[2..18];
                y.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                y.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        TensorType::Q4_1 => {
            for b in blocks {
                let (d, m) = (h(b, 0), h(b, 2));
                let qs = &b[4..20];
                y.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                y.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        TensorType::Other(Q5_0) | TensorType::Other(Q5_1) => {
            let with_min = ty == TensorType::Other(Q5_1);
            let (qh_at, qs_at) = if with_min { (4, 8) } else { (2, 6) };
            for b in blocks {
                let d = h(b, 0);
                let m = if with_min { h(b, 2) } else { 0.0 };
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let qs = &b[qs_at..qs_at + 16];
                let value = |q: u8, high: u32| {
                    let x = (q as u32 | (high & 0x10)) as i32;
                    if with_min {
                        x as f32 * d + m
                    } else {
                        (x - 16) as f32 * d
                    }
                };
                y.extend(qs.iter().enumerate().map(|(j, &q)| value(q & 0x0F, (qh >> j) << 4)));
                y.extend(qs.iter().enumerate().map(|(j, &q)| value(q >> 4, qh >> (j + 12))));
            }
        }
        TensorType::Q4K | TensorType::Q5K => {
            let five = ty == TensorType::Q5K;
            for b in blocks {
                let (d, min) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let (qh, ql) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for (j, q) in ql.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    let hi = |l: usize, u: u8| if five && qh[l] & u != 0 { 16 } else { 0 };
                    y.extend(q.iter().enumerate().map(|(l, &v)| d1 * ((v & 0xF) + hi(l, u1)) as f32 - m1));
                    y.extend(q.iter().enumerate().map(|(l, &v)| d2 * ((v >> 4) + hi(l, u2)) as f32 - m2));
                }
            }
        }
        TensorType::Q6K => {
            for b in blocks {
                let d = h(b, 208);
                let mut out = [0f32; 256];
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let y = &mut out[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let s = |k: usize| sc[is + k] as i8 as f32;
                        y[l] = d * s(0) * q1 as f32;
                        y[l + 32] = d * s(2) * q2 as f32;
                        y[l + 64] = d * s(4) * q3 as f32;
                        y[l + 96] = d * s(6) * q4 as f32;
                    }
                }
                y.extend_from_slice(&out);
            }
        }
        _ => return None,
    }
    Some(y)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(TensorType::Q8_0, &b).unwrap();
        assert_eq!(y.len(), 32);
        assert_eq!((y[0], y[16], y[31]), (-8.0, 0.0, 7.5));
    }

    #[test]
    fn q4_0_and_q4_1_nibble_order() {
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let mut b = f16b(2.0).to_vec();
        b.extend([0x9Fu8; 16]); // low 15, high 9
        let y = dequantize(TensorType::Q4_0, &b).unwrap();
        assert_eq!((y[0], y[15], y[16], y[31]), (14.0, 14.0, 2.0, 2.0));
        let mut b = f16b(2.0).to_vec();
        b.extend(f16b(-1.0));
        b.extend([0x31u8; 16]);
        let y = dequantize(TensorType::Q4_1, &b).unwrap();
        assert_eq!((y[0], y[16]), (1.0, 5.0));
    }

    #[test]
    fn q5_high_bits() {
        // qh bit j is element j's fifth bit, bit j+16 element j+16's.
        let mut b = f16b(1.0).to_vec();
        b.extend((1u32 | (1 << 16)).to_le_bytes());
        b.extend([0u8; 16]);
        let y = dequantize(TensorType::Other(Q5_0), &b).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (0.0, -16.0, 0.0, -16.0));
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(0.5));
        b.extend((1u32 << 31).to_le_bytes());
        b.extend([0u8; 16]);
        let y = dequantize(TensorType::Other(Q5_1), &b).unwrap();
        assert_eq!((y[0], y[15], y[31]), (0.5, 0.5, 16.5));
    }

    #[test]
    fn k_scales_unpack() {
        let q = [1, 2, 3, 4, 5, 6, 7, 8 | 0xC0, 0x21, 0x43, 0x65, 0x87];
        assert_eq!(scale_min_k4(0, &q), (1, 5));
        assert_eq!(scale_min_k4(3, &q), (4, 8));
        // j = 7: d = (q[11] & 0xF) | (q[3] >> 6) << 4 = 7; m = (q[11] >> 4) | (q[7] >> 6) << 4 = 8 | 48
        assert_eq!(scale_min_k4(7, &q), (7, 56));
    }

    #[test]
    fn partial_blocks_and_unknown_types_are_none() {
        assert!(dequantize(TensorType::Q8_0, &[0u8; 33]).is_none());
        assert!(dequantize(TensorType::Q6K, &[0u8; 209]).is_none());
        assert!(dequantize(TensorType::Other(10), &[0u8; 84]).is_none());
        assert!(dequantize(TensorType::I32, &[0u8; 4]).is_none());
        assert_eq!(dequantize(TensorType::F32, &[]).unwrap(), Vec::<f32>::new());
        assert_eq!(byte_size(TensorType::Q4K, 512, 1024), Some(4 * 144));
        assert_eq!(byte_size(TensorType::Q4K, 32, 1024), None);
    }
}
