//! A tar archive read from a request body as it arrives, for memory
//! commits (`memory_sync`): headers checksummed, only regular files,
//! directories, GNU long names and PAX `path` records accepted, every
//! length bounded, the number of headers limited; never a panic, whatever
//! the body holds.

use actix_web::web;
use futures_util::StreamExt;

use crate::error::Error;
use crate::memory::MemoryLimits;

/// A tar block.
pub(super) const BLOCK: usize = 512;

/// Zero bytes after `size` bytes of content, to the next block.
pub(super) fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

pub(super) fn bad_archive(message: String) -> Error {
    Error::Invalid {
        field: "body",
        message,
    }
}

/// A regular file's header, read from an archive.
pub(super) struct TarEntry {
    /// Its path, as the archive spells it.
    pub(super) name: Vec<u8>,
    /// Its content's length.
    pub(super) size: u64,
}

/// Reads a tar archive from a request body as it arrives.
pub(super) struct TarReader {
    body: web::Payload,
    buf: Vec<u8>,
    pos: usize,
    /// Header blocks still allowed (every entry, directories and name
    /// records included, takes at least one): a body cannot go on forever.
    headers_left: usize,
}

impl TarReader {
    pub(super) fn new(body: web::Payload, limits: &MemoryLimits) -> Self {
        TarReader {
            body,
            buf: Vec::new(),
            pos: 0,
            headers_left: limits.max_files.saturating_mul(4).saturating_add(64),
        }
    }

    /// Makes at least `n` unread bytes available; false at the body's end.
    async fn fill(&mut self, n: usize) -> Result<bool, Error> {
        while self.buf.len() - self.pos < n {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::InvalidQuery(format!("failed to read the body: {e}")));
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if !self.fill(n).await? {
            return Err(bad_archive("the archive ends early".to_owned()));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    pub(super) async fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).await.map(|_| ())
    }

    /// Up to `left` bytes of the current file's content (at least one).
    pub(super) async fn content(&mut self, left: u64) -> Result<Vec<u8>, Error> {
        if !self.fill(1).await? {
            return Err(bad_archive("the archive ends early".to_owned()));
        }
        let available = (self.buf.len() - self.pos) as u64;
        let n = usize::try_from(available.min(left).min(1 << 20)).unwrap_or(1 << 20);
        Ok(self.take(n).await?.to_vec())
    }

    /// The next regular file or deletion; `None` at the end-of-archive
    /// block (or a body that ends cleanly between entries).
    pub(super) async fn next_entry(&mut self) -> Result<Option<TarEntry>, Error> {
        let mut long_name: Option<Vec<u8>> = None;
        loop {
            if !self.fill(BLOCK).await? {
                if self.buf.len() == self.pos && long_name.is_none() {
                    return Ok(None);
                }
                return Err(bad_archive("the archive ends early".to_owned()));
            }
            let block = self.take(BLOCK).await?.to_vec();
            if self.headers_left == 0 {
                return Err(Error::LimitReached(
                    "the archive has too many entries".to_owned(),
                ));
            }
            self.headers_left -= 1;
            if block.iter().all(|&b| b == 0) {
                return match long_name {
                    None => Ok(None),
                    Some(_) => Err(bad_archive("a long name without its entry".to_owned())),
                };
            }
            let header = tar::Header::from_byte_slice(&block);
            check_sum(&block, header)?;
            let size = header
                .entry_size()
                .map_err(|_| bad_archive("an entry's size is unreadable".to_owned()))?;
            let kind = header.entry_type();
            match kind {
                tar::EntryType::GNULongName | tar::EntryType::XHeader => {
                    if size > 4096 || long_name.is_some() {
                        return Err(bad_archive(
                            "an oversized or repeated name record".to_owned(),
                        ));
                    }
                    let data = self.take(size as usize).await?.to_vec();
                    self.skip(padding(size)).await?;
                    long_name = Some(if kind == tar::EntryType::XHeader {
                        pax_path(&data)?
                    } else {
                        data.split(|&b| b == 0).next().unwrap_or_default().to_vec()
                    });
                }
                tar::EntryType::Directory => {
                    long_name = None;
                    if size != 0 {
                        return Err(bad_archive("a directory with content".to_owned()));
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let name = match long_name.take() {
                        Some(name) => name,
                        None => header.path_bytes().into_owned(),
                    };
                    return Ok(Some(TarEntry { name, size }));
                }
                other => {
                    return Err(bad_archive(format!(
                        "only regular files and directories may be committed, not {other:?}"
                    )));
                }
            }
        }
    }
}

/// Refuses a header whose checksum is wrong (garbage, not a tar archive).
fn check_sum(block: &[u8], header: &tar::Header) -> Result<(), Error> {
    let stored = header
        .cksum()
        .map_err(|_| bad_archive("not a tar archive (unreadable checksum)".to_owned()))?;
    let computed: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    if stored != computed {
        return Err(bad_archive(
            "not a tar archive (a header checksum is wrong)".to_owned(),
        ));
    }
    Ok(())
}

/// The `path` of a PAX extended header (its records are `LEN key=value\n`);
/// a `size` record is refused (sizes here fit the ordinary header).
fn pax_path(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad_archive("a malformed PAX record".to_owned()))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > space + 1 && n <= rest.len())
            .ok_or_else(|| bad_archive("a malformed PAX record".to_owned()))?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad_archive("a malformed PAX record".to_owned()))?;
        match &record[..eq] {
            b"path" => path = Some(record[eq + 1..].to_vec()),
            b"size" => return Err(bad_archive("PAX sizes are not supported".to_owned())),
            _ => {}
        }
        rest = &rest[len..];
    }
    path.ok_or_else(|| bad_archive("a PAX header without a path".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_paths_are_read_and_sizes_refused() {
        let record = b"18 path=a/long.md\n";
        assert_eq!(pax_path(record).unwrap(), b"a/long.md");
        assert!(pax_path(b"12 size=999\n").is_err());
        assert!(pax_path(b"99 path=x\n").is_err());
        assert!(pax_path(b"nonsense").is_err());
    }
}
