//! Files in and out of a sandbox's `/workspace`, through its agent.

use std::time::Duration;

use carapace_agent::protocol::{Reply, Request};

use super::{MAX_FILE, Runtime};
use crate::Error;

impl Runtime {
    /// Writes `data` to `path` (relative, inside `/workspace`).
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), Error> {
        let (live, _busy) = self.enter(id)?;
        let path = workspace_path(path)?;
        if data.len() > MAX_FILE as usize {
            return Err(Error::Limits(format!(
                "files are limited to {MAX_FILE} bytes"
            )));
        }
        let request_id = live.control.next_id();
        let request = Request::WriteFile {
            id: request_id,
            path: path.into_bytes(),
            data,
        };
        match live
            .control
            .call(request_id, &request, Duration::from_secs(60))
            .await?
        {
            Reply::File { result: Ok(_), .. } => Ok(()),
            Reply::File { result: Err(e), .. } => Err(Error::File(e)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
    }

    /// Reads `path` (relative, inside `/workspace`).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, Error> {
        let (live, _busy) = self.enter(id)?;
        let path = workspace_path(path)?;
        let request_id = live.control.next_id();
        let request = Request::ReadFile {
            id: request_id,
            path: path.into_bytes(),
            max: MAX_FILE,
        };
        match live
            .control
            .call(request_id, &request, Duration::from_secs(60))
            .await?
        {
            Reply::File {
                result: Ok(data), ..
            } if data.len() <= MAX_FILE as usize => Ok(data),
            Reply::File { result: Ok(_), .. } => {
                Err(Error::Sandbox("the sandbox agent sent too much".into()))
            }
            Reply::File { result: Err(e), .. } => Err(Error::File(e)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
    }
}

/// `/workspace/<path>` for a relative path without `..`, or an error.
fn workspace_path(path: &str) -> Result<String, Error> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 1024
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(Error::File(format!(
            "{path:?} is not a path inside the workspace"
        )));
    }
    Ok(format!("/workspace/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::workspace_path;

    #[test]
    fn workspace_paths_stay_in_the_workspace() {
        assert_eq!(
            workspace_path("a/b.txt").ok().as_deref(),
            Some("/workspace/a/b.txt")
        );
        assert_eq!(workspace_path("/a").ok().as_deref(), Some("/workspace/a"));
        for bad in [
            "",
            "/",
            "..",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert!(workspace_path(bad).is_err(), "{bad:?}");
        }
        assert!(workspace_path(&"a/".repeat(600)).is_err());
    }
}
