//! What happens to the simulated nodes: ticks, lost links and probes, the
//! link manager, churn, publishing, the partition, and the goals checked.

use super::*;

impl<M: Member> Sim<M> {
    pub(super) fn lost(&mut self, i: usize, peer: usize) {
        if !self.nodes[i].links.contains(&(peer as u32)) {
            return;
        }
        self.unlink(i, peer);
        if !self.nodes[i].m.lost(peer) {
            return;
        }
        let now = self.now;
        let n = &mut self.nodes[i];
        n.probed.retain(|&(_, t)| now - t < PROBE_QUIET_MS);
        if n.probed.iter().any(|&(p, _)| p as usize == peer) {
            return;
        }
        n.probed.push((peer as u32, now));
        let epoch = n.epoch;
        // A peer that answers, or whose host refuses the dial (its
        // process is gone), is known within a round trip; a silent one
        // takes the probe's whole timeout.
        let refused = !self.nodes[peer].up
            && !self.nodes[peer].gone
            && self.cut.as_ref().is_none_or(|side| side[i] == side[peer]);
        let wait = if self.reachable(i, peer) || refused {
            2 * self.latency(i, peer)
        } else {
            PROBE_TIMEOUT.as_millis() as u32
        };
        self.in_ms(
            wait,
            Ev::Probed {
                at: i as u32,
                peer: peer as u32,
                epoch,
            },
        );
    }

    pub(super) fn probed(&mut self, i: usize, peer: usize) {
        if self.reachable(i, peer) && !self.rng.chance(self.p.loss) {
            // It answered: the probe's dial is a link again.
            self.link(i, peer, true);
            return;
        }
        self.nodes[i].probed.retain(|&(p, _)| p as usize != peer);
        if let Some(s) = self.nodes[i].m.probe_failed(peer, self.now) {
            self.say(i, s);
        }
    }

    /// When `at` notices that its link to `peer` went silent: its next
    /// ping on that link, plus the ping's timeout.
    pub(super) fn notice_silence(&mut self, at: usize, peer: usize) {
        let phase =
            (mix(self.p.seed ^ (at as u64) << 32, peer as u64) % PING_EVERY_MS as u64) as u32;
        let next = phase + (self.now.saturating_sub(phase)).div_ceil(PING_EVERY_MS) * PING_EVERY_MS;
        let epoch = self.nodes[at].epoch;
        let ev = Ev::Lost {
            at: at as u32,
            peer: peer as u32,
            epoch,
        };
        self.at(next.max(self.now) + PING_TIMEOUT_MS, ev);
    }

    /// Node `i`'s second: deaths, the pending announcement, a digest round
    /// every [`SYNC_EVERY`], a dead peer tried every 30 s, links and mesh.
    pub(super) fn tick(&mut self, i: usize) {
        let now = self.now;
        let epoch = self.nodes[i].epoch;
        self.in_ms(
            1000,
            Ev::Tick {
                at: i as u32,
                epoch,
            },
        );
        let died = self.nodes[i].m.tick(now);
        for p in died {
            if !self.reachable(i, p) {
                continue;
            }
            // Suspected while the partition stood, declared just after it
            // healed, before the refutation crossed: counted apart.
            let ripening = SUSPECT_FOR_MS as u32 + 2 * PROBE_TIMEOUT.as_millis() as u32;
            if self.healed_at.is_some_and(|h| now - h < ripening) {
                self.report.deaths_after_heal += 1;
            } else {
                self.report.false_deaths += 1;
            }
        }
        let ticks = self.nodes[i].ticks;
        self.nodes[i].ticks += 1;
        for key in std::mem::take(&mut self.nodes[i].unsent) {
            if !self.gossip(i, key, None) {
                self.nodes[i].unsent.push(key);
            }
        }
        if self.nodes[i].announce {
            self.nodes[i].announce = false;
            let own = self.nodes[i].m.own();
            self.say(i, own);
        }
        let sync_ticks = SYNC_EVERY.as_secs() as u32;
        if ticks.is_multiple_of(sync_ticks) && !self.nodes[i].links.is_empty() {
            let mut links = self.nodes[i].links.clone();
            links.sort_unstable();
            let round = (ticks / sync_ticks) as usize;
            let b = links[round % links.len()] as usize;
            self.sync(i, b);
        }
        if ticks % RETRY_DEAD_TICKS == RETRY_DEAD_TICKS - 1 {
            let dead = self.nodes[i].m.dead();
            if !dead.is_empty() {
                let pick = dead[(ticks / RETRY_DEAD_TICKS) as usize % dead.len()];
                if !self.link(i, pick, true) && self.nodes[i].links.contains(&(pick as u32)) {
                    self.sync(i, pick);
                }
            }
        }
        self.links(i, ticks);
        self.heartbeat(i);
    }

    /// The link manager: dial below half the target (4 a second), a new
    /// random link a minute, and close the surplus above the target.
    pub(super) fn links(&mut self, i: usize, ticks: u32) {
        let n = self.p.nodes;
        let mut dials = if self.nodes[i].links.len() < self.p.links / 2 {
            4
        } else {
            0
        };
        if ticks % 60 == 59 {
            dials += 1;
        }
        for _ in 0..dials * 2 {
            if dials == 0 {
                break;
            }
            let p = self.rng.below(n);
            if p == i
                || self.nodes[i].m.up(p) != Some(true)
                || self.nodes[i].links.contains(&(p as u32))
            {
                continue;
            }
            dials -= 1;
            self.link(i, p, true);
        }
        if self.nodes[i].links.len() > self.p.links {
            // Peers outside the gossip mesh first; a goodbye, no probe.
            let spare = self.outside_mesh(i);
            if let Some(&b) = spare.get(self.rng.below(spare.len().max(1))) {
                self.unlink(i, b as usize);
                self.unlink(b as usize, i);
            }
        }
    }

    /// Node `i`'s links that are not in its gossip mesh.
    fn outside_mesh(&self, i: usize) -> Vec<u32> {
        let node = &self.nodes[i];
        node.links
            .iter()
            .copied()
            .filter(|l| !node.mesh.contains(l))
            .collect()
    }

    /// Gossipsub's heartbeat: keep the mesh between D_low and D_high.
    pub(super) fn heartbeat(&mut self, i: usize) {
        let (d, low, high) = MESH;
        if self.nodes[i].mesh.len() < low {
            let mut spare = self.outside_mesh(i);
            while self.nodes[i].mesh.len() < d && !spare.is_empty() {
                let b = spare.swap_remove(self.rng.below(spare.len()));
                if self.nodes[b as usize].mesh.len() < high && self.nodes[b as usize].up {
                    self.nodes[i].mesh.push(b);
                    self.nodes[b as usize].mesh.push(i as u32);
                }
            }
        }
        while self.nodes[i].mesh.len() > high {
            let k = self.rng.below(self.nodes[i].mesh.len());
            let b = self.nodes[i].mesh.swap_remove(k);
            self.nodes[b as usize].mesh.retain(|&x| x as usize != i);
        }
    }

    pub(super) fn stop(&mut self) {
        let gap = self.rng.wait(60_000.0 / self.p.stops_per_min);
        if self.now + gap < self.busy_until() {
            self.in_ms(gap, Ev::Stop);
        }
        let i = self.rng.below(self.p.nodes);
        if !self.nodes[i].up || self.now + self.p.down_secs * 1000 >= self.busy_until() {
            return;
        }
        let roll = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let links = self.nodes[i].links.clone();
        if roll < self.p.graceful {
            let bye = self.nodes[i].m.leave(&self.w);
            self.say(i, bye);
            self.nodes[i].up = false;
            for l in links {
                self.unlink(l as usize, i);
            }
        } else {
            self.nodes[i].up = false;
            let silent = roll < self.p.graceful + self.p.silent;
            self.nodes[i].gone = silent;
            for l in links {
                let l = l as usize;
                if silent {
                    self.notice_silence(l, i);
                } else if self.nodes[l].up {
                    let d = self.latency(i, l);
                    let epoch = self.nodes[l].epoch;
                    self.in_ms(
                        d,
                        Ev::Lost {
                            at: l as u32,
                            peer: i as u32,
                            epoch,
                        },
                    );
                }
            }
        }
        let node = &mut self.nodes[i];
        node.links.clear();
        node.mesh.clear();
        self.goals.push(Goal::Down(i as u32, self.now));
        self.in_ms(self.p.down_secs * 1000, Ev::Restart { at: i as u32 });
    }

    pub(super) fn restart(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.up = true;
        node.gone = false;
        node.epoch += 1;
        node.m = M::start(&self.w, i, now);
        node.started = now;
        node.last_full = [None, None];
        node.probed.clear();
        node.announce = true;
        let epoch = node.epoch;
        self.in_ms(
            1000,
            Ev::Tick {
                at: i as u32,
                epoch,
            },
        );
        // Its bootstrap peers: a few running nodes.
        let mut tries = 0;
        while self.nodes[i].links.len() < 2 && tries < 64 {
            tries += 1;
            let p = self.rng.below(self.p.nodes);
            self.link(i, p, true);
        }
        self.heartbeat(i);
        self.goals.push(Goal::Up(i as u32, now));
    }

    pub(super) fn publish(&mut self) {
        let gap = self.rng.wait(60_000.0 / self.p.policies_per_min);
        if self.now + gap < self.busy_until() {
            self.in_ms(gap, Ev::Publish);
        }
        let i = self.rng.below(self.p.nodes);
        if !self.nodes[i].up {
            return;
        }
        let seq = self.nodes[i].heads[i] + 1;
        self.born[i].push(self.now);
        self.set_head(i, i, seq);
        let key = Key::Entry(i as u32, seq);
        if !self.gossip(i, key, None) {
            self.nodes[i].unsent.push(key);
        }
        self.goals.push(Goal::Policy(i as u32, seq, self.now));
    }

    pub(super) fn cut(&mut self) {
        let share = self.p.partition.map_or(0.0, |p| p.2);
        let side: Vec<bool> = (0..self.p.nodes).map(|_| self.rng.chance(share)).collect();
        self.cut = Some(side.clone());
        for a in 0..self.p.nodes {
            for b in self.nodes[a].links.clone() {
                if side[a] != side[b as usize] {
                    self.notice_silence(a, b as usize);
                }
            }
        }
    }

    /// Every 100 ms: which goals are met, and old gossip ids forgotten.
    pub(super) fn check(&mut self) {
        self.in_ms(CHECK_EVERY_MS, Ev::Check);
        let now = self.now;
        let goals = std::mem::take(&mut self.goals);
        let window = self
            .p
            .partition
            .map(|(from, until, _)| (from * 1000, until * 1000));
        let record = |report: &mut Report, pick: fn(&mut Report) -> &mut Vec<u32>, since: u32| {
            if window.is_some_and(|(from, until)| since <= until && now >= from) {
                report.across_partition += 1;
            } else {
                pick(report).push(now - since);
            }
        };
        for g in goals {
            let keep = match g {
                Goal::Down(p, since) => {
                    let p = p as usize;
                    if self.nodes[p].up {
                        self.report.missed += 1;
                        false
                    } else if self.running().all(|q| self.nodes[q].m.up(p) != Some(true)) {
                        record(&mut self.report, |r| &mut r.detect_ms, since);
                        false
                    } else {
                        true
                    }
                }
                Goal::Up(p, since) => {
                    let p = p as usize;
                    if !self.nodes[p].up {
                        false
                    } else if self.running().all(|q| self.nodes[q].m.up(p) == Some(true)) {
                        record(&mut self.report, |r| &mut r.rejoin_ms, since);
                        false
                    } else {
                        true
                    }
                }
                Goal::Policy(a, seq, since) => {
                    if self
                        .running()
                        .all(|q| self.nodes[q].heads[a as usize] >= seq)
                    {
                        record(&mut self.report, |r| &mut r.policy_ms, since);
                        false
                    } else {
                        true
                    }
                }
            };
            if keep {
                self.goals.push(g);
            }
        }
        if let Some(h) = self.healed_at
            && self.report.heal_ms.is_none()
            && self.all_views_right()
        {
            self.report.heal_ms = Some(now - h);
        }
        if now % 10_000 < CHECK_EVERY_MS {
            for m in &mut self.msgs {
                if now - m.born > SEEN_TTL_MS && !m.seen.is_empty() {
                    m.seen = Vec::new();
                    self.named.remove(&m.key);
                }
            }
        }
    }

    pub(super) fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.p.nodes).filter(|&q| self.nodes[q].up)
    }

    /// Every running node shows every running node up (early exit).
    pub(super) fn all_views_right(&self) -> bool {
        let up: Vec<usize> = self.running().collect();
        up.iter()
            .all(|&q| up.iter().all(|&p| self.nodes[q].m.up(p) == Some(true)))
    }

    pub(super) fn finish(mut self) -> Report {
        let n = self.p.nodes;
        let up: Vec<usize> = self.running().collect();
        let mut wrong = 0;
        for &q in &up {
            for p in 0..n {
                let shown = self.nodes[q].m.up(p) == Some(true);
                if shown != self.nodes[p].up {
                    wrong += 1;
                }
            }
        }
        let best: Vec<u32> = (0..n)
            .map(|a| {
                up.iter()
                    .map(|&q| self.nodes[q].heads[a])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.report.behind_ledgers = up.iter().filter(|&&q| self.nodes[q].heads != best).count();
        self.report.wrong_views = wrong;
        let links: Vec<usize> = up.iter().map(|&q| self.nodes[q].links.len()).collect();
        self.report.links_max = links.iter().copied().max().unwrap_or(0);
        self.report.links_mean = links.iter().sum::<usize>() as f64 / links.len().max(1) as f64;
        self.report
    }
}
