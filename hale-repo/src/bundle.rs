//! Writing offline bundles (format and parsing: `hale_core::bundle`).

use crate::RepoError;

/// Encode `entries` (repository names → bytes) as one bundle file.
pub fn encode(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>, RepoError> {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let mut out = vec![0u8; hale_core::bundle::encoded_len(&refs)];
    let n = hale_core::bundle::write(&refs, &mut out)?.len();
    out.truncate(n);
    Ok(out)
}
