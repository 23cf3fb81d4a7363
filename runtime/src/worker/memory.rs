//! A run's agent memory on the worker: before the command starts, the
//! agent's current version is written into the sandbox's `/memory`; what
//! changes there is committed back as ONE new version every few seconds
//! and when the run ends — all through the control plane's memory API
//! (`…/memory/archive`, `…/memory/commits`) with the run's own token, so
//! the worker needs no key and can reach no other agent's memory.
//!
//! The sandbox is hostile: its listing is bounded and checked, symbolic
//! links are never followed (the agent lists without following; files are
//! read inside the sandbox), names the memory API would refuse are left
//! out (and logged), and the quota is checked before anything is sent.
//! Should the API refuse a commit because memory changed meanwhile (a
//! client wrote to it), the same changes are sent again on top of the new
//! version: per file, the run's change wins.

use std::collections::HashMap;
use std::time::Duration;

use carapace_scheduler::protocol::MemorySync;

use crate::sandbox::{Area, MAX_FILE};
use crate::{Error, Runtime};

/// Longest memory path the API accepts.
const MAX_PATH: usize = 512;
/// Times a commit is sent again after memory changed under it.
const REBASES: usize = 3;

/// What the worker knows of one run's memory.
pub(super) struct MemorySession {
    http: reqwest::Client,
    /// `<api>/v1/agents/<agent>/memory`.
    url: String,
    spec: MemorySync,
    /// The version the sandbox's files were last in step with.
    version: u64,
    /// Each file's (size, stamp) as of that version.
    known: HashMap<String, (u64, u64)>,
}

/// Why memory could not be loaded or committed, for the run's owner.
type Failure = String;

impl MemorySession {
    /// Writes the agent's current version into the sandbox `id`.
    pub(super) async fn load(
        runtime: &Runtime,
        id: &str,
        api_url: &str,
        spec: MemorySync,
        token: &str,
    ) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        let url = format!(
            "{}/v1/agents/{}/memory",
            api_url.trim_end_matches('/'),
            spec.agent
        );
        let res = http
            .get(format!("{url}/archive"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("the control plane is unreachable: {e}"))?;
        let res = checked(res).await?;
        let version = res
            .headers()
            .get("x-memory-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("the archive has no version")?;
        // Headers and padding take at most 3 blocks per file, plus the end.
        let limit = spec
            .max_bytes
            .saturating_add(u64::from(spec.max_files).saturating_mul(1536))
            .saturating_add(1024);
        let archive = read_bounded(res, limit).await?;
        for (path, range) in unpack(&archive, spec.max_files)? {
            if spec.excludes(&path) {
                continue;
            }
            match runtime
                .write_file_in(id, Area::Memory, &path, archive[range].to_vec())
                .await
            {
                Ok(()) => {}
                // E.g. a file where the sandbox has a directory: left out
                // (and so left as it is in the store).
                Err(Error::File(e)) => {
                    tracing::warn!(run = id, path = %path.escape_debug(), error = %e, "memory file not written into the sandbox");
                }
                Err(e) => return Err(format!("{path} could not be written into the sandbox: {e}")),
            }
        }
        let mut session = MemorySession {
            http,
            url,
            spec,
            version,
            known: HashMap::new(),
        };
        session.known = session.listing(runtime, id).await?;
        Ok(session)
    }

    /// Commits what changed in the sandbox's `/memory` since the last
    /// sync, as one version; the new version (`None`: nothing changed).
    pub(super) async fn commit(
        &mut self,
        runtime: &Runtime,
        id: &str,
        token: &str,
    ) -> Result<Option<u64>, Failure> {
        let mut now = self.listing(runtime, id).await?;
        let total = now
            .values()
            .fold(0u64, |total, (size, _)| total.saturating_add(*size));
        let over = |total: u64| {
            format!(
                "/memory holds {total} bytes; an agent's memory holds at most {}",
                self.spec.max_bytes
            )
        };
        if total > self.spec.max_bytes {
            return Err(over(total));
        }
        let changed: Vec<String> = now
            .iter()
            .filter(|(path, state)| self.known.get(*path) != Some(state))
            .map(|(path, _)| path.clone())
            .collect();
        let deleted: Vec<String> = self
            .known
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        if changed.is_empty() && deleted.is_empty() {
            return Ok(None);
        }
        let mut archive = tar::Builder::new(Vec::new());
        // What the sandbox listed is only a hint: the bytes it actually
        // hands over are what count against the quota.
        let mut read = 0u64;
        for path in &changed {
            match runtime.read_file_in(id, Area::Memory, path).await {
                Ok(data) => {
                    read = read.saturating_add(data.len() as u64);
                    if read > self.spec.max_bytes {
                        return Err(over(read));
                    }
                    append(&mut archive, path, &data)?;
                }
                // Too large to move, gone meanwhile, not a regular file:
                // left out this time (the store keeps what it had).
                Err(Error::File(e)) => {
                    tracing::warn!(run = id, path = %path.escape_debug(), error = %e, "memory file left out of a commit");
                    match self.known.get(path) {
                        Some(state) => now.insert(path.clone(), *state),
                        None => now.remove(path),
                    };
                }
                Err(e) => return Err(format!("{path} could not be read from the sandbox: {e}")),
            }
        }
        for path in &deleted {
            let whiteout = match path.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/.wh.{name}"),
                None => format!(".wh.{path}"),
            };
            append(&mut archive, &whiteout, &[])?;
        }
        let archive = bytes::Bytes::from(
            archive
                .into_inner()
                .map_err(|e| format!("the archive could not be built: {e}"))?,
        );
        let mut attempt = 0;
        let version = loop {
            let res = self
                .http
                .post(format!("{}/commits?base={}", self.url, self.version))
                .bearer_auth(token)
                .header("content-type", "application/x-tar")
                .body(archive.clone())
                .send()
                .await
                .map_err(|e| format!("the control plane is unreachable: {e}"))?;
            if res.status() == reqwest::StatusCode::CONFLICT && attempt < REBASES {
                let problem: serde_json::Value = res.json().await.unwrap_or_default();
                if problem["code"] != "conflict" {
                    // A quota, not a race: sending it again will not help.
                    let detail = problem["detail"].as_str().unwrap_or_default();
                    return Err(format!("the memory API answered 409: {detail}"));
                }
                // Changed meanwhile: the same changes on the new version.
                attempt += 1;
                self.version = self.current(token).await?;
                continue;
            }
            let body: serde_json::Value = checked(res)
                .await?
                .json()
                .await
                .map_err(|e| format!("an unreadable answer: {e}"))?;
            break body["version"]
                .as_u64()
                .ok_or("an answer without a version")?;
        };
        self.version = version;
        self.known = now;
        Ok(Some(version))
    }

    /// The version the sandbox's files were last in step with.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The agent's current version, as the API says.
    async fn current(&self, token: &str) -> Result<u64, Failure> {
        let res = self
            .http
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("the control plane is unreachable: {e}"))?;
        let body: serde_json::Value = checked(res)
            .await?
            .json()
            .await
            .map_err(|e| format!("an unreadable answer: {e}"))?;
        Ok(body["version"].as_u64().unwrap_or(0))
    }

    /// The sandbox's memory files now: path → (size, stamp), leaving out
    /// (and logging) names the memory API would refuse.
    async fn listing(
        &self,
        runtime: &Runtime,
        id: &str,
    ) -> Result<HashMap<String, (u64, u64)>, Failure> {
        let listing = runtime
            .list_files(id, Area::Memory, self.spec.max_files)
            .await
            .map_err(|e| match e {
                Error::File(e) => format!("/memory: {e}"),
                e => format!("/memory could not be listed: {e}"),
            })?;
        let mut files = HashMap::new();
        for file in listing.0 {
            match String::from_utf8(file.path) {
                Ok(path) if self.spec.excludes(&path) => {}
                Ok(path) if acceptable(&path) => {
                    files.insert(path, (file.size, file.stamp));
                }
                Ok(path) => {
                    tracing::warn!(run = id, path = %path.escape_debug(), "memory file with a name that is not allowed left out");
                }
                Err(_) => tracing::warn!(
                    run = id,
                    "memory file with a name that is not UTF-8 left out"
                ),
            }
        }
        Ok(files)
    }
}

/// The regular files of an archive from the memory API, checked: each
/// one's path and where its content is in the archive.
fn unpack(
    archive: &[u8],
    max_files: u32,
) -> Result<Vec<(String, std::ops::Range<usize>)>, Failure> {
    let mut files = Vec::new();
    let mut entries = tar::Archive::new(archive);
    for entry in entries
        .entries()
        .map_err(|e| format!("a bad archive: {e}"))?
    {
        let entry = entry.map_err(|e| format!("a bad archive: {e}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Some(path) = entry
            .path()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .filter(|p| acceptable(p))
        else {
            tracing::warn!("a memory file with a name that is not allowed left out");
            continue;
        };
        if entry.size() > u64::from(MAX_FILE) {
            return Err(format!(
                "{path} is larger than a sandbox takes in one file ({MAX_FILE} bytes)"
            ));
        }
        if files.len() >= max_files as usize {
            return Err(format!("more than {max_files} files"));
        }
        let start = usize::try_from(entry.raw_file_position()).map_err(|e| e.to_string())?;
        let end = usize::try_from(entry.size())
            .ok()
            .and_then(|size| start.checked_add(size))
            .filter(|&end| end <= archive.len())
            .ok_or("a bad archive: a file runs past its end")?;
        files.push((path, start..end));
    }
    Ok(files)
}

/// Whether the memory API takes `path` (see the API's `MemoryPath`; the
/// API checks again).
fn acceptable(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.len() <= 255 && !c.starts_with(".wh.")
        })
        && !matches!(
            path.split('/').next(),
            Some("versions" | "archive" | "commits")
        )
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<(), Failure> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, path, data)
        .map_err(|e| format!("{path} could not be archived: {e}"))
}

/// The response if it is a success; otherwise the API's own explanation.
async fn checked(res: reqwest::Response) -> Result<reqwest::Response, Failure> {
    if res.status().is_success() {
        return Ok(res);
    }
    let status = res.status();
    let detail = res
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|p| p["detail"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(format!("the memory API answered {status}: {detail}"))
}

/// The whole body, refusing one over `limit` bytes.
async fn read_bounded(mut res: reqwest::Response, limit: u64) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("the archive was cut short: {e}"))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("the archive is over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_names_the_memory_api_takes_are_synced() {
        for good in ["MEMORY.md", "memory/2026-11-26.md", "a b/ü.txt"] {
            assert!(acceptable(good), "{good}");
        }
        for bad in [
            "",
            "a//b",
            "../x",
            ".wh.MEMORY.md",
            "d/.wh..wh..opq",
            "versions/1",
            "archive",
            "a\nb",
            "a\\b",
        ] {
            assert!(!acceptable(bad), "{bad:?}");
        }
    }
}
