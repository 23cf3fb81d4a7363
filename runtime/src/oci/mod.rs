//! OCI images from image layouts on disk (a directory, or a tar of one):
//! the index, the manifest (through a multi-platform index if need be:
//! linux/amd64 is chosen), the layers, each blob checked against its
//! digest and size, and unpacked by [`unpack`], each layer into a
//! directory of its own, named by its digest: images share the layers they
//! have in common, and a sandbox's root is an overlayfs of them.

pub mod unpack;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Error;
pub use unpack::Limits;

/// Largest JSON document (index, manifest) read from a layout.
const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// What unpacking reports as it goes: `(layer number from 1, layers,
/// bytes of this layer read so far, its size)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, u64, u64);

fn bad(message: impl Into<String>) -> Error {
    Error::Image(message.into())
}

/// `sha256:<64 hex>` only: the digest names a file, so nothing else may
/// pass.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| bad(format!("unsupported or malformed digest {digest:?}")))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// Reads a small blob whole, checking its size and digest.
fn read_json_blob(layout: &Path, d: &Descriptor) -> Result<Vec<u8>, Error> {
    if d.size > MAX_JSON {
        return Err(bad(format!("{} is larger than {MAX_JSON} bytes", d.digest)));
    }
    let mut data = Vec::new();
    fs::File::open(blob_path(layout, &d.digest)?)
        .map_err(|e| bad(format!("blob {} missing: {e}", d.digest)))?
        .take(d.size + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("blob {}: {e}", d.digest)))?;
    check(&d.digest, d.size, data.len() as u64, &Sha256::digest(&data))?;
    Ok(data)
}

fn check(digest: &str, size: u64, got_size: u64, got: &[u8]) -> Result<(), Error> {
    let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
    if got_size != size || digest.strip_prefix("sha256:") != Some(hex.as_str()) {
        return Err(bad(format!(
            "blob {digest} does not match its digest or size"
        )));
    }
    Ok(())
}

/// Fails once more than `left` bytes have been read.
struct Budget<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("the layer decompresses to more than the image may hold")
        })?;
        Ok(n)
    }
}

/// Reads a layer blob through a hasher, counting bytes and reporting
/// progress every 4 MiB.
struct Hashing<'a, R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
    layer: (usize, usize),
    progress: Progress<'a>,
    reported: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other("layer is larger than its descriptor says"));
        }
        if self.read - self.reported >= 4 << 20 {
            self.reported = self.read;
            (self.progress)(self.layer.0, self.layer.1, self.read, self.limit);
        }
        Ok(n)
    }
}

/// The manifest digest an image layout's `reference` (or its only image)
/// points at.
pub fn manifest_digest(layout: &Path, reference: Option<&str>) -> Result<String, Error> {
    Ok(select_manifest(layout, reference)?.digest)
}

fn select_manifest(layout: &Path, reference: Option<&str>) -> Result<Descriptor, Error> {
    let marker = fs::read_to_string(layout.join("oci-layout"))
        .map_err(|_| bad(format!("{} is not an OCI image layout", layout.display())))?;
    if !marker.contains("imageLayoutVersion") {
        return Err(bad("the oci-layout file is malformed"));
    }
    let index =
        fs::File::open(layout.join("index.json")).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut text = Vec::new();
    index
        .take(MAX_JSON)
        .read_to_end(&mut text)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut candidates: Vec<Descriptor> = index
        .manifests
        .into_iter()
        .filter(|d| match reference {
            Some(r) => {
                d.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(r)
            }
            None => true,
        })
        .collect();
    let chosen = match candidates.len() {
        1 => candidates.remove(0),
        0 => {
            return Err(bad(format!(
                "no image {:?} in the layout",
                reference.unwrap_or("")
            )));
        }
        _ => return Err(bad("the layout holds several images: name one")),
    };
    if chosen.media_type.ends_with("image.index.v1+json") {
        let nested: Index = serde_json::from_slice(&read_json_blob(layout, &chosen)?)
            .map_err(|e| bad(format!("image index: {e}")))?;
        return nested
            .manifests
            .into_iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| bad("the image has no linux/amd64 variant"));
    }
    Ok(chosen)
}

/// The layers of image `reference` of the layout at `layout`, each
/// unpacked (once: the cache is content-addressed, so images share the
/// layers they have in common) into `layers/sha256-<digest>`, every blob
/// checked; their directories, bottom layer first.
pub fn unpack_layers(
    layout: &Path,
    reference: Option<&str>,
    layers: &Path,
    limits: &Limits,
    progress: Progress<'_>,
) -> Result<(Vec<PathBuf>, unpack::Totals), Error> {
    let descriptor = select_manifest(layout, reference)?;
    let manifest: Manifest = serde_json::from_slice(&read_json_blob(layout, &descriptor)?)
        .map_err(|e| bad(format!("manifest: {e}")))?;
    if manifest.layers.len() > limits.max_layers {
        return Err(bad(format!(
            "the image has more than {} layers",
            limits.max_layers
        )));
    }
    fs::create_dir_all(layers).map_err(|e| bad(format!("create {}: {e}", layers.display())))?;
    let mut totals = unpack::Totals::default();
    let mut dirs = Vec::new();
    let count = manifest.layers.len();
    for (i, layer) in manifest.layers.iter().enumerate() {
        if layer.size > limits.max_layer_bytes {
            return Err(bad(format!(
                "layer {} is larger than {} bytes",
                layer.digest, limits.max_layer_bytes
            )));
        }
        let path = blob_path(layout, &layer.digest)?;
        let hex = layer.digest.trim_start_matches("sha256:");
        let dir = layers.join(format!("sha256-{hex}"));
        if dir.is_dir() {
            progress(i + 1, count, layer.size, layer.size);
            dirs.push(dir);
            continue;
        }
        static UNPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UNPACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = layers.join(format!(".layer-{}-{n}-{}", std::process::id(), &hex[..12]));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| bad(format!("create {}: {e}", tmp.display())))?;
        let unpacked = unpack_one(
            &path,
            layer,
            &tmp,
            limits,
            &mut totals,
            (i + 1, count),
            &mut *progress,
        );
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Another unpacker landed the same layer first.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(bad(format!("cannot install layer {}: {e}", layer.digest))),
        }
        progress(i + 1, count, layer.size, layer.size);
        dirs.push(dir);
    }
    Ok((dirs, totals))
}

/// Unpacks one layer blob into `dir`, checking its digest and size.
fn unpack_one(
    path: &Path,
    layer: &Descriptor,
    dir: &Path,
    limits: &Limits,
    totals: &mut unpack::Totals,
    position: (usize, usize),
    progress: Progress<'_>,
) -> Result<(), Error> {
    let file =
        fs::File::open(path).map_err(|e| bad(format!("layer {} missing: {e}", layer.digest)))?;
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(bad(format!("layer {} is not a regular file", layer.digest)));
    }
    progress(position.0, position.1, 0, layer.size);
    let mut hashing = Hashing {
        inner: file,
        hasher: Sha256::new(),
        read: 0,
        limit: layer.size,
        layer: position,
        progress,
        reported: 0,
    };
    let gzip = layer.media_type.ends_with("+gzip") || layer.media_type.ends_with(".gzip");
    if layer.media_type.ends_with("+zstd") {
        return Err(bad("zstd-compressed layers are not supported"));
    }
    // Everything a layer decompresses to is counted, headers and skipped
    // entries included, so a decompression bomb stops at the image's
    // budget (plus slack for metadata).
    let budget =
        (limits.max_unpacked_bytes + limits.max_metadata_bytes).saturating_sub(totals.decompressed);
    if gzip {
        let mut reader = Budget {
            inner: flate2::read::GzDecoder::new(&mut hashing),
            left: budget,
        };
        unpack::apply_layer(dir, &mut reader, limits, totals)?;
        totals.decompressed += budget - reader.left;
    } else {
        let mut reader = Budget {
            inner: &mut hashing,
            left: budget,
        };
        unpack::apply_layer(dir, &mut reader, limits, totals)?;
        totals.decompressed += budget - reader.left;
    }
    // The tar reader may stop at the end-of-archive marker: read the rest
    // so that the digest covers the whole blob.
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| bad(format!("layer {}: {e}", layer.digest)))?;
    let read = hashing.read;
    let digest = hashing.hasher.finalize();
    check(&layer.digest, layer.size, read, &digest)
}
