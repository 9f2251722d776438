//! Where peers are: addresses learned outside libp2p's own behaviours (a
//! peer's signed liveness record, spread by gossip), offered to the swarm
//! whenever it dials that peer by id. This is what lets a node reach any
//! peer without being connected to it, or to everyone, beforehand. Bounded:
//! at most [`MAX_PEERS`] peers of [`MAX_ADDRS`] addresses each, the peers
//! heard of longest ago forgotten first.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Most peers whose addresses are kept.
pub(crate) const MAX_PEERS: usize = 100_000;
/// Most addresses kept for one peer.
pub(crate) const MAX_ADDRS: usize = 8;

#[derive(Default)]
pub(crate) struct Behaviour {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Insertion order, for forgetting the oldest when full (may hold
    /// peers set again since: those are skipped).
    order: VecDeque<PeerId>,
}

impl Behaviour {
    /// Replaces what is known of `peer`'s addresses.
    pub(crate) fn set(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        addrs.truncate(MAX_ADDRS);
        if addrs.is_empty() {
            self.addrs.remove(&peer);
            return;
        }
        if self.addrs.insert(peer, addrs).is_none() {
            self.order.push_back(peer);
        }
        while self.addrs.len() > MAX_PEERS {
            match self.order.pop_front() {
                Some(old) if old != peer => {
                    self.addrs.remove(&old);
                }
                Some(_) => self.order.push_back(peer),
                None => break,
            }
        }
        if self.order.len() > 2 * MAX_PEERS {
            let addrs = &self.addrs;
            self.order.retain(|p| addrs.contains_key(p));
        }
    }

    /// Addresses seen by the swarm (identify, a dial, mDNS): kept only for
    /// a peer the book knows nothing of, since a signed record says better.
    pub(crate) fn learn(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !self.addrs.contains_key(&peer) {
            self.set(peer, addrs);
        }
    }

    pub(crate) fn get(&self, peer: &PeerId) -> &[Multiaddr] {
        self.addrs.get(peer).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.addrs.keys()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|p| self.get(&p).to_vec()).unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        match ev {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_is_bounded_per_peer_and_forgets_empty_entries() {
        let mut b = Behaviour::default();
        let p = PeerId::random();
        let many: Vec<Multiaddr> = (0..20)
            .map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap())
            .collect();
        b.set(p, many);
        assert_eq!(b.get(&p).len(), MAX_ADDRS);
        b.set(p, Vec::new());
        assert!(b.get(&p).is_empty());
        assert_eq!(b.peers().count(), 0);
    }
}
