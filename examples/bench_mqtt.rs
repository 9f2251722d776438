//! MQTT in (docs/BENCHMARKS.md): messages and rows a second from a
//! publisher on rumqttc into the node's own broker, and from a mosquitto
//! broker into a node's subscription, one row and 100 rows per message,
//! QoS 0 and 1; beside mosquitto's own throughput to `mosquitto_sub`, the
//! limit of this machine. Rows count once the node holds them (streaming
//! buffers journaled), which is when a QoS 1 message is acknowledged.
//!
//! ```sh
//! cargo run --release --example bench_mqtt            # needs mosquitto for the second part
//! cargo run --release --example bench_mqtt -- 400000  # messages of one row (default 200,000)
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tarn::client::Client;

/// Publishes `n` messages of `rows` rows on `topic`, as fast as the broker
/// takes them; returns once every one is sent (QoS 0) or acknowledged.
async fn publish(port: u16, topic: &str, n: usize, rows: usize, qos: QoS) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(format!("bench-{topic}-{n}"), "127.0.0.1", port);
    opts.set_inflight(1000)
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let topic = topic.to_owned();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(topic.clone(), qos, false, message(i, rows))
                .await?;
        }
        anyhow::Ok(client)
    });
    let (mut sent, mut acked) = (0, 0);
    loop {
        match events.poll().await? {
            Event::Outgoing(Outgoing::Publish(_)) => sent += 1,
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            _ => {}
        }
        let done = match qos {
            QoS::AtMostOnce => sent == n,
            _ => acked == n,
        };
        if done {
            break;
        }
    }
    let client = sender.await??;
    client.disconnect().await?;
    // Let the DISCONNECT (and for QoS 0 the last publishes) reach the wire.
    while let Ok(ev) = events.poll().await {
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(())
}

fn message(i: usize, rows: usize) -> Vec<u8> {
    if rows == 1 {
        return format!(
            r#"{{"ts": {}, "device": "d{}", "value": {}.5}}"#,
            1_700_000_000 + i,
            i % 100,
            i % 1000
        )
        .into_bytes();
    }
    let readings: Vec<String> = (0..rows)
        .map(|r| {
            format!(
                r#"{{"ts": {}, "value": {}.5}}"#,
                1_700_000_000 + i * rows + r,
                r
            )
        })
        .collect();
    format!(
        r#"{{"device": "d{}", "readings": [{}]}}"#,
        i % 100,
        readings.join(",")
    )
    .into_bytes()
}

/// The rows a message client of the node has stored so far.
fn rows_of(rest: &Client, id: u64) -> anyhow::Result<u64> {
    let all = rest
        .command("get msg clients where format = json", None)?
        .ok_json()?;
    all["clients"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == id))
        .and_then(|c| c["rows"].as_u64())
        .context("no such client")
}

fn run_client(rest: &Client, cmd: &str) -> anyhow::Result<u64> {
    let body = serde_json::json!({ "command": cmd }).to_string();
    let a = rest.post("/", &[], body.as_bytes())?;
    anyhow::ensure!(a.status == 200, "{cmd}: {}", a.body);
    a.body
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .context("no client id")
}

const TOPICS: &str = "topic = (name = bench/one/+ and dbms = bench and table = one and \
    column.ts.timestamp = \"bring [ts]\" and column.device.str = \"bring [device]\" and \
    column.value.float = \"bring [value]\") and topic = (name = bench/many/+ and dbms = bench \
    and table = many and column.ts.timestamp = \"bring [readings][][ts]\" and \
    column.device.str = \"bring [device]\" and column.value.float = \"bring [readings][][value]\")";

/// One line of the table: publishes, waits until the node holds the rows.
fn measure(
    rt: &tokio::runtime::Runtime,
    rest: &Client,
    client: u64,
    port: u16,
    n: usize,
    rows: usize,
    qos: QoS,
) -> anyhow::Result<()> {
    let before = rows_of(rest, client)?;
    let want = before + (n * rows) as u64;
    let kind = if rows == 1 { "one" } else { "many" };
    let topic = format!("bench/{kind}/{}", qos as u8);
    let t = Instant::now();
    rt.block_on(publish(port, &topic, n, rows, qos))?;
    let published = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut got = before;
    while got < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        got = rows_of(rest, client)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let lost = want.saturating_sub(got);
    println!(
        "{:<28} {rows:>4} {:>4} {n:>8} {:>10.0} {:>10.0} {:>8.2} {:>8.2}  {lost}",
        "device -> tarn broker",
        qos as u8,
        n as f64 / secs,
        (got - before) as f64 / secs,
        published.as_secs_f64(),
        secs
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let many = (n / 40).max(100);
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let cfg = tarn::Config {
        name: "bench".into(),
        data_dir: tmp.path().join("node"),
        rest: "127.0.0.1:0".parse()?,
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: false,
        mqtt: tarn::MqttConfig {
            listen: Some("127.0.0.1:0".parse()?),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = rt.block_on(tarn::Node::start(cfg))?;
    let rest = Client::new(&node.rest_url());
    let broker: String = rest
        .command("get local broker where format = json", None)?
        .ok_json()?["listening"]
        .as_str()
        .context("no broker")?
        .to_owned();
    let port: u16 = broker.rsplit(':').next().context("port")?.parse()?;
    let local = run_client(
        &rest,
        &format!("run msg client where broker = local and {TOPICS}"),
    )?;
    println!(
        "{:<28} {:>4} {:>4} {:>8} {:>10} {:>10} {:>8} {:>8}  lost",
        "path", "rows", "qos", "messages", "msg/s", "rows/s", "sent s", "rows s"
    );
    for (rows, count) in [(1, n), (100, many)] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            measure(&rt, &rest, local, port, count, rows, qos)?;
        }
    }

    if Command::new("mosquitto").arg("-h").output().is_err() {
        println!("mosquitto is not installed: no subscription or mosquitto_sub figures");
        return Ok(());
    }
    let mport = free_port()?;
    // Queues long enough for a burst: mosquitto's defaults (1,000 queued
    // and 20 in flight per client) drop QoS 1 messages of a fast burst.
    let conf = tmp.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {mport} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 1000\n"
        ),
    )?;
    let mut mosq = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    // The limit: mosquitto to its own subscriber.
    for (rows, count) in [(1, n), (100, many)] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let topic = format!("limit/{rows}/{}", qos as u8);
            let mut sub = Command::new("mosquitto_sub")
                .args([
                    "-p",
                    &mport.to_string(),
                    "-t",
                    &topic,
                    "-q",
                    &(qos as u8).to_string(),
                ])
                .args(["-C", &count.to_string()])
                .stdout(Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(300));
            let t = Instant::now();
            rt.block_on(publish(mport, &topic, count, rows, qos))?;
            let published = t.elapsed();
            let deadline = Instant::now() + Duration::from_secs(120);
            let done = loop {
                if let Some(s) = sub.try_wait()? {
                    break s.success();
                }
                if Instant::now() > deadline {
                    let _ = sub.kill();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{:<28} {rows:>4} {:>4} {count:>8} {:>10.0} {:>10.0} {:>8.2} {:>8.2}  {}",
                "mosquitto -> mosquitto_sub",
                qos as u8,
                count as f64 / secs,
                (count * rows) as f64 / secs,
                published.as_secs_f64(),
                secs,
                if done {
                    "0"
                } else {
                    "some (mosquitto_sub timed out)"
                }
            );
        }
    }
    let sub = run_client(
        &rest,
        &format!(
            "run msg client where broker = 127.0.0.1 and port = {mport} and qos = 1 and {}",
            TOPICS.replace("bench/", "remote/")
        ),
    )?;
    let connected = Instant::now() + Duration::from_secs(10);
    while Instant::now() < connected {
        let all = rest
            .command("get msg clients where format = json", None)?
            .ok_json()?;
        if all["clients"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["id"] == sub && c["connection"] == "Connected")
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (rows, count) in [(1, n), (100, many)] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let kind = if rows == 1 { "one" } else { "many" };
            let before = rows_of(&rest, sub)?;
            let want = before + (count * rows) as u64;
            let t = Instant::now();
            rt.block_on(publish(
                mport,
                &format!("remote/{kind}/{}", qos as u8),
                count,
                rows,
                qos,
            ))?;
            let published = t.elapsed();
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut got = before;
            // QoS 0 may drop what mosquitto cannot queue: stop when it stalls.
            let mut last = (got, Instant::now());
            while got < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                got = rows_of(&rest, sub)?;
                if got != last.0 {
                    last = (got, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{:<28} {rows:>4} {:>4} {count:>8} {:>10.0} {:>10.0} {:>8.2} {:>8.2}  {}",
                "mosquitto -> tarn client",
                qos as u8,
                (got - before) as f64 / rows as f64 / secs,
                (got - before) as f64 / secs,
                published.as_secs_f64(),
                secs,
                want.saturating_sub(got)
            );
        }
    }
    let _ = mosq.kill();
    let _ = mosq.wait();
    rt.block_on(node.shutdown())?;
    Ok(())
}
