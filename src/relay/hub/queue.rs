//! The frames queued for one peer: a bounded queue that holds no buffer
//! while it is empty.
//!
//! It replaces `tokio::sync::mpsc::channel(PEER_QUEUE)`, which allocates
//! its first block of 32 slots (about 0.8 KiB) when the channel is made,
//! and keeps it: most of a relay's connections are idle devices whose
//! queue never holds a frame, and that block was the largest part of what
//! an idle connection cost over mosquitto (issue 15's memory figure). The
//! semantics are the channel's: [`Sender::try_send`] fails at once when
//! the queue is full or its receiver is gone; [`Sender::send`] waits for
//! room (callers bound it with `SEND_TIMEOUT`) and fails when the
//! receiver is gone; [`Receiver::recv`] returns `None` once every sender
//! is dropped and the queue is drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::lock;

struct Shared {
    state: Mutex<State>,
    /// A frame was queued, or the last sender left.
    readable: Notify,
    /// A frame was taken, or the receiver left.
    writable: Notify,
    cap: usize,
}

struct State {
    frames: VecDeque<String>,
    senders: usize,
    receiver: bool,
}

/// The hub's end: any number of clones, like an `mpsc::Sender`.
pub(crate) struct Sender(Arc<Shared>);

/// The session's end.
pub(crate) struct Receiver(Arc<Shared>);

/// A queue of at most `cap` frames (`cap` ≥ 1).
pub(crate) fn queue(cap: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), senders: 1, receiver: true }),
        readable: Notify::new(),
        writable: Notify::new(),
        cap: cap.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `frame` now, or gives it back (`Err`): the queue holds `cap`
    /// frames already, or the session ended.
    pub(crate) fn try_send(&self, frame: String) -> Result<(), String> {
        let mut state = lock(&self.0.state);
        if !state.receiver || state.frames.len() >= self.0.cap {
            return Err(frame);
        }
        state.frames.push_back(frame);
        drop(state);
        self.0.readable.notify_one();
        Ok(())
    }

    /// Queues `frame`, waiting for room; gives it back (`Err`) once the session has ended.
    pub(crate) async fn send(&self, mut frame: String) -> Result<(), String> {
        loop {
            let room = self.0.writable.notified();
            tokio::pin!(room);
            // Registered before the check, so a frame taken in between still wakes it.
            room.as_mut().enable();
            match self.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(back) if lock(&self.0.state).receiver => frame = back,
                Err(gone) => return Err(gone),
            }
            room.await;
        }
    }
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        lock(&self.0.state).senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let last = {
            let mut state = lock(&self.0.state);
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.readable.notify_one();
        }
    }
}

impl Receiver {
    /// The next frame; `None` once every sender is gone and nothing is left.
    pub(crate) async fn recv(&mut self) -> Option<String> {
        loop {
            // `notify_one` keeps a permit for a receiver not yet waiting, so
            // nothing queued between the check and the wait is missed.
            let queued = self.0.readable.notified();
            {
                let mut state = lock(&self.0.state);
                if let Some(frame) = state.frames.pop_front() {
                    if state.frames.is_empty() {
                        // An idle peer holds no buffer (see the module's doc).
                        state.frames = VecDeque::new();
                    }
                    drop(state);
                    self.0.writable.notify_waiters();
                    return Some(frame);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            queued.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.receiver = false;
        state.frames = VecDeque::new();
        drop(state);
        self.0.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_a_place_per_frame_taken() {
        let (tx, mut rx) = queue(2);
        tx.try_send("a".into()).unwrap();
        tx.try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()).unwrap_err(), "c");
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        tx.try_send("c".into()).unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some("b"));
        assert_eq!(rx.recv().await.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = queue(1);
        tx.try_send("a".into()).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), tx.send("b".into())).await;
        assert!(waiting.is_err(), "no room: send waits");
        let tx2 = tx.clone();
        let sent = tokio::spawn(async move { tx2.send("b".into()).await.is_ok() });
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        assert!(sent.await.unwrap(), "a frame taken makes room");
        assert_eq!(rx.recv().await.as_deref(), Some("b"));
        tx.try_send("c".into()).unwrap();
        let blocked = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send("d".into()).await.is_err() })
        };
        tokio::task::yield_now().await;
        drop(rx);
        assert!(blocked.await.unwrap(), "a sender waiting for room hears that the session ended");
        assert!(tx.try_send("e".into()).is_err(), "nothing is queued for a session that ended");
    }

    #[tokio::test]
    async fn recv_drains_then_ends_when_the_last_sender_is_dropped() {
        let (tx, mut rx) = queue(4);
        let tx2 = tx.clone();
        tx.try_send("a".into()).unwrap();
        drop(tx);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx.recv().await)
        });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(waiting.await.unwrap(), (Some("a".to_string()), None));
    }

    #[tokio::test]
    async fn recv_wakes_for_a_frame_queued_while_it_waits() {
        let (tx, mut rx) = queue(4);
        let got = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send("late".into()).unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), got).await.unwrap().unwrap().as_deref(), Some("late"));
    }
}
