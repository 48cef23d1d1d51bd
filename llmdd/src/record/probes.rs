//! Recordings read together (`llmdd report A.rec B.rec`) may have been made with different
//! `--probe` sets. Each recorder numbered its user probes from `funcs::USER_BASE` in its own
//! order, so the same id means different functions in different files. They are read here
//! against one table, the union of their probes: each file's ids are renumbered into it
//! before its records are decoded, and the union is what every view names. Two probes with
//! one label but different targets keep both, the later one's label suffixed with its
//! file's number.

use std::path::{Path, PathBuf};

use llmdd_common::funcs::{FuncId, USER_BASE};

use super::{
    frames::{Frames, Next},
    parse_with, read_bytes, Meta, Probes, RecordError, Recording,
};
use crate::userprobe::{UserProbe, MAX_LABEL};

/// Reads `paths` against one table of user probes (see the module), registered for the
/// whole run; `progress(file index, bytes done, bytes total)`.
pub fn read_all(
    paths: &[PathBuf],
    mut progress: impl FnMut(usize, u64, u64),
) -> Result<Vec<Recording>, RecordError> {
    let mut metas = Vec::with_capacity(paths.len());
    for p in paths {
        metas.push(meta_of(p)?);
    }
    let (union, maps) = union_of(&metas);
    if let Err(e) = crate::userprobe::register(&union) {
        tracing::warn!("the recordings' user probes: {e}");
    }
    let mut out = Vec::with_capacity(paths.len());
    for (i, (p, map)) in paths.iter().zip(&maps).enumerate() {
        let data = read_bytes(p)?;
        let size = data.len() as u64;
        let mut r = parse_with(
            p,
            &data,
            &mut |d, t| progress(i, d, t),
            Probes::Renumber(map),
        )?;
        progress(i, size, size);
        r.path = p.clone();
        out.push(r);
    }
    Ok(out)
}

/// The start metadata of a recording, streamed: frames are read until the metadata's (the
/// first one a writer writes), events chunks skipped unread.
fn meta_of(path: &Path) -> Result<Meta, RecordError> {
    let no_meta = || RecordError::NoMeta {
        path: path.to_path_buf(),
    };
    let mut frames = super::stream(path)?;
    loop {
        match frames.next(true) {
            Next::Frame {
                kind: super::KIND_META,
                raw: Some(raw),
            } => return serde_json::from_slice(&raw).map_err(|_| no_meta()),
            Next::Frame { .. } => {}
            Next::Stop(_) | Next::Done => return Err(no_meta()),
        }
    }
}

/// The union of the recordings' user probes, and for each recording the union index of each
/// of its probes.
pub fn union_of(metas: &[Meta]) -> (Vec<UserProbe>, Vec<Vec<FuncId>>) {
    let mut union: Vec<UserProbe> = Vec::new();
    let maps = metas
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.user_probes
                .iter()
                .map(|p| {
                    let at = union.iter().position(|u| u == p).unwrap_or_else(|| {
                        let mut p = p.clone();
                        if union.iter().any(|u| u.label == p.label) {
                            let suffix = format!("#{}", i + 1);
                            let keep = MAX_LABEL.saturating_sub(suffix.len());
                            p.label = p.label.chars().take(keep).collect::<String>() + &suffix;
                        }
                        union.push(p);
                        union.len() - 1
                    });
                    at as FuncId
                })
                .collect()
        })
        .collect();
    (union, maps)
}

/// A call record's function id renumbered through `map` (user probes only).
pub(super) fn renumber(bytes: &[u8], map: &[FuncId]) -> Option<Vec<u8>> {
    let kind = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    if kind != llmdd_common::RecordKind::Call as u32 {
        return None;
    }
    let at = std::mem::offset_of!(llmdd_common::call::CallRecord, func);
    let func = u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
    let local = func.checked_sub(USER_BASE)?;
    let to = USER_BASE + *map.get(local as usize)?;
    let mut out = bytes.to_vec();
    out[at..at + 2].copy_from_slice(&to.to_le_bytes());
    Some(out)
}
