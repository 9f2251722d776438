//! Deterministic simulation of ledger sync: seeded gossip with loss,
//! reordering and a partition, then anti-entropy; every replica must end
//! with the same heads and the same view. A failure prints its seed.

use ed25519_dalek::SigningKey;

use crate::entry::Entry;
use crate::policy::Policy;
use crate::{AppendError, Ledger, MAX_BATCH, Op};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn canonical(p: &str) -> String {
    String::from_utf8(Policy::parse(p).unwrap().canonical()).unwrap()
}

/// Pulls from `from` everything `to` lacks; returns the entries moved.
fn anti_entropy(to: &mut Ledger, from: &Ledger) -> usize {
    let mut moved = 0;
    for (author, first) in to.wants(&from.heads()) {
        let mut next = first;
        loop {
            let batch = from.entries_from(&author, next, MAX_BATCH).unwrap();
            if batch.is_empty() {
                break;
            }
            for bytes in &batch {
                let e = Entry::verify_bytes(bytes).expect("entries on the wire verify");
                to.apply(&e).expect("in-order entries apply");
                moved += 1;
            }
            next += batch.len() as u64;
        }
    }
    moved
}

/// Ledger `a` to write and ledger `b` to read (`a != b`).
fn pair(ledgers: &mut [Ledger], a: usize, b: usize) -> (&mut Ledger, &Ledger) {
    if a < b {
        let (l, r) = ledgers.split_at_mut(b);
        (&mut l[a], &r[0])
    } else {
        let (l, r) = ledgers.split_at_mut(a);
        (&mut r[0], &l[b])
    }
}

fn run(seed: u64, nodes: usize, rounds: usize) {
    let mut rng = Rng(seed.max(1));
    let keys: Vec<SigningKey> = (0..nodes)
        .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
        .collect();
    let mut ledgers: Vec<Ledger> = (0..nodes).map(|_| Ledger::in_memory().unwrap()).collect();
    let mut inbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); nodes];
    let mut published: Vec<Vec<String>> = vec![Vec::new(); nodes];
    for round in 0..rounds {
        // A partition for the middle third of the run: even and odd nodes.
        let partitioned = round > rounds / 3 && round < 2 * rounds / 3;
        let n = rng.below(nodes as u64) as usize;
        let op = match rng.below(10) {
            0 if !published[n].is_empty() => {
                let i = rng.below(published[n].len() as u64) as usize;
                Op::Revoke {
                    id: published[n].remove(i),
                }
            }
            1 if !published[n].is_empty() => {
                let i = rng.below(published[n].len() as u64) as usize;
                let old = published[n].remove(i);
                let p = canonical(&format!(r#"{{"node": {{"name": "n{n}", "v": {round}}}}}"#));
                published[n].push(Policy::parse(&p).unwrap().id());
                Op::Put {
                    policy: p,
                    supersedes: Some(old),
                }
            }
            k => {
                // Some bodies collide across authors on purpose.
                let p = canonical(&format!(
                    r#"{{"table": {{"name": "t{}", "dbms": "d"}}}}"#,
                    k * round as u64 % 7
                ));
                published[n].push(Policy::parse(&p).unwrap().id());
                Op::Put {
                    policy: p,
                    supersedes: None,
                }
            }
        };
        let e = ledgers[n].append_local(&keys[n], op, round as u64).unwrap();
        for (to, inbox) in inbox.iter_mut().enumerate() {
            let cut = partitioned && to % 2 != n % 2;
            if to != n && !cut && rng.below(10) >= 3 {
                inbox.push(e.bytes().to_vec());
            }
        }
        // Deliver some of each inbox, in random order; gaps wait for sync.
        for (to, inbox) in inbox.iter_mut().enumerate() {
            let k = rng.below(inbox.len() as u64 + 1) as usize;
            for _ in 0..k {
                let i = rng.below(inbox.len() as u64) as usize;
                let bytes = inbox.swap_remove(i);
                let e = Entry::verify_bytes(&bytes).unwrap();
                match ledgers[to].apply(&e) {
                    Ok(_) | Err(AppendError::Gap { .. }) => {}
                    Err(other) => panic!("seed {seed}: {other}"),
                }
            }
        }
        // Occasional anti-entropy between two reachable nodes.
        if rng.below(4) == 0 {
            let (a, b) = (
                rng.below(nodes as u64) as usize,
                rng.below(nodes as u64) as usize,
            );
            if a != b && !(partitioned && a % 2 != b % 2) {
                let (x, y) = pair(&mut ledgers, a, b);
                anti_entropy(x, y);
            }
        }
    }
    // Heal: rounds of pairwise anti-entropy in a seeded order until quiet.
    for _ in 0..nodes * 2 {
        let mut moved = 0;
        for _ in 0..nodes * nodes {
            let (a, b) = (
                rng.below(nodes as u64) as usize,
                rng.below(nodes as u64) as usize,
            );
            if a == b {
                continue;
            }
            let (x, y) = pair(&mut ledgers, a, b);
            moved += anti_entropy(x, y);
        }
        if moved == 0 {
            break;
        }
    }
    let heads = ledgers[0].heads();
    for (i, l) in ledgers.iter().enumerate() {
        assert_eq!(l.heads(), heads, "seed {seed}: node {i} heads differ");
        assert_eq!(
            l.view(),
            ledgers[0].view(),
            "seed {seed}: node {i} view differs"
        );
        assert_eq!(l.len(), rounds, "seed {seed}: node {i} entry count");
    }
}

#[test]
fn sync_converges_under_loss_reordering_and_partition() {
    for seed in 1..=25 {
        run(seed * 7919, 6, 120);
    }
}
