//! An agent's encrypted memory over HTTP: list, read, write and delete
//! files (raw bytes in and out), list versions, restore one. Every change
//! is a new version (see `memory`). The top-level name `versions` is
//! reserved for the version endpoints (and `archive` and `commits`, see
//! `memory_sync`). API keys open any of their tenant's agents; a run token
//! only its run's agent (what its sandbox and worker use).

use std::sync::Arc;

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth::extract::{Caller, UseMemory};
use crate::db::TenantScope;
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::ids::{AgentId, TenantId};
use crate::memory::{Content, Manifest, MemoryPath, Namespace};
use crate::state::AppState;

/// Top-level names taken by endpoints, never files.
const RESERVED: &[&str] = &["versions", "archive", "commits"];
/// Times a write of a small file is retried after a concurrent commit.
const RETRIES: usize = 20;

/// A short random pause before retrying a commit, so that writers racing
/// for the same version spread out.
async fn backoff(attempt: usize) {
    let mut byte = [0u8; 1];
    let jitter = getrandom::fill(&mut byte).map_or(0, |()| u64::from(byte[0] % 20));
    let base = 5 * (attempt.min(6) as u64);
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/agents/{id}/memory")
            .route(web::get().to(list_files))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/agents/{id}/memory/versions")
            .route(web::get().to(list_versions))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/agents/{id}/memory/versions/{version}/restore")
            .route(web::post().to(restore))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/agents/{id}/memory/{path:.*}")
            .route(web::get().to(read_file))
            .route(web::put().to(write_file))
            .route(web::delete().to(delete_file))
            .default_service(web::to(method_not_allowed)),
    );
}

/// The memory namespace of one of the tenant's agents.
pub async fn namespace(
    state: &AppState,
    tenant: &TenantId,
    agent: &AgentId,
) -> Result<Namespace, Error> {
    let key = TenantScope::new(&state.db, tenant)
        .data_key(&state.master_key)
        .await?;
    Namespace::new(tenant.clone(), agent.as_str(), key)
}

/// One of the caller's agents' memory, opened.
pub(super) struct Opened<'a> {
    pub(super) ns: Namespace,
    agent: AgentId,
    scope: TenantScope<'a>,
    /// Versions the garbage collection keeps (the tenant's plan's).
    keep_versions: usize,
}

impl Opened<'_> {
    /// The current version, refusing a bucket whose newest manifests were
    /// removed: the database records the newest version ever committed.
    pub(super) async fn head(&self, state: &AppState) -> Result<Option<Manifest>, Error> {
        match self.versions(state).await?.last() {
            Some(&v) => Ok(Some(state.memory.manifest(&self.ns, v).await?)),
            None => Ok(None),
        }
    }

    /// Every committed version, oldest first, refusing a rolled-back store.
    async fn versions(&self, state: &AppState) -> Result<Vec<u64>, Error> {
        // The record first: a version recorded by then has its manifest
        // in the store already (commits write the manifest, then record),
        // so the listing that follows must include it.
        let recorded = self.scope.memory_head(&self.agent).await?;
        let versions = state.memory.versions(&self.ns).await?;
        let current = versions.last().copied().unwrap_or(0);
        if let Some(recorded) = recorded.filter(|r| *r > current) {
            return Err(Error::Integrity(format!(
                "memory of {} was rolled back: version {recorded} was committed, the store's newest is {current}",
                self.agent
            )));
        }
        Ok(versions)
    }

    /// After a commit: records it, collects garbage every tenth version,
    /// and answers with the new version.
    pub(super) async fn committed(
        &self,
        state: &AppState,
        manifest: &Manifest,
    ) -> Result<HttpResponse, Error> {
        self.scope
            .record_memory_head(&self.agent, manifest.version)
            .await?;
        if manifest.version.is_multiple_of(10)
            && let Err(e) = state.memory.gc(&self.ns, self.keep_versions).await
        {
            tracing::warn!(error = ?e, "memory garbage collection failed");
        }
        Ok(HttpResponse::Ok().json(Committed {
            version: manifest.version,
        }))
    }
}

/// Checks the agent is the caller's and opens its memory.
pub(super) async fn open<'a>(
    caller: &'a Caller<UseMemory>,
    state: &'a AppState,
    raw_id: &str,
) -> Result<Opened<'a>, Error> {
    let agent = AgentId::parse(raw_id).map_err(|_| Error::NotFound)?;
    caller.may_open_agent(state, &agent).await?;
    let scope = caller.scope(&state.db);
    scope.agent(&agent).await?;
    let ns = namespace(state, caller.tenant_id(), &agent).await?;
    let keep_versions = state
        .plans
        .get(&caller.principal().tenant().plan)
        .memory
        .keep_versions;
    Ok(Opened {
        ns,
        agent,
        scope,
        keep_versions,
    })
}

/// The file path from the URL (actix has percent-decoded it, so `%2E%2E`
/// arrives as `..` and is refused like it), validated.
pub(super) fn file_path(raw: &str) -> Result<MemoryPath, Error> {
    let top = raw.split('/').next().unwrap_or_default();
    if RESERVED.contains(&top) {
        return Err(Error::Invalid {
            field: "path",
            message: format!("`{top}` is reserved"),
        });
    }
    MemoryPath::parse(raw).map_err(|e| Error::Invalid {
        field: "path",
        message: e.to_string(),
    })
}

/// A file in a version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileView {
    path: String,
    size: u64,
}

/// The current version's files.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listing {
    /// The current version; absent while nothing was ever written.
    version: Option<u64>,
    files: Vec<FileView>,
}

/// One version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    version: u64,
    parent: Option<u64>,
    created_at: DateTime<Utc>,
    files: usize,
}

/// Versions, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionList {
    data: Vec<VersionView>,
}

/// What a write or delete produced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Committed {
    /// The new current version.
    version: u64,
}

/// Which version to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// A version number; default the current one.
    version: Option<u64>,
}

/// The files of the current version.
#[utoipa::path(get, path = "/v1/agents/{id}/memory", tag = "memory",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "Files", body = Listing)),
    security(("api_key" = [])))]
pub async fn list_files(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let opened = open(&caller, &state, &id).await?;
    let head = opened.head(&state).await?;
    Ok(HttpResponse::Ok().json(Listing {
        version: head.as_ref().map(|m| m.version),
        files: head
            .map(|m| {
                m.files
                    .into_iter()
                    .map(|(path, entry)| FileView {
                        path,
                        size: entry.size,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

/// The agent's versions (at most the 100 newest).
#[utoipa::path(get, path = "/v1/agents/{id}/memory/versions", tag = "memory",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "Versions", body = VersionList)),
    security(("api_key" = [])))]
pub async fn list_versions(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let opened = open(&caller, &state, &id).await?;
    let ns = &opened.ns;
    let mut data = Vec::new();
    for version in opened.versions(&state).await?.into_iter().rev().take(100) {
        let m = state.memory.manifest(ns, version).await?;
        data.push(VersionView {
            version,
            parent: m.parent,
            created_at: m.created_at,
            files: m.files.len(),
        });
    }
    Ok(HttpResponse::Ok().json(VersionList { data }))
}

/// Make an old version's files current again (as a new version).
#[utoipa::path(post, path = "/v1/agents/{id}/memory/versions/{version}/restore", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), ("version" = u64, Path, description = "Version to restore")),
    responses(
        (status = 200, description = "Restored as a new version", body = Committed),
        (status = 404, description = "No such agent or version", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn restore(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, Error> {
    let (id, version) = path.into_inner();
    if caller.run().is_some() {
        // A sandbox may change its memory, not roll it back.
        return Err(Error::Forbidden(
            "a run token cannot restore old versions".to_owned(),
        ));
    }
    let opened = open(&caller, &state, &id).await?;
    opened.head(&state).await?;
    let manifest = state.memory.restore(&opened.ns, version).await?;
    opened.committed(&state, &manifest).await
}

/// Read a file: its raw bytes, streamed.
#[utoipa::path(get, path = "/v1/agents/{id}/memory/{path}", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), ("path" = String, Path, description = "File path"), ReadQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 404, description = "No such agent, version or file", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn read_file(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<ReadQuery>,
) -> Result<HttpResponse, Error> {
    let (id, raw_path) = path.into_inner();
    let file = file_path(&raw_path).map_err(|_| Error::NotFound)?;
    let opened = open(&caller, &state, &id).await?;
    let head = opened.head(&state).await?;
    let manifest = match query.version {
        Some(v) => state.memory.manifest(&opened.ns, v).await?,
        None => head.ok_or(Error::NotFound)?,
    };
    let ns = opened.ns;
    let entry = manifest
        .files
        .get(file.as_str())
        .ok_or(Error::NotFound)?
        .clone();
    let mut res = HttpResponse::Ok();
    res.content_type("application/octet-stream")
        .insert_header(("x-memory-version", manifest.version.to_string()));
    if let Content::Chunks { .. } = entry.content {
        // Streamed chunk by chunk (a few fetched and decrypted ahead),
        // never whole in memory. A chunk that fails its check ends the
        // response abruptly (the client sees a broken transfer) rather
        // than serving anything unverified.
        let stream =
            state
                .memory
                .chunk_stream(Arc::new(ns), file, entry)
                .map(|chunk| match chunk {
                    Ok(chunk) => Ok(Bytes::from(chunk)),
                    Err(e) => {
                        tracing::error!(error = ?e, "memory read failed mid-stream");
                        Err(actix_web::error::ErrorInternalServerError(
                            "memory read failed",
                        ))
                    }
                });
        return Ok(res.streaming(stream));
    }
    let content = state.memory.read_file(&ns, &manifest, &file).await?;
    Ok(res.body(content))
}

/// Write a file (the request body, raw bytes) as a new version.
#[utoipa::path(put, path = "/v1/agents/{id}/memory/{path}", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), ("path" = String, Path, description = "File path")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Committed", body = Committed),
        (status = 409, description = "A concurrent change to a large file, or too many files", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "File larger than 64 MiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid path", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn write_file(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
) -> Result<HttpResponse, Error> {
    let (id, raw_path) = path.into_inner();
    let file = file_path(&raw_path)?;
    let opened = open(&caller, &state, &id).await?;
    let ns = &opened.ns;
    let mut attempt = 0;
    let limits = state.plans.get(&caller.principal().tenant().plan).memory;
    let mut base = opened.head(&state).await?;
    if base
        .as_ref()
        .is_some_and(|m| m.files.len() >= limits.max_files && !m.files.contains_key(file.as_str()))
    {
        return Err(Error::LimitReached(format!(
            "an agent's memory holds at most {} files",
            limits.max_files
        )));
    }
    let mut writer = state.memory.writer(ns, file.clone(), base.as_ref())?;
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| Error::InvalidQuery(format!("failed to read the body: {e}")))?;
        size += chunk.len() as u64;
        if size > limits.max_file_bytes {
            return Err(Error::PayloadTooLarge {
                limit: usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX),
            });
        }
        writer.write(&chunk).await?;
    }
    let entry = writer.finish().await?;
    loop {
        if let Some(base) = &base {
            check_total(base, [(&entry.0, entry.1.size)], &[], &limits)?;
        }
        match state
            .memory
            .commit(ns, base.as_ref(), vec![entry.clone()], &[])
            .await
        {
            Ok(manifest) => return opened.committed(&state, &manifest).await,
            // A small (inline) file does not depend on the version it was
            // written for: commit it on top of the new current version.
            Err(Error::Conflict(_))
                if matches!(entry.1.content, Content::Inline { .. }) && attempt < RETRIES =>
            {
                attempt += 1;
                backoff(attempt).await;
                base = opened.head(&state).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Delete a file, as a new version.
#[utoipa::path(delete, path = "/v1/agents/{id}/memory/{path}", tag = "memory",
    params(("id" = String, Path, description = "Agent id"), ("path" = String, Path, description = "File path")),
    responses(
        (status = 200, description = "Committed", body = Committed),
        (status = 404, description = "No such agent or file", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn delete_file(
    caller: Caller<UseMemory>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (id, raw_path) = path.into_inner();
    let file = file_path(&raw_path).map_err(|_| Error::NotFound)?;
    let opened = open(&caller, &state, &id).await?;
    let ns = &opened.ns;
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            backoff(attempt).await;
        }
        let base = opened.head(&state).await?.ok_or(Error::NotFound)?;
        if !base.files.contains_key(file.as_str()) {
            return Err(Error::NotFound);
        }
        match state
            .memory
            .commit(ns, Some(&base), vec![], std::slice::from_ref(&file))
            .await
        {
            Ok(manifest) => return opened.committed(&state, &manifest).await,
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict(
        "memory keeps changing; try again".to_owned(),
    ))
}

/// Refuses a version over the total-size quota: `base` with `puts`
/// (path, size) written and `deletes` removed.
pub(super) fn check_total<'p>(
    base: &Manifest,
    puts: impl IntoIterator<Item = (&'p MemoryPath, u64)>,
    deletes: &[MemoryPath],
    limits: &crate::memory::MemoryLimits,
) -> Result<(), Error> {
    let mut sizes: std::collections::BTreeMap<&str, u64> = base
        .files
        .iter()
        .map(|(path, entry)| (path.as_str(), entry.size))
        .collect();
    for path in deletes {
        sizes.remove(path.as_str());
    }
    for (path, size) in puts {
        sizes.insert(path.as_str(), size);
    }
    let total: u64 = sizes.values().sum();
    if total > limits.max_total_bytes {
        return Err(Error::LimitReached(format!(
            "an agent's memory holds at most {} bytes (this version would hold {total})",
            limits.max_total_bytes
        )));
    }
    if sizes.len() > limits.max_files {
        return Err(Error::LimitReached(format!(
            "an agent's memory holds at most {} files",
            limits.max_files
        )));
    }
    Ok(())
}
