//! The deterministic simulation of membership and ledger sync at sizes one
//! machine cannot run for real (docs/SCALE.md): churn, loss, latency and a
//! partition in virtual time, with the node's own liveness rules.
//!
//! ```sh
//! cargo run --release --example sim_mesh -- 1000 10000
//! cargo run --release --example sim_mesh -- --real --secs 300 1000   # liveness::Table itself
//! ```
//!
//! Each size runs `Params::churn(n, seed)`: 600 virtual seconds, 24 links a
//! node, 1 % loss, 2–80 ms latency, 6 stops a minute (30 % silent cuts,
//! 30 % goodbyes, the rest crashes) each back after 40 s, 30 % of the nodes
//! cut off from 200 s to 290 s, 12 policies a minute, the last 120 s quiet.

use std::time::Instant;

use anyhow::{Context, bail};
use tarn::mesh::sim::{self, CLASSES, Model, Params, Real, Report};

fn main() -> anyhow::Result<()> {
    let mut sizes = Vec::new();
    let (mut real, mut seed, mut secs) = (false, 1u64, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--real" => real = true,
            "--seed" => seed = args.next().context("--seed needs a number")?.parse()?,
            "--secs" => secs = Some(args.next().context("--secs needs a number")?.parse()?),
            n => sizes.push(
                n.parse::<usize>()
                    .with_context(|| format!("not a size: {n}"))?,
            ),
        }
    }
    if sizes.is_empty() {
        bail!("usage: sim_mesh [--real] [--seed S] [--secs T] N...");
    }
    for n in sizes {
        let mut p = Params::churn(n, seed);
        if let Some(s) = secs {
            // Keep the shape: the partition in the middle, the end quiet.
            p.secs = s;
            p.quiet_secs = s / 5;
            p.partition = Some((s / 3, s / 3 + s * 3 / 20, 0.3));
        }
        let t = Instant::now();
        let r = if real {
            sim::run::<Real>(&p)
        } else {
            sim::run::<Model>(&p)
        };
        print(&p, &r, t.elapsed().as_secs_f64(), real);
    }
    Ok(())
}

fn ms(v: &[u32]) -> String {
    let q = |x| sim::quantile(v, x) as f64 / 1000.0;
    format!(
        "p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} cases)",
        q(0.5),
        q(0.99),
        q(1.0),
        v.len()
    )
}

fn print(p: &Params, r: &Report, wall: f64, real: bool) {
    let table = if real { "liveness::Table" } else { "model" };
    println!(
        "N = {} ({table}), seed {}, {} virtual s: {} events in {wall:.1} s",
        p.nodes, p.seed, p.secs, r.events
    );
    println!(
        "  stop shown everywhere:    {} (missed before restart: {})",
        ms(&r.detect_ms),
        r.missed
    );
    println!("  restart shown everywhere: {}", ms(&r.rejoin_ms));
    println!("  policy on every node:     {}", ms(&r.policy_ms));
    println!(
        "  partition healed in:      {} ({} timings overlapped it, left out above)",
        r.heal_ms.map_or("never".into(), |h| format!(
            "{:.1} s",
            f64::from(h) / 1000.0
        )),
        r.across_partition
    );
    println!(
        "  false deaths: {} (+{} in the seconds after the heal)",
        r.false_deaths, r.deaths_after_heal
    );
    println!(
        "  links per node: mean {:.1}, max {}; busiest second's repair: {:.0} B/node",
        r.links_mean, r.links_max, r.peak_repair_per_node
    );
    let per = r.per_node_per_sec(p.secs);
    let total: f64 = per.iter().sum();
    println!("  bytes/node/s received: {total:.0} in all");
    for (i, c) in CLASSES.iter().enumerate() {
        println!("    {c:<16} {:>8.1} B/s  {:>10} msgs", per[i], r.msgs[i]);
    }
    println!(
        "  end state: {} (wrong views {}, ledgers behind {})",
        if r.converged() {
            "converged"
        } else {
            "NOT converged"
        },
        r.wrong_views,
        r.behind_ledgers
    );
}
