//! docs/envelope.md's Python reader reads what the library writes: the test takes the code
//! between the doc's markers, so the doc cannot drift from the format.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use layercache_core::envelope;
use layercache_core::{EntryOptions, JsonCodec, Timestamp};
use serde_json::{Value, json};

const DOC: &str = include_str!("../../../../docs/envelope.md");

/// The reader's code: the fenced block between the `python-reader` markers.
fn reader() -> String {
    let begin = DOC
        .find("<!-- python-reader:begin -->")
        .expect("begin marker");
    let end = DOC.find("<!-- python-reader:end -->").expect("end marker");
    let block = &DOC[begin..end];
    let code: Vec<&str> = block
        .lines()
        .skip_while(|l| !l.starts_with("```python"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(
        (5..=15).contains(&code.len()),
        "the reader is {} lines",
        code.len()
    );
    code.join("\n")
}

/// Runs the reader on `bytes`: its result as JSON, or the error it raised.
fn read_with_python(bytes: &[u8]) -> Result<Value, String> {
    let script = format!(
        "{}\n\nimport sys\ntry:\n    print(json.dumps(read_envelope(sys.stdin.buffer.read())))\n\
         except ValueError as e:\n    print(e, file=sys.stderr)\n    sys.exit(3)\n",
        reader()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the envelope doc's reader is tested with it)");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout).unwrap()),
        Some(3) => Err(stderr),
        _ => panic!("the reader crashed: {stderr}"),
    }
}

#[test]
fn the_python_reader_in_the_docs_reads_what_rust_writes() {
    let created = Timestamp::from_millis(1_767_225_600_000);
    let entry = EntryOptions::new(Duration::from_secs(60))
        .with_stale_ttl(Duration::from_secs(300))
        .with_tags(["user:42", "größe"])
        .entry(
            json!({"id": 42, "name": "Ada", "prices": [1.5, 2]}),
            created,
            Duration::from_micros(1_234),
        )
        .unwrap();
    let bytes = envelope::encode(&JsonCodec, &entry).unwrap();
    let expected = json!([
        {
            "created_at": 1_767_225_600_000u64,
            "fresh_until": 1_767_225_660_000u64,
            "stale_until": 1_767_225_960_000u64,
            "load_cost_us": 1_234,
            "tags": ["user:42", "größe"],
        },
        {"id": 42, "name": "Ada", "prices": [1.5, 2]},
    ]);
    assert_eq!(read_with_python(&bytes).unwrap(), expected);

    let tombstone = envelope::tombstone(created, created + Duration::from_secs(60));
    assert_eq!(read_with_python(&tombstone).unwrap(), Value::Null);

    let err = read_with_python(br#"{"not": "ours"}"#).unwrap_err();
    assert!(err.contains("not a layercache"), "{err}");
    let mut other_codec = bytes.clone();
    other_codec[4] = 2;
    assert!(read_with_python(&other_codec).is_err());
}

#[cfg(feature = "compression")]
#[test]
fn the_python_reader_refuses_compressed_payloads() {
    let entry = EntryOptions::new(Duration::from_secs(60))
        .entry(
            "layercache ".repeat(1_000),
            Timestamp::from_millis(1),
            Duration::ZERO,
        )
        .unwrap();
    let codec = envelope::Compressed::new(JsonCodec);
    let bytes = envelope::encode(&codec, &entry).unwrap();
    assert_eq!(bytes[envelope::FLAGS_OFFSET], envelope::FLAG_COMPRESSED);
    let err = read_with_python(&bytes).unwrap_err();
    assert!(err.contains("flags 0x2"), "{err}");
}
