//! The watched directory: files in, archive/ or error/ out.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::harness::{LocalNode, wait_for};

fn node_with_fast_watch() -> LocalNode {
    LocalNode::start(|c| {
        c.watch.poll_ms = 50;
        c.watch.settle_ms = 1500;
    })
}

fn exists(p: &Path) -> Option<()> {
    p.exists().then_some(())
}

#[test]
fn files_are_loaded_archived_or_refused() {
    let node = node_with_fast_watch();
    let watch = node.data_dir().join("watch");
    let t = Duration::from_secs(20);
    std::fs::create_dir_all(&watch).unwrap();

    // A plain file.
    std::fs::write(watch.join("lab.files.json"), r#"[{"a": 1}, {"a": 2}]"#).unwrap();
    wait_for("lab.files.json archived", t, || {
        exists(&watch.join("archive/lab.files.json"))
    });
    assert_eq!(node.count("lab", "files"), 2);

    // A gzip file whose name carries source and hash; the same hash again is a duplicate.
    let gz = |rows: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(rows.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    std::fs::write(
        watch.join("lab.files.dev1.h42.none.json.gz"),
        gz("{\"a\": 3}\n{\"a\": 4}\n"),
    )
    .unwrap();
    wait_for("gz archived", t, || {
        exists(&watch.join("archive/lab.files.dev1.h42.none.json.gz"))
    });
    assert_eq!(node.count("lab", "files"), 4);
    std::fs::write(watch.join("lab.files.dev2.h42.json"), "{\"a\": 5}").unwrap();
    wait_for("duplicate archived", t, || {
        exists(&watch.join("archive/lab.files.dev2.h42.json"))
    });
    assert_eq!(node.count("lab", "files"), 4);
    let (_, rows) = node.query(
        "almgm",
        "SELECT source, file_hash FROM tsd_info WHERE file_hash = 'h42'",
    );
    assert_eq!(
        rows,
        [[serde_json::json!("dev1"), serde_json::json!("h42")]]
    );

    // Bad files go to error/ with the reason beside them.
    std::fs::write(watch.join("lab.files.json"), "[{\"a\": 1},]").unwrap();
    std::fs::write(watch.join("no-dots.json"), "{\"a\": 1}").unwrap();
    std::fs::write(watch.join("lab.files.src.h7.json"), "{\"a\": \"text\"}").unwrap();
    for name in ["lab.files.json", "no-dots.json", "lab.files.src.h7.json"] {
        let reason = watch.join(format!("error/{name}.err.txt"));
        wait_for(name, t, || exists(&reason));
        assert!(watch.join("error").join(name).exists());
        assert!(!std::fs::read_to_string(&reason).unwrap().trim().is_empty());
    }
    assert_eq!(node.count("lab", "files"), 4);
}

#[test]
fn a_file_being_written_is_not_read() {
    let node = node_with_fast_watch();
    let watch = node.data_dir().join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let path = watch.join("lab.slow.json");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"[").unwrap();
    // Keep writing, a row every 20 ms (well inside the 1.5 s settle time):
    // the watcher must wait for the file to stop changing.
    for i in 0..60 {
        f.write_all(format!("{}{{\"i\": {i}}}", if i > 0 { "," } else { "" }).as_bytes())
            .unwrap();
        f.flush().unwrap();
        assert!(
            path.exists(),
            "the file was taken while still being written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.write_all(b"]").unwrap();
    drop(f);
    wait_for("lab.slow.json archived", Duration::from_secs(20), || {
        exists(&watch.join("archive/lab.slow.json"))
    });
    assert_eq!(node.count("lab", "slow"), 60);
    assert!(!watch.join("error/lab.slow.json").exists());

    // Temporary names are never read; a rename makes the file visible.
    std::fs::write(watch.join("lab.slow.json.part"), "[{\"i\": 100}]").unwrap();
    std::fs::rename(
        watch.join("lab.slow.json.part"),
        watch.join("lab.slow.x.json"),
    )
    .unwrap();
    wait_for("renamed file archived", Duration::from_secs(20), || {
        exists(&watch.join("archive/lab.slow.x.json"))
    });
    assert_eq!(node.count("lab", "slow"), 61);
}

/// A writer that pauses longer than `settle_ms` is waited for: while it
/// holds the file open, and while the file ends in the middle of its JSON.
#[test]
fn a_paused_writer_is_waited_for() {
    let node = LocalNode::start(|c| {
        c.watch.poll_ms = 50;
        c.watch.settle_ms = 300;
        c.watch.incomplete_ms = 4_000;
    });
    let watch = node.data_dir().join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let t = Duration::from_secs(20);
    let pause = Duration::from_millis(1_500);

    // Still open, paused at a line boundary (what it holds so far is valid).
    let path = watch.join("lab.paused.json");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"{\"i\": 1}\n{\"i\": 2}\n").unwrap();
    f.flush().unwrap();
    std::thread::sleep(pause);
    assert!(path.exists(), "taken while its writer still held it open");
    f.write_all(b"{\"i\": 3}\n").unwrap();
    drop(f);
    wait_for("lab.paused.json archived", t, || {
        exists(&watch.join("archive/lab.paused.json"))
    });
    assert_eq!(node.count("lab", "paused"), 3);

    // Closed in the middle of an object, then finished by a second open.
    let path = watch.join("lab.paused.two.json");
    std::fs::write(&path, "[{\"i\": 10}, {\"i\"").unwrap();
    std::thread::sleep(pause);
    assert!(path.exists(), "taken while it ends mid-object");
    assert!(!watch.join("error/lab.paused.two.json").exists());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b": 11}]").unwrap();
    drop(f);
    wait_for("lab.paused.two.json archived", t, || {
        exists(&watch.join("archive/lab.paused.two.json"))
    });
    assert_eq!(node.count("lab", "paused"), 5);

    // A gzip stream cut short waits too; one never finished goes to error/
    // once it has not changed for incomplete_ms, with nothing stored.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b"{\"i\": 20}\n{\"i\": 21}\n").unwrap();
    let gz = e.finish().unwrap();
    let path = watch.join("lab.paused.three.json.gz");
    std::fs::write(&path, &gz[..gz.len() - 6]).unwrap();
    std::fs::write(watch.join("lab.paused.four.json"), "{\"i\": 30}\n{\"i\": 3").unwrap();
    std::thread::sleep(pause);
    assert!(path.exists(), "a gzip stream cut short was taken");
    std::fs::write(&path, &gz).unwrap();
    wait_for("lab.paused.three.json.gz archived", t, || {
        exists(&watch.join("archive/lab.paused.three.json.gz"))
    });
    let reason = watch.join("error/lab.paused.four.json.err.txt");
    wait_for("lab.paused.four.json refused", t, || exists(&reason));
    let reason = std::fs::read_to_string(reason).unwrap();
    assert!(reason.contains("middle of its JSON"), "{reason}");
    assert_eq!(node.count("lab", "paused"), 7);
}
