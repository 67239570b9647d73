//! The SFU's own interceptors in the `rtc` core's chain: each a [`Hook`] on the packets
//! passing one slot, with the queues and the chain's plumbing kept once, in [`Tap`].

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;

/// What one of our interceptors does with what passes it.
pub(super) trait Hook: Send + Sync {
    /// A packet on its way in, to change; `false` drops it. Packets to send in answer go
    /// into `send`.
    fn read(&mut self, _msg: &mut TaggedPacket, _send: &mut VecDeque<TaggedPacket>) -> bool {
        true
    }
    /// A packet on its way out, to change; `false` drops it.
    fn write(&mut self, _msg: &mut TaggedPacket) -> bool {
        true
    }
    /// A stream the connection receives, known or gone.
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
    /// A stream the connection sends, known or gone.
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    /// Its timer fired (at or after [`Self::next_timeout`]); packets to send go into `send`.
    fn timeout(&mut self, _now: Instant, _send: &mut VecDeque<TaggedPacket>) {}
    /// When it wants [`Self::timeout`] called, if at all.
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A [`Hook`] as an interceptor.
pub(super) struct Tap<H> {
    hook: H,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl<H> Tap<H> {
    pub(super) fn new(hook: H) -> Self {
        Self {
            hook,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl<H: std::fmt::Debug> std::fmt::Debug for Tap<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.hook.fmt(f)
    }
}

impl<H: Hook> Protocol<TaggedPacket, TaggedPacket, ()> for Tap<H> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if self.hook.read(&mut msg, &mut self.write) {
            self.read.push_back(msg);
        }
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if self.hook.write(&mut msg) {
            self.write.push_back(msg);
        }
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        if self.hook.next_timeout().is_some_and(|at| now >= at) {
            self.hook.timeout(now, &mut self.write);
        }
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.hook.next_timeout()
    }
}

impl<H: Hook> Interceptor for Tap<H> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.hook.bind_local_stream(info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.hook.unbind_local_stream(info);
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.hook.bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.hook.unbind_remote_stream(info);
    }
}
