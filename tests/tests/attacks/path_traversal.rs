//! Path traversal: role and target names become file names and URL paths on devices and
//! servers. Names that could leave their directory are refused before anything is fetched or
//! written.

use hale_core::{Error, Name};
use hale_repo::keys::KeyKind;
use hale_tests::*;

#[test]
fn rejects_delegated_role_name_that_climbs_out_of_the_metadata_directory() {
    for bad in ["../../etc/cron.d/x", "a/b", "..", "bad\\name"] {
        let mut r = RepoSim::new();
        r.delegate(
            "targets",
            bad,
            &["*"],
            false,
            vec![key("d", KeyKind::Ed25519)],
            1,
        );
        r.publish();
        let mut c = Client::new(r.initial_root());
        let err = c.download(&r.files, "fw.bin", NOW).unwrap_err();
        assert_eq!(
            err,
            ClientError::Trust(Error::UnsafeName {
                name: Name::new(bad)
            }),
            "{bad}"
        );
        // nothing was fetched for the bad role
        assert!(
            !c.fetched.iter().any(|f| f.contains(bad)),
            "{bad}: {:?}",
            c.fetched
        );
    }
}

#[test]
fn rejects_delegated_role_that_takes_a_top_level_role_name() {
    // stored by name, a delegated "root" would be confused with the trusted root (python-tuf
    // refuses such delegations too)
    for reserved in ["root", "timestamp", "snapshot", "targets"] {
        let mut r = RepoSim::new();
        r.delegate(
            "targets",
            "d",
            &["*"],
            false,
            vec![key("d", KeyKind::Ed25519)],
            1,
        );
        // the delegation entry (signed by targets) names the reserved role
        let roles = r.targets.delegations.as_mut().unwrap()["roles"]
            .as_array_mut()
            .unwrap();
        roles[0]["name"] = reserved.into();
        r.mark("targets");
        r.publish();
        let mut c = Client::new(r.initial_root());
        let err = c.download(&r.files, "fw.bin", NOW).unwrap_err();
        assert_eq!(
            err,
            ClientError::Trust(Error::UnsafeName {
                name: Name::new(reserved)
            }),
            "{reserved}"
        );
        // nothing delegated was fetched: the search stopped at the name
        let top = [
            "root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
        ];
        assert!(
            c.fetched.iter().all(|f| top.iter().any(|t| f.ends_with(t))),
            "{reserved}: {:?}",
            c.fetched
        );
    }
}

#[test]
fn rejects_target_path_that_climbs_out_of_the_target_directory() {
    let mut r = RepoSim::new();
    let entry = hale_repo::build::target_entry(b"payload", None);
    r.targets
        .targets
        .insert("../../boot/evil.bin".into(), entry);
    r.mark("targets");
    r.publish();
    let mut c = Client::new(r.initial_root());
    let err = c
        .download(&r.files, "../../boot/evil.bin", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::UnsafeName {
            name: Name::new("../../boot/evil.bin")
        })
    );
    // the metadata only: no download under targets/ was attempted (a fetch is logged even when
    // the file is missing)
    assert_eq!(
        c.fetched,
        [
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ]
    );
    assert!(!c.fetched.iter().any(|f| f.starts_with("targets/")));
}

#[test]
fn the_repository_writer_refuses_unsafe_target_paths() {
    for bad in ["/abs.bin", "a/../../b", "a\\b", "a//b", ""] {
        let err = hale_repo::layout::target_path(bad, "00", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            Error::UnsafeName {
                name: Name::new(bad)
            }
            .to_string(),
            "{bad}"
        );
    }
}
