//! Frames exchanged between a worker and the agent over the sandbox's
//! control socket (the agent's stdin and stdout).
//!
//! A frame is a little-endian `u32` length followed by that many bytes; the
//! first byte is the message tag. Integers are little-endian, byte strings
//! are a `u32` length and the bytes. The decoder never panics and refuses
//! frames over [`MAX_FRAME`]: from the worker's side the agent is hostile
//! code, so everything it sends is checked like any outside input.
//!
//! This file uses std only: it is also compiled into the static agent
//! binary by a bare `rustc`.

use std::io::{self, Read, Write};

/// The largest frame either side accepts (request or reply).
pub const MAX_FRAME: usize = 40 << 20;

/// What the worker asks the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Run a command to completion.
    Exec(ExecRequest),
    /// Write a file (creating parents), replacing it.
    WriteFile {
        id: u64,
        path: Vec<u8>,
        data: Vec<u8>,
    },
    /// Read a file, at most `max` bytes.
    ReadFile { id: u64, path: Vec<u8>, max: u32 },
    /// List the regular files under a directory (recursively, symbolic
    /// links neither followed nor listed), at most `max` of them; answered
    /// by a [`Reply::File`] whose data is an encoded [`Listing`].
    ListFiles { id: u64, root: Vec<u8>, max: u32 },
}

/// One regular file found by [`Request::ListFiles`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Relative to the listed directory, components joined by `/`.
    pub path: Vec<u8>,
    pub size: u64,
    /// Changes whenever the file's content may have changed (its
    /// modification and status-change times and inode, mixed).
    pub stamp: u64,
}

/// The files of a [`Request::ListFiles`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing(pub Vec<Listed>);

impl Listing {
    pub fn encode(&self) -> Vec<u8> {
        let mut enc = Enc(Vec::new());
        enc.u32(u32::try_from(self.0.len()).unwrap_or(u32::MAX));
        for file in &self.0 {
            enc.bytes(&file.path).u64(file.size).u64(file.stamp);
        }
        enc.0
    }

    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(data);
        let n = d.u32()? as usize;
        // Each entry takes at least 20 bytes.
        if n > d.0.len() / 20 {
            return Err(DecodeError::Malformed("listing count"));
        }
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            files.push(Listed {
                path: d.bytes()?,
                size: d.u64()?,
                stamp: d.u64()?,
            });
        }
        d.done()?;
        Ok(Listing(files))
    }
}

/// One command to run inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub id: u64,
    /// Milliseconds before the command's process group is killed.
    pub timeout_ms: u64,
    /// Bytes kept of each of stdout and stderr; the rest is read and dropped.
    pub max_output: u32,
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries; the command sees these and nothing else.
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    pub stdin: Vec<u8>,
    /// Send output as it comes ([`Reply::Output`] frames) instead of in
    /// the final reply (whose stdout and stderr are then empty).
    pub stream: bool,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Sent once, as the agent's first act: the sandbox is running.
    Ready,
    Exec(ExecReply),
    /// A piece of a streamed command's output: `fd` 1 (stdout) or 2
    /// (stderr), in the order it was read from that pipe.
    Output {
        id: u64,
        fd: u8,
        data: Vec<u8>,
    },
    /// Answer to `WriteFile` and `ReadFile`: the data read (empty for a
    /// write) or what went wrong.
    File {
        id: u64,
        result: Result<Vec<u8>, String>,
    },
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal (not by the agent).
    Signaled(i32),
    /// Killed by the agent when its timeout passed.
    TimedOut,
    /// Could not be started; `ExecReply::error` says why.
    SpawnFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReply {
    pub id: u64,
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub error: String,
}

/// A frame that could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    Io(io::Error),
    TooLarge(usize),
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Io(e) => write!(f, "control socket: {e}"),
            DecodeError::TooLarge(n) => write!(f, "frame of {n} bytes is over the limit"),
            DecodeError::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::Io(e)
    }
}

const TAG_EXEC: u8 = 1;
const TAG_WRITE: u8 = 2;
const TAG_READ: u8 = 3;
const TAG_LIST: u8 = 4;
const TAG_READY: u8 = 0x80;
const TAG_EXEC_REPLY: u8 = 0x81;
const TAG_FILE_REPLY: u8 = 0x82;
const TAG_OUTPUT: u8 = 0x83;

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Self {
        Enc(vec![0, 0, 0, 0, tag])
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Callers bound every field far below 4 GiB (MAX_FRAME).
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    fn list(&mut self, v: &[Vec<u8>]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        for item in v {
            self.bytes(item);
        }
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(i32::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>, DecodeError> {
        let n = self.u32()? as usize;
        // Each item takes at least its 4-byte length: a count larger than
        // the rest of the frame allows is a lie, not an allocation request.
        if n > self.0.len() / 4 {
            return Err(DecodeError::Malformed("list count"));
        }
        (0..n).map(|_| self.bytes()).collect()
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError::Malformed("utf-8"))
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes"))
        }
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Exec(e) => {
                let mut enc = Enc::new(TAG_EXEC);
                enc.u64(e.id)
                    .u64(e.timeout_ms)
                    .u32(e.max_output)
                    .list(&e.argv)
                    .list(&e.env)
                    .bytes(&e.cwd)
                    .bytes(&e.stdin)
                    .u8(u8::from(e.stream));
                enc.finish()
            }
            Request::WriteFile { id, path, data } => {
                let mut enc = Enc::new(TAG_WRITE);
                enc.u64(*id).bytes(path).bytes(data);
                enc.finish()
            }
            Request::ReadFile { id, path, max } => {
                let mut enc = Enc::new(TAG_READ);
                enc.u64(*id).bytes(path).u32(*max);
                enc.finish()
            }
            Request::ListFiles { id, root, max } => {
                let mut enc = Enc::new(TAG_LIST);
                enc.u64(*id).bytes(root).u32(*max);
                enc.finish()
            }
        }
    }

    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(frame);
        let request = match d.u8()? {
            TAG_EXEC => Request::Exec(ExecRequest {
                id: d.u64()?,
                timeout_ms: d.u64()?,
                max_output: d.u32()?,
                argv: d.list()?,
                env: d.list()?,
                cwd: d.bytes()?,
                stdin: d.bytes()?,
                stream: d.u8()? != 0,
            }),
            TAG_WRITE => Request::WriteFile {
                id: d.u64()?,
                path: d.bytes()?,
                data: d.bytes()?,
            },
            TAG_READ => Request::ReadFile {
                id: d.u64()?,
                path: d.bytes()?,
                max: d.u32()?,
            },
            TAG_LIST => Request::ListFiles {
                id: d.u64()?,
                root: d.bytes()?,
                max: d.u32()?,
            },
            _ => return Err(DecodeError::Malformed("unknown request")),
        };
        d.done()?;
        Ok(request)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ready => Enc::new(TAG_READY).finish(),
            Reply::Exec(r) => {
                let (kind, code) = match r.outcome {
                    Outcome::Exited(c) => (0, c),
                    Outcome::Signaled(s) => (1, s),
                    Outcome::TimedOut => (2, 0),
                    Outcome::SpawnFailed => (3, 0),
                };
                let mut enc = Enc::new(TAG_EXEC_REPLY);
                enc.u64(r.id)
                    .u8(kind)
                    .i32(code)
                    .bytes(&r.stdout)
                    .bytes(&r.stderr)
                    .u8(u8::from(r.stdout_truncated))
                    .u8(u8::from(r.stderr_truncated))
                    .bytes(r.error.as_bytes());
                enc.finish()
            }
            Reply::Output { id, fd, data } => {
                let mut enc = Enc::new(TAG_OUTPUT);
                enc.u64(*id).u8(*fd).bytes(data);
                enc.finish()
            }
            Reply::File { id, result } => {
                let mut enc = Enc::new(TAG_FILE_REPLY);
                enc.u64(*id);
                match result {
                    Ok(data) => enc.u8(0).bytes(data),
                    Err(e) => enc.u8(1).bytes(e.as_bytes()),
                };
                enc.finish()
            }
        }
    }

    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(frame);
        let reply = match d.u8()? {
            TAG_READY => Reply::Ready,
            TAG_EXEC_REPLY => {
                let id = d.u64()?;
                let kind = d.u8()?;
                let code = d.i32()?;
                let outcome = match kind {
                    0 => Outcome::Exited(code),
                    1 => Outcome::Signaled(code),
                    2 => Outcome::TimedOut,
                    3 => Outcome::SpawnFailed,
                    _ => return Err(DecodeError::Malformed("outcome")),
                };
                Reply::Exec(ExecReply {
                    id,
                    outcome,
                    stdout: d.bytes()?,
                    stderr: d.bytes()?,
                    stdout_truncated: d.u8()? != 0,
                    stderr_truncated: d.u8()? != 0,
                    error: d.string()?,
                })
            }
            TAG_OUTPUT => Reply::Output {
                id: d.u64()?,
                fd: match d.u8()? {
                    fd @ (1 | 2) => fd,
                    _ => return Err(DecodeError::Malformed("output fd")),
                },
                data: d.bytes()?,
            },
            TAG_FILE_REPLY => {
                let id = d.u64()?;
                let result = match d.u8()? {
                    0 => Ok(d.bytes()?),
                    1 => Err(d.string()?),
                    _ => return Err(DecodeError::Malformed("file result")),
                };
                Reply::File { id, result }
            }
            _ => return Err(DecodeError::Malformed("unknown reply")),
        };
        d.done()?;
        Ok(reply)
    }

    /// The request id this reply answers (`None` for `Ready`).
    pub fn id(&self) -> Option<u64> {
        match self {
            Reply::Ready => None,
            Reply::Exec(r) => Some(r.id),
            Reply::Output { id, .. } | Reply::File { id, .. } => Some(*id),
        }
    }
}

/// Reads one frame's payload (without its length), refusing oversized ones.
/// `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Writes an encoded frame (as `encode` returns it) in one call.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(r: Request) {
        let frame = r.encode();
        let got = read_frame(&mut &frame[..])
            .ok()
            .flatten()
            .map(|f| Request::decode(&f));
        assert_eq!(got.and_then(|r| r.ok()), Some(r));
    }

    #[test]
    fn requests_and_replies_roundtrip() {
        roundtrip_request(Request::Exec(ExecRequest {
            id: 7,
            timeout_ms: 1000,
            max_output: 10,
            argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()],
            env: vec![b"A=B".to_vec()],
            cwd: b"/workspace".to_vec(),
            stdin: b"in".to_vec(),
            stream: true,
        }));
        let output = Reply::Output {
            id: 3,
            fd: 2,
            data: b"err".to_vec(),
        };
        assert_eq!(Reply::decode(&output.encode()[4..]).ok(), Some(output));
        assert!(Reply::decode(&[TAG_OUTPUT, 3, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]).is_err());
        roundtrip_request(Request::ReadFile {
            id: 1,
            path: b"a".to_vec(),
            max: 3,
        });
        roundtrip_request(Request::ListFiles {
            id: 4,
            root: b"/memory".to_vec(),
            max: 10,
        });
        let listing = Listing(vec![Listed {
            path: b"a/b.md".to_vec(),
            size: 5,
            stamp: 77,
        }]);
        assert_eq!(Listing::decode(&listing.encode()).ok(), Some(listing));
        // A count the data cannot hold.
        assert!(Listing::decode(&u32::MAX.to_le_bytes()).is_err());
        let reply = Reply::Exec(ExecReply {
            id: 9,
            outcome: Outcome::Signaled(9),
            stdout: b"o".to_vec(),
            stderr: vec![],
            stdout_truncated: true,
            stderr_truncated: false,
            error: String::new(),
        });
        let frame = reply.encode();
        assert_eq!(Reply::decode(&frame[4..]).ok(), Some(reply));
        let file = Reply::File {
            id: 2,
            result: Err("nope".into()),
        };
        assert_eq!(Reply::decode(&file.encode()[4..]).ok(), Some(file));
    }

    #[test]
    fn hostile_frames_are_refused_not_trusted() {
        // A list count far beyond the frame.
        let mut frame = vec![TAG_EXEC];
        frame.extend_from_slice(&[0; 20]);
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Request::decode(&frame).is_err());
        // A byte string longer than the frame.
        let mut frame = vec![TAG_FILE_REPLY];
        frame.extend_from_slice(&[0; 9]);
        frame.extend_from_slice(&1000u32.to_le_bytes());
        assert!(Reply::decode(&frame).is_err());
        // Trailing garbage, unknown tags, empty frames.
        let mut ready = Reply::Ready.encode()[4..].to_vec();
        ready.push(0);
        assert!(Reply::decode(&ready).is_err());
        assert!(Reply::decode(&[0x99]).is_err());
        assert!(Reply::decode(&[]).is_err());
        // An oversized length prefix is refused before allocating.
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
