//! A whole version of an agent's memory in one request each way: the tar
//! archive of a version, and a commit of an archive as one version (or
//! nothing), with hostile archives refused cleanly.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

async fn agent(app: &TestApp, key: &str, name: &str) -> String {
    let res = app
        .post("/v1/agents", key, &json!({"name": name, "model": "fast"}))
        .await;
    assert_eq!(res.status(), 201);
    let agent: Value = res.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

/// A tar archive of `(path, content)` entries, as the `tar` crate writes it
/// (GNU long names for long paths).
fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

async fn commit(
    app: &TestApp,
    key: &str,
    agent: &str,
    base: u64,
    body: Vec<u8>,
) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/agents/{agent}/memory/commits?base={base}"),
        key,
    )
    .header("content-type", "application/x-tar")
    .body(body)
    .send()
    .await
    .unwrap()
}

/// The archive of the current version: its version and files.
async fn download(app: &TestApp, key: &str, agent: &str) -> (u64, Vec<(String, Vec<u8>)>) {
    let res = app
        .get(&format!("/v1/agents/{agent}/memory/archive"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-tar");
    let version = res.headers()["x-memory-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = res.bytes().await.unwrap();
    let mut files = Vec::new();
    for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        files.push((path, content));
    }
    (version, files)
}

#[tokio::test]
async fn an_archive_commits_as_one_version_and_comes_back_whole() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let id = agent(&app, &acme.key, "scribe").await;
    // Nothing yet: version 0, an empty archive.
    assert_eq!(download(&app, &acme.key, &id).await, (0, vec![]));

    let long = format!("{}/deep.md", "d".repeat(140));
    let big = vec![7u8; 2 * 1024 * 1024 + 3];
    let body = archive(&[
        ("MEMORY.md", b"remember the milk"),
        ("memory/2026-11-26.md", b"a day"),
        (long.as_str(), b"long name"),
        ("big.bin", &big),
    ]);
    let res = commit(&app, &acme.key, &id, 0, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 1);

    let (version, files) = download(&app, &acme.key, &id).await;
    assert_eq!(version, 1);
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "MEMORY.md",
            "big.bin",
            long.as_str(),
            "memory/2026-11-26.md"
        ]
    );
    assert_eq!(files[1].1, big);
    assert_eq!(files[0].1, b"remember the milk");

    // A second commit replaces one file and deletes another (whiteout):
    // one version, the rest untouched.
    let body = archive(&[
        ("MEMORY.md", b"milk bought"),
        ("memory/.wh.2026-11-26.md", b""),
    ]);
    let res = commit(&app, &acme.key, &id, 1, body).await;
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);
    let (version, files) = download(&app, &acme.key, &id).await;
    assert_eq!(version, 2);
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["MEMORY.md", "big.bin", long.as_str()]);
    assert_eq!(files[0].1, b"milk bought");

    // An older version on request.
    let res = app
        .get(
            &format!("/v1/agents/{id}/memory/archive?version=1"),
            &acme.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-memory-version"], "1");

    // Nothing to change: no new version.
    let res = commit(&app, &acme.key, &id, 2, archive(&[])).await;
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);
    // A base that is not current any more: 409, nothing changes.
    let res = commit(&app, &acme.key, &id, 1, archive(&[("x.md", b"x")])).await;
    let problem = assert_problem(res, 409, "conflict").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("version 2"),
        "{problem}"
    );
    assert_eq!(download(&app, &acme.key, &id).await.0, 2);
}

#[tokio::test]
async fn hostile_archives_change_nothing() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let id = agent(&app, &acme.key, "scribe").await;
    let res = commit(&app, &acme.key, &id, 0, archive(&[("MEMORY.md", b"v1")])).await;
    assert_eq!(res.status(), 200);

    // Paths out of memory, reserved names, duplicates (headers written by
    // hand: the tar crate itself refuses `..`).
    let raw = |path: &[u8], kind: u8, content: &[u8]| {
        let mut block = [0u8; 512];
        block[..path.len()].copy_from_slice(path);
        block[100..107].copy_from_slice(b"0000644");
        let size = format!("{:011o}", content.len());
        block[124..135].copy_from_slice(size.as_bytes());
        block[136..147].copy_from_slice(b"00000000000");
        block[156] = kind;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].copy_from_slice(b"        ");
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut out = block.to_vec();
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    };
    let end = vec![0u8; 1024];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "traversal",
            [raw(b"../../etc/passwd", b'0', b"x"), end.clone()].concat(),
            422,
        ),
        (
            "absolute",
            [raw(b"/etc/passwd", b'0', b"x"), end.clone()].concat(),
            422,
        ),
        (
            "reserved",
            [raw(b"versions/9", b'0', b"x"), end.clone()].concat(),
            422,
        ),
        (
            "symlink",
            [raw(b"link.md", b'2', b""), end.clone()].concat(),
            422,
        ),
        (
            "device",
            [raw(b"dev", b'3', b""), end.clone()].concat(),
            422,
        ),
        (
            "twice",
            [
                raw(b"a.md", b'0', b"1"),
                raw(b"a.md", b'0', b"2"),
                end.clone(),
            ]
            .concat(),
            422,
        ),
        (
            "deletion with content",
            [raw(b".wh.MEMORY.md", b'0', b"x"), end.clone()].concat(),
            422,
        ),
        ("not tar", b"this is not an archive at all".repeat(40), 422),
        // A file cut off in the middle of its content.
        (
            "truncated",
            raw(b"a.md", b'0', &[1u8; 2000])[..1000].to_vec(),
            422,
        ),
    ];
    for (what, body, status) in cases {
        let res = commit(&app, &acme.key, &id, 1, body).await;
        assert_eq!(res.status().as_u16(), status, "{what}");
        let problem: Value = res.json().await.unwrap();
        assert!(problem["detail"].is_string(), "{what}: {problem}");
    }
    // A corrupted checksum.
    let mut bad = raw(b"a.md", b'0', b"x");
    bad[0] = b'b';
    let res = commit(&app, &acme.key, &id, 1, [bad, end.clone()].concat()).await;
    assert_eq!(res.status(), 422);
    // Nothing of it landed.
    let (version, files) = download(&app, &acme.key, &id).await;
    assert_eq!(version, 1);
    assert_eq!(files, vec![("MEMORY.md".to_owned(), b"v1".to_vec())]);
}

#[tokio::test]
async fn an_archive_over_the_quota_is_refused() {
    let app = crate::helpers::spawn_app_with(|args| {
        args.memory = Some(carapace_api::memory::MemoryArgs {
            max_files: Some(3),
            max_file_mib: Some(1),
            max_total_mib: Some(2),
            sync_interval_secs: None,
            keep_versions: None,
        });
    })
    .await;
    let acme = app.create_tenant("Acme").await;
    let id = agent(&app, &acme.key, "scribe").await;
    let mib = vec![1u8; 1 << 20];
    let over_file = vec![1u8; (1 << 20) + 1];
    let res = commit(&app, &acme.key, &id, 0, archive(&[("big", &over_file)])).await;
    assert_problem(res, 413, "payload_too_large").await;
    let res = commit(
        &app,
        &acme.key,
        &id,
        0,
        archive(&[("a", &mib), ("b", &mib), ("c", b"1")]),
    )
    .await;
    assert_problem(res, 409, "limit_reached").await;
    let res = commit(
        &app,
        &acme.key,
        &id,
        0,
        archive(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]),
    )
    .await;
    assert_problem(res, 409, "limit_reached").await;
    let res = commit(
        &app,
        &acme.key,
        &id,
        0,
        archive(&[("a", &mib), ("b", b"2")]),
    )
    .await;
    assert_eq!(res.status(), 200);
    // The single-file API counts the same quota.
    let res = app
        .request(Method::PUT, &format!("/v1/agents/{id}/memory/c"), &acme.key)
        .body(mib.clone())
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "limit_reached").await;
}

/// Every file under a directory, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}

#[tokio::test]
async fn a_refused_archive_leaves_nothing_in_the_store() {
    let app = spawn_app().await;
    let acme = app.create_tenant("Acme").await;
    let id = agent(&app, &acme.key, "scribe").await;
    let objects = app.data_dir.join("objects").join("mem");
    let before = files_under(&objects);
    // Two large files (chunks written as they arrive), then garbage.
    let big = vec![3u8; 3 * 1024 * 1024];
    let mut body = archive(&[("a.bin", &big), ("b.bin", &big)]);
    body.truncate(body.len() - 1024);
    body.extend_from_slice(&[0xAB; 512]);
    let res = commit(&app, &acme.key, &id, 0, body).await;
    assert_eq!(res.status(), 422);
    // Cut off in the middle of the second file's content.
    let mut body = archive(&[("a.bin", &big), ("b.bin", &big)]);
    body.truncate(big.len() + 2048);
    let res = commit(&app, &acme.key, &id, 0, body).await;
    assert_eq!(res.status(), 422);
    // Over the file-count quota after the files were written.
    let app2 = crate::helpers::spawn_app_with(|args| {
        args.memory = Some(carapace_api::memory::MemoryArgs {
            max_files: Some(1),
            ..Default::default()
        });
    })
    .await;
    let t2 = app2.create_tenant("Two").await;
    let id2 = agent(&app2, &t2.key, "scribe").await;
    let objects2 = app2.data_dir.join("objects").join("mem");
    let before2 = files_under(&objects2);
    let res = commit(
        &app2,
        &t2.key,
        &id2,
        0,
        archive(&[("a.bin", &big), ("b.bin", &big)]),
    )
    .await;
    assert_problem(res, 409, "limit_reached").await;
    assert_eq!(files_under(&objects), before);
    assert_eq!(files_under(&objects2), before2);
}

#[tokio::test]
async fn old_versions_are_collected_down_to_the_configured_retention() {
    let app = crate::helpers::spawn_app_with(|args| {
        args.memory = Some(carapace_api::memory::MemoryArgs {
            keep_versions: Some(3),
            ..Default::default()
        });
    })
    .await;
    let acme = app.create_tenant("Acme").await;
    let id = agent(&app, &acme.key, "scribe").await;
    for v in 0..10u64 {
        let res = commit(
            &app,
            &acme.key,
            &id,
            v,
            archive(&[("notes.md", format!("v{v}").as_bytes())]),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    let versions: Value = app
        .get(&format!("/v1/agents/{id}/memory/versions"), &acme.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let numbers: Vec<u64> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [10, 9, 8]);
}
