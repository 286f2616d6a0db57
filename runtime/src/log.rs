//! Where log lines go: llama.cpp's (and ggml's) log, line by line, to a sink the app sets
//! (Android's logcat, Apple's `os_log`, a test's list). Nothing is printed by default: an app's
//! stderr is nobody's console (`DELREC_LLAMA_LOG=1` still prints llama.cpp's raw log there).
//!
//! The sink is called on the thread that logged (a decode thread, a loader), never with a
//! lock of ours held. A sink that panics (a Kotlin or Swift callback that throws surfaces as a
//! panic in its UniFFI adapter) loses its line and nothing else; a line logged from inside
//! the sink (it called back into us) is dropped rather than recursing.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use delrec_runtime::log::{set_log_sink, LogLevel};
//!
//! let lines = Arc::new(Mutex::new(Vec::new()));
//! let seen = lines.clone();
//! set_log_sink(
//!     Some(Arc::new(move |level, line: &str| {
//!         if let Ok(mut v) = seen.lock() {
//!             v.push((level, line.to_string()));
//!         }
//!     })),
//!     LogLevel::Info,
//! );
//! // ... open an engine: llama.cpp's load lines arrive in `lines` ...
//! set_log_sink(None, LogLevel::Info);
//! ```

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

/// How much a line matters; a sink gets the lines at or above the level it was set with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Receives one complete line (no trailing newline) and its level.
pub type LogSink = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

static SINK: RwLock<Option<(LogSink, LogLevel)>> = RwLock::new(None);

thread_local! {
    /// Set while this thread runs the sink: what it logs is dropped.
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
    /// Lines held back while this thread runs a call whose log may be expected noise
    /// ([`hold`]).
    static HELD: RefCell<Option<Vec<(LogLevel, String)>>> = const { RefCell::new(None) };
}

/// Sends every following line at `min_level` or above to `sink`; `None` stops it. Replaces the
/// sink set before (a call in progress on another thread may still deliver one line to it).
pub fn set_log_sink(sink: Option<LogSink>, min_level: LogLevel) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink.map(|s| (s, min_level));
}

/// One complete line to the sink, or to the held lines of this thread.
pub(crate) fn emit(level: LogLevel, line: &str) {
    let held = HELD.with(|h| {
        if let Some(lines) = h.borrow_mut().as_mut() {
            lines.push((level, line.to_string()));
            true
        } else {
            false
        }
    });
    if !held {
        deliver(level, line);
    }
}

fn deliver(level: LogLevel, line: &str) {
    if IN_SINK.with(Cell::get) {
        return;
    }
    let sink = match &*SINK.read().unwrap_or_else(|e| e.into_inner()) {
        Some((sink, min)) if level >= *min => sink.clone(),
        _ => return,
    };
    IN_SINK.with(|f| f.set(true));
    let _ = catch_unwind(AssertUnwindSafe(|| sink(level, line)));
    IN_SINK.with(|f| f.set(false));
}

/// Runs `f` with this thread's lines held back, then delivers them: as they were when `keep`
/// says so for `f`'s result, else at `Debug` (a cancelled decode makes llama.cpp log an error
/// that is no error to the app).
pub(crate) fn hold<T>(f: impl FnOnce() -> T, keep: impl FnOnce(&T) -> bool) -> T {
    let outer = HELD.with(|h| h.borrow_mut().replace(Vec::new()));
    let out = f();
    let lines = HELD.with(|h| std::mem::replace(&mut *h.borrow_mut(), outer)).unwrap_or_default();
    let keep = keep(&out);
    for (level, line) in lines {
        emit(if keep { level } else { LogLevel::Debug }, &line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    // One test owns the process-wide sink (tests run on threads of one process).
    #[test]
    fn lines_reach_the_sink_by_level_held_lines_are_demoted_and_a_panicking_sink_is_survived() {
        let seen = Arc::new(Mutex::new(Vec::<(LogLevel, String)>::new()));
        let s = seen.clone();
        set_log_sink(
            Some(Arc::new(move |l, line: &str| s.lock().unwrap().push((l, line.to_string())))),
            LogLevel::Info,
        );
        emit(LogLevel::Debug, "dropped: below the level");
        emit(LogLevel::Warn, "kept");
        let n = hold(
            || {
                emit(LogLevel::Error, "noise of a cancelled call");
                1
            },
            |_| false,
        );
        assert_eq!(n, 1);
        hold(|| emit(LogLevel::Error, "a real failure"), |_| true);
        set_log_sink(Some(Arc::new(|_, _: &str| panic!("a sink that throws"))), LogLevel::Debug);
        emit(LogLevel::Error, "lost, and nothing else");
        let s = seen.clone();
        // A sink that logs again: the inner line is dropped, not recursed into.
        set_log_sink(
            Some(Arc::new(move |l, line: &str| {
                emit(LogLevel::Error, "from inside the sink");
                s.lock().unwrap().push((l, line.to_string()));
            })),
            LogLevel::Debug,
        );
        emit(LogLevel::Info, "outer");
        set_log_sink(None, LogLevel::Debug);
        emit(LogLevel::Error, "after the sink was removed");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (LogLevel::Warn, "kept".to_string()),
                (LogLevel::Error, "a real failure".to_string()),
                (LogLevel::Info, "outer".to_string())
            ]
        );
    }
}
