//! The last packets of one published track, by RTP sequence number, so that a subscriber's
//! NACK is answered from here instead of being passed to the publisher.

/// How many packets a track keeps: about 4.5 s of 1 Mbit/s video (~115 packets/s), 1.8 s
/// at 2.5 Mbit/s, and 10 s of audio; a retransmission older than that is too late to
/// help. About 600 KB per video track at full size (the load tests' memory per
/// participant is mostly this).
pub const CACHE_PACKETS: usize = 512;

/// `P` is whatever the engine keeps of a packet; cloning it should be a reference count.
#[derive(Debug)]
pub struct PacketCache<P> {
    slots: Box<[Option<(u16, P)>]>,
}

impl<P: Clone> Default for PacketCache<P> {
    fn default() -> Self {
        Self::with_capacity(CACHE_PACKETS)
    }
}

impl<P: Clone> PacketCache<P> {
    /// `capacity` must be a power of two no larger than 32768 (half the sequence space).
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(
            capacity.is_power_of_two() && capacity <= 32_768,
            "bad packet cache capacity {capacity}"
        );
        Self {
            slots: vec![None; capacity].into_boxed_slice(),
        }
    }

    /// Where `seq` is kept (what a parallel table of the same capacity indexes by).
    pub fn slot(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// How many packets it keeps.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keeps `packet`, replacing the packet that
    /// was `capacity` sequence numbers before it.
    pub fn insert(&mut self, seq: u16, packet: P) {
        let i = self.slot(seq);
        self.slots[i] = Some((seq, packet));
    }

    /// The packet with this sequence number, if it is still held.
    pub fn get(&self, seq: u16) -> Option<&P> {
        match &self.slots[self.slot(seq)] {
            Some((s, p)) if *s == seq => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn keeps_the_last_packets_and_forgets_older_ones() {
        let mut c = PacketCache::with_capacity(8);
        for seq in 65_530u16..=65_535 {
            c.insert(seq, Bytes::from(vec![seq as u8]));
        }
        for seq in 0u16..6 {
            c.insert(seq, Bytes::from(vec![seq as u8]));
        }
        // Wrapped around: the newest 8 are 65534, 65535, 0..5.
        assert_eq!(c.get(65_535).map(|b| b[0]), Some(255));
        assert_eq!(c.get(5).map(|b| b[0]), Some(5));
        assert!(c.get(65_533).is_none(), "overwritten by seq 3");
        assert!(c.get(100).is_none(), "never seen");
    }
}
