//! `TargetFile::verify_digest` (a length and SHA-256 computed ahead) answers exactly as
//! `verify_bytes` on the bytes themselves, or declines (`None`) when another hash is listed.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use hale_core::crypto::sha256;
use hale_core::json::parse;
use hale_core::metadata::{FileDigest, TargetFile};
use hale_core::Name;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn digest_answers_as_the_bytes_do() {
    let file = b"firmware image bytes".to_vec();
    let good = hex(&sha256(&file));
    let other = hex(&sha256(b"something else"));
    let len = file.len();
    let entries = [
        format!(r#"{{"length":{len},"hashes":{{"sha256":"{good}"}}}}"#),
        format!(r#"{{"length":{len},"hashes":{{"sha256":"{other}"}}}}"#),
        format!(r#"{{"length":{},"hashes":{{"sha256":"{good}"}}}}"#, len + 1),
        format!(r#"{{"length":{},"hashes":{{"sha256":"{good}"}}}}"#, len - 1),
        format!(r#"{{"length":{len},"hashes":{{"sha256":"zz"}}}}"#),
        format!(
            r#"{{"length":{len},"hashes":{{"sha256":"{}"}}}}"#,
            &good[..10]
        ),
        format!(r#"{{"length":{len},"hashes":{{"md5":"{good}"}}}}"#),
        format!(r#"{{"length":{len},"hashes":{{"sha256":"{good}","sha512":"{good}{good}"}}}}"#),
        format!(r#"{{"length":{len},"hashes":{{"sha512":"{good}{good}"}}}}"#),
        format!(r#"{{"length":{len},"hashes":{{"sha256":1}}}}"#),
        format!(r#"{{"length":{len},"hashes":{{"sha256":"{good}","sha256":"{good}"}}}}"#),
    ];
    let digest = FileDigest::of(&file);
    let mut decided = 0;
    for e in &entries {
        let v = parse(e.as_bytes()).unwrap();
        let t = TargetFile::parse(&v.as_object().unwrap(), Name::new("targets")).unwrap();
        let what = Name::new("pump-a/firmware.bin");
        let by_bytes = t.verify_bytes(&file, what);
        match t.verify_digest(&digest, what) {
            Some(r) => {
                assert_eq!(r, by_bytes, "{e}");
                decided += 1;
            }
            None => assert!(
                e.contains("sha512"),
                "declined only when sha512 is listed: {e}"
            ),
        }
    }
    assert_eq!(decided, entries.len() - 2);
}
