//! The wire of a binary upgrade: length-prefixed JSON frames over a Unix stream socket, the
//! first of which carries the listening sockets and the state-directory lock as `SCM_RIGHTS`.
//! Blocking, with read timeouts: it runs once per upgrade on a thread of its own.
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most descriptors one frame carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;
/// The largest frame accepted: a health snapshot of many thousands of backends fits.
const MAX_FRAME: usize = 16 << 20;

/// A broken handover conversation.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not the expected frame.
    #[error("bad frame: {0}")]
    Frame(String),
}

/// Sends `msg`, with `fds` attached to its first byte.
pub fn send<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    if fds.len() > MAX_FDS {
        return Err(WireError::Frame(format!(
            "{} descriptors, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(|e| WireError::Frame(e.to_string()))?;
    let len = (body.len() as u32).to_be_bytes();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(WireError::Frame("descriptors do not fit".into()));
    }
    let iov = [IoSlice::new(&len), IoSlice::new(&body)];
    let sent =
        sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL).map_err(std::io::Error::from)?;
    // A stream socket may take less than the whole frame; the descriptors went with the first
    // byte, the rest follows as plain bytes.
    let mut whole = Vec::with_capacity(4 + body.len());
    whole.extend_from_slice(&len);
    whole.extend_from_slice(&body);
    (&*stream).write_all(&whole[sent.min(whole.len())..])?;
    Ok(())
}

/// Receives one frame and the descriptors that came with it.
pub fn recv<T: DeserializeOwned>(stream: &UnixStream) -> Result<(T, Vec<OwnedFd>), WireError> {
    let mut len = [0u8; 4];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = {
        let mut iov = [IoSliceMut::new(&mut len)];
        recvmsg(
            stream.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?
        .bytes
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if got == 0 {
        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    (&*stream).read_exact(&mut len[got..])?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(WireError::Frame(format!("frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    (&*stream).read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(|e| WireError::Frame(e.to_string()))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_frame_carries_json_and_working_sockets() {
        let (a, b) = UnixStream::pair().expect("pair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let big = "x".repeat(300_000); // larger than one socket buffer
        let writer = std::thread::spawn(move || {
            send(&a, &(addr.to_string(), big), &[listener.as_fd()]).expect("send");
        });
        let ((text, big), mut fds): ((String, String), _) = recv(&b).expect("recv");
        writer.join().expect("writer");
        assert_eq!(text, addr.to_string());
        assert_eq!(big.len(), 300_000);
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same listening socket.
        let adopted = std::net::TcpListener::from(fds.remove(0));
        assert_eq!(adopted.local_addr().expect("addr"), addr);
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        adopted.accept().expect("accept on the adopted socket");
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().expect("pair");
        drop(a);
        assert!(recv::<String>(&b).is_err());
    }
}
