//! `hale-sign target add DIR`: add firmware targets (one with policy fields and an SBOM, or a
//! whole directory at once) to a targets role — routed into the right hashed bin when the role's
//! catalog is binned. Contents are copied to `repository/targets/<dir>/<sha256>.<name>`; the
//! role gets its next version, unsigned (its content changed: everyone signs again).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hale_core::metadata::{DelegatedRole, Envelope, Targets};
use hale_core::Name;
use hale_repo::build::{self, Profile};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::repository_dir;
use crate::durable::Batch;
use crate::state::State;
use crate::timings::Timings;

#[derive(Subcommand, Debug)]
pub enum TargetCmd {
    /// Add targets: --file PATH (repeatable) and/or --from-dir DIR.
    Add(AddArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// A file to add; repeatable.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Target name for the matching --file (default: the file's name); repeatable.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Add every file under this directory; target names are their relative paths.
    #[arg(long, value_name = "DIR")]
    from_dir: Option<PathBuf>,
    /// Prefix for target names from --from-dir (e.g. `pump-a/2.1.0/`).
    #[arg(long, value_name = "PREFIX", default_value = "")]
    name_prefix: String,
    /// The targets role to add to (routed into its hashed bins when it has them).
    #[arg(long, default_value = "targets")]
    role: String,
    /// Hardware model this firmware is for; pair each with --revisions. Repeatable.
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<String>,
    /// Comma-separated hardware revisions for the matching --model.
    #[arg(long = "revisions", value_name = "R1,R2")]
    revisions: Vec<String>,
    /// Firmware version (semver).
    #[arg(long = "version", value_name = "SEMVER")]
    fw_version: Option<String>,
    /// Security counter: devices never install below the highest they confirmed.
    #[arg(long, value_name = "N")]
    security_counter: Option<u64>,
    /// Minimum bootloader version (semver).
    #[arg(long, value_name = "SEMVER")]
    min_bootloader: Option<String>,
    /// The release's SBOM, added as its own target and named in custom.sbom.
    #[arg(long, value_name = "PATH")]
    sbom: Option<PathBuf>,
    /// Target name of the SBOM (default: next to the firmware, with the SBOM's file name).
    #[arg(long, value_name = "NAME")]
    sbom_name: Option<String>,
    /// Print phase timings as one JSON line on stderr (also HALE_SIGN_TIMINGS=1).
    #[arg(long)]
    timings: bool,
}

struct Input {
    src: PathBuf,
    name: String,
    custom: Option<Value>,
}

/// rust-tuf refuses a whole targets file over one of these characters in a target name.
const COMPAT_FORBIDDEN: &[char] = &[':', '\\', '<', '>', '"', '|', '?'];

fn check_name(name: &str, profile: Profile) -> anyhow::Result<()> {
    hale_core::metadata::check_target_path(name)
        .map_err(|e| anyhow::anyhow!("target name {name:?}: {e}"))?;
    if profile == Profile::Compat {
        if let Some(c) = name.chars().find(|c| COMPAT_FORBIDDEN.contains(c)) {
            bail!("compat profile: target name {name:?} contains {c:?}, which rust-tuf clients refuse");
        }
    }
    Ok(())
}

fn walk_dir(root: &Path, rel: &str, out: &mut Vec<(PathBuf, String)>) -> anyhow::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("{}: file name is not UTF-8", e.path().display()))?;
        let r = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e
            .file_type()
            .with_context(|| format!("{}", e.path().display()))?;
        if ft.is_dir() {
            walk_dir(root, &r, out)?;
        } else if ft.is_file() {
            out.push((e.path(), r));
        } else {
            // a link (to what? outside the directory, maybe) or a device, socket or pipe: left
            // out, the release would miss an image the engineer saw in the directory
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file"
            };
            bail!(
                "{}: {what}: --from-dir adds regular files and directories only; give it with \
                 --file, or copy the file in",
                e.path().display()
            );
        }
    }
    Ok(())
}

/// The `custom` policy object, checked by hale-core's firmware policy parser.
fn policy(a: &AddArgs, sbom_name: Option<&str>) -> anyhow::Result<Option<Value>> {
    let any = !a.models.is_empty()
        || a.fw_version.is_some()
        || a.security_counter.is_some()
        || a.min_bootloader.is_some()
        || a.sbom.is_some();
    if !any {
        return Ok(None);
    }
    if a.models.len() != a.revisions.len() {
        bail!(
            "give one --revisions per --model ({} models, {} revision lists)",
            a.models.len(),
            a.revisions.len()
        );
    }
    let mut hardware: Vec<Value> = Vec::new();
    for (m, r) in a.models.iter().zip(&a.revisions) {
        let revisions: Vec<&str> = r
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if revisions.is_empty() {
            bail!("--model {m}: --revisions {r:?} lists no revision: the image would install on no pump");
        }
        hardware.push(json!({"model": m, "revisions": revisions}));
    }
    let mut c = Map::new();
    c.insert("hardware".into(), json!(hardware));
    if let Some(v) = &a.fw_version {
        c.insert("version".into(), json!(v));
    }
    if let Some(n) = a.security_counter {
        c.insert("security_counter".into(), json!(n));
    }
    if let Some(v) = &a.min_bootloader {
        c.insert("min_bootloader".into(), json!(v));
    }
    if let Some(s) = sbom_name {
        c.insert("sbom".into(), json!(s));
    }
    let custom = Value::Object(c);
    let bytes = serde_json::to_vec(&custom)?;
    let parsed =
        hale_core::json::parse(&bytes).map_err(|e| anyhow::anyhow!("firmware policy: {e}"))?;
    let obj = parsed
        .as_object()
        .context("firmware policy is not an object")?;
    hale_core::policy::parse_firmware(Some(&obj))
        .map_err(|e| anyhow::anyhow!("refusing the firmware policy: {e}"))?;
    Ok(Some(custom))
}

/// Does a delegator of `role` delegate the path `name` to it (hale-core's path matching)?
fn delegated_paths_allow(state: &State, role: &str, name: &str) -> anyhow::Result<bool> {
    let hash: [u8; 32] = Sha256::digest(name.as_bytes()).into();
    for d in state.delegators_of(role) {
        let m = state.get(&d)?;
        let env = Envelope::parse(&m.bytes, &d).map_err(|e| anyhow::anyhow!("{d}: {e}"))?;
        let t =
            Targets::parse(&env.signed, Name::new(&d)).map_err(|e| anyhow::anyhow!("{d}: {e}"))?;
        let Some(dels) = t.delegations else { continue };
        if dels.succinct.is_some() {
            return Ok(true_bin(state, role, name));
        }
        for v in dels.roles.iter().flat_map(|r| r.iter()) {
            let Some(o) = v.as_object() else { continue };
            let Ok(r) = DelegatedRole::parse(&o, Name::new(&d)) else {
                continue;
            };
            if r.name.eq_str(role) && r.matches(name, &hash) == Some(true) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// For a bin role: is `name` routed to it?
fn true_bin(state: &State, role: &str, name: &str) -> bool {
    state
        .config
        .bins
        .as_ref()
        .is_some_and(|b| build::bin_for(name, b.bit_length, &b.prefix) == role)
}

pub fn run(cmd: TargetCmd) -> anyhow::Result<ExitCode> {
    let TargetCmd::Add(a) = cmd;
    let mut t = Timings::start("target add", a.timings);
    let mut state = t.time("load", || State::load_for_change(&a.dir))?;
    state.warn_demo();
    let profile = state.profile;
    let role_meta = state
        .get(&a.role)
        .with_context(|| format!("--role {}", a.role))?;
    if role_meta.kind() != "targets" {
        bail!(
            "--role {}: not a targets role (it is {:?})",
            a.role,
            role_meta.kind()
        );
    }
    if !a.names.is_empty() && a.names.len() != a.files.len() {
        bail!(
            "give one --name per --file ({} files, {} names)",
            a.files.len(),
            a.names.len()
        );
    }
    if a.sbom.is_some() && (a.files.len() != 1 || a.from_dir.is_some()) {
        bail!("--sbom belongs to one release: give exactly one --file with it");
    }
    let mut inputs: Vec<Input> = Vec::new();
    let mut sbom_target = None;
    if let Some(sbom) = &a.sbom {
        let fw_name = a.names.first().cloned().or_else(|| {
            a.files
                .first()
                .and_then(|f| f.file_name())
                .and_then(|n| n.to_str())
                .map(str::to_string)
        });
        let base = sbom
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: no file name", sbom.display()))?;
        let name = match (
            &a.sbom_name,
            fw_name.as_deref().and_then(|n| n.rsplit_once('/')),
        ) {
            (Some(n), _) => n.clone(),
            (None, Some((dir, _))) => format!("{dir}/{base}"),
            (None, None) => base.to_string(),
        };
        sbom_target = Some(name.clone());
        inputs.push(Input {
            src: sbom.clone(),
            name,
            custom: None,
        });
    }
    let custom = policy(&a, sbom_target.as_deref())?;
    for (i, f) in a.files.iter().enumerate() {
        let name = match a.names.get(i) {
            Some(n) => n.clone(),
            None => f
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .with_context(|| format!("{}: no file name", f.display()))?,
        };
        inputs.push(Input {
            src: f.clone(),
            name,
            custom: custom.clone(),
        });
    }
    if let Some(d) = &a.from_dir {
        let mut found = Vec::new();
        walk_dir(d, "", &mut found)?;
        if found.is_empty() {
            bail!("{}: no files", d.display());
        }
        inputs.extend(found.into_iter().map(|(src, rel)| Input {
            src,
            name: format!("{}{rel}", a.name_prefix),
            custom: custom.clone(),
        }));
    }
    if inputs.is_empty() {
        bail!("nothing to add: give --file PATH or --from-dir DIR");
    }
    let mut seen = BTreeSet::new();
    for i in &inputs {
        check_name(&i.name, profile)?;
        if !seen.insert(i.name.as_str()) {
            bail!("target {:?} is given twice", i.name);
        }
    }

    // route: the hashed bin when the role's catalog is binned, else the role itself
    let bins = state.config.bins.clone().filter(|b| b.from == a.role);
    let route = |name: &str| match &bins {
        Some(b) => build::bin_for(name, b.bit_length, &b.prefix),
        None => a.role.clone(),
    };
    if a.role != "targets" {
        for i in &inputs {
            if !delegated_paths_allow(&state, &a.role, &i.name)? {
                bail!("target {:?} is outside the paths delegated to role {} (clients would never look for it there)", i.name, a.role);
            }
        }
    }

    // A catalog binned before `bins` moved the delegator's own targets into the bins can still
    // list some in the delegator itself, where clients look before its delegations: that entry
    // would answer for the name whatever the bin lists. An input of such a name moves out of it.
    let mut unbinned: Option<Unbinned> = None;
    if let Some(b) = &bins {
        let mut body = state
            .next_body(&b.from)
            .with_context(|| format!("role {}", b.from))?;
        if let Some(listed) = body.get_mut("targets").and_then(Value::as_object_mut) {
            let moved: Vec<(String, Value)> = inputs
                .iter()
                .filter_map(|i| listed.remove(&i.name).map(|e| (i.name.clone(), e)))
                .collect();
            if !moved.is_empty() {
                unbinned = Some((b.from.clone(), body, moved));
            }
        }
    }

    // a release that replaces an entry with a firmware policy must state its own: without one,
    // every device would refuse the new image (checked before anything is copied)
    for i in inputs.iter().filter(|i| i.custom.is_none()) {
        let role = route(&i.name);
        let pointer = format!(
            "/targets/{}/custom",
            i.name.replace('~', "~0").replace('/', "~1")
        );
        // the entry devices find now: the delegator's own, if it lists the name, else the bin's
        let shadowing = unbinned
            .as_ref()
            .and_then(|(_, _, moved)| moved.iter().find(|(n, _)| *n == i.name))
            .map(|(_, e)| e.get("custom").cloned());
        let (role, old) = match shadowing {
            Some(custom) => (a.role.clone(), custom),
            None => {
                let Ok(body) = state.next_body(&role) else {
                    continue;
                };
                let old = body.pointer(&pointer).cloned();
                (role, old)
            }
        };
        let old = old.as_ref();
        if old.is_some_and(|c| c.get("version").is_some()) {
            bail!(
                "target {:?} in {role} has a firmware policy ({}); the new entry has none: give \
                 its --version, --model and --revisions (and --security-counter) again",
                i.name,
                old.map(Value::to_string).unwrap_or_default()
            );
        }
    }

    // hash and copy (one thread: creating files in one directory serialises on its lock anyway)
    let repo = repository_dir(&a.dir);
    let (entries, batch, copied) = hash_and_copy(&inputs, &repo, &mut t)?;
    t.time("copy", || batch.commit())
        .with_context(|| format!("copying target contents into {}", repo.display()))?;

    let build_start = Instant::now();
    let mut by_role: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (name, entry) in entries {
        by_role.entry(route(&name)).or_default().push((name, entry));
    }

    let mut meta_batch = Batch::new();
    let mut summary = Vec::new();
    let mut bodies = Vec::with_capacity(by_role.len() + 1);
    if let Some((from, body, moved)) = unbinned {
        for (name, _) in &moved {
            eprintln!(
                "note: target {name} was listed in {from} itself, where clients find it before \
                 its bin: removed there (the new entry goes into {})",
                route(name)
            );
        }
        let version = body.get("version").and_then(Value::as_u64).unwrap_or(0);
        summary.push(format!(
            "{from} v{version} (-{} moved to bins)",
            moved.len()
        ));
        bodies.push((from, body));
    }
    for (role, entries) in by_role {
        let mut body = state
            .next_body(&role)
            .with_context(|| format!("role {role}"))?;
        let targets = body
            .get_mut("targets")
            .and_then(Value::as_object_mut)
            .with_context(|| format!("{role}: metadata has no `targets` object"))?;
        let n = entries.len();
        for (name, entry) in entries {
            if targets.insert(name.clone(), entry).is_some() {
                eprintln!("note: target {name} replaced in {role}");
            }
        }
        let version = body.get("version").and_then(Value::as_u64).unwrap_or(0);
        bodies.push((role.clone(), body));
        summary.push(format!("{role} v{version} (+{n})"));
    }
    t.add("build", build_start.elapsed());
    t.time("write", || {
        state.stage_all(&mut meta_batch, bodies)?;
        meta_batch.commit()
    })
    .with_context(|| format!("staging metadata in {}", a.dir.display()))?;
    let shown = if summary.len() > 6 {
        format!("{} roles", summary.len())
    } else {
        summary.join(", ")
    };
    println!(
        "added {} target(s) ({copied} new content files) to {shown}; signatures cleared",
        inputs.len()
    );
    if let Some(s) = sbom_target {
        println!("sbom: {s}");
    }
    t.finish();
    Ok(ExitCode::SUCCESS)
}

/// The delegator of hashed bins that still lists some of the names being added itself: its
/// name, its next body without them, and the (name, entry) pairs taken out of it.
type Unbinned = (String, Value, Vec<(String, Value)>);

/// (target name, entry) for each input; replacements still to commit; new files written.
type Copied = (Vec<(String, Value)>, Batch, usize);

/// Hash each input and write its content under its consistent name.
///
/// The name holds the content's sha256, so new content is written straight to it (`create_new`:
/// no temporary file and rename per target). A name that already exists is re-hashed: equal
/// content is kept, anything else (a file cut short by a crash) is replaced atomically.
fn hash_and_copy(part: &[Input], repo: &Path, t: &mut Timings) -> anyhow::Result<Copied> {
    use std::io::Write as _;
    let mut batch = Batch::contents();
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    let mut out = Vec::with_capacity(part.len());
    let mut written = 0usize;
    for i in part {
        let hash_start = Instant::now();
        let bytes =
            std::fs::read(&i.src).with_context(|| format!("reading {}", i.src.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        t.add("hash", hash_start.elapsed());
        let copy_start = Instant::now();
        let rel = hale_repo::layout::target_path(&i.name, &sha, true)?;
        let dest = repo.join(&rel);
        if let Some(dir) = dest.parent() {
            if !made.contains(dir) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                made.insert(dir.to_path_buf());
            }
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
        {
            Ok(mut f) => {
                f.write_all(&bytes)
                    .with_context(|| format!("writing {}", dest.display()))?;
                written += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let same = std::fs::read(&dest)
                    .is_ok_and(|old| Sha256::digest(&old)[..] == Sha256::digest(&bytes)[..]);
                if !same {
                    batch.add(&dest, &bytes)?;
                    written += 1;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dest.display())),
        }
        t.add("copy", copy_start.elapsed());
        let mut entry = json!({"length": bytes.len(), "hashes": {"sha256": sha}});
        if let (Some(c), Some(o)) = (&i.custom, entry.as_object_mut()) {
            o.insert("custom".into(), c.clone());
        }
        out.push((i.name.clone(), entry));
    }
    Ok((out, batch, written))
}
