use super::*;

/// A short churn run: 40 nodes, 240 virtual seconds, a partition at 80–130 s.
fn small(seed: u64) -> Params {
    Params {
        secs: 240,
        quiet_secs: 90,
        links: 12,
        stops_per_min: 8.0,
        down_secs: 30,
        partition: Some((80, 130, 0.3)),
        policies_per_min: 20.0,
        ..Params::churn(40, seed)
    }
}

#[test]
fn the_model_behaves_as_the_real_table() {
    for seed in [1, 2, 3] {
        let p = small(seed);
        let real = run::<Real>(&p);
        let model = run::<Model>(&p);
        assert_eq!(
            real, model,
            "seed {seed}: the model parted from liveness::Table"
        );
    }
}

#[test]
fn a_churned_network_converges_and_measures_what_happened() {
    let r = run::<Real>(&small(7));
    assert!(r.converged(), "{r:?}");
    assert!(!r.detect_ms.is_empty() && !r.rejoin_ms.is_empty(), "{r:?}");
    assert!(!r.policy_ms.is_empty(), "{r:?}");
    assert!(r.heal_ms.is_some(), "the partition never healed: {r:?}");
    assert_eq!(r.false_deaths, 0, "{r:?}");
    assert!(r.across_partition > 0, "{r:?}");
    // A silent cut is found by a ping (30 s + 10 s) and a probe (5 s); it
    // then spreads by gossip.
    assert!(quantile(&r.detect_ms, 1.0) < 60_000, "{:?}", r.detect_ms);
    assert!(r.links_max <= 2 * 12, "{r:?}");
}

#[test]
fn runs_are_deterministic_and_seeds_differ() {
    let p = small(11);
    let a = run::<Model>(&p);
    assert_eq!(a, run::<Model>(&p));
    assert_ne!(a, run::<Model>(&small(12)));
}

#[test]
fn three_hundred_nodes_converge_after_churn_and_a_partition() {
    let p = Params {
        secs: 300,
        quiet_secs: 120,
        partition: Some((90, 150, 0.3)),
        ..Params::churn(300, 5)
    };
    let r = run::<Model>(&p);
    assert!(r.converged(), "{r:?}");
    assert!(r.heal_ms.is_some(), "{r:?}");
    assert!(r.detect_ms.len() >= 5, "{r:?}");
    assert!(r.links_max <= 2 * p.links, "{r:?}");
}
