//! The read path as RFC 9110 says (ETag/If-None-Match, Range, HEAD), device reports, operations
//! endpoints, graceful shutdown, the audit chain and export.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use serde_json::json;
use sha2::Digest;

fn published() -> (Fixture, Server, Vec<u8>, String) {
    published_image(300_000)
}

/// A server with an image of `len` bytes published as `dir/fw.bin`, and the image's URL.
fn published_image(len: u32) -> (Fixture, Server, Vec<u8>, String) {
    let f = Fixture::new();
    let s = f.start();
    let fw: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(upload(&s, &f.token, &fw).unwrap().status, 200);
    let t = f.targets(1, &[("dir/fw.bin", &fw, None)], None);
    assert_eq!(
        publish(&s, &f.token, None, &[("targets", &t)])
            .unwrap()
            .status,
        200
    );
    let sha = hex::encode(sha2::Sha256::digest(&fw));
    let url = s.url(&format!("targets/dir/{sha}.fw.bin"));
    (f, s, fw, url)
}

#[test]
fn metadata_has_strong_etags_and_answers_304() {
    let (_f, s, _, _) = published();
    let r = get(&s.url("timestamp.json"));
    assert_eq!(r.status, 200);
    let etag = r.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong ETag: {etag}"
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r304 = request(
        "GET",
        &s.url("timestamp.json"),
        &[("If-None-Match", &etag)],
        None,
    )
    .unwrap();
    assert_eq!(r304.status, 304);
    assert!(r304.body.is_empty());
    assert_eq!(r304.header("etag"), Some(etag.as_str()));
    // weak comparison for If-None-Match, lists, and *
    for inm in [
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        assert_eq!(
            request(
                "GET",
                &s.url("timestamp.json"),
                &[("If-None-Match", &inm)],
                None
            )
            .unwrap()
            .status,
            304,
            "{inm}"
        );
    }
    assert_eq!(
        request(
            "GET",
            &s.url("timestamp.json"),
            &[("If-None-Match", "\"other\"")],
            None
        )
        .unwrap()
        .status,
        200
    );
    // versioned metadata is immutable
    assert_eq!(
        get(&s.url("1.snapshot.json")).header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    // HEAD: same headers, no body
    let h = request("HEAD", &s.url("timestamp.json"), &[], None).unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(h.body.is_empty());
    assert_eq!(get(&s.url("9.snapshot.json")).status, 404);
    assert_eq!(get(&s.url("../etc/passwd.json")).status, 404);
}

#[test]
fn targets_support_range_resume_416_and_head() {
    let (_f, s, fw, url) = published();
    let full = get(&url);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, fw);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").unwrap().to_string();
    let len = fw.len();

    // a resumed download: the first 100000 bytes, then the rest with If-Range
    let a = request("GET", &url, &[("Range", "bytes=0-99999")], None).unwrap();
    assert_eq!(a.status, 206);
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes 0-99999/{len}").as_str())
    );
    assert_eq!(a.body.len(), 100_000);
    let b = request(
        "GET",
        &url,
        &[("Range", "bytes=100000-"), ("If-Range", &etag)],
        None,
    )
    .unwrap();
    assert_eq!(b.status, 206);
    assert_eq!(
        b.header("content-range"),
        Some(format!("bytes 100000-{}/{len}", len - 1).as_str())
    );
    let mut joined = a.body.clone();
    joined.extend_from_slice(&b.body);
    assert_eq!(joined, fw);

    // suffix range
    let c = request("GET", &url, &[("Range", "bytes=-10")], None).unwrap();
    assert_eq!((c.status, c.body.as_slice()), (206, &fw[len - 10..]));
    // If-Range that does not match: the whole representation
    let d = request(
        "GET",
        &url,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
        None,
    )
    .unwrap();
    assert_eq!((d.status, d.body.len()), (200, len));
    // unsatisfiable: 416 with the current length
    let e = request("GET", &url, &[("Range", &format!("bytes={len}-"))], None).unwrap();
    assert_eq!(e.status, 416);
    assert_eq!(
        e.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    // several ranges or bad syntax are ignored: 200
    assert_eq!(
        request("GET", &url, &[("Range", "bytes=0-1,5-6")], None)
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        request("GET", &url, &[("Range", "bytes=9-1")], None)
            .unwrap()
            .status,
        200
    );
    // HEAD: length, no body, Range ignored
    let h = request("HEAD", &url, &[("Range", "bytes=0-9")], None).unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(len.to_string().as_str()));
    assert!(h.body.is_empty());
    // conditional GET of a target
    assert_eq!(
        request("GET", &url, &[("If-None-Match", &etag)], None)
            .unwrap()
            .status,
        304
    );
    // unknown or unpublished content: 404 (uploaded but unpublished content is not served)
    let extra = b"uploaded, never published".to_vec();
    upload(&s, &_f.token, &extra).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&extra));
    assert_eq!(get(&s.url(&format!("targets/{sha}.x"))).status, 404);
}

#[test]
fn device_reports_inventory_health_metrics_audit_and_shutdown() {
    let (f, mut s, _, _) = published();
    let report = json!({
        "slots": [{"name": "a", "version": "1.0.0", "state": "active"}, {"name": "b", "version": "0.9.0", "state": "inactive"}],
        "last_result": {"result": "deferred", "target": "dir/fw.bin", "version": "1.1.0", "reason": "insulin delivery in progress"},
    });
    let post = |id: &str, body: &serde_json::Value| {
        request(
            "POST",
            &s.url(&format!("api/v1/devices/{id}/report")),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(body).unwrap()),
        )
        .unwrap()
    };
    assert_eq!(post("pump-0001", &report).status, 204);
    assert_eq!(post("pump-0002", &json!({"slots": [{"name": "a", "version": "1.0.0", "state": "trial"}], "last_result": {"result": "reverted", "reason": "self-test failed"}})).status, 204);
    let bad = post(
        "pump-0003",
        &json!({"slots": [{"name": "a", "version": "1", "state": "active"}], "last_result": {"result": "exploded"}}),
    );
    assert_eq!(
        (bad.status, bad.json()["error"].as_str()),
        (400, Some("bad_report"))
    );
    assert_eq!(post("bad%2Fid", &report).status, 400);
    // ids no device certificate can name (hale-pki's rule): refused, nothing stored (the
    // inventory below holds the two reported above only)
    for id in ["pump:0005", "-pump-0005", ".pump-0005"] {
        let r = post(id, &report);
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"error": "bad_device_id", "message": format!(
                    "invalid device id {id:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -"
                )})
            )
        );
    }
    // an oversized report is refused on its Content-Length, before the body is read: send the
    // headers only and read the answer (writing the body could race the server's close)
    assert_eq!(
        status_of_headers_only(&s.base, "/api/v1/devices/pump-0004/report", 20_000),
        413
    );

    let inv = get(&s.url("api/v1/devices")).json();
    let devices = inv["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["device"], "pump-0001");
    assert_eq!(devices[0]["report"]["last_result"]["result"], "deferred");
    assert_eq!(devices[1]["report"]["last_result"]["result"], "reverted");
    let page = get(&s.url("api/v1/devices?limit=1")).json();
    assert_eq!(page["next"], "pump-0001");
    assert_eq!(
        get(&s.url("api/v1/devices?after=pump-0001")).json()["devices"][0]["device"],
        "pump-0002"
    );
    // a query that does not parse is the client's mistake, named as such (not "no such resource")
    for q in ["limit=abc", "limit=-1", "limit=99999999999999999999999"] {
        let r = get(&s.url(&format!("api/v1/devices?{q}")));
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"error": "bad_query", "message": "Invalid query string: `after` is an identifier (a number for the audit log), `limit` a whole number"})
            ),
            "{q}"
        );
    }

    let h = get(&s.url("healthz"));
    assert_eq!(
        (
            h.status,
            h.json()["status"].as_str(),
            h.json()["timestamp"].as_u64()
        ),
        (200, Some("ok"), Some(1))
    );
    let m = String::from_utf8(get(&s.url("metrics")).body).unwrap();
    assert!(
        m.contains("# TYPE hale_reports_total counter\nhale_reports_total 2\n"),
        "{m}"
    );
    assert!(m.contains("hale_publishes_accepted_total 1\n"));
    assert!(m.contains("hale_timestamp_version 1\n"));
    // the head of the audit chain, to anchor elsewhere; the first offline role's expiry
    let head = m
        .split("hale_audit_head_info{hash=\"")
        .nth(1)
        .and_then(|r| r.split_once("\"} 1\n"))
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| panic!("{m}"));
    let offline: i64 = m
        .split("\nhale_offline_metadata_expires_in_seconds ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    assert!(offline > 0, "{offline}");

    // graceful shutdown on SIGTERM
    assert!(s.terminate().success());

    // the audit chain verifies, and names the first record someone edited
    let data = f.data.to_str().unwrap();
    let out = run_bin(&["audit", "verify", "--data", data], &f.pass_file);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit chain OK: 5 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    with_store(&f.data, |store| {
        use hale_server::store::Store;
        let recs = store.audit_all().unwrap();
        let last: serde_json::Value = serde_json::from_slice(&recs.last().unwrap().1).unwrap();
        assert_eq!(last["hash"], head.as_str());
        let (seq, bytes) = &recs[3];
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(v["kind"], "report");
        v["detail"]["report"]["last_result"]["result"] = json!("installed");
        // rewrite record 3 in place, below the store's API (what an attacker with database
        // access would do)
        store
            .open_tree("audit")
            .unwrap()
            .insert(seq.to_be_bytes(), serde_json::to_vec(&v).unwrap())
            .unwrap();
        store.db().flush().unwrap();
    });
    let out = run_bin(&["audit", "verify", "--data", data], &f.pass_file);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: audit record 3 is broken: content does not match its hash (edited)"
    );

    // export: plain files a static server can serve, verified with a client after
    let out_dir = f.dir.path().join("export");
    // `export --out DIR`, which must succeed: what it said on stderr
    let export = |dir: &std::path::Path| {
        let out = run_bin(
            &["export", "--data", data, "--out", dir.to_str().unwrap()],
            &f.pass_file,
        );
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        said
    };
    export(&out_dir);
    for name in [
        "1.root.json",
        "timestamp.json",
        "1.snapshot.json",
        "1.targets.json",
    ] {
        assert!(out_dir.join(name).exists(), "{name}");
    }
    assert_eq!(
        std::fs::read(out_dir.join("1.targets.json")).unwrap(),
        std::fs::read(f.data.join("repo/metadata/1.targets.json")).unwrap()
    );
    // the export is a copy: a target file edited in place there leaves what the server serves
    // as it was
    fn files(d: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut exported = Vec::new();
    files(&out_dir.join("targets"), &mut exported);
    assert_eq!(exported.len(), 1, "{exported:?}");
    let mut served = Vec::new();
    files(&f.data.join("repo"), &mut served);
    assert!(
        served.iter().any(|(_, b)| *b == exported[0].1),
        "the blob is in the data dir"
    );
    std::fs::write(&exported[0].0, b"edited in the export").unwrap();
    let mut after = Vec::new();
    files(&f.data.join("repo"), &mut after);
    let changed: Vec<_> = after
        .iter()
        .zip(&served)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert_eq!(
        (changed, after.len()),
        (vec![], served.len()),
        "files of the data dir"
    );

    // an image a staged rollout holds back stays out of an export (a CDN would hand it to all)
    let name = exported[0]
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let sha = name.split_once('.').unwrap().0.to_string();
    std::fs::write(
        f.data.join("rollouts.json"),
        serde_json::to_vec(
            &json!([{"sha256": sha, "percent": 10, "by": "operator:olga", "updated_at": 1}]),
        )
        .unwrap(),
    )
    .unwrap();
    let held_dir = f.dir.path().join("export-held");
    let said = export(&held_dir);
    assert!(
        said.contains(
            "note: dir/fw.bin left out: its staged rollout is at 10 % (devices fetching from this export get it once the rollout ends and it is exported again)"
        ),
        "{said}"
    );
    let mut held = Vec::new();
    if held_dir.join("targets").exists() {
        files(&held_dir.join("targets"), &mut held);
    }
    assert_eq!(held, vec![], "no image exported");
    assert!(held_dir.join("1.targets.json").exists());

    // exported again over the export made before the rollout held it: its copy is removed
    let said = export(&out_dir);
    assert!(
        said.contains(
            "note: dir/fw.bin left out: its staged rollout is at 10 % (devices fetching from this \
             export get it once the rollout ends and it is exported again); the copy an earlier \
             export left here was removed (a CDN or reader that fetched it before keeps it)"
        ),
        "{said}"
    );
    assert!(!exported[0].0.exists(), "the earlier copy is gone");
    let mut left = Vec::new();
    files(&out_dir.join("targets"), &mut left);
    assert_eq!(left, vec![], "no image left in the export");
}

/// Send a POST's headers only (announcing `content_length` bytes) and return the status line's code.
#[test]
fn a_report_is_audited_when_it_says_something_new() {
    let (f, mut s, _, _) = published();
    let post = |body: &serde_json::Value| {
        request(
            "POST",
            &s.url("api/v1/devices/pump-0001/report"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(body).unwrap()),
        )
        .unwrap()
        .status
    };
    // (as stored: the server writes an absent last result as null)
    let idle = json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}], "last_result": null});
    // (therapy began while 1.1.0 was written: it waits in slot b, verified, not bootable)
    let deferred = json!({
        "slots": [
            {"name": "a", "version": "1.0.0", "state": "active"},
            {"name": "b", "version": "1.1.0", "state": "staging"}
        ],
        "last_result": {"result": "deferred", "target": null, "version": "1.1.0", "reason": "therapy running"},
    });
    // a polling pump: the same report three times, a change, the same again, then back
    for body in [&idle, &idle, &idle, &deferred, &deferred, &idle] {
        assert_eq!(post(body), 204);
    }
    // every report is stored (the latest stands) and counted
    let inv = get(&s.url("api/v1/devices")).json();
    assert_eq!(inv["devices"][0]["report"], idle);
    let m = String::from_utf8(get(&s.url("metrics")).body).unwrap();
    assert!(m.contains("hale_reports_total 6\n"), "{m}");
    assert!(s.terminate().success());
    // the audit holds the three that said something new, in order
    let reports: Vec<serde_json::Value> = with_store(&f.data, |store| {
        use hale_server::store::Store;
        store
            .audit_all()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
            .filter(|v| v["kind"] == "report")
            .map(|v| v["detail"]["report"].clone())
            .collect()
    });
    assert_eq!(reports, [idle.clone(), deferred, idle]);
}

fn status_of_headers_only(base: &str, path: &str, content_length: usize) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// A listener holds at most `max_connections` at once: a further client waits until one closes.
/// A connection on which nothing goes either way for `idle_timeout_secs` is closed, so clients
/// that connect and say nothing cannot hold a listener (review: a flood of quiet connections
/// on the enrollment listener used up the process's file descriptors, the device listener's
/// too).
#[test]
fn a_listener_holds_its_max_connections_and_closes_silent_ones() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let f = Fixture::with_config(json!({"max_connections": 2, "idle_timeout_secs": 3}));
    let s = f.start();
    let addr = s
        .base
        .strip_prefix("http://")
        .unwrap()
        .trim_end_matches('/');
    let t0 = Instant::now();
    let mut quiet: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .write_all(b"GET /1.root.json HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap();
    // the two quiet ones hold the listener: no answer yet
    third
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = third.read(&mut byte).unwrap_err();
    assert!(
        matches!(
            waited.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{waited:?}"
    );
    // after the idle timeout the server closes them, and the waiting client is answered
    for q in &mut quiet {
        q.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(q.read(&mut byte).unwrap(), 0, "closed by the server");
    }
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // the log says the listener was full
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert!(
        log.contains("listener holds its max_connections: new connections wait until one closes"),
        "{log}"
    );
}

/// The server's resident memory, in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// HTTP/2 clients that ask for an image and never read it (a window of 0) make the server hold
/// little: at most 8 streams a connection, each with a 64 KiB piece read ahead. With hyper's
/// defaults (200 streams) and 1 MiB pieces, each such connection held about 200 MiB, so a few
/// dozen unauthenticated connections to the plain listener could exhaust the server's memory
/// and stop updates, reports and enrollment for the whole fleet (review). A pump's one stream
/// at a time is not affected.
#[test]
fn http2_streams_that_never_read_hold_a_bounded_amount_of_memory() {
    let (_f, s, _fw, url) = published_image(4_000_000);
    let addr = s
        .base
        .strip_prefix("http://")
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let pid = s.child.id();
    let before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (after, status) = rt.block_on(async {
        let (mut held, mut clients) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut client, conn) = h2::client::Builder::new()
                // never room for the server to send a byte of a body
                .initial_window_size(0)
                .handshake::<_, bytes::Bytes>(tcp)
                .await
                .unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            for _ in 0..200 {
                // (the server's limit holds further streams back)
                let ready = std::future::poll_fn(|cx| client.poll_ready(cx));
                match tokio::time::timeout(std::time::Duration::from_millis(500), ready).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
                let req = http::Request::get(url.as_str()).body(()).unwrap();
                let Ok((resp, _)) = client.send_request(req, true) else {
                    break;
                };
                held.push(resp);
            }
            clients.push(client);
        }
        // the answers' heads come; their bodies wait for a window that never opens
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        // (the first stream is answered: the server does serve HTTP/2)
        let first = held.swap_remove(0);
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), first)
            .await
            .unwrap()
            .unwrap()
            .status();
        drop((held, clients));
        (after, status)
    });
    let grown = after.saturating_sub(before);
    eprintln!("server RSS {before} KiB, then {after} KiB with 3 connections that never read");
    assert_eq!(status, http::StatusCode::OK);
    assert!(
        grown < 16 << 10,
        "the server grew {grown} KiB for 3 connections that never read"
    );
}
