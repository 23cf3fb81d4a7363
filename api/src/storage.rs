//! The object store, chosen by URL: `file://` (the embedded default),
//! `memory://`, `s3://BUCKET` (AWS, Cloudflare R2, MinIO, ...) configured
//! by the standard `AWS_*` environment variables (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`), `az://CONTAINER` (Azure Blob Storage, by the
//! `AZURE_STORAGE_*` variables: `AZURE_STORAGE_ACCOUNT_NAME`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_ENDPOINT`,
//! `AZURE_STORAGE_USE_EMULATOR`, ...) and `gs://BUCKET` (Google Cloud
//! Storage, by `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`
//! or the instance's metadata server).

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
        let bucket = bare_name(bucket, "s3://BUCKET")?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        // Path-style requests work with every S3-compatible server.
        if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let store = builder.build().context("invalid S3 configuration")?;
        Ok(Arc::new(store))
    } else if let Some(container) = url.strip_prefix("az://") {
        let container = bare_name(container, "az://CONTAINER")?;
        let store = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .build()
            .context("invalid Azure Blob Storage configuration")?;
        Ok(Arc::new(store))
    } else if let Some(bucket) = url.strip_prefix("gs://") {
        let bucket = bare_name(bucket, "gs://BUCKET")?;
        let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .build()
            .context("invalid Google Cloud Storage configuration")?;
        Ok(Arc::new(store))
    } else {
        bail!(
            "unsupported object_store_url scheme (supported: file://, memory://, s3://, az://, gs://)"
        )
    }
}

/// The bucket or container of a URL's rest: one name, no path.
fn bare_name<'a>(rest: &'a str, form: &str) -> anyhow::Result<&'a str> {
    let name = rest.trim_end_matches('/');
    if name.is_empty() || name.contains('/') {
        bail!("object_store_url must be {form} (no path)");
    }
    Ok(name)
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

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn urls_name_one_bucket_and_unknown_schemes_are_refused() {
        for bad in [
            "az://",
            "az://c/path",
            "gs://",
            "gs://b/x",
            "s3://",
            "ftp://x",
        ] {
            assert!(open(bad).is_err(), "{bad}");
        }
        // Credentials for Google Cloud Storage are fetched when first
        // needed: the store itself opens.
        assert!(open("gs://bucket").is_ok());
    }
}
