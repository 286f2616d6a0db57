//! One request in flight: its cancel token, deadline and counters.

use std::time::{Duration, Instant};

use super::{CancelToken, OnProgress, RankProgress, RankRequest, RankStats};
use crate::error::{Error, Result};
use crate::llm::Context;

pub(crate) struct Call {
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
    progress: Option<OnProgress>,
    /// Rows the plans so far will decode at most (`RankProgress::planned_rows`).
    planned: usize,
    pub stats: RankStats,
}

impl Call {
    pub fn new(req: &RankRequest) -> Self {
        Call {
            cancel: req.cancel.clone(),
            deadline: req.timeout.map(|t| Instant::now() + t),
            progress: req.progress.clone(),
            planned: 0,
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

    /// A plan will decode at most `rows` more rows.
    pub fn plan(&mut self, rows: usize) {
        self.planned += rows;
    }

    /// Counts one decode of `rows` rows and reports the progress.
    pub fn decoded(&mut self, rows: usize) {
        self.stats.decode_calls += 1;
        self.stats.decoded_rows += rows;
        self.planned = self.planned.max(self.stats.decoded_rows);
        if let Some(p) = &self.progress {
            p.report(RankProgress {
                decoded_rows: self.stats.decoded_rows,
                planned_rows: self.planned,
                decode_calls: self.stats.decode_calls,
            });
        }
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
