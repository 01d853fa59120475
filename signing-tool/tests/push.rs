//! `hale-sign push` against a server that cannot take several root versions in one publish.
//! (The pushes to a real hale-server are in tests/tests/e2e/push_roots.rs.)
//!
//! A hale-server older than `"root_chain"` (its `GET /api/v1/publish` answers only the
//! publisher) ignores a publish body's `roots`: a chain sent to it would publish the roles and
//! drop the roots. push refuses before any request that changes the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;

/// An older hale-server on loopback, as far as push sees it: the publisher's name without
/// `root_chain`, `root` served as its `root.json`, nothing published (`timestamp.json` 404).
/// Every request line it got.
fn older_server(root: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let request = line.trim_end().to_string();
            log.lock().unwrap().push(request.clone());
            let (status, answer): (&str, Vec<u8>) = match request.as_str() {
                "GET /api/v1/publish HTTP/1.1" => ("200 OK", br#"{"publisher":"alice"}"#.to_vec()),
                "GET /root.json HTTP/1.1" => ("200 OK", root.clone()),
                r if r.starts_with("GET ") => ("404 Not Found", b"{}".to_vec()),
                _ => ("500 Internal Server Error", b"{}".to_vec()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                answer.len()
            );
            let _ = stream.write_all(&answer);
        }
    });
    (url, seen)
}

#[test]
fn push_refuses_a_root_chain_to_a_server_that_takes_one_root_per_publish() {
    let env = Env::new();
    env.published_repo();
    // root v2 (root-c out) and v3 (threshold 1), published here
    env.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--remove-key",
        "root-c.pub",
    ]);
    env.sign("repo/staged/root.json", "root-a");
    env.sign("repo/staged/root.json", "root-b");
    env.publish();
    env.ok(&["rotate", "repo", "--role", "root", "--threshold", "1"]);
    env.sign("repo/staged/root.json", "root-a");
    env.sign("repo/staged/root.json", "root-b");
    env.publish();
    let before = snapshot_tree(&env.path("repo"));

    let (server, seen) =
        older_server(std::fs::read(env.path("repo/repository/1.root.json")).unwrap());
    let r = env.run(&["push", "repo", "--server", &server, "--token-env", PW_ENV]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: refusing to push repo: the server lacks 2 root versions (v2, v3), which go in \
             one publish, and this server takes one root per publish (a hale-server older than \
             this hale-sign): upgrade it first (nothing sent)"
        ),
        "{}",
        r.stdout
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|r| r.starts_with("GET ")),
        "only reads: {seen:?}"
    );
    assert!(
        snapshot_tree(&env.path("repo")) == before,
        "the working directory is unchanged"
    );
}
