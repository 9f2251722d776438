//! Which clusters answer for a table, and which of their operators to ask
//! first: from the `table` policies (clusters) and the `operator` policies
//! signed by their own key (members); live members first, this node first
//! of all. A `table` policy naming a cluster of which no operator is known
//! is left out (and said so), never a reason to fail the query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tarn_net::PeerId;

use super::scatter::Target;
use super::{Exec, ExecError, NodeError};
use crate::cluster::membership;
use crate::config::Service;

/// Spreads queries over each cluster's live members.
static SPIN: AtomicUsize = AtomicUsize::new(0);

impl Exec {
    /// The targets of a query over `db.table`, and the clusters left out
    /// because no operator of theirs is known.
    pub(super) fn route(
        &self,
        db: &str,
        table: &str,
    ) -> Result<(Vec<Target>, Vec<NodeError>), ExecError> {
        let me = self.me.peer;
        let (mut clusters, mut members) = self.mesh.with_view(|view| {
            let members: HashMap<String, Vec<PeerId>> = membership::clusters(view)
                .into_iter()
                .map(|(c, ms)| {
                    (
                        c,
                        ms.into_iter()
                            .map(|m| m.peer)
                            .filter(|p| *p != me)
                            .collect(),
                    )
                })
                .collect();
            (membership::holders(view, db, table), members)
        });
        // A table this operator holds counts even before its policy is out.
        let mine = self
            .store
            .as_ref()
            .is_some_and(|s| s.schema(db, table).is_some());
        if mine {
            clusters.insert(self.me.table_cluster());
            members.entry(self.me.table_cluster()).or_default().push(me);
        }
        let (known, unknown): (Vec<String>, Vec<String>) = clusters
            .into_iter()
            .partition(|c| members.get(c).is_some_and(|m| !m.is_empty()));
        let ignored: Vec<NodeError> = unknown
            .into_iter()
            .map(|cluster| NodeError {
                cluster,
                nodes: Vec::new(),
                message: "no operator of this cluster is known; its table policy is left out"
                    .into(),
            })
            .collect();
        if known.is_empty() {
            let why = if ignored.is_empty() {
                "no table policy names it".to_owned()
            } else {
                let names: Vec<&str> = ignored.iter().map(|e| e.cluster.as_str()).collect();
                format!("no operator of {} is known", names.join(", "))
            };
            return Err(ExecError::UnknownTable(format!(
                "no operator holds table {db}.{table} ({why})"
            )));
        }
        let spin = SPIN.fetch_add(1, Ordering::Relaxed);
        let targets = known
            .into_iter()
            .map(|c| {
                let all = members.remove(&c).unwrap_or_default();
                Target {
                    candidates: self.candidates(all, spin),
                    cluster: c,
                }
            })
            .collect();
        Ok((targets, ignored))
    }

    /// A cluster's members in the order to ask them: this node first (it
    /// answers without the network), then the live ones, then the others;
    /// rotated by `spin` to spread queries over the members.
    fn candidates(&self, mut all: Vec<PeerId>, spin: usize) -> Vec<PeerId> {
        let me = self.me.peer;
        let n = all.len().max(1);
        all.rotate_left(spin % n);
        let mut out: Vec<PeerId> = Vec::with_capacity(all.len());
        if all.contains(&me) && self.me.runs(Service::Operator) {
            out.push(me);
        }
        let alive = |p: &&PeerId| self.mesh.alive(p);
        out.extend(all.iter().filter(|p| **p != me).filter(alive));
        out.extend(all.iter().filter(|p| **p != me && !self.mesh.alive(p)));
        out
    }
}
