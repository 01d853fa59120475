//! Shared fixtures: a signed repository (hale-tests' RepoSim, built with hale-repo), an
//! in-memory transport over its files, and a provisioned pump on simulated flash.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use device_agent::host::CheckBuffers;
use device_agent::memflash::MemFlash;
use device_agent::{
    Application, DeferReason, DeviceInfo, FirmwareStore, Image, Layout, Outcome, Transport,
    Workspace,
};
use hale_core::{Role, Version};
use hale_tests::RepoSim;
pub use hale_tests::NOW;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const TARGET: &str = "pump-a/firmware.bin";
pub const ERASE: usize = 1024;
pub const LAYOUT: Layout = Layout::contiguous(0, 8 * 1024, 16 * 1024);

pub type Flash<'a> = MemFlash<'a, ERASE>;

pub fn device() -> DeviceInfo<'static> {
    DeviceInfo {
        model: "pump-a",
        revision: "r2",
        bootloader: Version::new(1, 2, 0),
        target: TARGET,
        rollback_target: None,
    }
}

/// A firmware image: deterministic bytes that name their version.
pub fn image_bytes(version: &str, len: usize) -> Vec<u8> {
    let mut v = format!("HALE-FW {version}\n").into_bytes();
    let mut x: u32 = 0x1234_5678 ^ version.len() as u32;
    while v.len() < len {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.push((x >> 24) as u8);
    }
    v
}

pub fn custom(version: &str, counter: u64, model: &str) -> Value {
    json!({"hardware": [{"model": model, "revisions": ["r1", "r2"]}], "version": version, "security_counter": counter, "min_bootloader": "1.0.0"})
}

pub fn image_record(bytes: &[u8], version: &str, counter: u64) -> Image {
    Image {
        version: Version::parse(version).unwrap(),
        security_counter: counter,
        length: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
    }
}

/// A repository whose targets list `TARGET` as `version`.
pub fn repo_with(version: &str, counter: u64, len: usize) -> RepoSim {
    let mut sim = RepoSim::new();
    publish(&mut sim, version, counter, len, "pump-a");
    sim
}

pub fn publish(sim: &mut RepoSim, version: &str, counter: u64, len: usize, model: &str) {
    sim.add_target(
        "targets",
        TARGET,
        &image_bytes(version, len),
        Some(custom(version, counter, model)),
    );
    sim.publish();
}

/// Serves a map of files; records every request; can fail target reads past a byte budget.
/// Takes requests asked ahead (`Transport::ask_ahead`), as the pump's HTTP transport does, and
/// holds the agent to their contract: the files asked for are fetched in the order asked (a
/// fetch of a file not asked for may come between: the HTTP transport reads past the answers
/// asked before it), and none is left when a target is fetched.
#[derive(Debug, Default)]
pub struct MapTransport {
    pub files: BTreeMap<String, Vec<u8>>,
    pub requests: Vec<String>,
    pub target_bytes: u64,
    pub fail_target_after: Option<u64>,
    /// Ask nothing ahead, as a device's transport (`asks_ahead` false).
    pub no_ahead: bool,
    /// Every request asked ahead, in order.
    pub asked: Vec<String>,
    /// Asked ahead and not fetched yet, oldest first.
    pub pending: Vec<String>,
    /// Asked ahead and never fetched, seen when a later ask replaced them (those still
    /// `pending` when a check ended are not in it).
    pub unread: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    TooLarge { name: String },
    Short { name: String },
    Cut,
}

impl MapTransport {
    pub fn new(files: &BTreeMap<String, Vec<u8>>) -> Self {
        MapTransport {
            files: files.clone(),
            ..Default::default()
        }
    }
}

impl Transport for MapTransport {
    type Error = MapError;
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, MapError> {
        if let Some(at) = self.pending.iter().position(|p| p == name) {
            assert_eq!(
                at, 0,
                "asked ahead for {:?}, then fetched {name} first",
                self.pending
            );
            self.pending.remove(0);
        }
        self.requests.push(name.to_string());
        let Some(f) = self.files.get(name) else {
            return Ok(None);
        };
        if f.len() > buf.len() {
            return Err(MapError::TooLarge { name: name.into() });
        }
        buf[..f.len()].copy_from_slice(f);
        Ok(Some(f.len()))
    }
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), MapError> {
        assert!(
            self.pending.is_empty(),
            "asked ahead for {:?}, then fetched target {name}",
            self.pending
        );
        self.requests.push(format!("targets/{name}@{offset}"));
        if self
            .fail_target_after
            .is_some_and(|cap| self.target_bytes + buf.len() as u64 > cap)
        {
            return Err(MapError::Cut);
        }
        let f = self
            .files
            .get(&format!("targets/{name}"))
            .ok_or(MapError::Short { name: name.into() })?;
        let src = f
            .get(offset as usize..offset as usize + buf.len())
            .ok_or(MapError::Short { name: name.into() })?;
        buf.copy_from_slice(src);
        self.target_bytes += buf.len() as u64;
        Ok(())
    }
    fn asks_ahead(&self) -> bool {
        !self.no_ahead
    }
    fn ask_ahead(&mut self, names: &[&str]) {
        if self.no_ahead {
            return;
        }
        self.unread.append(&mut self.pending);
        for name in names {
            self.asked.push(name.to_string());
            self.pending.push(name.to_string());
        }
    }
}

#[derive(Debug, Default)]
pub struct Pump {
    pub therapy: bool,
}

impl Application for Pump {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        if self.therapy {
            Err(DeferReason::TherapyRunning)
        } else {
            Ok(())
        }
    }
}

/// Buffers for one check (the test repository's roles are small).
pub struct Bufs(CheckBuffers);

impl Bufs {
    pub fn new() -> Self {
        Bufs(CheckBuffers::new(4096, 256, 8192))
    }
    pub fn ws(&mut self) -> Workspace<'_> {
        self.0.workspace()
    }
}

/// Flash memory of a pump provisioned with v1.0.0 (counter 1) and the repository's root v1.
pub fn provisioned(sim: &RepoSim) -> Vec<u8> {
    let mut mem = vec![0u8; LAYOUT.end() as usize];
    let fw = image_bytes("1.0.0", 5000);
    FirmwareStore::provision(
        Flash::new(&mut mem),
        LAYOUT,
        &sim.initial_root(),
        &fw,
        image_record(&fw, "1.0.0", 1),
    )
    .unwrap();
    mem
}

/// The store on `mem`, opened as at power-up (`boot` not called yet).
pub fn open_store(mem: &mut [u8]) -> FirmwareStore<Flash<'_>> {
    FirmwareStore::open(Flash::new(mem), LAYOUT).unwrap()
}

/// The store on `mem` after one check against `sim` by an idle pump, which must succeed: on
/// `provisioned(&sim)`, a pump provisioned with v1.0.0 that has checked once against `sim`.
pub fn open_checked<'a>(mem: &'a mut [u8], sim: &RepoSim) -> FirmwareStore<Flash<'a>> {
    let mut store = open_store(mem);
    check_fresh(&mut store, &sim.files).unwrap();
    store
}

/// Everything the store persists, to assert "nothing changed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub slots: device_agent::Slots,
    pub metadata: Vec<Option<Vec<u8>>>,
    /// `issued` of the last rollback authorization used
    pub last_authorization: hale_core::UnixTime,
}

pub fn persisted(store: &mut FirmwareStore<Flash<'_>>) -> Persisted {
    let mut buf = vec![0u8; 8192];
    let metadata = Role::ALL
        .iter()
        .map(|r| {
            store
                .read_metadata(*r, &mut buf)
                .unwrap()
                .map(<[u8]>::to_vec)
        })
        .collect();
    Persisted {
        slots: store.slots(),
        metadata,
        last_authorization: store.last_authorization(),
    }
}

/// What a check returns, over `MapTransport` and simulated flash.
pub type CheckResult =
    Result<Outcome, device_agent::AgentError<MapError, device_agent::memflash::MemFlashError>>;

/// One check at `NOW` by an idle pump over a new transport serving `files` (its requests are not
/// kept).
pub fn check_fresh(
    store: &mut FirmwareStore<Flash<'_>>,
    files: &BTreeMap<String, Vec<u8>>,
) -> CheckResult {
    check(store, &mut MapTransport::new(files), &mut Pump::default())
}

pub fn check(
    store: &mut FirmwareStore<Flash<'_>>,
    t: &mut MapTransport,
    pump: &mut Pump,
) -> CheckResult {
    check_at(store, t, pump, NOW)
}

/// One check with `now` as the update start time.
pub fn check_at(
    store: &mut FirmwareStore<Flash<'_>>,
    t: &mut MapTransport,
    pump: &mut impl Application,
    now: i64,
) -> CheckResult {
    let mut bufs = Bufs::new();
    let r = device_agent::check_for_update(
        store,
        &device(),
        t,
        pump,
        &mut device_agent::NoRollback,
        now,
        bufs.ws(),
    );
    all_asks_read(t, &r);
    r
}

/// A check that ended well read every answer it asked for ahead (else it added a request).
pub fn all_asks_read(t: &MapTransport, r: &CheckResult) {
    if r.is_ok() {
        assert_eq!(
            (&t.pending, &t.unread),
            (&Vec::new(), &Vec::new()),
            "a check that ended well left an answer asked for ahead unread"
        );
    }
}

/// One check at `NOW` by the pump `device` describes (model, revision, bootloader, target path).
pub fn check_as(
    store: &mut FirmwareStore<Flash<'_>>,
    device: &DeviceInfo<'_>,
    t: &mut MapTransport,
    pump: &mut Pump,
) -> CheckResult {
    let mut bufs = Bufs::new();
    let r = device_agent::check_for_update(
        store,
        device,
        t,
        pump,
        &mut device_agent::NoRollback,
        NOW,
        bufs.ws(),
    );
    all_asks_read(t, &r);
    r
}

/// Rewrite every state record on `mem` in the format written before the last-check record
/// existed (as of commit b5ae37b): header byte 248.. zero, metadata, then the sha256 — no
/// last-check bytes. Built from the documented layout, not from the store's code.
pub fn strip_last_check_records(mem: &mut [u8]) {
    const HEADER: usize = 256;
    const CHECK: usize = 49;
    for base in LAYOUT.state {
        let base = base as usize;
        let len = LAYOUT.state_len as usize;
        let region = &mut mem[base..base + len];
        if &region[0..4] != b"HALS" {
            continue;
        }
        let u32_at = |r: &[u8], at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        let meta: usize = (0..4).map(|i| u32_at(region, 232 + 4 * i) as usize).sum();
        let check = match u32_at(region, 248) as usize {
            0 => 0,
            CHECK => CHECK,
            other => panic!("unknown last-check length {other}"),
        };
        let body = HEADER + meta;
        let digest: [u8; 32] = Sha256::digest(&region[..body + check]).into();
        assert_eq!(
            &region[body + check..body + check + 32],
            digest.as_slice(),
            "a valid record"
        );
        // (and no time floor: 6 was padding then)
        region[248..252].fill(0);
        region[6] = 0;
        let old: [u8; 32] = Sha256::digest(&region[..body]).into();
        region[body..body + 32].copy_from_slice(&old);
        region[body + 32..].fill(0xFF);
    }
}

/// An address on loopback where nothing listens, and what the system says to a connect there
/// (checked to be a refusal).
pub fn refused_addr() -> (std::net::SocketAddr, std::io::Error) {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = std::net::TcpStream::connect(down).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    (down, refused)
}
