//! A whole version of an agent's memory in one request, each way, as a tar
//! archive: `GET /v1/agents/{id}/memory/archive` streams a version's files;
//! `POST /v1/agents/{id}/memory/commits?base=N` commits the files of an
//! archive (and deletes those named `.wh.<name>`) as ONE new version on
//! top of version `base`, or not at all. This is how a worker syncs a
//! run's sandbox (with the run's token), and how a client moves many
//! files atomically.
//!
//! The archive in a commit is hostile input: it is read as it arrives (a
//! file's bytes go straight to its encrypted writer), headers are
//! checksummed, only regular files, directories, GNU long names and PAX
//! `path` records are accepted, every path is validated like any memory
//! path, and the quotas are checked before anything is made current.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use carapace_scheduler::RunState;
use carapace_scheduler::protocol::{CallError, CallRequest, CallResult};
use futures_util::StreamExt;
use serde::Deserialize;

use super::memory::{check_total, file_path, open};
use super::memory_tar::{BLOCK, TarReader, bad_archive, padding};
use crate::auth::extract::{Caller, UseMemory};
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::ids::{AgentId, RunId};
use crate::memory::{
    Content, FileEntry, INLINE_MAX, INLINE_TOTAL_MAX, Manifest, MemoryLimits, MemoryPath,
    Namespace, WHITEOUT,
};
use crate::state::AppState;

/// Registers the routes (before `memory`'s catch-all file route).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/agents/{id}/memory/archive")
            .route(web::get().to(archive))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/agents/{id}/memory/commits")
            .route(web::post().to(commit))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/runs/{id}/memory/commit")
            .route(web::post().to(commit_run_memory))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Commit a running run's `/memory` now, rather than at its next periodic
/// commit: what an agent inside the sandbox calls (with its run token, as
/// `http://carapace.internal/v1/runs/<its run>/memory/commit`) after it
/// has written something it must not lose. Answers with the version the
/// memory is at.
#[utoipa::path(post, path = "/v1/runs/{id}/memory/commit", tag = "memory",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "Committed (or nothing had changed)", body = super::memory::Committed),
        (status = 404, description = "No such run in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is not running, has no agent memory, or its memory could not be committed", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Its worker is connected to another replica, or did not answer", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("run_token" = [])))]
pub async fn commit_run_memory(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = RunId::parse(&id).map_err(|_| Error::NotFound)?;
    if caller.run().is_some_and(|own| *own != id) {
        return Err(Error::Forbidden(
            "a run token commits only its own run's memory".into(),
        ));
    }
    let run = caller.scope(&state.db).run(&id).await?;
    let Some(memory) = &run.spec.memory else {
        return Err(Error::Conflict("this run has no agent memory".into()));
    };
    let agent = AgentId::parse(&memory.agent).map_err(|_| Error::NotFound)?;
    caller.may_open_agent(&state, &agent).await?;
    let (RunState::Running, Some((worker, lease))) = (run.state, run.lease()) else {
        return Err(Error::Conflict(format!(
            "the run is {}, not running",
            run.state.as_str()
        )));
    };
    let replies = state
        .fleet
        .call(&worker, lease, CallRequest::CommitMemory, None)
        .await
        .map_err(|e| Error::Unavailable(format!("{e}; retry shortly")))?;
    match super::sandbox_calls::collect(replies).await?.result {
        CallResult::Committed { version } => {
            Ok(HttpResponse::Ok().json(serde_json::json!({ "version": version })))
        }
        CallResult::Failed {
            error: CallError::Gone,
            ..
        } => Err(Error::Conflict("the run is not running any more".into())),
        CallResult::Failed { message, .. } => Err(Error::Conflict(format!(
            "the memory could not be committed: {message}"
        ))),
        other => Err(anyhow::anyhow!("a worker answered a memory commit with {other:?}").into()),
    }
}

/// Which version to archive.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// A version number; default the current one.
    version: Option<u64>,
}

/// What a commit builds on.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommitQuery {
    /// The version the archive's changes apply to (`0`: memory that has
    /// no version yet). If another version was committed since, the
    /// commit is refused with 409 and nothing changes.
    base: u64,
}

/// A version's files as a tar archive (regular files only, sorted by
/// path), streamed; its version number in `x-memory-version` (`0` for
/// memory that has no version yet: an empty archive).
#[utoipa::path(get, path = "/v1/agents/{id}/memory/archive", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), ArchiveQuery),
    responses(
        (status = 200, description = "The files", content_type = "application/x-tar"),
        (status = 404, description = "No such agent or version", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("run_token" = [])))]
pub async fn archive(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ArchiveQuery>,
) -> Result<HttpResponse, Error> {
    let opened = open(&caller, &state, &id).await?;
    let head = opened.head(&state).await?;
    let manifest = match (query.version, head) {
        (Some(v), _) => state.memory.manifest(&opened.ns, v).await?,
        (None, Some(head)) => head,
        (None, None) => Manifest {
            version: 0,
            parent: None,
            created_at: chrono::Utc::now(),
            files: Default::default(),
        },
    };
    let version = manifest.version;
    let mut pieces = Vec::new();
    for (path, entry) in &manifest.files {
        // A name allowed when it was written and refused now is left out
        // (and logged), not a reason to refuse the whole version.
        let Ok(path) = MemoryPath::parse(path) else {
            tracing::warn!(path = %path.escape_debug(), "memory file with a name no longer allowed left out of an archive");
            continue;
        };
        pieces.push(Piece::Header(tar_header(path.as_str(), entry.size)?));
        pieces.push(Piece::Content(path, entry.clone()));
        let pad = padding(entry.size);
        if pad > 0 {
            pieces.push(Piece::Header(Bytes::from(vec![0u8; pad])));
        }
    }
    pieces.push(Piece::Header(Bytes::from(vec![0u8; 2 * BLOCK])));
    let shared = Arc::new((state.memory.clone(), opened.ns, manifest));
    // One piece at a time; a chunked file chunk by chunk. A piece that
    // fails its check ends the response abruptly (the client sees a broken
    // transfer), never with unverified bytes.
    let stream = futures_util::stream::iter(pieces).flat_map(move |piece| {
        let shared = shared.clone();
        match piece {
            Piece::Header(bytes) => futures_util::stream::iter(vec![Ok(bytes)]).left_stream(),
            Piece::Content(path, entry) => file_stream(shared, path, entry).right_stream(),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-tar")
        .insert_header(("x-memory-version", version.to_string()))
        .streaming(stream))
}

/// Part of an archive being sent.
enum Piece {
    Header(Bytes),
    Content(MemoryPath, FileEntry),
}

type Shared = Arc<(crate::memory::MemoryStore, Namespace, Manifest)>;

/// One file's bytes, chunk by chunk, checked to add up to its size.
fn file_stream(
    shared: Shared,
    path: MemoryPath,
    entry: FileEntry,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let chunks = match &entry.content {
        Content::Inline { .. } => 1,
        Content::Chunks { chunks, .. } => *chunks,
    };
    let start = (0u32, 0u64, shared, path, entry);
    futures_util::stream::unfold(
        start,
        move |(index, sent, shared, path, entry)| async move {
            if index >= chunks {
                return None;
            }
            let (memory, ns, manifest) = &*shared;
            let read = match entry.content {
                Content::Inline { .. } => memory.read_file(ns, manifest, &path).await,
                Content::Chunks { .. } => memory.read_chunk(ns, &path, &entry, index).await,
            };
            let sent_now = sent + read.as_ref().map_or(0, |b| b.len() as u64);
            let read = read.and_then(|bytes| {
                let complete = index + 1 == chunks;
                if sent_now > entry.size || (complete && sent_now != entry.size) {
                    return Err(Error::Integrity(format!(
                        "{path} does not match its manifest"
                    )));
                }
                Ok(bytes)
            });
            match read {
                Ok(bytes) => Some((
                    Ok(Bytes::from(bytes)),
                    (index + 1, sent_now, shared, path, entry),
                )),
                Err(e) => {
                    tracing::error!(error = ?e, "memory archive failed mid-stream");
                    let error = actix_web::error::ErrorInternalServerError("memory read failed");
                    Some((Err(error), (chunks, sent_now, shared, path, entry)))
                }
            }
        },
    )
}

/// The header block(s) of a regular file (a GNU long-name entry first for
/// paths over 100 bytes).
fn tar_header(path: &str, size: u64) -> Result<Bytes, Error> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, path, std::io::empty())
        .map_err(|e| anyhow::anyhow!("tar header for a memory file: {e}"))?;
    // Only the header: the content follows from the store. (The builder's
    // end-of-archive blocks go to the emptied buffer it is dropped with.)
    Ok(Bytes::from(std::mem::take(builder.get_mut())))
}

/// Commit an archive's files as one new version on top of `base`:
/// regular files are written (replacing any of the same path), an empty
/// file named `<dir>/.wh.<name>` deletes `<dir>/<name>` (if it exists),
/// directories are ignored. All or nothing; a body that stops short, a
/// bad header or a path that is not allowed changes nothing.
#[utoipa::path(post, path = "/v1/agents/{id}/memory/commits", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), CommitQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "Committed (or nothing to change: the current version)", body = super::memory::Committed),
        (status = 409, description = "Memory is no longer at version `base`, or a quota would be exceeded", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A file over the size limit", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an acceptable archive, or an invalid path", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("run_token" = [])))]
pub async fn commit(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<CommitQuery>,
    body: web::Payload,
) -> Result<HttpResponse, Error> {
    let opened = open(&caller, &state, &id).await?;
    let base = opened.head(&state).await?;
    let current = base.as_ref().map_or(0, |m| m.version);
    if current != query.base {
        return Err(Error::Conflict(format!(
            "memory is at version {current}, not {}",
            query.base
        )));
    }
    let limits = state.plans.get(&caller.principal().tenant().plan).memory;
    let mut changes = Changes::default();
    let read = read_changes(
        &state,
        &opened.ns,
        base.as_ref(),
        &limits,
        TarReader::new(body, &limits),
        &mut changes,
    )
    .await;
    let Changes { puts, mut deletes } = changes;
    let present = |p: &MemoryPath| {
        base.as_ref()
            .is_some_and(|m| m.files.contains_key(p.as_str()))
    };
    deletes.retain(present);
    let empty = Manifest {
        version: 0,
        parent: None,
        created_at: chrono::Utc::now(),
        files: Default::default(),
    };
    let checked = read.and_then(|()| {
        check_total(
            base.as_ref().unwrap_or(&empty),
            puts.iter().map(|(path, entry)| (path, entry.size)),
            &deletes,
            &limits,
        )
    });
    if let Err(e) = checked {
        // Nothing of a refused commit stays in the store.
        state.memory.discard(&opened.ns, &puts).await;
        return Err(e);
    }
    if puts.is_empty() && deletes.is_empty() {
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "version": current })));
    }
    let committed = state
        .memory
        .commit(&opened.ns, base.as_ref(), puts.clone(), &deletes)
        .await;
    match committed {
        Ok(manifest) => opened.committed(&state, &manifest).await,
        Err(e) => {
            state.memory.discard(&opened.ns, &puts).await;
            Err(e)
        }
    }
}

/// What an archive asks for.
#[derive(Default)]
struct Changes {
    puts: Vec<(MemoryPath, FileEntry)>,
    deletes: Vec<MemoryPath>,
}

/// Reads the archive, writing each file (encrypted) as it comes, into
/// `changes`; on an error, what was written so far is in `changes` (and a
/// file cut short has been discarded).
async fn read_changes(
    state: &AppState,
    ns: &Namespace,
    base: Option<&Manifest>,
    limits: &MemoryLimits,
    mut reader: TarReader,
    changes: &mut Changes,
) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    let (mut put_bytes, mut inline_bytes) = (0u64, 0u64);
    while let Some(entry) = reader.next_entry().await? {
        let (path, delete) = entry_path(&entry.name)?;
        if !seen.insert(path.clone()) {
            return Err(bad_archive(format!("{path} appears twice")));
        }
        if delete {
            if entry.size != 0 {
                return Err(bad_archive(format!("the deletion of {path} has content")));
            }
            changes.deletes.push(path);
            continue;
        }
        if changes.puts.len() >= limits.max_files {
            return Err(Error::LimitReached(format!(
                "an agent's memory holds at most {} files",
                limits.max_files
            )));
        }
        put_bytes = put_bytes.saturating_add(entry.size);
        if put_bytes > limits.max_total_bytes {
            return Err(Error::LimitReached(format!(
                "an agent's memory holds at most {} bytes",
                limits.max_total_bytes
            )));
        }
        if entry.size > limits.max_file_bytes {
            return Err(Error::PayloadTooLarge {
                limit: usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX),
            });
        }
        // Small files are kept in the request (inline) only up to the
        // manifest's inline budget; past it, they go to the store too.
        let small = entry.size <= INLINE_MAX as u64;
        let inline = small && inline_bytes + entry.size <= INLINE_TOTAL_MAX;
        if inline {
            inline_bytes += entry.size;
        }
        let mut writer = state.memory.writer_inline(ns, path, base, inline)?;
        let copied = copy_content(&mut reader, &mut writer, entry.size).await;
        if let Err(e) = copied {
            writer.abandon().await;
            return Err(e);
        }
        changes.puts.push(writer.finish().await?);
    }
    Ok(())
}

/// A file's content from the archive into its writer, and its padding.
async fn copy_content(
    reader: &mut TarReader,
    writer: &mut crate::memory::FileWriter<'_>,
    size: u64,
) -> Result<(), Error> {
    let mut left = size;
    while left > 0 {
        let piece = reader.content(left).await?;
        left -= piece.len() as u64;
        writer.write(&piece).await?;
    }
    reader.skip(padding(size)).await
}

/// The memory path an entry names, and whether it is a deletion.
fn entry_path(name: &[u8]) -> Result<(MemoryPath, bool), Error> {
    let name = std::str::from_utf8(name)
        .map_err(|_| bad_archive("an entry's name is not UTF-8".to_owned()))?;
    let name = name.strip_prefix("./").unwrap_or(name);
    let (dir, last) = match name.rsplit_once('/') {
        Some((dir, last)) => (Some(dir), last),
        None => (None, name),
    };
    match last.strip_prefix(WHITEOUT) {
        Some(target) => {
            let target = match dir {
                Some(dir) => format!("{dir}/{target}"),
                None => target.to_owned(),
            };
            Ok((file_path(&target)?, true))
        }
        None => Ok((file_path(name)?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_name_deletions_and_paths_are_checked() {
        let (path, delete) = entry_path(b"notes/.wh.old.md").unwrap();
        assert_eq!((path.as_str(), delete), ("notes/old.md", true));
        let (path, delete) = entry_path(b"./MEMORY.md").unwrap();
        assert_eq!((path.as_str(), delete), ("MEMORY.md", false));
        for bad in [
            &b"../etc/passwd"[..],
            b"/etc/passwd",
            b"a/../../b",
            b".wh...",
            b"versions/1",
            b"\xff",
        ] {
            assert!(entry_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_through_the_tar_crate() {
        let long = format!("{}/file.md", "d".repeat(150));
        let mut archive = Vec::new();
        for (path, content) in [("a.md", &b"hello"[..]), (long.as_str(), b"x")] {
            archive.extend_from_slice(&tar_header(path, content.len() as u64).unwrap());
            archive.extend_from_slice(content);
            archive.extend(std::iter::repeat_n(0, padding(content.len() as u64)));
        }
        archive.extend_from_slice(&[0; 2 * BLOCK]);
        let mut read = tar::Archive::new(&archive[..]);
        let names: Vec<String> = read
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.md", long.as_str()]);
    }
}
