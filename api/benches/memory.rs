//! Throughput of encrypted memory against the same `object_store` backend
//! without encryption, on `file://`.
//!
//! Prints, one per line (medians of several rounds):
//! - `memory_put_mib_s_{1,64}mib` / `plain_put_mib_s_{1,64}mib`: writing a
//!   file of that size and committing it, encrypted through the memory
//!   store, versus putting the same bytes as 1 MiB objects directly.
//! - `memory_get_mib_s_{1,64}mib` / `plain_get_mib_s_{1,64}mib`: reading it
//!   back chunk by chunk, as a download streams (decrypting and verifying,
//!   `READ_AHEAD` chunks ahead), versus getting the raw objects with the
//!   same read-ahead.
//! - `memory_put_ratio_64mib`, `memory_get_ratio_64mib`: encrypted over
//!   plaintext throughput, from the same run.
//! - `memory_commit_100_files_ms`: writing 100 files of 1 KiB and
//!   committing them as one version (median and p99 over rounds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use carapace_api::crypto::DataKey;
use carapace_api::ids::TenantId;
use carapace_api::memory::{CHUNK_SIZE, Content, MemoryPath, MemoryStore, Namespace};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

const MIB: f64 = 1024.0 * 1024.0;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn p99(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 - 1.0) * 0.99).round() as usize]
}

async fn plain_put(store: &Arc<dyn ObjectStore>, name: &str, data: &[u8]) {
    for (i, chunk) in data.chunks(CHUNK_SIZE).enumerate() {
        store
            .put(
                &ObjectPath::from(format!("plain/{name}/{i:08}")),
                PutPayload::from(chunk.to_vec()),
            )
            .await
            .unwrap();
    }
}

/// The raw objects, fetched with the same read-ahead as memory reads.
async fn plain_get(store: &Arc<dyn ObjectStore>, name: &str, chunks: usize) -> usize {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..chunks)
        .map(|i| async move {
            store
                .get(&ObjectPath::from(format!("plain/{name}/{i:08}")))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        })
        .buffered(carapace_api::memory::READ_AHEAD)
        .fold(0, |total, n| async move { total + n })
        .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let memory = MemoryStore::new(store.clone());
        let ns = Arc::new(
            Namespace::new(
                TenantId::generate(),
                "bench-agent",
                DataKey::generate().unwrap(),
            )
            .unwrap(),
        );
        let mut head = None;
        let mut ratios = (0.0, 0.0);

        for (label, size, rounds) in [("1mib", CHUNK_SIZE, 20), ("64mib", 64 * CHUNK_SIZE, 5)] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (mut put, mut get, mut plain_puts, mut plain_gets) =
                (vec![], vec![], vec![], vec![]);
            for round in 0..rounds {
                let path = MemoryPath::parse(&format!("{label}/{round}.bin")).unwrap();
                let started = Instant::now();
                let mut writer = memory.writer(&ns, path.clone(), head.as_ref()).unwrap();
                writer.write(&data).await.unwrap();
                let entry = writer.finish().await.unwrap();
                let manifest = memory
                    .commit(&ns, head.as_ref(), vec![entry], &[])
                    .await
                    .unwrap();
                put.push(size as f64 / MIB / started.elapsed().as_secs_f64());

                // Read as a download streams: chunk by chunk (a few
                // ahead), not assembled into one buffer.
                let entry = manifest.files[path.as_str()].clone();
                assert!(
                    matches!(entry.content, Content::Chunks { .. }),
                    "benchmark files are chunked"
                );
                let started = Instant::now();
                let read = {
                    use futures_util::StreamExt;
                    memory
                        .chunk_stream(ns.clone(), path.clone(), entry)
                        .fold(
                            0,
                            |total, chunk| async move { total + chunk.unwrap().len() },
                        )
                        .await
                };
                get.push(size as f64 / MIB / started.elapsed().as_secs_f64());
                assert_eq!(read, size);
                head = Some(manifest);

                let name = format!("{label}-{round}");
                let started = Instant::now();
                plain_put(&store, &name, &data).await;
                plain_puts.push(size as f64 / MIB / started.elapsed().as_secs_f64());
                let started = Instant::now();
                let n = plain_get(&store, &name, size.div_ceil(CHUNK_SIZE)).await;
                plain_gets.push(size as f64 / MIB / started.elapsed().as_secs_f64());
                assert_eq!(n, size);
            }
            let (put, get, plain_put_rate, plain_get_rate) = (
                median(put),
                median(get),
                median(plain_puts),
                median(plain_gets),
            );
            println!("memory_put_mib_s_{label}: {put:.1}");
            println!("plain_put_mib_s_{label}: {plain_put_rate:.1}");
            println!("memory_get_mib_s_{label}: {get:.1}");
            println!("plain_get_mib_s_{label}: {plain_get_rate:.1}");
            ratios = (put / plain_put_rate, get / plain_get_rate);
        }
        println!("memory_put_ratio_64mib: {:.3}", ratios.0);
        println!("memory_get_ratio_64mib: {:.3}", ratios.1);

        let small = vec![b'x'; 1024];
        let mut commits = Vec::new();
        for round in 0..30 {
            let files = (0..100)
                .map(|i| {
                    (
                        MemoryPath::parse(&format!("notes/{round}/{i}.md")).unwrap(),
                        small.clone(),
                    )
                })
                .collect();
            let started = Instant::now();
            let puts = memory.write_files(&ns, head.as_ref(), files).await.unwrap();
            head = Some(memory.commit(&ns, head.as_ref(), puts, &[]).await.unwrap());
            commits.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        println!("memory_commit_100_files_ms: {:.2}", median(commits.clone()));
        println!("memory_commit_100_files_p99_ms: {:.2}", p99(commits));
    });
}
