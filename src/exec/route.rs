//! Which clusters answer for a table, and which of their operators to ask
//! first: from the `table` policies (clusters) and the `operator` policies
//! signed by their own key (members); live members first, this node first
//! of all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tarn_net::PeerId;

use super::scatter::Target;
use super::{Exec, ExecError};
use crate::cluster::membership;
use crate::config::Service;

/// Spreads queries over each cluster's live members.
static SPIN: AtomicUsize = AtomicUsize::new(0);

impl Exec {
    /// The targets of a query over `db.table`.
    pub(super) fn route(&self, db: &str, table: &str) -> Result<Vec<Target>, ExecError> {
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
        if clusters.is_empty() {
            return Err(ExecError::UnknownTable(format!(
                "no operator holds table {db}.{table} (no table policy names it)"
            )));
        }
        let spin = SPIN.fetch_add(1, Ordering::Relaxed);
        Ok(clusters
            .into_iter()
            .map(|c| {
                let mut all = members.remove(&c).unwrap_or_default();
                // A cluster of its own, before its operator's policy is here.
                if all.is_empty()
                    && let Some(p) = c.strip_prefix("node-").and_then(|p| p.parse().ok())
                {
                    all.push(p);
                }
                let n = all.len().max(1);
                all.rotate_left(spin % n);
                let mut candidates: Vec<PeerId> = Vec::with_capacity(all.len());
                if all.contains(&me) && self.me.runs(Service::Operator) {
                    candidates.push(me);
                }
                let alive = |p: &&PeerId| self.mesh.alive(p);
                candidates.extend(all.iter().filter(|p| **p != me).filter(alive));
                candidates.extend(all.iter().filter(|p| **p != me && !self.mesh.alive(p)));
                Target {
                    cluster: c,
                    candidates,
                }
            })
            .collect())
    }
}
