//! How the agent reaches a repository: HTTP(S) on the host, anything on a device (a modem, a
//! serial link to a technician's tool, an in-memory bundle). Transport errors stay apart from
//! trust errors: a transport never decides anything.

/// Fetches repository files. Names are repository-relative: `2.root.json`, `timestamp.json`,
/// `7.snapshot.json`, and for targets `pump-a/<sha256>.fw.bin` (consistent snapshots).
pub trait Transport {
    /// Why a fetch failed (network, I/O). Kept apart from trust errors.
    type Error: core::fmt::Debug;

    /// Fetch metadata file `name` into `buf`, at most `buf.len()` bytes: a longer document must be
    /// refused with an error (endless data), not truncated. `Ok(None)` when the repository does
    /// not have the file (HTTP 404) — how the root chain ends.
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;

    /// Fill `buf` exactly with bytes `offset .. offset + buf.len()` of target file `name`. The
    /// agent asks for a download's blocks in order, so an HTTP transport can read them from one
    /// response (`Range: bytes=OFFSET-`, as the host's `HttpTransport` does) rather than make a
    /// request per block. The agent never asks past the length the trusted metadata lists.
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Whether the bytes come from a server (or a CDN, a proxy), which is likely to serve the
    /// same bytes again: then an image whose bytes failed their hashes is not downloaded again
    /// from the same snapshot for [`crate::agent::RETRY_WRONG_BYTES`], as every try erases and
    /// writes its slot. `false` for a source that carries its own bytes, such as an offline
    /// bundle a technician brings: it is always tried.
    fn remote(&self) -> bool {
        true
    }

    /// Whether [`ask_ahead`](Self::ask_ahead) does anything. The agent works out a request's
    /// name ahead only for a transport that takes it; for one that does not (a device's), that
    /// code is left out of the build.
    fn asks_ahead(&self) -> bool {
        false
    }

    /// Send the requests for metadata files `names` now, in that order, so that their answers
    /// travel while the agent checks what it already holds, or what named them; a later
    /// [`fetch_metadata`](Self::fetch_metadata) of one of them takes its answer. Answers asked
    /// for by an earlier call and not taken are dropped first. The agent asks ahead only for
    /// requests its workflow makes next, unless what it checks meanwhile ends the whole check
    /// (a stored root, a timestamp or a snapshot that fails its check, a flash that cannot be
    /// read): a check that goes on makes the same requests, some earlier. The names of the
    /// next root and the timestamp come from the stored root; the snapshot's and the targets'
    /// from the timestamp and snapshot just fetched, before their signature checks, whose
    /// answers are taken only after those verified (`docs/decisions.md`, "The pump asks for its
    /// next file while it checks"). A transport may ignore it, or ask for only the first few.
    /// One whose fetch comes much later, or is of a target, drops the answers unread and asks
    /// again.
    fn ask_ahead(&mut self, names: &[&str]) {
        let _ = names;
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    type Error = T::Error;
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        (**self).fetch_metadata(name, buf)
    }
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).fetch_target(name, offset, buf)
    }
    fn remote(&self) -> bool {
        (**self).remote()
    }
    fn asks_ahead(&self) -> bool {
        (**self).asks_ahead()
    }
    fn ask_ahead(&mut self, names: &[&str]) {
        (**self).ask_ahead(names)
    }
}
