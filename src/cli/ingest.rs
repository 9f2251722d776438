//! `tarn ingest`: sends a file (a JSON array, or one object per line) in
//! batches, with a progress bar on large inputs. Each batch is idempotent
//! on the node, so an interrupted ingest can simply be re-run. With several
//! nodes (members of one cluster), a batch whose node cannot be reached
//! goes to the next one.

use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::client::Client;

/// Sends batches to the first node that answers, and counts.
struct Sender {
    clients: Vec<Client>,
    current: usize,
    path: String,
    cluster: bool,
    bar: Option<indicatif::ProgressBar>,
    rows: usize,
    batches: usize,
    dups: usize,
    unconfirmed: usize,
}

impl Sender {
    fn send(&mut self, body: &[u8], n: usize) -> anyhow::Result<()> {
        // A node that cannot be reached: the next one takes the batch (the
        // batch's hash makes a re-send after a lost answer harmless).
        let mut tried = 0;
        let answer = loop {
            let c = &self.clients[self.current];
            match c.post(&self.path, &[("content-type", "application/json")], body) {
                Ok(a) => break a,
                Err(e) if tried + 1 < self.clients.len() => {
                    tried += 1;
                    let next = (self.current + 1) % self.clients.len();
                    eprintln!(
                        "tarn: {} failed ({e:#}); moving to {}",
                        c.base(),
                        self.clients[next].base()
                    );
                    self.current = next;
                }
                Err(e) => return Err(e),
            }
        };
        let v = answer
            .ok_json()
            .with_context(|| format!("batch {} refused", self.batches + 1))?;
        if self.cluster
            && v["replicas"]["confirmed"]
                .as_array()
                .is_none_or(|c| c.is_empty())
        {
            self.unconfirmed += 1;
        }
        self.batches += 1;
        if v["duplicate"].as_bool() == Some(true) {
            self.dups += 1;
        } else {
            self.rows += n;
        }
        if let Some(b) = &self.bar {
            b.inc(body.len() as u64);
            b.set_message(format!("{} rows", self.rows));
        }
        Ok(())
    }
}

/// The input and its length, if it is a file.
fn open(file: Option<&str>) -> anyhow::Result<(Box<dyn Read>, Option<u64>)> {
    Ok(match file {
        None | Some("-") => (Box::new(std::io::stdin()), None),
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
    })
}

fn progress(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    match total {
        Some(n) if n > 4 << 20 => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("the template is valid"),
            );
            Some(b)
        }
        _ => None,
    }
}

/// The first byte that is not white space, left unread.
fn first_byte(reader: &mut impl BufRead) -> anyhow::Result<Option<u8>> {
    loop {
        let buf = reader.fill_buf()?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                reader.consume(i);
                return Ok(Some(c));
            }
            None if buf.is_empty() => return Ok(None),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// One object per line, `batch_rows` lines a batch.
fn send_lines(
    reader: &mut impl BufRead,
    batch_rows: usize,
    sender: &mut Sender,
) -> anyhow::Result<()> {
    let mut body = Vec::with_capacity(1 << 20);
    let mut n = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read > 0 && !line.iter().all(u8::is_ascii_whitespace) {
            body.extend_from_slice(&line);
            if !line.ends_with(b"\n") {
                body.push(b'\n');
            }
            n += 1;
        }
        if (read == 0 && n > 0) || n >= batch_rows {
            sender.send(&body, n)?;
            body.clear();
            n = 0;
        }
        if read == 0 {
            return Ok(());
        }
    }
}

/// `tarn ingest`; `consistency` is `local` or `cluster`.
pub fn ingest(
    nodes: &[String],
    db: &str,
    table: &str,
    file: Option<&str>,
    batch_rows: usize,
    consistency: &str,
) -> anyhow::Result<()> {
    if batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    if nodes.is_empty() {
        bail!("give at least one --node");
    }
    if consistency != "local" && consistency != "cluster" {
        bail!("--consistency must be local or cluster, not {consistency:?}");
    }
    let (reader, total) = open(file)?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut sender = Sender {
        clients: nodes.iter().map(|n| Client::new(n)).collect(),
        current: 0,
        path: format!("/v1/data/{db}/{table}?consistency={consistency}"),
        cluster: consistency == "cluster",
        bar: progress(total),
        rows: 0,
        batches: 0,
        dups: 0,
        unconfirmed: 0,
    };
    let started = Instant::now();
    match first_byte(&mut reader)? {
        None => bail!("the input holds no rows"),
        Some(b'[') => {
            let all: Vec<serde_json::Value> = serde_json::from_reader(reader)
                .context("the input is not a JSON array of objects")?;
            for chunk in all.chunks(batch_rows) {
                sender.send(&serde_json::to_vec(chunk)?, chunk.len())?;
            }
        }
        Some(_) => send_lines(&mut reader, batch_rows, &mut sender)?,
    }
    if let Some(b) = sender.bar.take() {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    if sender.unconfirmed > 0 {
        eprintln!(
            "tarn: {} batches were stored on one node only (no other member confirmed them)",
            sender.unconfirmed
        );
    }
    eprintln!(
        "ingested {} rows into {db}.{table} in {} batches{} ({:.0} rows/s)",
        sender.rows,
        sender.batches,
        if sender.dups > 0 {
            format!(" ({} already stored)", sender.dups)
        } else {
            String::new()
        },
        sender.rows as f64 / secs.max(1e-9)
    );
    Ok(())
}
