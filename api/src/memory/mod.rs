//! Encrypted, versioned agent memory in object storage.
//!
//! Every file is split into chunks of 1 MiB, each sealed with the tenant's
//! data key (AES-256-GCM, fresh nonce) and stored as its own object, so a
//! file is never whole in memory. The associated data of a chunk binds the
//! tenant, agent, path, the version it was written for, its blob id, its
//! index and whether it is the last one: a chunk copied to another tenant,
//! agent, path or version, reordered, or a file cut short, fails to open.
//!
//! Files of at most 16 KiB (up to 16 MiB of them per version) are kept
//! inside the manifest instead, so that committing many small notes costs
//! one object write. A version is one encrypted [`Manifest`] listing the
//! files and their content or chunks. Committing writes the chunks first and the manifest last, with
//! a create-only conditional write at the next version number: a crash
//! before the manifest leaves only unreferenced chunks (garbage, collected
//! later), and of two concurrent committers exactly one wins — the other
//! gets [`Error::Conflict`]. The manifest's associated data binds its
//! version number, so an old manifest replayed under a newer number is
//! detected.
//!
//! Object names reveal nothing: an agent's objects live under a prefix
//! derived from the tenant's data key (`mem/<id>/`), chunks under random
//! ids. No tenant, agent or file name appears in the bucket.
//!
//! This module knows nothing of HTTP or of how agents are stored; callers
//! hand it a [`Namespace`] (tenant, agent and the tenant's data key).

mod manifest;
mod path;
mod quota;

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

pub use self::manifest::{Content, FileEntry, Manifest};
pub use self::path::{InvalidPath, MAX_PATH, MemoryPath, WHITEOUT};
pub use self::quota::{MemoryArgs, MemoryLimits};
use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::ids::TenantId;

/// Chunks fetched and decrypted ahead of a reader.
pub const READ_AHEAD: usize = 4;

/// Verifies and decrypts one chunk of `entry`.
fn open_chunk(
    ns: &Namespace,
    path: &MemoryPath,
    entry: &FileEntry,
    index: u32,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let Content::Chunks {
        blob,
        written_in,
        chunks,
    } = &entry.content
    else {
        return Err(anyhow::anyhow!("{path} is stored inline, not in chunks").into());
    };
    let last = index + 1 == *chunks;
    ns.key
        .open(sealed, &ns.chunk_aad(path, *written_in, blob, index, last))
        .map_err(|_| Error::Integrity(format!("chunk {index} of {path} does not authenticate")))
}

/// Size of one encrypted chunk's plaintext.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Files up to this size are kept inside the manifest.
pub const INLINE_MAX: usize = 16 * 1024;
/// Most inline bytes one manifest holds; beyond, the largest inline files
/// are written out as chunks at commit.
pub const INLINE_TOTAL_MAX: u64 = 16 * 1024 * 1024;

/// One agent's memory, with the key that opens it.
pub struct Namespace {
    tenant: TenantId,
    agent: String,
    key: DataKey,
    prefix: String,
}

impl Namespace {
    /// The memory of `agent` in `tenant`, sealed with the tenant's `key`.
    /// The agent id must be 1-100 printable characters (it is part of the
    /// associated data, which separates fields with newlines).
    pub fn new(tenant: TenantId, agent: &str, key: DataKey) -> Result<Self> {
        if agent.is_empty() || agent.len() > 100 || agent.chars().any(char::is_control) {
            return Err(Error::Invalid {
                field: "agent",
                message: "must be 1-100 printable characters".to_owned(),
            });
        }
        let id = key.derive_id(&format!("carapace:memory-namespace:v1\n{tenant}\n{agent}"));
        Ok(Namespace {
            tenant,
            agent: agent.to_owned(),
            key,
            prefix: format!("mem/{id}"),
        })
    }

    /// Where the namespace's objects live (`mem/<id>`). Reveals nothing
    /// without the key it was derived from.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn manifest_path(&self, version: u64) -> ObjectPath {
        ObjectPath::from(format!("{}/m/{version:020}", self.prefix))
    }

    fn manifests(&self) -> ObjectPath {
        ObjectPath::from(format!("{}/m", self.prefix))
    }

    fn blobs(&self) -> ObjectPath {
        ObjectPath::from(format!("{}/b", self.prefix))
    }

    fn chunk_path(&self, written_in: u64, blob: &str, index: u32) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/b/{written_in:020}/{blob}/{index:08}",
            self.prefix
        ))
    }

    fn manifest_aad(&self, version: u64) -> Vec<u8> {
        format!(
            "carapace:memory-manifest:v1\n{}\n{}\n{version}",
            self.tenant, self.agent
        )
        .into_bytes()
    }

    fn chunk_aad(
        &self,
        path: &MemoryPath,
        written_in: u64,
        blob: &str,
        index: u32,
        last: bool,
    ) -> Vec<u8> {
        format!(
            "carapace:memory-chunk:v1\n{}\n{}\n{path}\n{written_in}\n{blob}\n{index}\n{}",
            self.tenant,
            self.agent,
            u8::from(last)
        )
        .into_bytes()
    }
}

/// What garbage collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests of versions beyond the retention.
    pub manifests: u64,
    /// Chunk objects no retained version refers to.
    pub chunks: u64,
}

/// The memory store over any `object_store` backend.
#[derive(Clone)]
pub struct MemoryStore {
    store: Arc<dyn ObjectStore>,
}

fn store_error(e: object_store::Error) -> Error {
    Error::Unexpected(anyhow::Error::new(e).context("object store request failed"))
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("failed to get random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl MemoryStore {
    /// A memory store on `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Every committed version, oldest first.
    pub async fn versions(&self, ns: &Namespace) -> Result<Vec<u64>> {
        let mut listing = self.store.list(Some(&ns.manifests()));
        let mut versions = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            let name = meta.location.filename().unwrap_or_default();
            match name.parse::<u64>() {
                Ok(v) if name.len() == 20 => versions.push(v),
                _ => {
                    return Err(Error::Integrity(format!(
                        "unexpected object in memory manifests: {name}"
                    )));
                }
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// The current version, if any has been committed.
    pub async fn head(&self, ns: &Namespace) -> Result<Option<Manifest>> {
        match self.versions(ns).await?.last() {
            Some(&v) => Ok(Some(self.manifest(ns, v).await?)),
            None => Ok(None),
        }
    }

    /// One version's manifest, verified.
    pub async fn manifest(&self, ns: &Namespace, version: u64) -> Result<Manifest> {
        let sealed = match self.store.get(&ns.manifest_path(version)).await {
            Ok(result) => result.bytes().await.map_err(store_error)?,
            Err(object_store::Error::NotFound { .. }) => return Err(Error::NotFound),
            Err(e) => return Err(store_error(e)),
        };
        let plain = ns
            .key
            .open(&sealed, &ns.manifest_aad(version))
            .map_err(|_| {
                Error::Integrity(format!(
                    "manifest of version {version} does not authenticate"
                ))
            })?;
        let manifest: Manifest = serde_json::from_slice(&plain).map_err(|e| {
            Error::Integrity(format!("manifest of version {version} is malformed: {e}"))
        })?;
        if manifest.version != version {
            return Err(Error::Integrity(format!(
                "manifest stored as version {version} claims {}",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// A writer for one file of the version after `base`.
    pub fn writer<'a>(
        &'a self,
        ns: &'a Namespace,
        path: MemoryPath,
        base: Option<&Manifest>,
    ) -> Result<FileWriter<'a>> {
        FileWriter::new(self, ns, path, base.map_or(1, |m| m.version + 1), true)
    }

    /// Like [`writer`](Self::writer), choosing whether a small file may be
    /// kept inline (in the request's memory until the commit) or must go
    /// to the store as a chunk at once.
    pub fn writer_inline<'a>(
        &'a self,
        ns: &'a Namespace,
        path: MemoryPath,
        base: Option<&Manifest>,
        inline: bool,
    ) -> Result<FileWriter<'a>> {
        FileWriter::new(self, ns, path, base.map_or(1, |m| m.version + 1), inline)
    }

    /// Deletes the chunks of files written for a commit that will not
    /// happen (best effort: what fails is left to `gc`).
    pub async fn discard(&self, ns: &Namespace, files: &[(MemoryPath, FileEntry)]) {
        for (_, entry) in files {
            if let Content::Chunks {
                blob,
                written_in,
                chunks,
            } = &entry.content
            {
                for index in 0..*chunks {
                    let location = ns.chunk_path(*written_in, blob, index);
                    if let Err(e) = self.store.delete(&location).await {
                        tracing::warn!(error = %e, "an abandoned memory chunk was not deleted");
                    }
                }
            }
        }
    }

    /// Commits the version after `base`: `base`'s files, with `puts` added
    /// or replaced and `deletes` removed. Fails with [`Error::Conflict`] if
    /// another version was committed after `base` meanwhile.
    pub async fn commit(
        &self,
        ns: &Namespace,
        base: Option<&Manifest>,
        puts: Vec<(MemoryPath, FileEntry)>,
        deletes: &[MemoryPath],
    ) -> Result<Manifest> {
        let version = base.map_or(1, |m| m.version + 1);
        let mut files = base.map(|m| m.files.clone()).unwrap_or_default();
        for path in deletes {
            files.remove(path.as_str());
        }
        for (path, entry) in puts {
            if let Content::Chunks { written_in, .. } = entry.content
                && written_in != version
            {
                return Err(anyhow::anyhow!(
                    "file {path} was written for version {written_in}, not {version}"
                )
                .into());
            }
            files.insert(path.as_str().to_owned(), entry);
        }
        self.spill_inline(ns, version, &mut files).await?;
        self.write_manifest(
            ns,
            Manifest {
                version,
                parent: base.map(|m| m.version),
                created_at: chrono::Utc::now(),
                files,
            },
        )
        .await
    }

    /// Makes the files of `version` current again, as a new version.
    pub async fn restore(&self, ns: &Namespace, version: u64) -> Result<Manifest> {
        let old = self.manifest(ns, version).await?;
        let head = self.head(ns).await?;
        let next = head.as_ref().map_or(1, |m| m.version + 1);
        self.write_manifest(
            ns,
            Manifest {
                version: next,
                parent: head.map(|m| m.version),
                created_at: chrono::Utc::now(),
                files: old.files,
            },
        )
        .await
    }

    /// Writes the largest inline files out as chunks until the manifest
    /// holds at most `INLINE_TOTAL_MAX` inline bytes.
    async fn spill_inline(
        &self,
        ns: &Namespace,
        version: u64,
        files: &mut std::collections::BTreeMap<String, FileEntry>,
    ) -> Result<()> {
        let mut inline: Vec<(String, u64)> = files
            .iter()
            .filter(|(_, f)| matches!(f.content, Content::Inline { .. }))
            .map(|(p, f)| (p.clone(), f.size))
            .collect();
        let mut total: u64 = inline.iter().map(|(_, size)| size).sum();
        inline.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
        for (path, size) in inline {
            if total <= INLINE_TOTAL_MAX {
                break;
            }
            let Some(FileEntry {
                content: Content::Inline { data },
                ..
            }) = files.get(&path)
            else {
                continue;
            };
            let bytes = BASE64
                .decode(data)
                .map_err(|e| Error::Integrity(format!("inline {path}: {e}")))?;
            let memory_path =
                MemoryPath::parse(&path).map_err(|e| Error::Integrity(e.to_string()))?;
            let mut writer = FileWriter::new(self, ns, memory_path, version, false)?;
            writer.write(&bytes).await?;
            let (_, entry) = writer.finish().await?;
            files.insert(path, entry);
            total -= size;
        }
        Ok(())
    }

    async fn write_manifest(&self, ns: &Namespace, manifest: Manifest) -> Result<Manifest> {
        let plain = serde_json::to_vec(&manifest).map_err(anyhow::Error::from)?;
        let sealed = ns.key.seal(&plain, &ns.manifest_aad(manifest.version))?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(
                &ns.manifest_path(manifest.version),
                PutPayload::from(sealed),
                create,
            )
            .await
        {
            Ok(_) => Ok(manifest),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::Conflict(format!(
                "version {} was committed meanwhile; start again from the current version",
                manifest.version
            ))),
            Err(e) => Err(store_error(e)),
        }
    }

    /// One chunk of a chunked file, decrypted and verified.
    pub async fn read_chunk(
        &self,
        ns: &Namespace,
        path: &MemoryPath,
        entry: &FileEntry,
        index: u32,
    ) -> Result<Vec<u8>> {
        let sealed = self.fetch_chunk(ns, path, entry, index).await?;
        open_chunk(ns, path, entry, index, &sealed)
    }

    /// One chunk's sealed bytes.
    async fn fetch_chunk(
        &self,
        ns: &Namespace,
        path: &MemoryPath,
        entry: &FileEntry,
        index: u32,
    ) -> Result<bytes::Bytes> {
        let Content::Chunks {
            blob, written_in, ..
        } = &entry.content
        else {
            return Err(anyhow::anyhow!("{path} is stored inline, not in chunks").into());
        };
        let location = ns.chunk_path(*written_in, blob, index);
        match self.store.get(&location).await {
            Ok(result) => result.bytes().await.map_err(store_error),
            Err(object_store::Error::NotFound { .. }) => Err(Error::Integrity(format!(
                "chunk {index} of {path} is missing"
            ))),
            Err(e) => Err(store_error(e)),
        }
    }

    /// A chunked file's chunks in order, each fetched and verified ahead
    /// of the reader ([`READ_AHEAD`] at a time, decrypted on the blocking
    /// pool), so that fetching and decrypting overlap and use more than
    /// one core. The first chunk that fails (or a total that does not
    /// match the file's size) ends the stream with its error: nothing
    /// follows an error.
    pub fn chunk_stream(
        &self,
        ns: Arc<Namespace>,
        path: MemoryPath,
        entry: FileEntry,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>>> + Send + 'static {
        let chunks = match &entry.content {
            Content::Chunks { chunks, .. } => *chunks,
            Content::Inline { .. } => 0,
        };
        let size = entry.size;
        let shared = Arc::new((self.clone(), ns, path, entry));
        futures_util::stream::iter(0..chunks)
            .map(move |index| {
                let shared = shared.clone();
                async move {
                    let (store, ns, path, entry) = &*shared;
                    let sealed = store.fetch_chunk(ns, path, entry, index).await?;
                    let opened = shared.clone();
                    tokio::task::spawn_blocking(move || {
                        let (_, ns, path, entry) = &*opened;
                        open_chunk(ns, path, entry, index, &sealed)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("chunk decryption stopped: {e}"))?
                }
            })
            .buffered(READ_AHEAD)
            .scan((0u32, 0u64, false), move |(seen, read, over), chunk| {
                if *over {
                    return std::future::ready(None);
                }
                let chunk = chunk.and_then(|bytes| {
                    *seen += 1;
                    *read += bytes.len() as u64;
                    if *read > size || (*seen == chunks && *read != size) {
                        return Err(Error::Integrity(
                            "a file does not match its manifest".into(),
                        ));
                    }
                    Ok(bytes)
                });
                *over = chunk.is_err();
                std::future::ready(Some(chunk))
            })
    }

    /// A whole file (for small files; large ones are read chunk by chunk
    /// with [`read_chunk`](Self::read_chunk)). Every chunk authenticates
    /// with its position, its file's blob id and whether it is the last,
    /// so a complete, in-order read is verified by construction; inline
    /// content is authenticated with the manifest. The size is checked as
    /// well.
    pub async fn read_file(
        &self,
        ns: &Namespace,
        manifest: &Manifest,
        path: &MemoryPath,
    ) -> Result<Vec<u8>> {
        let entry = manifest.files.get(path.as_str()).ok_or(Error::NotFound)?;
        let content = match &entry.content {
            Content::Inline { data } => BASE64
                .decode(data)
                .map_err(|e| Error::Integrity(format!("inline content of {path}: {e}")))?,
            Content::Chunks { chunks, .. } => {
                let mut content = Vec::with_capacity(
                    usize::try_from(entry.size)
                        .unwrap_or(0)
                        .min(64 * CHUNK_SIZE),
                );
                for index in 0..*chunks {
                    content.extend_from_slice(&self.read_chunk(ns, path, entry, index).await?);
                }
                content
            }
        };
        if content.len() as u64 != entry.size {
            return Err(Error::Integrity(format!(
                "{path} does not match its manifest"
            )));
        }
        Ok(content)
    }

    /// Writes many small files for the version after `base` concurrently
    /// (each as its own encrypted object), ready for [`commit`](Self::commit).
    pub async fn write_files(
        &self,
        ns: &Namespace,
        base: Option<&Manifest>,
        files: Vec<(MemoryPath, Vec<u8>)>,
    ) -> Result<Vec<(MemoryPath, FileEntry)>> {
        let mut writes =
            futures_util::stream::iter(files.into_iter().map(|(path, content)| async move {
                let mut writer = self.writer(ns, path, base)?;
                writer.write(&content).await?;
                writer.finish().await
            }))
            .buffer_unordered(16);
        let mut entries = Vec::new();
        while let Some(entry) = writes.next().await {
            entries.push(entry?);
        }
        Ok(entries)
    }

    /// Keeps the newest `keep` versions and deletes older manifests and
    /// every chunk no kept version refers to. Chunks written for versions
    /// newer than the current one (a commit in progress) are left alone.
    pub async fn gc(&self, ns: &Namespace, keep: usize) -> Result<GcReport> {
        let versions = self.versions(ns).await?;
        let Some(&current) = versions.last() else {
            return Ok(GcReport::default());
        };
        let cut = versions.len().saturating_sub(keep.max(1));
        let mut report = GcReport::default();
        let mut referenced = BTreeSet::new();
        for &v in &versions[cut..] {
            for entry in self.manifest(ns, v).await?.files.into_values() {
                if let Content::Chunks { blob, .. } = entry.content {
                    referenced.insert(blob);
                }
            }
        }
        for &v in &versions[..cut] {
            self.store
                .delete(&ns.manifest_path(v))
                .await
                .map_err(store_error)?;
            report.manifests += 1;
        }
        let mut listing = self.store.list(Some(&ns.blobs()));
        let mut doomed = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            let parts: Vec<_> = meta.location.parts().collect();
            let (Some(written_in), Some(blob)) = (
                parts.get(parts.len().wrapping_sub(3)),
                parts.get(parts.len().wrapping_sub(2)),
            ) else {
                continue;
            };
            let written_in: u64 = written_in.as_ref().parse().unwrap_or(u64::MAX);
            if written_in <= current && !referenced.contains(blob.as_ref()) {
                doomed.push(meta.location);
            }
        }
        // A version committed meanwhile (a restore of an old version, say)
        // may refer to chunks found unreferenced above: spare those. What
        // is left is a window of one listing and the deletes themselves.
        for v in self
            .versions(ns)
            .await?
            .into_iter()
            .filter(|v| *v > current)
        {
            for entry in self.manifest(ns, v).await?.files.into_values() {
                if let Content::Chunks { blob, .. } = entry.content {
                    doomed.retain(|location| !location.as_ref().contains(&format!("/{blob}/")));
                }
            }
        }
        for location in doomed {
            self.store.delete(&location).await.map_err(store_error)?;
            report.chunks += 1;
        }
        Ok(report)
    }

    /// Deletes every object of the namespace (after its key is destroyed,
    /// they are unreadable anyway; this reclaims the space).
    pub async fn destroy(&self, ns: &Namespace) -> Result<u64> {
        self.destroy_prefix(&ns.prefix).await
    }

    /// Deletes every object under a namespace's prefix (see
    /// [`Namespace::prefix`]), for when the key that derived it is gone.
    pub async fn destroy_prefix(&self, prefix: &str) -> Result<u64> {
        if !prefix.starts_with("mem/") || prefix.len() < 8 {
            return Err(anyhow::anyhow!("not a memory namespace prefix: {prefix}").into());
        }
        let prefix = ObjectPath::from(prefix);
        let mut listing = self.store.list(Some(&prefix));
        let mut locations = Vec::new();
        while let Some(meta) = listing.next().await {
            locations.push(meta.map_err(store_error)?.location);
        }
        for location in &locations {
            self.store.delete(location).await.map_err(store_error)?;
        }
        Ok(locations.len() as u64)
    }
}

/// Writes one file as encrypted chunks, streaming: at most one chunk is
/// held in memory.
pub struct FileWriter<'a> {
    store: &'a MemoryStore,
    ns: &'a Namespace,
    path: MemoryPath,
    written_in: u64,
    blob: String,
    buffer: Vec<u8>,
    index: u32,
    size: u64,
    allow_inline: bool,
}

impl<'a> FileWriter<'a> {
    fn new(
        store: &'a MemoryStore,
        ns: &'a Namespace,
        path: MemoryPath,
        written_in: u64,
        allow_inline: bool,
    ) -> Result<Self> {
        Ok(FileWriter {
            store,
            ns,
            path,
            written_in,
            blob: random_id()?,
            buffer: Vec::new(),
            index: 0,
            size: 0,
            allow_inline,
        })
    }

    /// Appends content.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_SIZE - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full chunk is written only once more data follows, so that
            // the last chunk is always known when it is sealed.
            if self.buffer.len() == CHUNK_SIZE && !data.is_empty() {
                self.flush(false).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, last: bool) -> Result<()> {
        let aad = self
            .ns
            .chunk_aad(&self.path, self.written_in, &self.blob, self.index, last);
        let sealed = self.ns.key.seal(&self.buffer, &aad)?;
        self.buffer.clear();
        let location = self.ns.chunk_path(self.written_in, &self.blob, self.index);
        self.store
            .store
            .put(&location, PutPayload::from(sealed))
            .await
            .map_err(store_error)?;
        self.index += 1;
        Ok(())
    }

    /// Gives the file up: deletes the chunks written so far (best effort).
    pub async fn abandon(self) {
        for index in 0..self.index {
            let location = self.ns.chunk_path(self.written_in, &self.blob, index);
            if let Err(e) = self.store.store.delete(&location).await {
                tracing::warn!(error = %e, "an abandoned memory chunk was not deleted");
            }
        }
    }

    /// Ends the file; the entry goes into [`MemoryStore::commit`]. A small
    /// file becomes inline content; otherwise what is buffered (a full
    /// chunk, or a partial one) is written as the last chunk.
    pub async fn finish(mut self) -> Result<(MemoryPath, FileEntry)> {
        if self.allow_inline && self.index == 0 && self.buffer.len() <= INLINE_MAX {
            let data = BASE64.encode(&self.buffer);
            return Ok((
                self.path,
                FileEntry {
                    size: self.size,
                    content: Content::Inline { data },
                },
            ));
        }
        self.flush(true).await?;
        Ok((
            self.path,
            FileEntry {
                size: self.size,
                content: Content::Chunks {
                    blob: self.blob,
                    written_in: self.written_in,
                    chunks: self.index,
                },
            },
        ))
    }
}
