//! How fast JSON bodies become rows: the same rows as one array, as NDJSON
//! and as objects one after another, parsed by the node's body parser.
//!
//! ```sh
//! cargo run --release --example bench_parse -- 64
//! ```
//! (the body size in MB; default 64, the node's default body limit).

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mb: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);
    let row = |i: usize| {
        format!(
            r#"{{"timestamp":"2024-05-01T10:{:02}:{:02}.{:03}Z","device":"dev-{:03}","m1":{}.25,"ok":true}}"#,
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000,
            i % 100,
            i % 977
        )
    };
    let mut rows = Vec::new();
    let mut size = 0;
    while size < mb << 20 {
        let r = row(rows.len());
        size += r.len() + 1;
        rows.push(r);
    }
    let bodies = [
        ("array", format!("[{}]", rows.join(","))),
        ("ndjson", rows.join("\n")),
        ("concatenated", rows.concat()),
    ];
    println!("{} rows, about {mb} MB a body; 2 runs each", rows.len());
    for (name, body) in &bodies {
        for _ in 0..2 {
            let t = Instant::now();
            let parsed = tarn::ingest::parse_body(body.as_bytes())?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(parsed.rows.len() == rows.len(), "{name}: rows lost");
            println!(
                "{name:>12}: {:.2} s, {:.0} rows/s, {:.0} MB/s",
                secs,
                rows.len() as f64 / secs,
                body.len() as f64 / 1e6 / secs
            );
        }
    }
    Ok(())
}
