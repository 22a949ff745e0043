//! Hugging Face hub ids (`ORG/NAME`), resolved offline in the local Hugging Face cache, the way
//! transformers does with `local_files_only=True`. Nothing is ever downloaded.
//!
//! The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`. A model
//! lives in `models--ORG--NAME/`: `refs/main` names the revision, and `snapshots/REV/` holds its
//! files (links into `blobs/`).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Whether `arg` reads as a hub id (`ORG/NAME`, optionally `@REVISION`) rather than a path:
/// exactly one `/`, no other path syntax, and no such file or folder on disk.
pub fn is_hub_id(arg: &str) -> bool {
    let id = arg.split_once('@').map_or(arg, |(id, _)| id);
    let Some((org, name)) = id.split_once('/') else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    part(org) && part(name) && !Path::new(arg).exists()
}

/// The cache folder, as transformers picks it: `HF_HUB_CACHE` if set, else `HF_HOME/hub` if
/// set, else `~/.cache/huggingface/hub` (none where there is no home folder).
pub fn cache_dirs() -> Vec<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return vec![PathBuf::from(dir)];
    }
    if let Some(home) = var("HF_HOME") {
        return vec![PathBuf::from(home).join("hub")];
    }
    std::env::home_dir()
        .map(|h| h.join(".cache").join("huggingface").join("hub"))
        .into_iter()
        .collect()
}

/// The snapshot folder of hub id `id` (`ORG/NAME` or `ORG/NAME@REVISION`, the revision a
/// branch, tag or commit; default `main`) that holds `file` (e.g. `config.json`), from the
/// local cache. [`Error::NotInHubCache`] names the folders searched.
pub fn resolve(id: &str, file: &str) -> Result<PathBuf> {
    let (repo, revision) = match id.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (id, "main"),
    };
    let dirs = cache_dirs();
    for dir in &dirs {
        let spec = hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            revision.to_string(),
        );
        let folder = dir.join(spec.folder_name());
        let cached = hf_hub::Cache::new(dir.clone()).repo(spec).get(file);
        if let Some(snapshot) = cached.as_deref().and_then(Path::parent) {
            return Ok(snapshot.to_path_buf());
        }
        // A ref file written with a trailing newline, or a revision given as a commit (which has
        // no ref file: its snapshot folder is the commit).
        let refs = std::fs::read_to_string(folder.join("refs").join(revision));
        let commit = refs.as_deref().map_or(revision, str::trim);
        let snapshot = folder.join("snapshots").join(commit);
        if snapshot.join(file).exists() {
            return Ok(snapshot);
        }
    }
    Err(Error::NotInHubCache {
        id: repo.to_string(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// `arg` as a model folder: itself when it exists or does not read as a hub id, else the
/// cached snapshot that holds `config.json`.
pub fn model_dir(arg: &Path) -> Result<PathBuf> {
    match arg.to_str().filter(|s| is_hub_id(s)) {
        Some(id) => resolve(id, crate::loader::CONFIG_FILE),
        None => Ok(arg.to_path_buf()),
    }
}
