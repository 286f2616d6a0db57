//! The pieces of `delrec-fuzz`: the GGUF walker and serializer, the mutation classes, the PRNG
//! and the worker process.

pub mod gguf;
pub mod mutate;
pub mod rng;
pub mod worker;
