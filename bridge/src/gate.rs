//! Polls a stream only when it asked to be polled.
//!
//! A session's task waits on its socket, its outbox and its timers at once, and a `select!`
//! polls every one of them each time the task wakes. Under fan-out the task wakes for its
//! outbox many times a second, and polling the socket's read side each time walks WebSocket,
//! TLS and the I/O driver only to learn that nothing arrived. A [`Gated`] stream is given a
//! waker of its own that marks it before waking the task, and is polled only when marked: after
//! its waker fired, or after it last yielded an item (more may be buffered behind it).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::Stream;

/// A stream polled only after its own waker fired or it last yielded an item.
pub struct Gated<S> {
    inner: S,
    mark: Arc<Mark>,
    /// `mark` as a waker, made once.
    waker: Waker,
}

#[derive(Default)]
struct Mark {
    due: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S: Stream + Unpin> Gated<S> {
    pub fn new(inner: S) -> Gated<S> {
        let mark = Arc::new(Mark::default());
        // Never polled yet: the first poll goes through.
        mark.due.store(true, Ordering::Relaxed);
        let waker = Waker::from(mark.clone());
        Gated { inner, mark, waker }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Polls the inner stream if it is due, with its own waker.
    pub fn poll_gated(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        // Register first: a wake after the check below still reaches the task.
        self.mark.task.register(cx.waker());
        if !self.mark.due.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut own = Context::from_waker(&self.waker);
        match Pin::new(&mut self.inner).poll_next(&mut own) {
            Poll::Ready(item) => {
                // The stream may hold more behind this item without waking anyone.
                self.mark.due.store(true, Ordering::Release);
                Poll::Ready(item)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next item, polling the inner stream only when it is due.
    pub fn next(&mut self) -> impl std::future::Future<Output = Option<S::Item>> + '_ {
        std::future::poll_fn(move |cx| self.poll_gated(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A stream that yields what is pushed into it and counts how often it is polled.
    #[derive(Default)]
    struct Probe {
        items: std::collections::VecDeque<u32>,
        polls: usize,
        waker: Option<Waker>,
    }

    impl Stream for Probe {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls += 1;
            match self.items.pop_front() {
                Some(i) => Poll::Ready(Some(i)),
                None => {
                    self.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_only_when_woken_or_after_an_item() {
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut g = Gated::new(Probe::default());
        g.get_mut().items.extend([1, 2]);

        assert_eq!(
            g.poll_gated(&mut cx),
            Poll::Ready(Some(1)),
            "first poll goes through"
        );
        assert_eq!(
            g.poll_gated(&mut cx),
            Poll::Ready(Some(2)),
            "after an item: polled"
        );
        assert_eq!(g.poll_gated(&mut cx), Poll::Pending);
        assert_eq!(g.get_mut().polls, 3);

        // The task wakes for something else: the stream is not polled.
        for _ in 0..5 {
            assert_eq!(g.poll_gated(&mut cx), Poll::Pending);
        }
        assert_eq!(g.get_mut().polls, 3, "not polled until it asks");

        // The stream's own wake-up marks it and wakes the task.
        g.get_mut().items.push_back(3);
        g.get_mut()
            .waker
            .take()
            .expect("stream kept a waker")
            .wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert_eq!(g.poll_gated(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(g.poll_gated(&mut cx), Poll::Pending);
        assert_eq!(g.get_mut().polls, 5);
    }
}
