//! Progress of long work, for an app's progress bar: opening (the model's digest, llama.cpp's
//! load) and ranking (rows decoded of those planned). Callbacks run on the working thread,
//! between steps, so they must return quickly; a panicking one is caught and ignored.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::CancelToken;

/// Which part of an open is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadStage {
    /// Hashing the model file against the pack's pinned digest (skipped when this version of the
    /// file was verified before: see `EngineConfig::digest_cache`).
    Verify,
    /// llama.cpp loading the weights.
    Load,
}

/// One progress report of an open; `fraction` (0..=1) is of the stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadProgress {
    pub stage: LoadStage,
    pub fraction: f32,
}

/// One progress report of a rank: rows sent to llama.cpp so far and the most it will need.
/// `planned_rows` is an upper bound that grows as planning goes on (a best-first top-k search
/// usually finishes well before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankProgress {
    pub decoded_rows: usize,
    pub planned_rows: usize,
    pub decode_calls: usize,
}

/// A rank's progress callback (`RankRequest::progress`), called after every decode.
#[derive(Clone)]
pub struct OnProgress(pub Arc<dyn Fn(RankProgress) + Send + Sync>);

impl OnProgress {
    pub fn new(f: impl Fn(RankProgress) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn report(&self, p: RankProgress) {
        let _ = catch_unwind(AssertUnwindSafe(|| (self.0)(p)));
    }
}

impl fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnProgress(..)")
    }
}

/// How to open: observed (progress) and stoppable (cancel) — both optional.
///
/// ```no_run
/// use delrec_runtime::{CancelToken, Engine, EngineConfig, OpenOptions};
/// let cancel = CancelToken::new();
/// let opts = OpenOptions::default()
///     .progress(|p| println!("{:?} {:.0}%", p.stage, p.fraction * 100.0))
///     .cancel(cancel.clone());
/// let engine = Engine::open_with("model.gguf", "pack.gguf", EngineConfig::default(), &opts)?;
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct OpenOptions {
    pub progress: Option<Arc<dyn Fn(LoadProgress) + Send + Sync>>,
    /// Stops the open between steps and during llama.cpp's load (`Error::Cancelled`).
    pub cancel: Option<CancelToken>,
}

impl OpenOptions {
    pub fn progress(mut self, f: impl Fn(LoadProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    pub fn cancel(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Reports `fraction` of `stage`; false when the open is cancelled.
    pub(crate) fn step(&self, stage: LoadStage, fraction: f32) -> bool {
        if let Some(f) = &self.progress {
            let _ = catch_unwind(AssertUnwindSafe(|| f(LoadProgress { stage, fraction })));
        }
        !self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }
}

impl fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOptions").field("progress", &self.progress.is_some()).field("cancel", &self.cancel).finish()
    }
}
