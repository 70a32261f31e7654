//! Request and answer bodies too large to hold in memory (backups): a
//! request body read from a file as it is sent, and an answer written to a
//! file as it arrives, within a limit.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// Bytes of a file sent per frame.
const FILE_FRAME_BYTES: usize = 256 * 1024;

/// A request body: bytes in memory, or a file streamed from its start.
pub(crate) enum RequestBody {
    /// Held whole (every route but a backup restore).
    Full(Full<Bytes>),
    /// Read as it is sent.
    File(FileBody),
}

impl From<Full<Bytes>> for RequestBody {
    fn from(body: Full<Bytes>) -> Self {
        Self::Full(body)
    }
}

/// A file's bytes, frame by frame, with its length announced.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Box<[u8]>,
}

impl FileBody {
    /// The whole of the file at `path`, as it is now.
    pub(crate) async fn open(path: &Path) -> io::Result<Self> {
        let file = tokio::fs::File::open(path).await?;
        let remaining = file.metadata().await?.len();
        Ok(Self {
            file,
            remaining,
            buffer: vec![0; FILE_FRAME_BYTES].into_boxed_slice(),
        })
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let take = usize::try_from(this.remaining)
            .unwrap_or(usize::MAX)
            .min(this.buffer.len());
        let mut buffer = ReadBuf::new(&mut this.buffer[..take]);
        ready!(Pin::new(&mut this.file).poll_read(context, &mut buffer))?;
        let read = buffer.filled();
        if read.is_empty() {
            // Shorter than announced: the server must see the body break
            // off, not a short one that looks whole.
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was sent",
            ))));
        }
        this.remaining -= read.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Self::Full(body) => Pin::new(body)
                .poll_frame(context)
                .map_err(|never| match never {}),
            Self::File(body) => Pin::new(body).poll_frame(context),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(body) => body.is_end_stream(),
            Self::File(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(body) => body.size_hint(),
            Self::File(body) => body.size_hint(),
        }
    }
}

/// Writes the body of `response` to `out` as it arrives, failing once it
/// passes `limit` bytes; returns its length.
pub(crate) async fn write_body(
    response: hyper::Response<hyper::body::Incoming>,
    out: &mut tokio::fs::File,
    limit: u64,
) -> Result<u64, String> {
    let mut body = response.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        out.write_all(&data).await.map_err(|e| e.to_string())?;
    }
    out.flush().await.map_err(|e| e.to_string())?;
    Ok(written)
}

/// Creates (or truncates) the file at `path`, readable by its owner alone
/// (mode 0600): a backup is ciphertext, but its metadata is not public.
pub(crate) async fn create_private(path: &Path) -> io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}
