//! What the client's TCP acknowledged on the connections of a process that died.
//!
//! When weir is killed, the kernel closes its sockets *gracefully*: each keeps sending what weir
//! had written, then a FIN, as an orphan socket with no process. A client reading on receives
//! those bytes and may never ask for them again, so only the kernel can say whether they were
//! delivered. It can: the orphan stays visible to `sock_diag` (what `ss` uses) with its
//! `tcp_info` while it sends (FIN-WAIT-1, CLOSING, LAST-ACK), and as a FIN-WAIT-2 or TIME-WAIT
//! entry once the client acknowledged the FIN, which follows every byte written, for about a
//! minute (`tcp_fin_timeout`, the TIME-WAIT length).
//!
//! Each in-flight record ([`super::inflight`]) carries its socket's cookie (`SO_COOKIE`, unique
//! per network namespace since boot, and kept by the orphan and its TIME-WAIT entry) and where
//! its first content byte sits in the stream. After a restart the ledger asks here, by cookie,
//! which orphans still exist and how far each was acknowledged ([`lookup`]), and credits exactly
//! that (see [`super::ledger`]). A cookie is only meaningful on the boot and in the network
//! namespace that issued it: records carry a [`host_key`] and are looked up only on a match.
//!
//! This module owns the netlink `sock_diag` dump; message encoding and decoding are the
//! `netlink-packet-sock-diag` crate's.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::OnceLock;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// What the kernel still knows of a socket, by cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The client acknowledged the FIN (FIN-WAIT-2, TIME-WAIT): every byte written was
    /// acknowledged.
    AllAcked,
    /// Still open or still sending: `tcpi_bytes_acked` stream bytes acknowledged so far.
    Acked(u64),
}

impl Fate {
    /// The content offset acknowledged of a run that starts at content offset `start`, at
    /// stream offset `stream_at`, and was written up to content offset `written`.
    pub fn content_acked(self, start: u64, stream_at: u64, written: u64) -> u64 {
        match self {
            Fate::AllAcked => written,
            Fate::Acked(acked) => (start + acked.saturating_sub(stream_at)).min(written),
        }
    }

    /// Nothing more will be acknowledged: the socket is past sending.
    pub fn is_final(self) -> bool {
        matches!(self, Fate::AllAcked)
    }
}

// linux/tcp_states.h
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;
/// `tcpi_bytes_acked`'s offset in `struct tcp_info` (linux/tcp.h, Linux 4.1).
const BYTES_ACKED_AT: usize = 120;

/// The fates of the TCP sockets (IPv4 and IPv6) of this network namespace whose cookie is in
/// `cookies`. A cookie missing from the answer names a socket the kernel no longer has (it was
/// reset, or its TIME-WAIT ended): nothing can be learnt of it.
pub fn lookup(cookies: &HashSet<u64>) -> io::Result<HashMap<u64, Fate>> {
    let mut found = HashMap::new();
    if cookies.is_empty() {
        return Ok(found);
    }
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    for (family, id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        dump(&sock, family, id, &mut |resp| {
            let c = resp.header.socket_id.cookie;
            let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                | u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32;
            if !cookies.contains(&cookie) {
                return;
            }
            let fate = if matches!(resp.header.state, TCP_FIN_WAIT2 | TCP_TIME_WAIT) {
                Some(Fate::AllAcked)
            } else {
                resp.nlas.iter().find_map(|nla| match nla {
                    Nla::TcpInfo(raw) => raw
                        .get(BYTES_ACKED_AT..BYTES_ACKED_AT + 8)
                        .map(|b| Fate::Acked(u64::from_ne_bytes(b.try_into().expect("8 bytes")))),
                    _ => None,
                })
            };
            if let Some(f) = fate {
                found.insert(cookie, f);
            }
        })?;
    }
    Ok(found)
}

/// One `SOCK_DIAG_BY_FAMILY` dump of every TCP socket of `family`, with `tcp_info`.
fn dump(
    sock: &Socket,
    family: u8,
    id: SocketId,
    each: &mut dyn FnMut(&InetResponse),
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut req = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: id,
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(&r),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// This boot and network namespace, as one number: cookies are only comparable when it matches.
pub fn host_key() -> u64 {
    static KEY: OnceLock<u64> = OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let netns = std::fs::read_link("/proc/self/ns/net")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if boot.is_empty() || netns.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (boot.trim(), netns).hash(&mut h);
        // 0 means "unknown": never a match.
        h.finish().max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_a_live_socket_by_cookie_with_its_acknowledged_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let cookie = socket2::SockRef::from(&server).cookie().unwrap();
        server.write_all(&[7u8; 1000]).unwrap();
        let mut got = [0u8; 1000];
        client.read_exact(&mut got).unwrap();
        // The client read it all, so its TCP acknowledged it; wait for the ACK to be processed.
        let found = (0..200).find_map(|_| {
            let f = lookup(&HashSet::from([cookie])).unwrap();
            match f.get(&cookie) {
                Some(&Fate::Acked(1000)) => Some(()),
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    None
                }
            }
        });
        assert!(
            found.is_some(),
            "the socket's acknowledged bytes were never reported"
        );
        assert!(lookup(&HashSet::from([cookie ^ 0xdead_beef_0000]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_closed_socket_whose_fin_was_acknowledged_acked_everything() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let cookie = socket2::SockRef::from(&server).cookie().unwrap();
        server.write_all(&[7u8; 5000]).unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 5000);
        let fate = (0..200).find_map(|_| {
            let f = lookup(&HashSet::from([cookie]))
                .unwrap()
                .get(&cookie)
                .copied();
            if f == Some(Fate::AllAcked) {
                return f;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            None
        });
        assert_eq!(fate, Some(Fate::AllAcked));
        assert_eq!(Fate::AllAcked.content_acked(100, 40, 900), 900);
        assert_eq!(Fate::Acked(540).content_acked(100, 40, 900), 600);
        assert_eq!(Fate::Acked(10).content_acked(100, 40, 900), 100);
    }

    #[test]
    fn the_host_key_is_stable_and_known() {
        assert_ne!(host_key(), 0);
        assert_eq!(host_key(), host_key());
    }
}
