//! Passing listening sockets between processes over a unix stream
//! (`SCM_RIGHTS`). The descriptors travel with a one-byte marker so that the
//! receiver reads exactly that byte with `recvmsg` and never drops them with
//! a plain read.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

const MARKER: u8 = b'F';

/// Most descriptors one handover carries (inbound, admin, health, egress and room to grow).
pub const MAX_FDS: usize = 16;

/// Sends `fds` (duplicated by the kernel into the peer) with the marker byte.
pub async fn send(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many listeners to hand over"));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    stream
        .async_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other("control buffer too small"));
            }
            let sent = sendmsg(
                stream,
                &[IoSlice::new(&[MARKER])],
                &mut control,
                SendFlags::NOSIGNAL,
            )?;
            if sent == 1 {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::WriteZero, "marker not sent"))
            }
        })
        .await
}

/// Receives the marker byte and up to `expected` descriptors.
pub async fn recv(stream: &UnixStream, expected: usize) -> io::Result<Vec<OwnedFd>> {
    if expected > MAX_FDS {
        return Err(io::Error::other("too many listeners offered"));
    }
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(expected.max(1)))];
    let mut byte = [0u8; 1];
    stream
        .async_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            if msg.bytes == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed before sending the listeners",
                ));
            }
            // Collect first so that every received descriptor is owned (and
            // closed on error) before the checks below.
            let mut fds = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) {
                return Err(io::Error::other("listener descriptors were truncated"));
            }
            if byte[0] != MARKER {
                return Err(io::Error::other("unexpected byte instead of the fd marker"));
            }
            Ok(fds)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn listeners_cross_a_socket_pair_and_still_accept() {
        let (a, b) = UnixStream::pair().expect("pair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        send(&a, &[listener.as_fd()]).await.expect("send");
        let mut fds = recv(&b, 1).await.expect("recv");
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.remove(0));
        assert_eq!(received.local_addr().expect("addr"), addr);
        // The original is closed: the received copy alone keeps the socket listening.
        drop(listener);
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        received.accept().expect("accept on the received socket");
    }
}
