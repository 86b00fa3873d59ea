//! Questions whose asker has gone. A question runs on a blocking thread to
//! its end even when the request that asked it ends first (the client left,
//! or the request's deadline passed), and may keep the engine's threads
//! busy for seconds. So the HTTP layer runs a question as an [`Asker`]'s and
//! tells the asker when its request ends unanswered: the read running for
//! it is stopped (DuckDB interrupts it, ClickHouse kills it), and none
//! starts after.

use crate::StoreError;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

/// Whoever asked the reads run on a thread inside [`Asker::answer`].
#[derive(Clone, Default)]
pub struct Asker(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    gone: bool,
    /// Stops the read running for this asker, if one is.
    stop: Option<Box<dyn FnOnce() + Send>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Asker>> = const { RefCell::new(None) };
}

impl Asker {
    /// Runs `f` on this thread as this asker's.
    pub fn answer<T>(&self, f: impl FnOnce() -> T) -> T {
        as_asker(Some(self.clone()), f)
    }

    /// Whether a read runs for this asker now.
    pub fn reading(&self) -> bool {
        lock(&self.0).stop.is_some()
    }

    /// The asker has gone: its running read stops, and no other starts.
    pub fn leave(&self) {
        let mut state = lock(&self.0);
        state.gone = true;
        // Under the lock, so the read cannot end, and its connection move
        // on to another question, between this check and the stop.
        if let Some(stop) = state.stop.take() {
            stop();
        }
    }
}

/// Runs `f` on this thread as no one's: its reads are not stopped when the
/// asker leaves (work whose result outlives the question).
pub fn unwatched<T>(f: impl FnOnce() -> T) -> T {
    as_asker(None, f)
}

/// Runs `f` with `asker` as this thread's, then puts back the one before
/// (also when `f` panics).
fn as_asker<T>(asker: Option<Asker>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Asker>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(asker)));
    f()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A read running for this thread's asker (none outside [`Asker::answer`]).
pub(crate) struct Watch(Option<Asker>);

/// Watches a read about to start: `stop` is called if its asker leaves
/// before the watch ends. Refused when the asker has gone already.
pub(crate) fn watch(stop: impl FnOnce() + Send + 'static) -> Result<Watch, StoreError> {
    let Some(asker) = CURRENT.with(|c| c.borrow().clone()) else { return Ok(Watch(None)) };
    {
        let mut state = lock(&asker.0);
        if state.gone {
            return Err(StoreError::Abandoned);
        }
        debug_assert!(state.stop.is_none(), "one read at a time per asker");
        state.stop = Some(Box::new(stop));
    }
    Ok(Watch(Some(asker)))
}

impl Watch {
    /// Ends the watch: whether its asker left meanwhile (the read was then
    /// stopped, or its answer is not wanted).
    pub(crate) fn end(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        let Some(asker) = self.0.take() else { return false };
        let mut state = lock(&asker.0);
        state.stop = None;
        state.gone
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_read_is_stopped_once_when_its_asker_leaves_and_none_starts_after() {
        let stops = Arc::new(AtomicUsize::new(0));
        let asker = Asker::default();
        asker.answer(|| {
            let counted = stops.clone();
            let running = watch(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
            asker.leave();
            asker.leave();
            assert_eq!(stops.load(Ordering::SeqCst), 1);
            assert!(running.end(), "the asker left during the read");
            assert!(matches!(watch(|| {}), Err(StoreError::Abandoned)));
        });
        // Outside any asker's question, reads are not watched.
        assert!(!watch(|| unreachable!()).unwrap().end());
    }

    #[test]
    fn reads_run_unwatched_are_not_stopped_and_the_asker_comes_back_after() {
        let asker = Asker::default();
        asker.answer(|| {
            unwatched(|| {
                let running = watch(|| panic!("an unwatched read is stopped")).unwrap();
                asker.leave();
                assert!(!running.end());
            });
            assert!(matches!(watch(|| {}), Err(StoreError::Abandoned)), "the asker is this thread's again");
        });
    }

    #[test]
    fn a_read_that_ended_is_not_stopped() {
        let asker = Asker::default();
        let ended = asker.answer(|| watch(|| panic!("stopped after its end")).unwrap().end());
        assert!(!ended);
        asker.leave();
    }
}
