//! OCI image layouts made by the test: a layered image that runs in a real
//! sandbox, and malicious layers that must be refused without writing
//! anything outside the image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carapace_runtime::egress::Policy;
use carapace_runtime::oci::{self, Limits};
use carapace_runtime::{Exec, Limits as SandboxLimits, Runtime, RuntimeConfig, SandboxSpec};
use sha2::{Digest, Sha256};

/// One tar entry, with its name written raw (so `..` can be planted).
struct Entry {
    name: &'static str,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
    link: &'static str,
}

fn file(name: &'static str, data: &[u8]) -> Entry {
    Entry {
        name,
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data: data.to_vec(),
        link: "",
    }
}

fn link(name: &'static str, kind: tar::EntryType, target: &'static str) -> Entry {
    Entry {
        name,
        kind,
        mode: 0o777,
        data: vec![],
        link: target,
    }
}

fn tar_of(entries: Vec<Entry>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap_or_else(|| panic!("gnu header"));
            gnu.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            gnu.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        header.set_entry_type(e.kind);
        header.set_mode(e.mode);
        header.set_size(e.data.len() as u64);
        if e.kind == tar::EntryType::Char {
            header
                .set_device_major(1)
                .unwrap_or_else(|err| panic!("{err}"));
            header
                .set_device_minor(3)
                .unwrap_or_else(|err| panic!("{err}"));
        }
        header.set_cksum();
        builder
            .append(&header, &e.data[..])
            .unwrap_or_else(|err| panic!("tar: {err}"));
    }
    builder
        .into_inner()
        .unwrap_or_else(|err| panic!("tar: {err}"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap_or_else(|e| panic!("{e}"));
    enc.finish().unwrap_or_else(|e| panic!("{e}"))
}

fn digest(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Writes an image layout with these layers (`(gzip?, tar bytes)`); the
/// layout's directory.
fn layout(dir: &Path, layers: Vec<(bool, Vec<u8>)>) -> PathBuf {
    let root = dir.join("layout");
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("{e}"));
    let put = |data: &[u8]| {
        let d = digest(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data)
            .unwrap_or_else(|e| panic!("{e}"));
        d
    };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = put(config);
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|(gz, data)| {
            let blob = if *gz { gzip(data) } else { data.clone() };
            let media = if *gz {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            serde_json::json!({"mediaType": media, "digest": put(&blob), "size": blob.len()})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "test:1"},
        }],
    });
    std::fs::write(root.join("index.json"), index.to_string()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    root
}

fn unpack(
    layout: &Path,
    root: &Path,
    limits: &Limits,
) -> Result<oci::unpack::Totals, carapace_runtime::Error> {
    oci::unpack_layers(layout, None, root, limits, &mut |_, _, _, _| {}).map(|(_, totals)| totals)
}

/// The one layer directory unpacked under `layers`.
fn only_layer(layers: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(layers)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sha256-"))
        })
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layered_image_runs_in_a_sandbox() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| panic!("busybox: {e}"));
    let mut bin = file("bin/busybox", &busybox);
    bin.mode = 0o755;
    let mut suid = file("usr/bin/suid", b"#!/bin/sh\n");
    suid.mode = 0o4755;
    let mut private = file("etc/private", b"owner only\n");
    private.mode = 0o600;
    let base = tar_of(vec![
        bin,
        link("bin/sh", tar::EntryType::Symlink, "busybox"),
        link("bin/cat", tar::EntryType::Symlink, "busybox"),
        link("bin/ls", tar::EntryType::Symlink, "busybox"),
        link("bin/stat", tar::EntryType::Symlink, "busybox"),
        file("etc/greeting", b"hello from layer 1\n"),
        link("etc/greeting2", tar::EntryType::Link, "etc/greeting"),
        file("etc/old", b"to be whited out\n"),
        suid,
        private,
    ]);
    let top = tar_of(vec![
        file("etc/.wh.old", b""),
        file("/abs/path", b"absolute made relative\n"),
    ]);
    let layout = layout(dir.path(), vec![(false, base), (true, top)]);
    let runtime = Runtime::start(RuntimeConfig {
        state_dir: dir.path().join("state"),
        image_dir: dir.path().join("images"),
        helper: env!("CARGO_BIN_EXE_carapace-sandbox-helper").into(),
        helper_args: vec![],
        busybox: "/bin/busybox".into(),
        pool_size: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let root = runtime
        .ensure_image(
            layout.clone(),
            Some("test:1".into()),
            move |layer, layers, read, size| {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((layer, layers, read, size));
            },
        )
        .await
        .unwrap_or_else(|e| panic!("unpack: {e}"));
    let progress = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        progress.iter().any(|p| p.0 == 2 && p.1 == 2 && p.2 == p.3),
        "progress reported: {progress:?}"
    );
    // The second time comes from the cache.
    let again = runtime
        .ensure_image(layout, None, |_, _, _, _| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(root, again);

    let spec = SandboxSpec {
        limits: SandboxLimits::default(),
        egress: Policy::default(),
        image: Some(root),
    };
    runtime
        .create("oci", spec)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let exec = Exec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /etc/greeting /etc/greeting2 /abs/path /etc/private; ls /etc/old 2>&1; stat -c %a /usr/bin/suid".into(),
        ],
        env: vec![],
        stdin: vec![],
        timeout: Duration::from_secs(10),
    };
    let r = runtime
        .exec("oci", exec)
        .await
        .unwrap_or_else(|e| panic!("exec: {e}"));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.starts_with(
            "hello from layer 1\nhello from layer 1\nabsolute made relative\nowner only\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("No such file"),
        "the whiteout removed etc/old: {out}"
    );
    assert!(out.trim_end().ends_with("755"), "setuid cleared: {out}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mnt = dir.path().join("images/mnt");
    assert!(
        mounts.contains(&mnt.display().to_string()),
        "the image is mounted while the sandbox runs"
    );
    runtime.shutdown().await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&mnt.display().to_string()),
        "deleting the sandbox unmounts its image"
    );
}

#[test]
fn malicious_layers_are_refused_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap_or_else(|e| panic!("{e}"));
    let outside_str: &'static str = Box::leak(outside.display().to_string().into_boxed_str());
    let limits = Limits::default();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "traversal",
            vec![file("../outside/pwned", b"x")],
            "leaves the root",
        ),
        (
            "deep traversal",
            vec![file("a/b/../../../outside/pwned", b"x")],
            "leaves the root",
        ),
        (
            "symlink escape",
            vec![
                link("escape", tar::EntryType::Symlink, outside_str),
                file("escape/pwned", b"x"),
            ],
            "symbolic link",
        ),
        (
            "relative symlink escape",
            vec![
                link("up", tar::EntryType::Symlink, "../outside"),
                file("up/pwned", b"x"),
            ],
            "symbolic link",
        ),
        (
            "hard link out",
            vec![link("h", tar::EntryType::Link, "../outside/target")],
            "leaves the root",
        ),
        (
            "hard link to a missing file",
            vec![link("h", tar::EntryType::Link, "nothing")],
            "missing",
        ),
        // `.wh...` hides "..": it would delete the directory holding the image.
        (
            "whiteout of the parent",
            vec![file("a/keep", b"x"), file("a/.wh...", b"")],
            "not a valid whiteout",
        ),
        (
            "whiteout of the root's parent",
            vec![file(".wh...", b"")],
            "not a valid whiteout",
        ),
    ];
    for (i, (what, entries, expected)) in cases.into_iter().enumerate() {
        let case_dir = dir.path().join(format!("case{i}"));
        std::fs::create_dir(&case_dir).unwrap_or_else(|e| panic!("{e}"));
        let layout = layout(&case_dir, vec![(false, tar_of(entries))]);
        let result = unpack(&layout, &case_dir.join("root"), &limits);
        let message = match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: must be refused"),
        };
        assert!(message.contains(expected), "{what}: {message}");
        assert!(
            !outside.join("pwned").exists(),
            "{what} wrote outside the image"
        );
        assert!(
            layout.join("index.json").exists() && outside.exists(),
            "{what} deleted outside the image"
        );
    }

    // A layer that plants a link where the agent goes must not make the
    // worker write through it.
    let case_dir = dir.path().join("agent-link");
    std::fs::create_dir(&case_dir).unwrap_or_else(|e| panic!("{e}"));
    let target: &'static str = Box::leak(
        outside
            .join("overwritten")
            .display()
            .to_string()
            .into_boxed_str(),
    );
    let planted = tar_of(vec![
        Entry {
            name: ".carapace",
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: vec![],
            link: "",
        },
        link(".carapace/carapace-agent", tar::EntryType::Symlink, target),
    ]);
    let layout_dir = layout(&case_dir, vec![(false, planted)]);
    let root = carapace_runtime::image::ensure_oci(
        &case_dir.join("cache"),
        &layout_dir,
        None,
        &limits,
        &mut |_, _, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !outside.join("overwritten").exists(),
        "the worker wrote through the planted link"
    );
    // The agent's own layer, laid over the image's, holds the real agent.
    let agent = std::fs::symlink_metadata(root[0].join(".carapace/carapace-agent"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        agent.is_file() && agent.len() > 100_000,
        "the real agent replaced the link"
    );

    // Device nodes are skipped, not created.
    let case_dir = dir.path().join("devices");
    std::fs::create_dir(&case_dir).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = link("dev/mem", tar::EntryType::Char, "");
    dev.mode = 0o666;
    let layout_dir = layout(
        &case_dir,
        vec![(false, tar_of(vec![dev, file("ok", b"fine")]))],
    );
    let totals =
        unpack(&layout_dir, &case_dir.join("root"), &limits).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(totals.skipped, 1);
    let layer = only_layer(&case_dir.join("root"));
    assert!(!layer.join("dev/mem").exists());
    assert!(layer.join("ok").exists());
}

#[test]
fn oversized_tampered_and_malformed_images_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let case = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("{e}"));
        d
    };

    // A file larger than the image may unpack to.
    let d = case("huge");
    let layout_dir = layout(
        &d,
        vec![(true, tar_of(vec![file("big", &vec![0u8; 2 << 20])]))],
    );
    let small = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = unpack(&layout_dir, &d.join("root"), &small)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("more than"), "{e}");

    // A header announcing far more than the blob holds.
    let d = case("lying");
    let mut data = tar_of(vec![file("big", b"tiny")]);
    data[124..136].copy_from_slice(b"77777777777\0"); // size field: 8 GiB
    let mut header = [0u8; 512];
    header.copy_from_slice(&data[..512]);
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    data[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let layout_dir = layout(&d, vec![(false, data)]);
    assert!(unpack(&layout_dir, &d.join("root"), &Limits::default()).is_err());

    // A decompression bomb hidden in entries that are never written (a
    // device node carrying 8 MiB of zeros).
    let d = case("bomb");
    let mut dev = link("dev/zero", tar::EntryType::Char, "");
    dev.data = vec![0u8; 8 << 20];
    let layout_dir = layout(&d, vec![(true, tar_of(vec![dev]))]);
    let tight = Limits {
        max_unpacked_bytes: 1 << 20,
        max_metadata_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = unpack(&layout_dir, &d.join("root"), &tight)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("decompresses to more"), "{e}");

    // Too many layers.
    let d = case("layers");
    let layers = (0..3)
        .map(|_| (false, tar_of(vec![file("f", b"x")])))
        .collect();
    let layout_dir = layout(&d, layers);
    let few = Limits {
        max_layers: 2,
        ..Limits::default()
    };
    let e = unpack(&layout_dir, &d.join("root"), &few)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("layers"), "{e}");

    // A layer changed after the manifest was written.
    let d = case("tampered");
    let layout_dir = layout(&d, vec![(false, tar_of(vec![file("f", b"original")]))]);
    for blob in std::fs::read_dir(layout_dir.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let bytes = std::fs::read(blob.path()).unwrap_or_default();
        if bytes.len() > 512 && bytes[..1].iter().all(|b| *b == b'f') {
            let mut changed = bytes.clone();
            let at = changed
                .windows(8)
                .position(|w| w == b"original")
                .unwrap_or(600);
            changed[at] = b'O';
            std::fs::write(blob.path(), changed).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let e = unpack(&layout_dir, &d.join("root"), &Limits::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("does not match"), "{e}");

    // A digest that tries to name a path.
    let d = case("digest");
    let layout_dir = layout(&d, vec![(false, tar_of(vec![file("f", b"x")]))]);
    let index = std::fs::read_to_string(layout_dir.join("index.json")).unwrap_or_default();
    let bad = index.replace(
        &index[index.find("sha256:").unwrap_or(0)..index.find("sha256:").unwrap_or(0) + 71],
        "sha256:../../../../etc/passwd",
    );
    std::fs::write(layout_dir.join("index.json"), bad).unwrap_or_else(|e| panic!("{e}"));
    let e = unpack(&layout_dir, &d.join("root"), &Limits::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("malformed digest"), "{e}");

    // Not a layout at all.
    let d = case("none");
    let e = unpack(&d, &d.join("root"), &Limits::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not an OCI image layout"), "{e}");
}

#[test]
fn a_layout_shipped_as_a_tar_file_is_used_and_links_in_it_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let layout_dir = layout(
        dir.path(),
        vec![(true, tar_of(vec![file("etc/motd", b"from a tar\n")]))],
    );
    let archive = dir.path().join("layout.tar");
    let mut builder =
        tar::Builder::new(std::fs::File::create(&archive).unwrap_or_else(|e| panic!("{e}")));
    builder
        .append_dir_all(".", &layout_dir)
        .unwrap_or_else(|e| panic!("{e}"));
    builder.finish().unwrap_or_else(|e| panic!("{e}"));
    drop(builder);
    let cache = dir.path().join("cache");
    let root = carapace_runtime::image::ensure_oci(
        &cache,
        &archive,
        None,
        &Limits::default(),
        &mut |_, _, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(root[1].join("etc/motd")).unwrap_or_default(),
        "from a tar\n"
    );
    assert!(
        root[0].join(".carapace/carapace-agent").exists(),
        "the agent is added"
    );
    // Nothing of the extraction is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A layout archive with a link in it (it could make a host file a blob).
    let evil = dir.path().join("evil.tar");
    std::fs::write(
        &evil,
        tar_of(vec![
            file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            link("index.json", tar::EntryType::Symlink, "/etc/hostname"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = carapace_runtime::image::ensure_oci(
        &cache,
        &evil,
        None,
        &Limits::default(),
        &mut |_, _, _, _| {},
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("not a file or directory"), "{e}");
}

#[test]
fn images_share_the_layers_they_have_in_common_and_whiteouts_become_overlay_markers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = tar_of(vec![
        file("etc/base", b"shared\n"),
        file("etc/gone", b"x"),
        file("opaque/old", b"x"),
    ]);
    let top_a = tar_of(vec![
        file("etc/a", b"a\n"),
        file("etc/.wh.gone", b""),
        file("opaque/.wh..wh..opq", b""),
    ]);
    let top_b = tar_of(vec![file("etc/b", b"b\n")]);
    let a = layout(
        &dir.path().join("a").tap_mkdir(),
        vec![(true, base.clone()), (false, top_a)],
    );
    let b = layout(
        &dir.path().join("b").tap_mkdir(),
        vec![(true, base), (false, top_b)],
    );
    let cache = dir.path().join("cache");
    let limits = Limits::default();
    let lower_a =
        carapace_runtime::image::ensure_oci(&cache, &a, None, &limits, &mut |_, _, _, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
    let lower_b =
        carapace_runtime::image::ensure_oci(&cache, &b, None, &limits, &mut |_, _, _, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
    // Agent layer, top layer, base layer; the base and agent layers are
    // the same directories for both images.
    assert_eq!((lower_a.len(), lower_b.len()), (3, 3));
    assert_eq!(lower_a[0], lower_b[0]);
    assert_eq!(lower_a[2], lower_b[2]);
    assert_ne!(lower_a[1], lower_b[1]);
    let layers = std::fs::read_dir(cache.join("layers"))
        .into_iter()
        .flatten()
        .flatten()
        .count();
    assert_eq!(layers, 3, "three distinct layers unpacked once each");
    // A layer listed twice (empty layers often are) is stacked once, at
    // its topmost place: overlayfs refuses a directory twice.
    let twice = tar_of(vec![file("etc/twice", b"t\n")]);
    let c = layout(
        &dir.path().join("c").tap_mkdir(),
        vec![
            (false, twice.clone()),
            (false, tar_of(vec![file("etc/c", b"c\n")])),
            (false, twice),
        ],
    );
    let lower_c =
        carapace_runtime::image::ensure_oci(&cache, &c, None, &limits, &mut |_, _, _, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        lower_c.len(),
        3,
        "agent, the repeated layer once (on top), the middle one: {lower_c:?}"
    );
    assert!(lower_c[1].join("etc/twice").exists() && lower_c[2].join("etc/c").exists());
    // The whiteout is a 0/0 character device, the opaque directory marked.
    use std::os::unix::fs::FileTypeExt;
    let gone =
        std::fs::symlink_metadata(lower_a[1].join("etc/gone")).unwrap_or_else(|e| panic!("{e}"));
    assert!(gone.file_type().is_char_device());
    let opaque = rustix::fs::getxattr(
        lower_a[1].join("opaque"),
        "trusted.overlay.opaque",
        &mut [0u8; 4],
    );
    assert_eq!(opaque.ok(), Some(1));
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap_or_else(|e| panic!("{e}"));
        self
    }
}
