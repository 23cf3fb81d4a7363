//! Encrypted, versioned memory on every object-store backend: the local
//! file system and a real S3 server (moto, started by `infra/test`).

use std::sync::Arc;

use carapace_api::crypto::DataKey;
use carapace_api::error::Error;
use carapace_api::ids::TenantId;
use carapace_api::memory::{CHUNK_SIZE, Content, INLINE_MAX, MemoryPath, MemoryStore, Namespace};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

const CANARY: &[u8] = b"CANARY-the-agent-remembers-7c1f";
const AGENT: &str = "agent-named-hermes";

/// The backends every memory test runs on.
async fn backends() -> Vec<(
    &'static str,
    Arc<dyn ObjectStore>,
    Option<tempfile::TempDir>,
)> {
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let endpoint = std::env::var("CARAPACE_TEST_S3_ENDPOINT")
        .expect("CARAPACE_TEST_S3_ENDPOINT is not set: run the tests with infra/test (it starts an S3 server)");
    let bucket = format!("carapace-test-{}", uuid::Uuid::now_v7().simple());
    // moto creates a bucket on an unsigned PUT.
    let res = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "could not create bucket: {}",
        res.status()
    );
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let azure = azure_container().await;
    vec![
        ("file", Arc::new(local), Some(dir)),
        ("s3", Arc::new(s3), None),
        ("azure", azure, None),
    ]
}

/// The Azure emulator's well-known account and key.
const AZURE_ACCOUNT: &str = "devstoreaccount1";
const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A fresh container on the Azure Blob Storage emulator (Azurite), created
/// with a request signed like Azure's own clients sign them (SharedKey).
async fn azure_container() -> Arc<dyn ObjectStore> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let endpoint = std::env::var("CARAPACE_TEST_AZURE_ENDPOINT").expect(
        "CARAPACE_TEST_AZURE_ENDPOINT is not set: run the tests with infra/test (it starts Azurite)",
    );
    let container = format!("carapace-test-{}", uuid::Uuid::now_v7().simple());
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n{}x-ms-date:{date}\nx-ms-version:{version}\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{container}\nrestype:container",
        "\n".repeat(11)
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &STANDARD.decode(AZURE_KEY).unwrap(),
    );
    let signature = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()));
    let res = reqwest::Client::new()
        .put(format!("{endpoint}/{container}?restype=container"))
        .header("x-ms-date", &date)
        .header("x-ms-version", version)
        .header(
            "authorization",
            format!("SharedKey {AZURE_ACCOUNT}:{signature}"),
        )
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert!(
        status.is_success(),
        "could not create container: {status} {}",
        res.text().await.unwrap_or_default()
    );
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURE_ACCOUNT)
        .with_access_key(AZURE_KEY)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_container_name(&container)
        .build()
        .unwrap();
    Arc::new(store)
}

fn path(p: &str) -> MemoryPath {
    MemoryPath::parse(p).unwrap()
}

/// Writes files (path, content) as the version after `base` and commits.
async fn commit(
    memory: &MemoryStore,
    ns: &Namespace,
    base: Option<&carapace_api::memory::Manifest>,
    files: &[(&str, &[u8])],
) -> Result<carapace_api::memory::Manifest, Error> {
    let mut puts = Vec::new();
    for (p, content) in files {
        let mut writer = memory.writer(ns, path(p), base)?;
        // Feed in uneven pieces, as a network body arrives.
        for piece in content.chunks(300_001) {
            writer.write(piece).await?;
        }
        puts.push(writer.finish().await?);
    }
    memory.commit(ns, base, puts, &[]).await
}

async fn all_objects(store: &Arc<dyn ObjectStore>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut listing = store.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta.unwrap();
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push((meta.location.to_string(), bytes.to_vec()));
    }
    out
}

#[tokio::test]
async fn files_round_trip_through_versions_on_every_backend() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let tenant = TenantId::generate();
        let ns = Namespace::new(tenant.clone(), AGENT, DataKey::generate().unwrap()).unwrap();
        assert!(memory.head(&ns).await.unwrap().is_none());
        for bad_agent in ["", "a\nb", &"x".repeat(101)] {
            assert!(
                Namespace::new(tenant.clone(), bad_agent, DataKey::generate().unwrap()).is_err()
            );
        }

        let big: Vec<u8> = (0..(2 * CHUNK_SIZE + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let exact = vec![7u8; CHUNK_SIZE];
        let v1 = commit(
            &memory,
            &ns,
            None,
            &[
                ("MEMORY.md", CANARY),
                ("memory/2026-11-26.md", b""),
                ("sessions/big.bin", &big),
                ("exact.bin", &exact),
            ],
        )
        .await
        .unwrap();
        assert_eq!(v1.version, 1);
        let chunks = |p: &str| match &v1.files[p].content {
            Content::Chunks { chunks, .. } => *chunks,
            Content::Inline { .. } => 0,
        };
        assert_eq!(chunks("sessions/big.bin"), 3, "{backend}");
        assert_eq!(chunks("exact.bin"), 1, "{backend}");
        assert!(
            matches!(v1.files["MEMORY.md"].content, Content::Inline { .. }),
            "small files are inline"
        );
        let head = memory.head(&ns).await.unwrap().unwrap();
        assert_eq!(head, v1);
        assert_eq!(
            memory
                .read_file(&ns, &head, &path("MEMORY.md"))
                .await
                .unwrap(),
            CANARY
        );
        assert_eq!(
            memory
                .read_file(&ns, &head, &path("sessions/big.bin"))
                .await
                .unwrap(),
            big
        );
        assert_eq!(
            memory
                .read_file(&ns, &head, &path("exact.bin"))
                .await
                .unwrap(),
            exact
        );
        assert!(
            memory
                .read_file(&ns, &head, &path("memory/2026-11-26.md"))
                .await
                .unwrap()
                .is_empty()
        );

        let v2 = commit(&memory, &ns, Some(&v1), &[("MEMORY.md", b"changed")])
            .await
            .unwrap();
        let v3 = memory
            .commit(&ns, Some(&v2), vec![], &[path("exact.bin")])
            .await
            .unwrap();
        assert!(!v3.files.contains_key("exact.bin"));
        assert_eq!(memory.versions(&ns).await.unwrap(), vec![1, 2, 3]);
        // Unchanged files are carried over, not rewritten.
        assert_eq!(v3.files["sessions/big.bin"], v1.files["sessions/big.bin"]);

        let v4 = memory.restore(&ns, 1).await.unwrap();
        assert_eq!(v4.version, 4);
        assert_eq!(
            memory
                .read_file(&ns, &v4, &path("MEMORY.md"))
                .await
                .unwrap(),
            CANARY
        );
        assert_eq!(
            memory
                .read_file(&ns, &v4, &path("exact.bin"))
                .await
                .unwrap(),
            exact
        );

        // Nothing in the bucket names the tenant, the agent or a file, and
        // no content is in clear.
        for (name, bytes) in all_objects(&store).await {
            for secret in [
                tenant.as_str().as_bytes(),
                AGENT.as_bytes(),
                b"MEMORY",
                b"sessions",
                b"big.bin",
                CANARY,
            ] {
                let s = String::from_utf8_lossy(secret);
                assert!(
                    !name.contains(s.as_ref()),
                    "{backend}: object name {name} reveals {s}"
                );
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{backend}: {name} holds {s} in clear"
                );
            }
        }
    }
}

#[tokio::test]
async fn tampering_is_detected_and_never_served() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let tenant = TenantId::generate();
        let ns = Namespace::new(tenant.clone(), AGENT, DataKey::generate().unwrap()).unwrap();
        // Large enough to be stored as chunks rather than inline.
        let alpha = vec![b'a'; INLINE_MAX + 1];
        let bravo = vec![b'b'; INLINE_MAX + 1];
        let alpha2 = vec![b'c'; INLINE_MAX + 1];
        let v1 = commit(&memory, &ns, None, &[("a.md", &alpha), ("b.md", &bravo)])
            .await
            .unwrap();
        let v2 = commit(&memory, &ns, Some(&v1), &[("a.md", &alpha2)])
            .await
            .unwrap();
        let objects = all_objects(&store).await;
        let chunks: Vec<&(String, Vec<u8>)> =
            objects.iter().filter(|(n, _)| n.contains("/b/")).collect();
        let manifests: Vec<&(String, Vec<u8>)> =
            objects.iter().filter(|(n, _)| n.contains("/m/")).collect();
        let integrity = |r: Result<Vec<u8>, Error>| matches!(r, Err(Error::Integrity(_)));

        // A flipped byte in a chunk.
        let (name, bytes) = chunks[0];
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        store
            .put(&ObjectPath::from(name.as_str()), PutPayload::from(flipped))
            .await
            .unwrap();
        let mut failures = 0;
        for p in ["a.md", "b.md"] {
            for v in [&v1, &v2] {
                if integrity(memory.read_file(&ns, v, &path(p)).await) {
                    failures += 1;
                }
            }
        }
        assert!(failures >= 1, "{backend}: a flipped byte went unnoticed");
        store
            .put(
                &ObjectPath::from(name.as_str()),
                PutPayload::from(bytes.clone()),
            )
            .await
            .unwrap();

        // Chunks swapped between two files.
        let (n0, b0) = chunks[0];
        let (n1, b1) = chunks[1];
        store
            .put(&ObjectPath::from(n0.as_str()), PutPayload::from(b1.clone()))
            .await
            .unwrap();
        store
            .put(&ObjectPath::from(n1.as_str()), PutPayload::from(b0.clone()))
            .await
            .unwrap();
        let b_in_v1 = memory.read_file(&ns, &v1, &path("b.md")).await;
        let a_in_v1 = memory.read_file(&ns, &v1, &path("a.md")).await;
        assert!(
            integrity(a_in_v1) || integrity(b_in_v1),
            "{backend}: swapped chunks were served"
        );
        store
            .put(&ObjectPath::from(n0.as_str()), PutPayload::from(b0.clone()))
            .await
            .unwrap();
        store
            .put(&ObjectPath::from(n1.as_str()), PutPayload::from(b1.clone()))
            .await
            .unwrap();

        // An old manifest replayed as a newer version.
        let (oldest, sealed) = manifests.iter().min_by_key(|(n, _)| n.clone()).unwrap();
        let replayed = oldest.replace("00000000000000000001", "00000000000000000003");
        store
            .put(
                &ObjectPath::from(replayed.as_str()),
                PutPayload::from(sealed.clone()),
            )
            .await
            .unwrap();
        assert!(
            matches!(memory.head(&ns).await, Err(Error::Integrity(_))),
            "{backend}: replay accepted"
        );
        store
            .delete(&ObjectPath::from(replayed.as_str()))
            .await
            .unwrap();

        // The same objects under another tenant's namespace do not open.
        let mallory =
            Namespace::new(TenantId::generate(), AGENT, DataKey::generate().unwrap()).unwrap();
        assert!(memory.head(&mallory).await.unwrap().is_none());
        assert!(
            memory
                .read_file(&mallory, &v2, &path("a.md"))
                .await
                .is_err()
        );

        // A missing chunk (a truncated file) is an integrity failure.
        let Content::Chunks { blob, .. } = &v2.files["a.md"].content else {
            panic!("a.md should be chunked");
        };
        let chunk = objects
            .iter()
            .find(|(n, _)| n.contains(blob.as_str()))
            .map(|(n, _)| n.clone())
            .unwrap();
        store
            .delete(&ObjectPath::from(chunk.as_str()))
            .await
            .unwrap();
        assert!(
            integrity(memory.read_file(&ns, &v2, &path("a.md")).await),
            "{backend}"
        );
        // Still intact: the other file.
        assert_eq!(
            memory.read_file(&ns, &v2, &path("b.md")).await.unwrap(),
            bravo
        );
    }
}

#[tokio::test]
async fn of_two_concurrent_committers_one_wins_and_the_other_gets_a_conflict() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let ns = Namespace::new(TenantId::generate(), AGENT, DataKey::generate().unwrap()).unwrap();
        let v1 = commit(&memory, &ns, None, &[("a.md", b"one")])
            .await
            .unwrap();
        let (left, right) = tokio::join!(
            commit(&memory, &ns, Some(&v1), &[("a.md", b"left")]),
            commit(&memory, &ns, Some(&v1), &[("a.md", b"right")]),
        );
        let outcomes = [left.is_ok(), right.is_ok()];
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "{backend}: {outcomes:?}"
        );
        let loser = if left.is_ok() { right } else { left };
        assert!(matches!(loser, Err(Error::Conflict(_))), "{backend}");
        let head = memory.head(&ns).await.unwrap().unwrap();
        assert_eq!(head.version, 2);
        let content = memory.read_file(&ns, &head, &path("a.md")).await.unwrap();
        assert!(content == b"left" || content == b"right");
    }
}

#[tokio::test]
async fn a_crash_before_the_manifest_leaves_the_previous_version_intact() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let ns = Namespace::new(TenantId::generate(), AGENT, DataKey::generate().unwrap()).unwrap();
        let v1 = commit(&memory, &ns, None, &[("a.md", b"committed")])
            .await
            .unwrap();
        // Chunks of the next version are written, then the "process dies"
        // before the manifest write.
        let mut writer = memory.writer(&ns, path("a.md"), Some(&v1)).unwrap();
        writer.write(&vec![1u8; CHUNK_SIZE + 10]).await.unwrap();
        let orphan = writer.finish().await.unwrap();
        drop(orphan);
        let head = memory.head(&ns).await.unwrap().unwrap();
        assert_eq!(head.version, 1, "{backend}");
        assert_eq!(
            memory.read_file(&ns, &head, &path("a.md")).await.unwrap(),
            b"committed"
        );
        // Orphans of an unfinished commit are kept while they could still
        // be committed...
        assert_eq!(memory.gc(&ns, 10).await.unwrap().chunks, 0, "{backend}");
        // ...and collected once a later version supersedes them.
        let v2 = commit(&memory, &ns, Some(&v1), &[("b.md", b"next")])
            .await
            .unwrap();
        let report = memory.gc(&ns, 10).await.unwrap();
        assert_eq!(report.chunks, 2, "{backend}: the two orphan chunks");
        assert_eq!(
            memory.read_file(&ns, &v2, &path("a.md")).await.unwrap(),
            b"committed"
        );
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_versions_and_destroy_removes_everything() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let ns = Namespace::new(TenantId::generate(), AGENT, DataKey::generate().unwrap()).unwrap();
        let mut head = None;
        for i in 0..5u8 {
            let content = vec![i; INLINE_MAX + 1];
            head = Some(
                commit(&memory, &ns, head.as_ref(), &[("notes.md", &content)])
                    .await
                    .unwrap(),
            );
        }
        let report = memory.gc(&ns, 2).await.unwrap();
        assert_eq!(report.manifests, 3, "{backend}");
        assert_eq!(report.chunks, 3, "{backend}");
        assert_eq!(memory.versions(&ns).await.unwrap(), vec![4, 5]);
        let v4 = memory.manifest(&ns, 4).await.unwrap();
        assert_eq!(
            memory.read_file(&ns, &v4, &path("notes.md")).await.unwrap(),
            vec![3u8; INLINE_MAX + 1]
        );
        assert!(matches!(
            memory.manifest(&ns, 1).await,
            Err(Error::NotFound)
        ));

        let removed = memory.destroy(&ns).await.unwrap();
        assert_eq!(removed, 4, "{backend}: two manifests and two chunks");
        assert!(all_objects(&store).await.is_empty(), "{backend}");
    }
}

#[tokio::test]
async fn many_small_files_are_one_object_until_the_inline_budget_is_spent() {
    for (backend, store, _dir) in backends().await {
        let memory = MemoryStore::new(store.clone());
        let ns = Namespace::new(TenantId::generate(), AGENT, DataKey::generate().unwrap()).unwrap();
        let files: Vec<(MemoryPath, Vec<u8>)> = (0..100)
            .map(|i| {
                (
                    path(&format!("memory/{i}.md")),
                    format!("note {i}").into_bytes(),
                )
            })
            .collect();
        let puts = memory.write_files(&ns, None, files).await.unwrap();
        let v1 = memory.commit(&ns, None, puts, &[]).await.unwrap();
        assert_eq!(
            all_objects(&store).await.len(),
            1,
            "{backend}: one manifest, no chunk objects"
        );
        assert_eq!(
            memory
                .read_file(&ns, &v1, &path("memory/42.md"))
                .await
                .unwrap(),
            b"note 42"
        );

        // Past the inline budget, the largest inline files are written out.
        let big: Vec<(MemoryPath, Vec<u8>)> = (0..1100)
            .map(|i| {
                (
                    path(&format!("bulk/{i}.bin")),
                    vec![(i % 256) as u8; INLINE_MAX],
                )
            })
            .collect();
        let puts = memory.write_files(&ns, Some(&v1), big).await.unwrap();
        let v2 = memory.commit(&ns, Some(&v1), puts, &[]).await.unwrap();
        assert!(
            v2.inline_bytes() <= carapace_api::memory::INLINE_TOTAL_MAX,
            "{backend}"
        );
        assert_eq!(
            memory
                .read_file(&ns, &v2, &path("bulk/1099.bin"))
                .await
                .unwrap(),
            vec![(1099 % 256) as u8; INLINE_MAX]
        );
    }
}
