//! The engine's llama.cpp contexts: created on demand up to a limit, lent out as [`Lease`]s that
//! come back (cleared) when dropped, on every path, unwinding included.

use std::mem::ManuallyDrop;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::call::Call;
use crate::error::{Error, Result};
use crate::llm::{Context, ContextParams, Model};

pub(crate) struct Pool {
    model: Arc<Model>,
    params: ContextParams,
    max: usize,
    /// How long a caller waits for a free context before `Busy`.
    max_wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<Context>,
    /// Contexts in existence (idle or lent).
    created: usize,
}

impl Pool {
    pub fn new(model: Arc<Model>, params: ContextParams, max: usize, max_wait: Duration) -> Arc<Pool> {
        Arc::new(Pool { model, params, max, max_wait, state: Mutex::default(), freed: Condvar::new() })
    }

    /// A context, waiting for one when all are lent: until the call is cancelled or its
    /// deadline passes, and at most `max_wait` (then `Busy`), so held sessions cannot wedge it.
    pub fn acquire(self: &Arc<Self>, call: Option<&Call>) -> Result<Lease> {
        let start = Instant::now();
        // The state is a list and a count, consistent at every unlock: a poisoned lock is usable.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(ctx) = st.idle.pop() {
                return Ok(self.lease(ctx));
            }
            if st.created < self.max {
                st.created += 1;
                drop(st);
                return match Context::new(self.model.clone(), &self.params) {
                    Ok(ctx) => Ok(self.lease(ctx)),
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|e| e.into_inner()).created -= 1;
                        self.freed.notify_one();
                        Err(e.into())
                    }
                };
            }
            if let Some(call) = call {
                call.check()?;
            }
            let waited = start.elapsed();
            if waited >= self.max_wait {
                let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                return Err(Error::Busy { contexts: self.max as u64, waited_ms: ms });
            }
            let left = self.max_wait - waited;
            let slice = call.and_then(Call::wait_slice).map_or(left, |s| s.min(left));
            st = self.freed.wait_timeout(st, slice).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn lease(self: &Arc<Self>, ctx: Context) -> Lease {
        Lease { pool: Arc::clone(self), ctx: ManuallyDrop::new(ctx) }
    }
}

/// A context lent by the pool; dropping it clears its KV cache and gives it back.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    ctx: ManuallyDrop<Context>,
}

impl Lease {
    pub fn ctx(&mut self) -> &mut Context {
        &mut self.ctx
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // SAFETY: `ctx` is taken exactly once, here, and never touched again.
        let mut ctx = unsafe { ManuallyDrop::take(&mut self.ctx) };
        ctx.clear();
        Call::disarm(&mut ctx);
        self.pool.state.lock().unwrap_or_else(|e| e.into_inner()).idle.push(ctx);
        self.pool.freed.notify_one();
    }
}
