//! An acknowledged write survives `kill -9`.

use crate::harness::TestNode;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut node = TestNode::start(&["--stream-rows", "1000000", "--stream-ms", "3600000"]);
    for i in 0..20 {
        node.post(
            "lab",
            "batches",
            &format!("[{{\"i\": {i}}}, {{\"i\": {}}}]", i + 100),
        )
        .ok_json()
        .unwrap();
    }
    // Streamed rows are acknowledged before any batch is written.
    for i in 0..30 {
        node.put("lab", "streamed", "streaming", &format!("{{\"i\": {i}}}"))
            .ok_json()
            .unwrap();
    }
    node.kill();
    node.restart();
    assert_eq!(node.count("lab", "batches"), 40);
    assert_eq!(node.count("lab", "streamed"), 30);
    let (_, rows) = node.query("lab", "SELECT sum(i) FROM streamed");
    assert_eq!(rows[0][0], 29 * 30 / 2);
    // Replayed once, not again at the next start.
    node.kill();
    node.restart();
    assert_eq!(node.count("lab", "streamed"), 30);
    // The batch catalogue was rebuilt and stays consistent.
    let (_, rows) = node.query("almgm", "SELECT count(*), sum(rows) FROM tsd_info");
    assert_eq!(rows[0], [serde_json::json!(21), serde_json::json!(70)]);
    // Resending an acknowledged batch after the crash is still a duplicate.
    let a = node
        .post("lab", "batches", "[{\"i\": 0}, {\"i\": 100}]")
        .ok_json()
        .unwrap();
    assert_eq!(a["duplicate"], true);
}

#[test]
fn fsync_durability_works_end_to_end() {
    let mut node = TestNode::start(&["--durability", "fsync"]);
    node.post("lab", "f", "{\"i\": 1}").ok_json().unwrap();
    node.put("lab", "f", "streaming", "{\"i\": 2}")
        .ok_json()
        .unwrap();
    node.kill();
    node.restart();
    assert_eq!(node.count("lab", "f"), 2);
}
