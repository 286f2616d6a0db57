//! One request in flight: its cancel token, deadline and counters.

use std::time::{Duration, Instant};

use super::{CancelToken, RankRequest, RankStats};
use crate::error::{Error, Result};
use crate::llm::Context;

pub(crate) struct Call {
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
    pub stats: RankStats,
}

impl Call {
    pub fn new(req: &RankRequest) -> Self {
        Call {
            cancel: req.cancel.clone(),
            deadline: req.timeout.map(|t| Instant::now() + t),
            stats: RankStats::default(),
        }
    }

    /// Lets llama.cpp's abort callback see this call's cancel token and deadline.
    pub fn arm(&self, ctx: &mut Context) {
        ctx.set_abort(self.cancel.as_ref().map(|c| c.0.clone()), self.deadline);
    }

    pub fn disarm(ctx: &mut Context) {
        ctx.set_abort(None, None);
    }

    pub fn check(&self) -> Result<()> {
        if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::DeadlineExceeded);
        }
        Ok(())
    }

    /// How long to wait for something before checking again; `None`: nothing to check, wait on.
    pub fn wait_slice(&self) -> Option<Duration> {
        const SLICE: Duration = Duration::from_millis(10);
        match (self.deadline, &self.cancel) {
            (Some(d), _) => Some(d.saturating_duration_since(Instant::now()).min(SLICE)),
            (None, Some(_)) => Some(SLICE),
            (None, None) => None,
        }
    }
}
