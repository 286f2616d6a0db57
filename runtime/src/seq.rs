//! The sequential recommender on the device: SASRec's forward pass in plain Rust (`sasrec`),
//! the catalog scan over an f32 or Q8_0 item table (`scan`) and the top-N selection over its
//! scores (`topn`). No llama.cpp: at phone sizes (64-wide, two blocks, histories of tens of
//! items) the forward is tens of microseconds and the scan one dot product per item, so a graph
//! library would cost more in setup than it saves.

pub(crate) mod sasrec;
pub(crate) mod scan;
pub(crate) mod topn;
