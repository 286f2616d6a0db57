//! A user's running history, kept decoded in a context of its own.

use super::pool::Lease;
use super::prefix::PrefixState;
use super::{prompt, Engine, RankRequest, RankStats, Ranking, RecommendRequest, Recommendation};
use crate::error::Result;

/// A user's running history, kept decoded: after a new item only the changed tail of the prompt
/// is decoded again. Owns its context (taken from the engine's pool until dropped) and a handle
/// to the engine, so it can live anywhere an `Engine` can.
///
/// ```no_run
/// # use delrec_runtime::{Engine, EngineConfig, RankRequest};
/// let engine = Engine::open("model.gguf", "pack.gguf", EngineConfig::default())?;
/// let mut session = engine.session(None)?;
/// session.push("m001")?;
/// session.push("m007")?;
/// let top = session.rank(&RankRequest { top_k: Some(5), ..Default::default() })?;
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
pub struct Session {
    engine: Engine,
    lease: Lease,
    history: Vec<String>,
    soft_prompt: Option<String>,
    state: PrefixState,
}

impl Session {
    pub(crate) fn new(engine: Engine, lease: Lease, soft_prompt: Option<String>) -> Self {
        Session { engine, lease, history: vec![], soft_prompt, state: PrefixState::default() }
    }

    /// Appends an item (most recent last). Unknown ids are rejected here, not at the next rank.
    pub fn push(&mut self, id: &str) -> Result<()> {
        prompt::item(&self.engine.catalog(), id)?;
        self.history.push(id.to_string());
        Ok(())
    }

    /// Replaces the history.
    pub fn set_history(&mut self, ids: &[String]) -> Result<()> {
        for id in ids {
            prompt::item(&self.engine.catalog(), id)?;
        }
        self.history = ids.to_vec();
        Ok(())
    }

    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Ranks with the session's history; `req.history` and `req.soft_prompt` are ignored.
    pub fn rank(&mut self, req: &RankRequest) -> Result<Ranking> {
        let req = RankRequest { history: self.history.clone(), soft_prompt: self.soft_prompt.clone(), ..req.clone() };
        self.engine.rank_in(self.lease.ctx(), &mut self.state, &req)
    }

    /// Decodes the prompt prefix for the session's history now, so that the next `rank` with a
    /// request of this shape decodes only candidate rows: call it right after `push` (off the UI
    /// thread), while the user looks at the screen. Of `req` only what shapes the prompt counts
    /// (`candidates` for templates that list them, `inline`), plus `cancel` and `timeout`; a
    /// cancelled prefill leaves the session valid (its next rank decodes what is missing).
    pub fn prefill(&mut self, req: &RankRequest) -> Result<RankStats> {
        let req = RankRequest { history: self.history.clone(), soft_prompt: self.soft_prompt.clone(), ..req.clone() };
        self.engine.prefill_in(self.lease.ctx(), &mut self.state, &req)
    }

    /// The cascade with the session's history (the LLM re-rank reuses the decoded prefix);
    /// `req.history` and `req.soft_prompt` are ignored.
    pub fn recommend(&mut self, req: &RecommendRequest) -> Result<Recommendation> {
        let req =
            RecommendRequest { history: self.history.clone(), soft_prompt: self.soft_prompt.clone(), ..req.clone() };
        self.engine.recommend_in(Some((self.lease.ctx(), &mut self.state)), &req)
    }
}
