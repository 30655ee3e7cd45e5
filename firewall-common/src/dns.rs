//! Names: what the datapath learns from the DNS answers the host receives, so outbound rules
//! can name `debian.org` or `*.debian.org` and be judged at connect() without a race.
//!
//! Why in the datapath: every firewall that resolves names in userspace races the
//! application (the address is known to the application before the rule is), and misses the
//! applications that resolve through another path. Here the XDP program reads the answer
//! before the host's stack delivers it (`firewall-ebpf/src/dns.rs`), so the address is
//! recorded before the application can connect to it.
//!
//! What is trusted: only an answer to a query a socket of the host sent. The egress program
//! records each query leaving for port 53 from a local socket (forwarded traffic, a
//! container's or a routed client's, has none) ([`DnsQueryKey`]: the host's address and
//! port, the server's address, the transaction id, and whether it left through a protected
//! interface or over `lo`; [`DnsQuery`]: its question), and the XDP program (or the loopback
//! program, for a query sent over `lo`) reads an answer only if it matches one and asks the
//! same question. The first such answer is the query's, as it is the resolver's, and deletes
//! it whatever it says (one answer per query): an answer that records nothing (an error, no
//! address, truncated, another type than A or AAAA, malformed records) uses the query up too,
//! so a query whose answer names nothing is not left for a forged answer to name something.
//! An answer to no query, to another question, or whose question cannot be read leaves the
//! query to the real answer. An off-path host must guess the port and the id, as it must to
//! fool the resolver. Malformed answers (compression loops or pointers that do not point
//! back, names longer than 255 bytes, records past the end) are ignored as a whole.
//!
//! What is recorded: the question's name, under every record of the answer section of the
//! question's type, A or AAAA (a CNAME chain's addresses belong to the name the application
//! asked for, for as long as the chain's shortest TTL), in [`crate::maps::RESOLVED`]
//! (address -> up to [`RESOLVED_NAMES`] names, each with its expiry) and
//! [`crate::maps::SEEN_NAMES`] (name -> its text and the keys of its suffixes).
//!
//! How names are compared, at a constant cost: a name is never stored as text in a lookup
//! key but as a 64-bit keyed hash, SipHash-1-3 with a 128-bit key the daemon draws at random
//! once ([`crate::maps::NAME_KEY`]), over the name's labels from the last to the first, each
//! as its length then its bytes (ASCII upper case folded to lower), then a marker:
//! [`END_EXACT`] for the name itself, [`END_WILDCARD`] for "any name below it". So
//! `*.debian.org` is the key of `debian.org` with the wildcard marker, and a name matches it
//! when the wildcard key of one of its proper suffixes is that key; the hash state after the
//! last labels is shared by all suffixes, so one pass over the name gives every key. The key
//! is secret, so a remote host choosing names cannot aim at another name's hash. The rules'
//! names are hashed by the daemon with the same function ([`exact_key`], [`wildcard_key`]).

/// Bytes of a DNS message the XDP program reads (an answer longer than this is read only so
/// far, and is ignored if a record it needs is cut).
pub const DNS_VIEW: usize = 2048;
/// Labels and compression pointers the parser follows in one name. Longer names (only
/// reverse lookups of IPv6 addresses come near: 34 labels) are ignored.
pub const MAX_NAME_STEPS: usize = 48;
/// Answer records read per message; later ones are not read.
pub const MAX_ANSWERS: usize = 16;
/// Labels a wildcard's suffix may have (`*.a.b.c` has 3): the keys of a name's suffixes up to
/// this many labels are kept ([`SeenName::suffixes`]).
pub const WILDCARD_DEPTH: usize = 8;
/// Names one address is recorded under at once (CDNs serve many names from one address);
/// a further name takes the place of the one that expires first.
pub const RESOLVED_NAMES: usize = 4;
/// Longest name text, with its dots (a name is at most 255 bytes on the wire).
pub const NAME_TEXT: usize = 256;

/// Capacity of [`crate::maps::DNS_QUERIES`]: queries awaiting an answer.
pub const DNS_QUERY_ENTRIES: u32 = 16384;
/// Capacity of [`crate::maps::RESOLVED`]: addresses with names.
pub const RESOLVED_ENTRIES: u32 = 65536;
/// Capacity of [`crate::maps::SEEN_NAMES`]: names with addresses (as many as addresses, so
/// that a flood of names evicts both alike).
pub const SEEN_NAME_ENTRIES: u32 = RESOLVED_ENTRIES;
/// How long a query waits for its answer (resolvers give up on a server after a few seconds).
pub const QUERY_LIFETIME_NS: u64 = 10_000_000_000;
/// Bytes of a query kept after its header: its question (a name of at most 255 bytes, its
/// type and class) and whatever follows, compared with the answer's question.
pub const QUESTION_BYTES: usize = 264;

/// DNS's port.
pub const DNS_PORT: u16 = 53;
/// Record types read.
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_CNAME: u16 = 5;
pub const CLASS_IN: u16 = 1;

/// Marker after a name's labels: the name itself.
pub const END_EXACT: u8 = 0x00;
/// Marker after a name's labels: any name below it (`*.name`).
pub const END_WILDCARD: u8 = 0xff;

/// Key of [`crate::maps::DNS_QUERIES`]: one query the host sent. Addresses as
/// `::ffff:a.b.c.d` for IPv4.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsQueryKey {
    /// The host's address, the query's source.
    pub local: [u8; 16],
    /// The server's address.
    pub server: [u8; 16],
    /// The query's source port (host order).
    pub local_port: u16,
    /// The transaction id, as on the wire (network order bytes read as a `u16`).
    pub txid: u16,
    /// Where the query was sent: [`VIA_WIRE`] or [`VIA_LOOPBACK`]. Part of the key so that
    /// only an answer coming back the same way finds the query.
    pub via: u8,
    pub _pad: [u8; 3],
}

/// [`DnsQueryKey::via`]: the query left through a protected interface (the egress program),
/// and only the XDP program may read its answer.
pub const VIA_WIRE: u8 = 1;
/// [`DnsQueryKey::via`]: the query went over `lo` to a resolver on the host (the loopback
/// program), and only the loopback program may read its answer. A datagram from the network
/// may claim to come from 127.0.0.53, or from the host's own address, and the XDP program
/// reads it before the stack drops it as a martian: were it to find a query sent over `lo`,
/// any host that reaches a UDP port the rules leave open could answer it.
pub const VIA_LOOPBACK: u8 = 2;

/// Value of [`crate::maps::DNS_QUERIES`]: until when the query may be answered, and its bytes
/// after the header. An answer is the query's only if its question is the query's (the bytes
/// from offset 12 to the end of the question's class, ASCII case aside), as a resolver
/// checks: a server cannot answer another question than the one asked. Only standard
/// queries (opcode 0) of one question are recorded: only their answers can be matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsQuery {
    pub deadline: u64,
    /// Bytes of `question` copied from the query.
    pub len: u32,
    pub _pad: u32,
    pub question: [u8; QUESTION_BYTES],
}

/// One name an address was seen under.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolvedName {
    /// The name's [`exact_key`]; 0: an empty slot.
    pub name: u64,
    /// Until when (CLOCK_MONOTONIC ns): the shortest TTL of the record and the answer's
    /// CNAMEs (the chain that led to it), clamped, plus the grace.
    pub expires: u64,
}

/// Value of [`crate::maps::RESOLVED`] (key: the address, IPv4 as `::ffff:a.b.c.d`). No family
/// beside it, unlike the flow keys: an AAAA record of `::ffff:a.b.c.d` is an IPv4 destination
/// (a connect() to it leaves as IPv4, and the outbound hooks judge it as IPv4), so it is
/// recorded as that IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub names: [ResolvedName; RESOLVED_NAMES],
}

/// Value of [`crate::maps::SEEN_NAMES`] (key: the name's [`exact_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenName {
    /// [`wildcard_key`] of the name's proper suffixes, the shortest (one label) first.
    pub suffixes: [u64; WILDCARD_DEPTH],
    /// How many of `suffixes` are set.
    pub count: u32,
    /// Bytes of `text`.
    pub len: u32,
    /// The name's labels as on the wire (each its length then its bytes, ASCII folded to
    /// lower case), without the root label: a label may hold any byte, a dot included, so
    /// dotted text could not tell `a.b` from the label `a.b`.
    pub text: [u8; NAME_TEXT],
}

/// Key of [`crate::maps::NAMES`]: a name's or wildcard's key ([`exact_key`],
/// [`wildcard_key`]) and the group of rules about programs it is a name of, or [`NO_GROUP`]
/// for the rules about every process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameSlot {
    pub key: u64,
    pub group: u32,
    pub _pad: u32,
}

/// [`NameSlot::group`] of the rules without `program`, `unit` or `user`.
pub const NO_GROUP: u32 = u32::MAX;

/// Value of [`crate::maps::DNS_ON`]: what the loopback program, which belongs to no
/// generation, needs of the rules in force. Written by the daemon when a generation goes in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOn {
    /// 1 while the rules read DNS answers (`Ruleset::reads_names`).
    pub on: u32,
    /// `[dns] min_ttl`, `max_ttl`, `grace`, in seconds.
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub grace: u32,
}

/// Value of [`crate::maps::NAME_KEY`]: the hash key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameKey {
    pub k0: u64,
    pub k1: u64,
}

impl NameKey {
    /// The daemon has not drawn a key yet: nothing is recorded.
    pub const fn is_unset(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

/// SipHash-1-3 fed one byte at a time, and finished without being consumed (each suffix of a
/// name is a finish of the state so far). The kernel feeds it from the wire, the daemon from
/// the rules' text; `siphasher` is the reference in the tests.
#[derive(Clone, Copy)]
pub struct NameHasher {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    tail: u64,
    length: u64,
}

#[inline(always)]
fn sip_round(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
    *v0 = v0.wrapping_add(*v1);
    *v1 = v1.rotate_left(13);
    *v1 ^= *v0;
    *v0 = v0.rotate_left(32);
    *v2 = v2.wrapping_add(*v3);
    *v3 = v3.rotate_left(16);
    *v3 ^= *v2;
    *v0 = v0.wrapping_add(*v3);
    *v3 = v3.rotate_left(21);
    *v3 ^= *v0;
    *v2 = v2.wrapping_add(*v1);
    *v1 = v1.rotate_left(17);
    *v1 ^= *v2;
    *v2 = v2.rotate_left(32);
}

impl NameHasher {
    #[inline(always)]
    pub fn new(key: &NameKey) -> Self {
        Self {
            v0: key.k0 ^ 0x736f_6d65_7073_6575,
            v1: key.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: key.k0 ^ 0x6c79_6765_6e65_7261,
            v3: key.k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            length: 0,
        }
    }

    /// Feeds one byte.
    #[inline(always)]
    pub fn push(&mut self, b: u8) {
        let shift = (self.length & 7) * 8;
        self.tail |= u64::from(b) << shift;
        self.length += 1;
        if self.length & 7 == 0 {
            let m = self.tail;
            self.v3 ^= m;
            sip_round(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
            self.v0 ^= m;
            self.tail = 0;
        }
    }

    /// Feeds a label byte: ASCII upper case is folded to lower (names compare without case,
    /// RFC 4343; other bytes as they are).
    #[inline(always)]
    pub fn push_folded(&mut self, b: u8) {
        self.push(fold(b));
    }

    /// The hash of what was fed so far; the state goes on.
    #[inline(always)]
    pub fn finish(&self) -> u64 {
        let (mut v0, mut v1, mut v2, mut v3) = (self.v0, self.v1, self.v2, self.v3);
        let b = ((self.length & 0xff) << 56) | self.tail;
        v3 ^= b;
        sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= b;
        v2 ^= 0xff;
        sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
        sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
        sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^ v1 ^ v2 ^ v3
    }

    /// The hash of what was fed so far followed by `marker` ([`END_EXACT`] or
    /// [`END_WILDCARD`]); the state goes on without it.
    #[inline(always)]
    pub fn finish_with(&self, marker: u8) -> u64 {
        let mut h = *self;
        h.push(marker);
        h.finish()
    }
}

/// ASCII upper case to lower; every other byte as it is.
#[inline(always)]
pub const fn fold(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b + 32 } else { b }
}

/// Feeds `name`'s labels (dotted text, no trailing dot), the last first.
fn push_labels(h: &mut NameHasher, name: &str) {
    for label in name.rsplit('.') {
        h.push(label.len() as u8);
        for b in label.bytes() {
            h.push_folded(b);
        }
    }
}

/// The key of the name `name` (dotted text, no trailing dot; labels of 1 to 63 bytes).
pub fn exact_key(key: &NameKey, name: &str) -> u64 {
    let mut h = NameHasher::new(key);
    push_labels(&mut h, name);
    h.finish_with(END_EXACT)
}

/// The key of `*.suffix`: every name below `suffix`, not `suffix` itself.
pub fn wildcard_key(key: &NameKey, suffix: &str) -> u64 {
    let mut h = NameHasher::new(key);
    push_labels(&mut h, suffix);
    h.finish_with(END_WILDCARD)
}

const _: () = assert!(core::mem::size_of::<DnsQueryKey>() == 40);
const _: () = assert!(core::mem::size_of::<DnsQuery>() == 16 + QUESTION_BYTES);
const _: () = assert!(core::mem::size_of::<NameSlot>() == 16);
const _: () = assert!(core::mem::size_of::<Resolved>() == 16 * RESOLVED_NAMES);
const _: () = assert!(core::mem::size_of::<SeenName>() == 8 * WILDCARD_DEPTH + 8 + NAME_TEXT);
const _: () = assert!(DNS_VIEW.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), explicit padding (sizes asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::DnsQueryKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsQuery {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Resolved {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SeenName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameKey {}
    // SAFETY: plain `#[repr(C)]` integers.
    unsafe impl aya::Pod for super::DnsOn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameSlot {}
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher as _;

    use super::*;

    const KEY: NameKey = NameKey {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    fn reference(bytes: &[u8]) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(KEY.k0, KEY.k1);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn the_hash_is_siphash_1_3_at_every_length() {
        let bytes: [u8; 40] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        let mut h = NameHasher::new(&KEY);
        assert_eq!(h.finish(), reference(&[]));
        for n in 1..=bytes.len() {
            h.push(bytes[n - 1]);
            assert_eq!(h.finish(), reference(&bytes[..n]), "{n} bytes");
        }
    }

    #[test]
    fn keys_follow_the_reversed_labels_and_ignore_case() {
        // org, debian, then the marker.
        let wire = [3, b'o', b'r', b'g', 6, b'd', b'e', b'b', b'i', b'a', b'n'];
        let mut exact = wire.to_vec();
        exact.push(END_EXACT);
        let mut wild = wire.to_vec();
        wild.push(END_WILDCARD);
        assert_eq!(exact_key(&KEY, "debian.org"), reference(&exact));
        assert_eq!(exact_key(&KEY, "DebIan.ORG"), reference(&exact));
        assert_eq!(wildcard_key(&KEY, "debian.org"), reference(&wild));
        assert_ne!(
            exact_key(&KEY, "debian.org"),
            wildcard_key(&KEY, "debian.org")
        );
        // A label holding a dot is not two labels.
        let mut one = NameHasher::new(&KEY);
        one.push(10);
        for b in b"debian.org" {
            one.push(*b);
        }
        assert_ne!(one.finish_with(END_EXACT), exact_key(&KEY, "debian.org"));
        // Another key, another hash.
        let other = NameKey { k0: 1, k1: 2 };
        assert_ne!(
            exact_key(&other, "debian.org"),
            exact_key(&KEY, "debian.org")
        );
    }
}
