//! Datagram transports for replication.
//!
//! Replicas stream their log to each other as UDP datagrams. The same payload
//! bytes can leave a replica in two ways:
//!
//! - `udp`: an ordinary [`UdpSocket`], with `SO_BROADCAST` enabled so that a
//!   broadcast destination works.
//! - `raw`: a raw IPv4 socket with `IP_HDRINCL`, where this module builds the
//!   IPv4 and UDP headers itself (with both checksums). This needs
//!   `CAP_NET_RAW`.
//!
//! Receivers always use an ordinary UDP socket bound to the replication port,
//! so both transports must produce datagrams that the kernel's UDP stack
//! accepts: on Linux a raw datagram with a wrong UDP checksum is silently
//! dropped, even over loopback.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::str::FromStr;

use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Size of a UDP header.
pub const UDP_HEADER_BYTES: usize = 8;
/// Size of an IPv4 header without options (IHL 5); we never send options.
pub const IPV4_HEADER_BYTES: usize = 20;
/// Largest payload we ever put in one datagram (keeps IPv4 total length well under 65535).
pub const DATAGRAM_PAYLOAD_BYTES_MAX: usize = 60_000;

/// Time to live of raw datagrams: the Linux default (`net.ipv4.ip_default_ttl`),
/// so raw and UDP datagrams travel equally far.
const RAW_TTL: u8 = 64;

// The largest datagram must fit the 16-bit IPv4 total length field; the
// conversions in `build_ipv4_udp` rely on it.
const _: () = assert!(IPV4_HEADER_BYTES + UDP_HEADER_BYTES + DATAGRAM_PAYLOAD_BYTES_MAX <= 65_535);

/// How a replica puts datagrams on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// An ordinary UDP socket.
    Udp,
    /// A raw IPv4 socket with headers built by us (needs `CAP_NET_RAW`).
    Raw,
}

impl TransportKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [TransportKind; 2] = [TransportKind::Udp, TransportKind::Raw];

    /// The name used in configuration, on the command line and in serde.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Raw => "raw",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for TransportKind {
    type Err = TransportError;

    /// Accepts exactly the names that serde accepts, so that a kind written in
    /// a configuration file and one given on the command line agree.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TransportKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| TransportError::UnknownKind(name.to_owned()))
    }
}

/// Everything that can go wrong while building or sending a datagram.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The cause is in the message, not also a `source` (printed with
    /// `{:#}` it would appear twice).
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error(
        "payload of {0} bytes exceeds the largest datagram payload of {DATAGRAM_PAYLOAD_BYTES_MAX} bytes"
    )]
    PayloadTooLarge(usize),
    #[error(
        "the raw transport needs CAP_NET_RAW to open a raw IPv4 socket (run as root, or grant it \
         with `setcap cap_net_raw+ep` on the binary), or use the udp transport instead"
    )]
    NotPermitted,
    #[error("unknown transport {0:?} (expected \"udp\" or \"raw\")")]
    UnknownKind(String),
    #[error("raw sender source {address} is unusable: {problem}")]
    InvalidSource {
        address: SocketAddrV4,
        problem: &'static str,
    },
    #[error("UDP sender socket is bound to {0}, which is not an IPv4 address")]
    NotIpv4(SocketAddr),
    #[error(
        "datagram of {datagram_bytes} bytes to {destination} is larger than the route's MTU; \
         the kernel never fragments raw datagrams, so send smaller payloads or use the udp transport"
    )]
    ExceedsMtu {
        destination: SocketAddrV4,
        datagram_bytes: usize,
    },
    #[error("only {sent_bytes} of {datagram_bytes} bytes to {destination} were sent")]
    ShortSend {
        destination: SocketAddrV4,
        sent_bytes: usize,
        datagram_bytes: usize,
    },
}

impl TransportError {
    fn io(context: impl Into<String>, error: io::Error) -> TransportError {
        TransportError::Io {
            context: context.into(),
            error,
        }
    }
}

fn check_payload_bytes(payload: &[u8]) -> Result<(), TransportError> {
    if payload.len() > DATAGRAM_PAYLOAD_BYTES_MAX {
        return Err(TransportError::PayloadTooLarge(payload.len()));
    }
    Ok(())
}

/// Ones' complement arithmetic has two zeros, so a checksum that computes to
/// 0x0000 is equally valid when carried as 0xFFFF (RFC 1624); UDP even
/// requires 0xFFFF in that case, because 0x0000 means "no checksum".
fn checksum_matches(computed: u16, stored: u16) -> bool {
    computed == stored || (computed == 0 && stored == 0xFFFF)
}

/// Pure: builds a complete IPv4+UDP datagram (no options, DF not set, given TTL and identification),
/// with both checksums filled in, using pnet_packet's MutableIpv4Packet / MutableUdpPacket and
/// pnet_packet::ipv4::checksum / pnet_packet::udp::ipv4_checksum.
pub fn build_ipv4_udp(
    source: SocketAddrV4,
    destination: SocketAddrV4,
    identification: u16,
    ttl: u8,
    payload: &[u8],
) -> Result<Vec<u8>, TransportError> {
    check_payload_bytes(payload)?;
    let udp_bytes = UDP_HEADER_BYTES + payload.len();
    let datagram_bytes = IPV4_HEADER_BYTES + udp_bytes;
    let udp_length = u16::try_from(udp_bytes).expect("checked: bounded by the payload limit");
    let total_length =
        u16::try_from(datagram_bytes).expect("checked: bounded by the payload limit");

    let mut datagram = vec![0u8; datagram_bytes];
    let (ip_header, udp_datagram) = datagram.split_at_mut(IPV4_HEADER_BYTES);

    let mut udp_packet =
        MutableUdpPacket::new(udp_datagram).expect("checked: the buffer holds a UDP header");
    udp_packet.set_source(source.port());
    udp_packet.set_destination(destination.port());
    udp_packet.set_length(udp_length);
    udp_packet.set_payload(payload);
    // The checksum field is still zero here; pnet skips it anyway.
    let udp_checksum =
        udp::ipv4_checksum(&udp_packet.to_immutable(), source.ip(), destination.ip());
    // A computed UDP checksum of zero is sent as all ones, because a zero
    // field tells the receiver that no checksum was computed (RFC 768).
    udp_packet.set_checksum(if udp_checksum == 0 {
        0xFFFF
    } else {
        udp_checksum
    });

    let mut ip_packet =
        MutableIpv4Packet::new(ip_header).expect("checked: the buffer holds an IPv4 header");
    ip_packet.set_version(4);
    ip_packet.set_header_length(5);
    ip_packet.set_dscp(0);
    ip_packet.set_ecn(0);
    ip_packet.set_total_length(total_length);
    ip_packet.set_identification(identification);
    // Leaving DF clear lets routers fragment datagrams larger than a link's
    // MTU instead of dropping them.
    ip_packet.set_flags(0);
    ip_packet.set_fragment_offset(0);
    ip_packet.set_ttl(ttl);
    ip_packet.set_next_level_protocol(IpNextHeaderProtocols::Udp);
    ip_packet.set_source(*source.ip());
    ip_packet.set_destination(*destination.ip());
    let ip_checksum = ipv4::checksum(&ip_packet.to_immutable());
    ip_packet.set_checksum(ip_checksum);

    Ok(datagram)
}

/// Pure: parses bytes produced by build_ipv4_udp (or captured off the wire), checks version 4, IHL 5,
/// total length, protocol 17, both checksums (a UDP checksum of 0 means "none" and is accepted),
/// and returns (source, destination, payload). Never panics on any input.
///
/// Bytes after the IPv4 total length are ignored, because Ethernet pads short
/// frames and a capture may include that padding. Fragments (MF set or a
/// non-zero fragment offset) are refused: they do not hold a whole datagram.
/// The UDP length must cover exactly the IPv4 payload.
pub fn parse_ipv4_udp(bytes: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    const MORE_FRAGMENTS_FLAG: u8 = 0b001;

    let ip_packet = Ipv4Packet::new(bytes)?;
    if ip_packet.get_version() != 4 || ip_packet.get_header_length() != 5 {
        return None;
    }
    let datagram_bytes = usize::from(ip_packet.get_total_length());
    if datagram_bytes < IPV4_HEADER_BYTES + UDP_HEADER_BYTES || datagram_bytes > bytes.len() {
        return None;
    }
    if ip_packet.get_flags() & MORE_FRAGMENTS_FLAG != 0 || ip_packet.get_fragment_offset() != 0 {
        return None;
    }
    if ip_packet.get_next_level_protocol() != IpNextHeaderProtocols::Udp {
        return None;
    }
    if !checksum_matches(ipv4::checksum(&ip_packet), ip_packet.get_checksum()) {
        return None;
    }
    let source_ip = ip_packet.get_source();
    let destination_ip = ip_packet.get_destination();

    let udp_datagram = bytes.get(IPV4_HEADER_BYTES..datagram_bytes)?;
    let udp_packet = UdpPacket::new(udp_datagram)?;
    if usize::from(udp_packet.get_length()) != udp_datagram.len() {
        return None;
    }
    let udp_checksum = udp_packet.get_checksum();
    if udp_checksum != 0 {
        let computed = udp::ipv4_checksum(&udp_packet, &source_ip, &destination_ip);
        if !checksum_matches(computed, udp_checksum) {
            return None;
        }
    }
    let payload = udp_datagram.get(UDP_HEADER_BYTES..)?;
    Some((
        SocketAddrV4::new(source_ip, udp_packet.get_source()),
        SocketAddrV4::new(destination_ip, udp_packet.get_destination()),
        payload,
    ))
}

/// Sends payloads to IPv4 destinations. Implementations must never panic on I/O errors.
pub trait DatagramSender: Send {
    fn send(&mut self, destination: SocketAddrV4, payload: &[u8]) -> Result<(), TransportError>;
    fn kind(&self) -> TransportKind;
}

/// Sends datagrams through an ordinary UDP socket.
#[derive(Debug)]
pub struct UdpSender {
    socket: UdpSocket,
}

impl UdpSender {
    /// Binds a new socket to `local`; port 0 picks an ephemeral port.
    pub fn bind(local: SocketAddrV4) -> Result<Self, TransportError> {
        let socket = UdpSocket::bind(local).map_err(|error| {
            TransportError::io(format!("binding a UDP socket to {local}"), error)
        })?;
        UdpSender::from_socket(socket)
    }

    /// Takes over an already bound IPv4 socket and enables `SO_BROADCAST` on it.
    pub fn from_socket(socket: UdpSocket) -> Result<Self, TransportError> {
        let local = socket
            .local_addr()
            .map_err(|error| TransportError::io("reading the UDP socket's local address", error))?;
        // Sending to an IPv4 destination from an IPv6 socket would fail on
        // every datagram; refusing the socket up front names the real problem.
        if !local.is_ipv4() {
            return Err(TransportError::NotIpv4(local));
        }
        socket.set_broadcast(true).map_err(|error| {
            TransportError::io(
                format!("enabling SO_BROADCAST on the UDP socket {local}"),
                error,
            )
        })?;
        Ok(UdpSender { socket })
    }
}

impl DatagramSender for UdpSender {
    fn send(&mut self, destination: SocketAddrV4, payload: &[u8]) -> Result<(), TransportError> {
        check_payload_bytes(payload)?;
        let sent_bytes = self.socket.send_to(payload, destination).map_err(|error| {
            TransportError::io(
                format!("sending {} bytes to {destination} over UDP", payload.len()),
                error,
            )
        })?;
        if sent_bytes != payload.len() {
            return Err(TransportError::ShortSend {
                destination,
                sent_bytes,
                datagram_bytes: payload.len(),
            });
        }
        Ok(())
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Udp
    }
}

/// Sends datagrams through a raw IPv4 socket, with headers built by
/// [`build_ipv4_udp`].
#[derive(Debug)]
pub struct RawSender {
    socket: Socket,
    source: SocketAddrV4,
    identification: u16,
}

impl RawSender {
    /// `source` is the IPv4 address and UDP source port written into every header.
    ///
    /// The address must be concrete: with `IP_HDRINCL` the kernel replaces a
    /// zero source address with its own, which would invalidate the UDP
    /// checksum computed over ours. The port must be non-zero, because no
    /// socket picks one for us and receivers report it as the sender.
    pub fn new(source: SocketAddrV4) -> Result<Self, TransportError> {
        if source.ip().is_unspecified() {
            return Err(TransportError::InvalidSource {
                address: source,
                problem: "the address must be a concrete local address, not 0.0.0.0",
            });
        }
        if source.port() == 0 {
            return Err(TransportError::InvalidSource {
                address: source,
                problem: "the port must not be 0",
            });
        }
        let socket = open_raw_socket()?;
        // IPPROTO_RAW already implies IP_HDRINCL on Linux; setting it
        // explicitly documents the intent and covers other kernels.
        socket.set_header_included_v4(true).map_err(|error| {
            TransportError::io("enabling IP_HDRINCL on the raw IPv4 socket", error)
        })?;
        socket.set_broadcast(true).map_err(|error| {
            TransportError::io("enabling SO_BROADCAST on the raw IPv4 socket", error)
        })?;
        Ok(RawSender {
            socket,
            source,
            identification: identification_seed(),
        })
    }
}

impl DatagramSender for RawSender {
    fn send(&mut self, destination: SocketAddrV4, payload: &[u8]) -> Result<(), TransportError> {
        let identification = self.identification;
        self.identification = self.identification.wrapping_add(1);
        let datagram = build_ipv4_udp(self.source, destination, identification, RAW_TTL, payload)?;
        // Linux ignores the port of a raw socket's destination (raw(7) asks
        // for 0); the UDP header we built carries the real port.
        let address = SockAddr::from(SocketAddrV4::new(*destination.ip(), 0));
        let sent_bytes = match self.socket.send_to(&datagram, &address) {
            Ok(sent_bytes) => sent_bytes,
            Err(error) if error.raw_os_error() == Some(libc::EMSGSIZE) => {
                return Err(TransportError::ExceedsMtu {
                    destination,
                    datagram_bytes: datagram.len(),
                });
            }
            Err(error) => {
                return Err(TransportError::io(
                    format!(
                        "sending a {}-byte datagram to {destination} over a raw IPv4 socket",
                        datagram.len()
                    ),
                    error,
                ));
            }
        };
        if sent_bytes != datagram.len() {
            return Err(TransportError::ShortSend {
                destination,
                sent_bytes,
                datagram_bytes: datagram.len(),
            });
        }
        Ok(())
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Raw
    }
}

/// Starts each sender's identification counter at an unpredictable value, so
/// that two senders started together with the same source address do not
/// emit the same identifications (routers may fragment our datagrams, and
/// receivers reassemble fragments by source, destination and identification).
/// std's `RandomState` is seeded randomly per process and per instance, which
/// is all the randomness this needs.
fn identification_seed() -> u16 {
    let hash = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // Truncation is the point: any 16 bits of the hash are equally random.
    hash as u16
}

fn open_raw_socket() -> Result<Socket, TransportError> {
    Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(|error| {
        if error.kind() == io::ErrorKind::PermissionDenied {
            TransportError::NotPermitted
        } else {
            TransportError::io("opening a raw IPv4 socket", error)
        }
    })
}

/// Convenience: make the right sender for a kind.
pub fn sender(
    kind: TransportKind,
    source: SocketAddrV4,
) -> Result<Box<dyn DatagramSender>, TransportError> {
    Ok(match kind {
        TransportKind::Udp => Box::new(UdpSender::bind(source)?),
        TransportKind::Raw => Box::new(RawSender::new(source)?),
    })
}

/// The path MTU the kernel knows from `source` to `destination` (`IP_MTU`
/// of a UDP socket connected there: the route's device MTU, or a smaller
/// one learnt from ICMP). Sends nothing.
pub fn path_mtu(source: Ipv4Addr, destination: SocketAddrV4) -> Result<usize, TransportError> {
    let context = || format!("probing the path MTU to {destination}");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .and_then(|socket| socket.set_broadcast(true).map(|()| socket))
        .and_then(|socket| {
            socket
                .bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
                .map(|()| socket)
        })
        .and_then(|socket| {
            socket
                .connect(&SockAddr::from(destination))
                .map(|()| socket)
        })
        .map_err(|error| TransportError::io(context(), error))?;
    let mut mtu: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `IP_MTU` writes one `c_int` to `mtu`, whose size `length` gives,
    // and the descriptor is the socket opened above.
    let result = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut mtu).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(TransportError::io(context(), io::Error::last_os_error()));
    }
    usize::try_from(mtu)
        .map_err(|_| TransportError::io(context(), io::Error::other(format!("MTU {mtu}"))))
}

/// The datagram payload to use on a path of `mtu` bytes: as large as the
/// configured `configured` allows without IP fragmentation (a raw
/// `IP_HDRINCL` datagram over the MTU is refused outright), but never below
/// `floor`, which one largest record needs.
pub fn payload_bytes_for_mtu(configured: usize, mtu: usize, floor: usize) -> usize {
    configured
        .min(mtu.saturating_sub(IPV4_HEADER_BYTES + UDP_HEADER_BYTES))
        .max(floor)
}

/// True when this process may open raw sockets (tries to open one and closes it).
pub fn raw_sockets_permitted() -> bool {
    open_raw_socket().is_ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use pnet_packet::Packet;
    use proptest::prelude::*;

    use super::*;

    const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn address(text: &str) -> SocketAddrV4 {
        text.parse().expect("test addresses are valid")
    }

    /// Independent of pnet: the RFC 1071 ones' complement sum of 16-bit
    /// big-endian words, padding an odd final byte with zero.
    fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.concat();
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|word| u32::from(word[0]) << 8 | u32::from(*word.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum as u16
    }

    /// Checks every header field of a built datagram and both checksums, with
    /// pnet's functions and with the independent sum above.
    fn check_headers(
        datagram: &[u8],
        source: SocketAddrV4,
        destination: SocketAddrV4,
        identification: u16,
        ttl: u8,
        payload: &[u8],
    ) {
        let ip_packet = Ipv4Packet::new(datagram).expect("a whole header");
        assert_eq!(ip_packet.get_version(), 4);
        assert_eq!(ip_packet.get_header_length(), 5);
        assert_eq!(ip_packet.get_dscp(), 0);
        assert_eq!(ip_packet.get_ecn(), 0);
        assert_eq!(
            usize::from(ip_packet.get_total_length()),
            IPV4_HEADER_BYTES + UDP_HEADER_BYTES + payload.len()
        );
        assert_eq!(datagram.len(), usize::from(ip_packet.get_total_length()));
        assert_eq!(ip_packet.get_identification(), identification);
        assert_eq!(ip_packet.get_flags(), 0, "DF and MF are clear");
        assert_eq!(ip_packet.get_fragment_offset(), 0);
        assert_eq!(ip_packet.get_ttl(), ttl);
        assert_eq!(
            ip_packet.get_next_level_protocol(),
            IpNextHeaderProtocols::Udp
        );
        assert_eq!(ip_packet.get_source(), *source.ip());
        assert_eq!(ip_packet.get_destination(), *destination.ip());
        assert_eq!(ipv4::checksum(&ip_packet), ip_packet.get_checksum());
        assert_eq!(
            ones_complement_sum(&[&datagram[..IPV4_HEADER_BYTES]]),
            0xFFFF
        );

        let udp_packet = UdpPacket::new(ip_packet.payload()).expect("a whole UDP header");
        assert_eq!(udp_packet.get_source(), source.port());
        assert_eq!(udp_packet.get_destination(), destination.port());
        assert_eq!(
            usize::from(udp_packet.get_length()),
            UDP_HEADER_BYTES + payload.len()
        );
        assert_eq!(udp_packet.payload(), payload);
        let stored = udp_packet.get_checksum();
        assert_ne!(stored, 0, "we always compute a UDP checksum");
        let computed = udp::ipv4_checksum(&udp_packet, source.ip(), destination.ip());
        assert!(
            computed == stored || (computed == 0 && stored == 0xFFFF),
            "UDP checksum {stored:#06x} does not match {computed:#06x}"
        );
        let udp_length = u16::try_from(UDP_HEADER_BYTES + payload.len()).expect("small");
        let pseudo_header = [
            &source.ip().octets()[..],
            &destination.ip().octets()[..],
            &[0, 17],
            &udp_length.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            ones_complement_sum(&[&pseudo_header, &datagram[IPV4_HEADER_BYTES..]]),
            0xFFFF
        );
    }

    #[test]
    fn the_payload_fits_the_path_and_never_drops_below_a_record() {
        // Ethernet: 1,500 - 20 - 8.
        assert_eq!(payload_bytes_for_mtu(8_192, 1_500, 1_400), 1_472);
        // Jumbo frames and loopback: the configured budget.
        assert_eq!(payload_bytes_for_mtu(8_192, 9_000, 1_400), 8_192);
        assert_eq!(payload_bytes_for_mtu(8_192, 65_536, 1_400), 8_192);
        // A tunnel's small MTU: fragments rather than records that cannot be sent.
        assert_eq!(payload_bytes_for_mtu(8_192, 1_280, 1_400), 1_400);
        assert_eq!(payload_bytes_for_mtu(8_192, 0, 1_400), 1_400);
    }

    #[test]
    fn the_path_mtu_over_loopback_is_the_devices() {
        let receiver = UdpSocket::bind(SocketAddrV4::new(LOOPBACK, 0)).expect("bind");
        let SocketAddr::V4(to) = receiver.local_addr().expect("address") else {
            panic!("bound to IPv4");
        };
        let device: usize = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .expect("loopback's MTU")
            .trim()
            .parse()
            .expect("a number");
        // IPv4 reports at most 65,535 (loopback's device says 65,536).
        assert_eq!(path_mtu(LOOPBACK, to).expect("probe"), device.min(65_535));
    }

    #[test]
    fn build_then_parse_round_trips() {
        let endpoints = [
            (address("127.0.0.1:40000"), address("127.0.0.1:5000")),
            (address("192.0.2.2:1"), address("255.255.255.255:65535")),
            (address("10.1.2.3:65535"), address("192.0.2.255:9")),
            (address("203.0.113.77:51234"), address("198.51.100.1:7070")),
        ];
        for (index, &(source, destination)) in endpoints.iter().enumerate() {
            for payload_bytes in [0, 1, 2, 3, 1400, 1401, DATAGRAM_PAYLOAD_BYTES_MAX] {
                let payload: Vec<u8> = (0..payload_bytes)
                    .map(|at| (at * 31 + index * 7) as u8)
                    .collect();
                let identification = (index as u16).wrapping_mul(0x9E37) ^ payload_bytes as u16;
                let ttl = [1, 64, 128, 255][index];
                let datagram = build_ipv4_udp(source, destination, identification, ttl, &payload)
                    .expect("payload within the limit");
                check_headers(
                    &datagram,
                    source,
                    destination,
                    identification,
                    ttl,
                    &payload,
                );
                let (parsed_source, parsed_destination, parsed_payload) =
                    parse_ipv4_udp(&datagram).expect("a datagram we built parses");
                assert_eq!(parsed_source, source);
                assert_eq!(parsed_destination, destination);
                assert_eq!(parsed_payload, &payload[..]);
            }
        }
    }

    #[test]
    fn udp_checksum_that_computes_to_zero_is_sent_as_all_ones() {
        let source = address("192.0.2.2:4000");
        let destination = address("192.0.2.9:5000");
        // With a two-byte payload of zeros the checksum is the complement of
        // the sum of everything else; using that checksum as the payload makes
        // the total sum 0xFFFF, so the computed checksum becomes zero.
        let probe = build_ipv4_udp(source, destination, 7, 64, &[0, 0]).expect("small payload");
        let probe_checksum = u16::from_be_bytes([probe[26], probe[27]]);
        assert_ne!(
            probe_checksum, 0xFFFF,
            "the probe itself must not be the special case"
        );
        let payload = probe_checksum.to_be_bytes();
        let datagram = build_ipv4_udp(source, destination, 7, 64, &payload).expect("small");
        let udp_packet = UdpPacket::new(&datagram[IPV4_HEADER_BYTES..]).expect("a UDP header");
        assert_eq!(
            udp::ipv4_checksum(&udp_packet, source.ip(), destination.ip()),
            0
        );
        assert_eq!(udp_packet.get_checksum(), 0xFFFF);
        check_headers(&datagram, source, destination, 7, 64, &payload);
        let (_, _, parsed_payload) = parse_ipv4_udp(&datagram).expect("parses");
        assert_eq!(parsed_payload, &payload[..]);
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let source = address("127.0.0.1:40000");
        let destination = address("192.0.2.255:7070");
        // An odd and an even payload length, so the zero padding of the final
        // word is exercised too.
        for payload in [&b"vend!"[..], &b"ledger"[..], &b""[..]] {
            let datagram = build_ipv4_udp(source, destination, 0x1234, 64, payload).expect("small");
            let original = parse_ipv4_udp(&datagram).expect("parses");
            for position in 0..datagram.len() {
                for mask in 1..=u8::MAX {
                    let mut corrupted = datagram.clone();
                    corrupted[position] ^= mask;
                    let parsed = parse_ipv4_udp(&corrupted);
                    let udp_checksum_zeroed =
                        (26..28).contains(&position) && corrupted[26] == 0 && corrupted[27] == 0;
                    if udp_checksum_zeroed {
                        // RFC 768: a zero UDP checksum means "not computed",
                        // so this one corruption is undetectable by design.
                        assert_eq!(parsed, Some(original));
                    } else {
                        assert_eq!(
                            parsed, None,
                            "flipping byte {position} with {mask:#04x} was not caught"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn parse_refuses_malformed_datagrams() {
        let source = address("127.0.0.1:40000");
        let destination = address("127.0.0.1:5000");
        let datagram = build_ipv4_udp(source, destination, 1, 64, b"payload").expect("small");

        assert_eq!(parse_ipv4_udp(&[]), None);
        for length in 0..datagram.len() {
            assert_eq!(
                parse_ipv4_udp(&datagram[..length]),
                None,
                "truncated to {length}"
            );
        }

        // Trailing link-layer padding is ignored.
        let mut padded = datagram.clone();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(parse_ipv4_udp(&padded), parse_ipv4_udp(&datagram));

        // A fragment is refused even with a valid header checksum.
        let mut fragment = datagram.clone();
        {
            let mut ip_packet = MutableIpv4Packet::new(&mut fragment).expect("a header");
            ip_packet.set_flags(0b001);
            let checksum = ipv4::checksum(&ip_packet.to_immutable());
            ip_packet.set_checksum(checksum);
        }
        assert_eq!(parse_ipv4_udp(&fragment), None);

        // DF set is fine: it does not change what the datagram holds.
        let mut dont_fragment = datagram.clone();
        {
            let mut ip_packet = MutableIpv4Packet::new(&mut dont_fragment).expect("a header");
            ip_packet.set_flags(0b010);
            let checksum = ipv4::checksum(&ip_packet.to_immutable());
            ip_packet.set_checksum(checksum);
        }
        assert_eq!(parse_ipv4_udp(&dont_fragment), parse_ipv4_udp(&datagram));

        // Another protocol with a valid header checksum is refused.
        let mut tcp = datagram.clone();
        {
            let mut ip_packet = MutableIpv4Packet::new(&mut tcp).expect("a header");
            ip_packet.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
            let checksum = ipv4::checksum(&ip_packet.to_immutable());
            ip_packet.set_checksum(checksum);
        }
        assert_eq!(parse_ipv4_udp(&tcp), None);

        // An explicitly absent UDP checksum is accepted.
        let mut unchecked = datagram.clone();
        unchecked[26] = 0;
        unchecked[27] = 0;
        assert_eq!(parse_ipv4_udp(&unchecked), parse_ipv4_udp(&datagram));
    }

    #[test]
    fn payload_above_the_limit_is_refused() {
        let source = address("127.0.0.1:40000");
        let destination = address("127.0.0.1:5000");
        let payload = vec![0xA5; DATAGRAM_PAYLOAD_BYTES_MAX + 1];
        match build_ipv4_udp(source, destination, 1, 64, &payload) {
            Err(TransportError::PayloadTooLarge(payload_bytes)) => {
                assert_eq!(payload_bytes, DATAGRAM_PAYLOAD_BYTES_MAX + 1);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }

        let mut udp_sender = UdpSender::bind(SocketAddrV4::new(LOOPBACK, 0)).expect("bind");
        assert!(matches!(
            udp_sender.send(destination, &payload),
            Err(TransportError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn transport_kind_names() {
        for kind in TransportKind::ALL {
            assert_eq!(kind.to_string().parse::<TransportKind>().ok(), Some(kind));
            let deserializer =
                serde::de::value::StrDeserializer::<serde::de::value::Error>::new(kind.as_str());
            let deserialized: TransportKind =
                serde::Deserialize::deserialize(deserializer).expect("serde accepts the name");
            assert_eq!(deserialized, kind);
        }
        assert_eq!(
            "udp".parse::<TransportKind>().ok(),
            Some(TransportKind::Udp)
        );
        assert_eq!(
            "raw".parse::<TransportKind>().ok(),
            Some(TransportKind::Raw)
        );
        assert!(matches!(
            "tcp".parse::<TransportKind>(),
            Err(TransportError::UnknownKind(name)) if name == "tcp"
        ));
    }

    fn loopback_receiver(bind: Ipv4Addr) -> (UdpSocket, SocketAddrV4) {
        let receiver = UdpSocket::bind(SocketAddrV4::new(bind, 0)).expect("bind a receiver");
        receiver
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .expect("set a read timeout");
        let port = receiver.local_addr().expect("local address").port();
        (receiver, SocketAddrV4::new(bind, port))
    }

    /// Waits (boundedly) for one datagram and returns its payload and sender.
    fn receive(receiver: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let started = Instant::now();
        let mut buffer = vec![0u8; 65_536];
        let (received_bytes, from) = receiver
            .recv_from(&mut buffer)
            .unwrap_or_else(|error| panic!("no datagram after {:?}: {error}", started.elapsed()));
        buffer.truncate(received_bytes);
        (buffer, from)
    }

    fn test_payload(payload_bytes: usize) -> Vec<u8> {
        (0..payload_bytes).map(|at| (at % 251) as u8).collect()
    }

    #[test]
    fn udp_sender_delivers_payloads() {
        let (receiver, receiver_address) = loopback_receiver(LOOPBACK);
        let socket = UdpSocket::bind(SocketAddrV4::new(LOOPBACK, 0)).expect("bind a sender");
        let sender_address = socket.local_addr().expect("local address");
        let mut udp_sender = UdpSender::from_socket(socket).expect("an IPv4 socket");
        assert_eq!(udp_sender.kind(), TransportKind::Udp);
        for payload_bytes in [0, 1, 1400, DATAGRAM_PAYLOAD_BYTES_MAX] {
            let payload = test_payload(payload_bytes);
            udp_sender.send(receiver_address, &payload).expect("send");
            let (received, from) = receive(&receiver);
            assert_eq!(received, payload);
            assert_eq!(from, sender_address);
        }
    }

    #[test]
    fn udp_sender_reaches_a_broadcast_address() {
        // 127.255.255.255 is the broadcast address of the loopback network,
        // so this stays on the host; without SO_BROADCAST Linux refuses it.
        let broadcast = Ipv4Addr::new(127, 255, 255, 255);
        let (receiver, receiver_address) = loopback_receiver(broadcast);
        let mut boxed = sender(TransportKind::Udp, SocketAddrV4::new(LOOPBACK, 0)).expect("bind");
        assert_eq!(boxed.kind(), TransportKind::Udp);
        boxed.send(receiver_address, b"to everyone").expect("send");
        let (received, _) = receive(&receiver);
        assert_eq!(received, b"to everyone");
    }

    #[test]
    fn udp_sender_refuses_ipv6_sockets() {
        // Hosts without IPv6 cannot bind [::1]; then there is nothing to test.
        if let Ok(socket) = UdpSocket::bind("[::1]:0") {
            assert!(matches!(
                UdpSender::from_socket(socket),
                Err(TransportError::NotIpv4(_))
            ));
        }
    }

    fn raw_permitted_or_skip(test: &str) -> bool {
        let permitted = raw_sockets_permitted();
        if !permitted {
            eprintln!("{test}: skipping: needs CAP_NET_RAW");
        }
        permitted
    }

    #[test]
    fn raw_sender_delivers_payloads() {
        if !raw_permitted_or_skip("raw_sender_delivers_payloads") {
            return;
        }
        let (receiver, receiver_address) = loopback_receiver(LOOPBACK);
        // Holding a UDP socket on the source port keeps anyone else from
        // using it while the test runs.
        let (_source_holder, source) = loopback_receiver(LOOPBACK);
        let mut raw_sender = RawSender::new(source).expect("raw socket");
        assert_eq!(raw_sender.kind(), TransportKind::Raw);
        // Linux verifies the UDP checksum of raw datagrams even on loopback
        // and drops bad ones silently, so arrival also proves the checksums.
        for payload_bytes in [0, 1, 1400, DATAGRAM_PAYLOAD_BYTES_MAX] {
            let payload = test_payload(payload_bytes);
            raw_sender.send(receiver_address, &payload).expect("send");
            let (received, from) = receive(&receiver);
            assert_eq!(received, payload);
            assert_eq!(from, SocketAddr::V4(source));
        }
    }

    #[test]
    fn raw_sender_reaches_a_broadcast_address() {
        if !raw_permitted_or_skip("raw_sender_reaches_a_broadcast_address") {
            return;
        }
        let broadcast = Ipv4Addr::new(127, 255, 255, 255);
        let (receiver, receiver_address) = loopback_receiver(broadcast);
        let (_source_holder, source) = loopback_receiver(LOOPBACK);
        let mut boxed = sender(TransportKind::Raw, source).expect("raw socket");
        assert_eq!(boxed.kind(), TransportKind::Raw);
        boxed.send(receiver_address, b"to everyone").expect("send");
        let (received, from) = receive(&receiver);
        assert_eq!(received, b"to everyone");
        assert_eq!(from, SocketAddr::V4(source));
    }

    #[test]
    fn raw_sender_without_permission_says_so() {
        // Only meaningful without CAP_NET_RAW, e.g. under
        // `capsh --drop=cap_net_raw -- -c 'cargo test -p replica'`.
        if raw_sockets_permitted() {
            return;
        }
        assert!(matches!(
            RawSender::new(address("127.0.0.1:4000")),
            Err(TransportError::NotPermitted)
        ));
    }

    #[test]
    fn raw_sender_refuses_unusable_sources() {
        for source in [address("0.0.0.0:4000"), address("127.0.0.1:0")] {
            assert!(matches!(
                RawSender::new(source),
                Err(TransportError::InvalidSource { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            if let Some((_, _, payload)) = parse_ipv4_udp(&bytes) {
                prop_assert!(payload.len() + IPV4_HEADER_BYTES + UDP_HEADER_BYTES <= bytes.len());
            }
        }

        #[test]
        fn parse_never_panics_on_damaged_datagrams(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            keep_bytes in any::<usize>(),
        ) {
            let mut bytes = build_ipv4_udp(
                address("127.0.0.1:40000"),
                address("127.0.0.1:5000"),
                9,
                64,
                &payload,
            ).expect("small payload");
            for (position, value) in damage {
                let position = position % bytes.len();
                bytes[position] = value;
            }
            bytes.truncate(keep_bytes % (bytes.len() + 1));
            if let Some((_, _, parsed)) = parse_ipv4_udp(&bytes) {
                prop_assert!(parsed.len() + IPV4_HEADER_BYTES + UDP_HEADER_BYTES <= bytes.len());
            }
        }
    }
}
