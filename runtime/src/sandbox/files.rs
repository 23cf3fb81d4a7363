//! Files in and out of a sandbox's `/workspace` and `/memory`, through its
//! agent.

use std::time::Duration;

use carapace_agent::protocol::{Listing, Reply, Request};

use super::{MAX_FILE, Runtime};
use crate::Error;

/// A directory of the sandbox that files move in and out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `/workspace`: the sandbox's scratch space (the sandbox file API).
    Workspace,
    /// `/memory`: the agent's memory, synced with the encrypted store.
    Memory,
}

impl Area {
    /// The directory inside the sandbox.
    pub fn dir(self) -> &'static str {
        match self {
            Area::Workspace => "/workspace",
            Area::Memory => "/memory",
        }
    }
}

impl Runtime {
    /// Writes `data` to `path` (relative, inside `/workspace`).
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), Error> {
        self.write_file_in(id, Area::Workspace, path, data).await
    }

    /// Reads `path` (relative, inside `/workspace`).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, Error> {
        self.read_file_in(id, Area::Workspace, path).await
    }

    /// The regular files under `area` (symbolic links neither followed
    /// nor listed), refusing more than `max`. What the sandbox says is
    /// hostile: paths are checked by whoever uses them.
    pub async fn list_files(&self, id: &str, area: Area, max: u32) -> Result<Listing, Error> {
        let (live, _busy) = self.enter(id)?;
        let request_id = live.control.next_id();
        let request = Request::ListFiles {
            id: request_id,
            root: area.dir().as_bytes().to_vec(),
            max,
        };
        match live
            .control
            .call(request_id, &request, Duration::from_secs(60))
            .await?
        {
            Reply::File {
                result: Ok(data), ..
            } => match Listing::decode(&data) {
                Ok(listing) if listing.0.len() <= max as usize => Ok(listing),
                _ => Err(Error::Sandbox(
                    "the sandbox agent sent a bad listing".into(),
                )),
            },
            Reply::File { result: Err(e), .. } => Err(Error::File(e)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
    }

    /// Writes `data` to `path` (relative, inside `area`).
    pub async fn write_file_in(
        &self,
        id: &str,
        area: Area,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        let (live, _busy) = self.enter(id)?;
        let path = area_path(area, path)?;
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

    /// Reads `path` (relative, inside `area`).
    pub async fn read_file_in(&self, id: &str, area: Area, path: &str) -> Result<Vec<u8>, Error> {
        let (live, _busy) = self.enter(id)?;
        let path = area_path(area, path)?;
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

/// `<area>/<path>` for a relative path without `..`, or an error.
fn area_path(area: Area, path: &str) -> Result<String, Error> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 1024
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(Error::File(format!(
            "{path:?} is not a path inside {}",
            area.dir()
        )));
    }
    Ok(format!("{}/{trimmed}", area.dir()))
}

#[cfg(test)]
mod tests {
    use super::{Area, area_path};

    fn workspace_path(path: &str) -> Result<String, crate::Error> {
        area_path(Area::Workspace, path)
    }

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
        assert_eq!(
            area_path(Area::Memory, "notes/today.md").ok().as_deref(),
            Some("/memory/notes/today.md")
        );
    }
}
