//! The object store, chosen by URL: `file://` (the embedded default),
//! `memory://`, and `s3://BUCKET` (AWS, Cloudflare R2, MinIO, ...)
//! configured by the standard `AWS_*` environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`). `gs://` and `az://` are not built in
//! yet.

use std::sync::Arc;

use anyhow::{Context, bail};
use object_store::{ObjectStore, PutPayload, path::Path as ObjectPath};

/// The object that `/readyz` reads to prove the store answers.
const PROBE: &str = "carapace/readyz-probe";

/// Opens the store named by `url`, creating a local directory if needed.
pub fn open(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            bail!(
                "object_store_url file:// needs an absolute path, e.g. file:///var/lib/carapace/objects"
            );
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("failed to create object store directory {path}"))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(path)
            .with_context(|| format!("failed to open object store directory {path}"))?;
        Ok(Arc::new(store))
    } else if url == "memory://" || url == "memory:///" {
        Ok(Arc::new(object_store::memory::InMemory::new()))
    } else if let Some(bucket) = url.strip_prefix("s3://") {
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty() || bucket.contains('/') {
            bail!("object_store_url must be s3://BUCKET (no path)");
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        // Path-style requests work with every S3-compatible server.
        if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let store = builder.build().context("invalid S3 configuration")?;
        Ok(Arc::new(store))
    } else {
        bail!("unsupported object_store_url scheme (supported: file://, memory://, s3://)")
    }
}

/// Writes the readiness probe object; done once at start.
pub async fn write_probe(store: &dyn ObjectStore) -> anyhow::Result<()> {
    store
        .put(&ObjectPath::from(PROBE), PutPayload::from_static(b"ok"))
        .await
        .context("failed to write to the object store")?;
    Ok(())
}

/// Checks that the store answers by reading the probe object's metadata.
pub async fn check(store: &dyn ObjectStore) -> anyhow::Result<()> {
    match store.head(&ObjectPath::from(PROBE)).await {
        Ok(_) => Ok(()),
        // Someone removed it: writing it again proves the store works.
        Err(object_store::Error::NotFound { .. }) => write_probe(store).await,
        Err(e) => Err(e).context("object store did not answer"),
    }
}
