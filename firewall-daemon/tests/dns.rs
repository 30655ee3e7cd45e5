//! Names learnt from DNS answers, in the kernel: the real egress and XDP programs run under
//! BPF_PROG_TEST_RUN on a query the host sends and on the answer it receives, and what they
//! record (`RESOLVED`, `SEEN_NAMES`) is compared with what a reference parser built from
//! hickory-proto's decoder says should be recorded (`reference`): the question's name
//! (hickory's `Name::read`, which follows compression pointers and refuses those that do not
//! point back), and every record of the answer section of the question's type (A or AAAA);
//! which answer is the query's, and so uses it up, whatever it says.
//!
//! The kernel's limits are part of the reference: at most `MAX_ANSWERS` records are read, at
//! most `MAX_NAME_STEPS` labels and pointers per name (hickory has no such limit: a name
//! needing more is one the kernel ignores, and the fuzz test counts those apart), at most
//! `DNS_VIEW` bytes of message.
//!
//! Needs root (BPF); each test makes its own bpffs.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr as _,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use firewall_common::dns::{
    DNS_VIEW, DnsQuery, DnsQueryKey, END_EXACT, END_WILDCARD, MAX_ANSWERS, MAX_NAME_STEPS,
    NameHasher, NameKey, QUESTION_BYTES, Resolved, SeenName, VIA_LOOPBACK, VIA_WIRE,
    WILDCARD_DEPTH,
};
use firewall_daemon::{
    compile,
    kernel::{Generation, Loopback, generation::OutboundGeneration},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata},
    serialize::binary::{BinDecodable as _, BinDecoder},
};
use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus as StdRng};
use rules::model::Ruleset;
use support::{
    bpffs::BpfFs,
    frames::{L4, Spec},
    lab::Loaded,
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const HOST: &str = "192.0.2.10";
const SERVER: &str = "192.0.2.53";
const HOST6: &str = "2001:db8::10";
const SERVER6: &str = "2001:db8::53";
const HOST_PORT: u16 = 41000;

/// `[dns]`'s defaults, as the object has them (no `[dns]` section yet).
const MIN_TTL: u64 = 60;
const MAX_TTL: u64 = 86400;
const GRACE: u64 = 30;

const RULES: &str = r#"
[defaults]
inbound = "stealth"
outbound = "allow"

[[rule]]
name = "example"
direction = "out"
remote = ["*.example.test"]
action = "reject"
"#;

fn parse_rules(text: &str) -> Ruleset {
    support::rules::parse(text, "dns-test.toml")
}

fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

// ---------------------------------------------------------------------------------------------
// The reference.

/// What an answer should leave in the tables.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Too broken to tell whether it answers the query (cut in its question, a question that
    /// cannot be read): nothing recorded, `dns_malformed` counted, and the query still waits
    /// for its answer.
    Unreadable,
    /// Not the query's answer: not a response to a standard query, not one question, or
    /// another question than the query's. Ignored as an answer to no query
    /// (`dns_unsolicited`), and the query still waits for its answer.
    Unsolicited,
    /// The query's answer, malformed after its question: nothing recorded, `dns_malformed`
    /// counted, the query used up.
    Malformed,
    /// The query's answer, with nothing to record: `dns_no_address` counted, the query used
    /// up.
    Nothing,
    /// The query's answer: the question's labels, and each address with its TTL (the
    /// shortest of its record's and the CNAMEs' of the answer).
    Recorded(Vec<Vec<u8>>, Vec<(IpAddr, u32)>),
}

impl Expect {
    /// Whether the answer is the query's, and the query is forgotten: as the host's resolver
    /// takes the first answer with its query's id and question, whatever it says.
    fn uses_up(&self) -> bool {
        matches!(
            self,
            Expect::Malformed | Expect::Nothing | Expect::Recorded(..)
        )
    }
}

/// What the kernel should record of `msg`, the answer to `query`, by hickory-proto's decoder
/// and the kernel's documented rules. The second value is true when only a kernel limit (name
/// steps) made the answer malformed or unreadable.
fn reference(msg: &[u8], query: &[u8]) -> (Expect, bool) {
    let msg = &msg[..msg.len().min(DNS_VIEW)];
    if msg.len() < 12 {
        return (Expect::Unreadable, false);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    // A response (QR) to a standard query (opcode 0), with one question to compare.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || qdcount != 1 {
        return (Expect::Unsolicited, false);
    }
    let mut d = BinDecoder::new(msg);
    let _ = d.read_slice(12);
    let Some(question) = read_name(msg, &mut d) else {
        return (Expect::Unreadable, false);
    };
    // The kernel's rule: the question's name holds no pointer (it could only point into the
    // header).
    if has_pointer(msg, 12) {
        return (Expect::Unreadable, false);
    }
    let mut beyond_limit = steps(msg, 12) > MAX_NAME_STEPS;
    let (Ok(qtype), Ok(qclass)) = (d.read_u16(), d.read_u16()) else {
        return (Expect::Unreadable, beyond_limit);
    };
    if beyond_limit {
        return (Expect::Unreadable, true);
    }
    // The question, as bytes from offset 12, must be the query's (ASCII case aside; the
    // kernel keeps QUESTION_BYTES of the query).
    let qend = d.index();
    let fold = |b: &[u8]| -> Vec<u8> { b.iter().map(|c| firewall_common::dns::fold(*c)).collect() };
    let kept = &query[12.min(query.len())..query.len().min(12 + QUESTION_BYTES)];
    if qend - 12 > kept.len() || fold(&msg[12..qend]) != fold(&kept[..qend - 12]) {
        return (Expect::Unsolicited, false);
    }
    // The query's answer from here on, whatever it says.
    let qtype = qtype.unverified();
    if flags & 0x0200 != 0 || flags & 0xf != 0 {
        return (Expect::Nothing, false);
    }
    if qclass.unverified() != 1 || question.num_labels() == 0 || (qtype != 1 && qtype != 28) {
        return (Expect::Nothing, false);
    }
    let mut addrs = Vec::new();
    // The shortest TTL of the answer's CNAMEs: the chain that led to the addresses.
    let mut chain_ttl = u32::MAX;
    for _ in 0..ancount.min(MAX_ANSWERS) {
        let owner_at = d.index();
        if read_name(msg, &mut d).is_none() {
            return (Expect::Malformed, beyond_limit);
        }
        beyond_limit |= steps(msg, owner_at) > MAX_NAME_STEPS;
        let fields = (d.read_u16(), d.read_u16(), d.read_u32(), d.read_u16());
        let (Ok(rtype), Ok(class), Ok(ttl), Ok(rdlen)) = fields else {
            return (Expect::Malformed, beyond_limit);
        };
        let (rtype, class, ttl) = (rtype.unverified(), class.unverified(), ttl.unverified());
        let rdlen = rdlen.unverified() as usize;
        let at = d.index();
        let Ok(rdata) = d.read_slice(rdlen) else {
            return (Expect::Malformed, beyond_limit);
        };
        let rdata = rdata.unverified();
        match (class, rtype) {
            // Only the question's type is kept (a CNAME chain leads to it).
            (1, 1) if rdlen == 4 && qtype == 1 => addrs.push((
                IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
                ttl,
            )),
            (1, 28) if rdlen == 16 && qtype == 28 => {
                let a: [u8; 16] = rdata.try_into().expect("16 bytes");
                addrs.push((IpAddr::V6(Ipv6Addr::from(a)), ttl));
            }
            (1, 1) if rdlen == 4 => {}
            (1, 28) if rdlen == 16 => {}
            (1, 1) | (1, 28) => return (Expect::Malformed, beyond_limit),
            (_, 5) => {
                let mut r = d.clone(at as u16);
                if read_name(msg, &mut r).is_none() || r.index() != at + rdlen {
                    return (Expect::Malformed, beyond_limit);
                }
                beyond_limit |= steps(msg, at) > MAX_NAME_STEPS;
                chain_ttl = chain_ttl.min(ttl_of(ttl));
            }
            _ => {}
        }
    }
    if beyond_limit {
        return (Expect::Malformed, true);
    }
    if addrs.is_empty() {
        return (Expect::Nothing, false);
    }
    let addrs = addrs
        .into_iter()
        .map(|(a, ttl)| (a, ttl_of(ttl).min(chain_ttl)))
        .collect();
    let labels = question.iter().map(<[u8]>::to_vec).collect();
    (Expect::Recorded(labels, addrs), false)
}

/// hickory's name decoder on `msg` at `d`.
fn read_name(_msg: &[u8], d: &mut BinDecoder<'_>) -> Option<Name> {
    Name::read(d).ok()
}

/// A record's TTL as the kernel takes it: one with the high bit set is 0 (RFC 2181, 8).
fn ttl_of(ttl: u32) -> u32 {
    if ttl & 0x8000_0000 != 0 { 0 } else { ttl }
}

/// Whether the well-formed name at `at` holds a compression pointer.
fn has_pointer(msg: &[u8], mut at: usize) -> bool {
    while let Some(&b) = msg.get(at) {
        match b {
            0 => return false,
            b if b & 0xc0 == 0xc0 => return true,
            b => at += 1 + usize::from(b),
        }
    }
    false
}

/// Bytes the kernel's walk reads to the end of the name at `at` (labels, pointers and the
/// root label: one step each), for a well-formed name.
fn steps(msg: &[u8], mut at: usize) -> usize {
    let mut n = 0;
    while at < msg.len() && n <= MAX_NAME_STEPS + 1 {
        let b = msg[at];
        n += 1;
        match b {
            0 => return n,
            b if b & 0xc0 == 0xc0 => {
                at = ((usize::from(b & 0x3f)) << 8) | usize::from(*msg.get(at + 1).unwrap_or(&0));
            }
            b => at += 1 + usize::from(b),
        }
    }
    n
}

/// The keys the kernel should compute for a name of these labels: the exact key, and the
/// wildcard keys of its proper suffixes of up to `WILDCARD_DEPTH` labels, shortest first.
fn keys_of(key: &NameKey, labels: &[Vec<u8>]) -> (u64, Vec<u64>) {
    let mut h = NameHasher::new(key);
    let mut suffixes = Vec::new();
    for (i, label) in labels.iter().rev().enumerate() {
        h.push(label.len() as u8);
        for b in label {
            h.push_folded(*b);
        }
        if i + 1 < labels.len() && i < WILDCARD_DEPTH {
            suffixes.push(h.finish_with(END_WILDCARD));
        }
    }
    (h.finish_with(END_EXACT), suffixes)
}

/// The text `SEEN_NAMES` should hold: the labels as on the wire, folded to lower case.
fn text_of(labels: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in labels {
        out.push(l.len() as u8);
        out.extend(l.iter().map(|b| firewall_common::dns::fold(*b)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The lab: one rule set that names names, both copies loaded, the shared maps opened.

struct Lab {
    _fs: BpfFs,
    generation: Generation,
    /// The loopback program (a resolver on the host answering over `lo`), loaded, not attached.
    lo: Loopback,
    _outbound: OutboundGeneration,
    tables: firewall_daemon::conntrack::Tables,
    pin: PathBuf,
    key: NameKey,
}

fn open(pin: &Path, name: &str) -> Map {
    Map::from_map_data(MapData::from_pin(pin.join(name)).expect(name)).expect(name)
}

impl Lab {
    fn new(text: &str) -> Self {
        let fs = BpfFs::new();
        let pin = fs.pin_dir("fw");
        let ruleset = parse_rules(text);
        let Loaded {
            mut generation,
            tables,
            ..
        } = Loaded::new(&ruleset, &pin, text);
        // What the daemon does once the generation is in force: the loopback program reads.
        generation.in_force().expect("DNS_ON");
        let lo = Loopback::load(&pin).unwrap_or_else(|e| panic!("the loopback program: {e:#}"));
        let out =
            compile::compile_direction(&ruleset, rules::model::Direction::Out, &Default::default())
                .expect("compiling the outbound rules");
        let outbound = OutboundGeneration::load(&out, &ruleset, &pin, 1)
            .unwrap_or_else(|e| panic!("loading the outbound copy: {e:#}"));
        let keys: Array<MapData, NameKey> =
            Array::try_from(open(&pin, "NAME_KEY")).expect("NAME_KEY");
        let key = keys.get(&0, 0).expect("the name key");
        assert!(!key.is_unset(), "the outbound copy drew no name key");
        Self {
            _fs: fs,
            generation,
            lo,
            _outbound: outbound,
            tables,
            pin,
            key,
        }
    }

    fn resolved(&self) -> BTreeMap<[u8; 16], Resolved> {
        let m: BpfHashMap<MapData, [u8; 16], Resolved> =
            BpfHashMap::try_from(open(&self.pin, "RESOLVED")).expect("RESOLVED");
        m.iter().map(|e| e.expect("RESOLVED entry")).collect()
    }

    fn seen(&self) -> BTreeMap<u64, SeenName> {
        let m: BpfHashMap<MapData, u64, SeenName> =
            BpfHashMap::try_from(open(&self.pin, "SEEN_NAMES")).expect("SEEN_NAMES");
        m.iter().map(|e| e.expect("SEEN_NAMES entry")).collect()
    }

    fn queries(&self) -> Vec<DnsQueryKey> {
        let m: BpfHashMap<MapData, DnsQueryKey, DnsQuery> =
            BpfHashMap::try_from(open(&self.pin, "DNS_QUERIES")).expect("DNS_QUERIES");
        m.keys().map(|k| k.expect("DNS_QUERIES key")).collect()
    }

    /// Empties the names' tables and the connection tables.
    fn clear(&mut self) {
        for name in ["RESOLVED", "SEEN_NAMES", "DNS_QUERIES"] {
            let map = open(&self.pin, name);
            match name {
                "RESOLVED" => {
                    let mut m: BpfHashMap<MapData, [u8; 16], Resolved> =
                        BpfHashMap::try_from(map).expect(name);
                    let keys: Vec<_> = m.keys().map(|k| k.expect("key")).collect();
                    for k in keys {
                        let _ = m.remove(&k);
                    }
                }
                "SEEN_NAMES" => {
                    let mut m: BpfHashMap<MapData, u64, SeenName> =
                        BpfHashMap::try_from(map).expect(name);
                    let keys: Vec<_> = m.keys().map(|k| k.expect("key")).collect();
                    for k in keys {
                        let _ = m.remove(&k);
                    }
                }
                _ => {
                    let mut m: BpfHashMap<MapData, DnsQueryKey, DnsQuery> =
                        BpfHashMap::try_from(map).expect(name);
                    let keys: Vec<_> = m.keys().map(|k| k.expect("key")).collect();
                    for k in keys {
                        let _ = m.remove(&k);
                    }
                }
            }
        }
        self.tables.clear();
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.generation.counters().expect("counters")
    }

    /// The DNS counters that moved since `c0`, and by how much.
    fn moved(&self, c0: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
        self.counters()
            .into_iter()
            .filter(|(k, v)| k.starts_with("dns_") && *v != c0[*k])
            .map(|(k, v)| (k, v - c0[k]))
            .collect()
    }

    /// The host sends `query` from `host:port` to `server:53` (the egress program: a test
    /// run's packet has a socket, as the host's own queries have; a forwarded packet has none
    /// and is not recorded, which a test run cannot show).
    fn send_query(&mut self, host: &str, server: &str, port: u16, query: &[u8]) {
        let mut spec = Spec::new(host, server, L4::Udp, 53);
        spec.remote_port = port;
        spec.payload = query.to_vec();
        self.generation
            .test_run_egress(&spec.frame())
            .expect("egress test run");
    }

    /// `answer` arrives from `server:from_port` at `host:port` (the XDP program); returns the
    /// XDP action and the counters that moved.
    fn receive(
        &mut self,
        server: &str,
        from_port: u16,
        host: &str,
        port: u16,
        answer: &[u8],
    ) -> (u32, BTreeMap<&'static str, u64>) {
        let mut spec = Spec::new(server, host, L4::Udp, port);
        spec.remote_port = from_port;
        spec.payload = answer.to_vec();
        let c0 = self.counters();
        let (action, _) = self
            .generation
            .test_run(&spec.frame())
            .expect("XDP test run");
        let moved = self.moved(&c0);
        (action, moved)
    }

    /// [`Self::send_query`] over loopback: the query through the loopback program (which
    /// always passes: `TC_ACT_OK`, 0).
    fn send_on_loopback(&mut self, query: &[u8]) {
        let mut spec = Spec::new(HOST, SERVER, L4::Udp, 53);
        spec.remote_port = HOST_PORT;
        spec.payload = query.to_vec();
        assert_eq!(self.lo.test_run(&spec.frame()).expect("the query on lo"), 0);
    }

    /// [`Self::receive`] over loopback: the answer through the loopback program; returns its
    /// verdict and the counters that moved.
    fn receive_on_loopback(&mut self, answer: &[u8]) -> (i32, BTreeMap<&'static str, u64>) {
        let mut spec = Spec::new(SERVER, HOST, L4::Udp, HOST_PORT);
        spec.remote_port = 53;
        spec.payload = answer.to_vec();
        let c0 = self.counters();
        let verdict = self.lo.test_run(&spec.frame()).expect("the answer on lo");
        (verdict, self.moved(&c0))
    }

    /// One exchange on IPv4: `query` leaves, `answer` comes back; checks the outcome against
    /// the reference and returns it.
    fn exchange(&mut self, what: &str, query: &[u8], answer: &[u8]) -> Expect {
        self.exchange_via(Via::Wire, what, query, answer)
    }

    /// [`Self::exchange`] on the wire (egress and XDP programs) or over loopback (the
    /// loopback program): both must record what the reference reads.
    fn exchange_via(&mut self, via: Via, what: &str, query: &[u8], answer: &[u8]) -> Expect {
        self.clear();
        let before = now_ns();
        let (action, moved) = match via {
            Via::Wire => {
                self.send_query(HOST, SERVER, HOST_PORT, query);
                self.receive(SERVER, 53, HOST, HOST_PORT, answer)
            }
            Via::Loopback => {
                self.send_on_loopback(query);
                let (verdict, moved) = self.receive_on_loopback(answer);
                assert_eq!(verdict, 0, "{what}: the loopback program never drops");
                (XDP_PASS, moved)
            }
        };
        let after = now_ns();
        assert_eq!(action, XDP_PASS, "{what}: the tracked answer must pass");
        let (expect, _) = reference(answer, query);
        self.check(what, &expect, &moved, before, after);
        // The query's answer uses the query up whatever it says, as the resolver takes it;
        // an answer to no query, or one too broken to tell, leaves it to the real answer.
        assert_eq!(
            self.queries().is_empty(),
            expect.uses_up(),
            "{what}: the query is forgotten once, and only once, its answer came ({expect:?})"
        );
        expect
    }

    fn check(
        &self,
        what: &str,
        expect: &Expect,
        moved: &BTreeMap<&'static str, u64>,
        before: u64,
        after: u64,
    ) {
        let resolved = self.resolved();
        let seen = self.seen();
        match expect {
            Expect::Unreadable | Expect::Malformed | Expect::Nothing | Expect::Unsolicited => {
                let counter = match expect {
                    Expect::Unreadable | Expect::Malformed => "dns_malformed",
                    Expect::Nothing => "dns_no_address",
                    _ => "dns_unsolicited",
                };
                assert_eq!(
                    moved,
                    &BTreeMap::from([(counter, 1)]),
                    "{what}: expected {expect:?}"
                );
                assert!(
                    resolved.is_empty() && seen.is_empty(),
                    "{what}: nothing may be recorded ({expect:?}), found {resolved:?}"
                );
            }
            Expect::Recorded(labels, addrs) => {
                let (exact, suffixes) = keys_of(&self.key, labels);
                assert_eq!(moved.get("dns_answers"), Some(&1), "{what}: {moved:?}");
                assert_eq!(
                    moved.get("dns_addresses"),
                    Some(&(addrs.len() as u64)),
                    "{what}"
                );
                let s = seen
                    .get(&exact)
                    .unwrap_or_else(|| panic!("{what}: the name is not in SEEN_NAMES"));
                let text = text_of(labels);
                assert_eq!(
                    &s.text[..s.len as usize],
                    &text[..],
                    "{what}: the name's text"
                );
                assert!(s.text[s.len as usize..].iter().all(|b| *b == 0), "{what}");
                assert_eq!(
                    &s.suffixes[..s.count as usize],
                    &suffixes[..],
                    "{what}: the suffixes' keys"
                );
                assert_eq!(seen.len(), 1, "{what}: one name");
                let mut want: BTreeMap<[u8; 16], u64> = BTreeMap::new();
                for (a, ttl) in addrs {
                    let ttl = u64::from(*ttl).clamp(MIN_TTL, MAX_TTL) + GRACE;
                    let e = want.entry(firewall_common::addr::mapped(*a)).or_default();
                    *e = (*e).max(ttl);
                }
                let got: BTreeSet<&[u8; 16]> = resolved.keys().collect();
                let wanted: BTreeSet<&[u8; 16]> = want.keys().collect();
                assert_eq!(got, wanted, "{what}: the addresses recorded");
                for (a, ttl) in &want {
                    let r = &resolved[a];
                    let slots: Vec<_> = r.names.iter().filter(|n| n.name != 0).collect();
                    assert_eq!(slots.len(), 1, "{what}: {r:?}");
                    assert_eq!(slots[0].name, exact, "{what}: the name's key");
                    // The coarse clock is behind by less than a tick.
                    let lo = before - 20_000_000 + ttl * 1_000_000_000;
                    let hi = after + ttl * 1_000_000_000;
                    assert!(
                        (lo..=hi).contains(&slots[0].expires),
                        "{what}: expiry {} not in {lo}..={hi}",
                        slots[0].expires
                    );
                }
            }
        }
    }
}

/// Where an exchange goes: the protected interface's programs, or the loopback program.
#[derive(Clone, Copy, Debug)]
enum Via {
    Wire,
    Loopback,
}

/// The query a well-formed answer answers, as a client sends it: its id, a header with one
/// question and RD, and its question (name, type, class).
fn query_of(answer: &[u8]) -> Vec<u8> {
    let mut q = answer[..answer.len().min(12)].to_vec();
    q.resize(12, 0);
    q[2] = 0x01; // RD, not QR
    q[3] = 0;
    q[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    let mut d = BinDecoder::new(answer);
    let _ = d.read_slice(12);
    if Name::read(&mut d).is_ok() && d.read_u32().is_ok() {
        q.extend_from_slice(&answer[12..d.index()]);
    } else {
        // No question to be read: the bytes as they are, as far as the kernel keeps them.
        q.extend_from_slice(&answer[12.min(answer.len())..answer.len().min(12 + QUESTION_BYTES)]);
    }
    q
}

// ---------------------------------------------------------------------------------------------
// Building answers.

fn name(text: &str) -> Name {
    Name::from_str(text).expect("test name")
}

fn a(owner: &str, ttl: u32, addr: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::A(rdata::A(addr.parse().expect("IPv4"))),
    )
}

fn aaaa(owner: &str, ttl: u32, addr: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::AAAA(rdata::AAAA(addr.parse().expect("IPv6"))),
    )
}

fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(rdata::CNAME(name(target))))
}

fn answer(id: u16, question: &str, qtype: RecordType, records: Vec<Record>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name(question), qtype));
    m.add_answers(records);
    m.to_vec().expect("encoding the test answer")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn answers_to_the_hosts_queries_are_recorded_under_the_question() {
    let mut lab = Lab::new(RULES);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "one A record",
            answer(
                1,
                "www.example.test.",
                RecordType::A,
                vec![a("www.example.test.", 300, "198.51.100.7")],
            ),
        ),
        (
            "AAAA, upper-case question",
            answer(
                2,
                "WWW.Example.TEST.",
                RecordType::AAAA,
                vec![aaaa("WWW.Example.TEST.", 3600, "2001:db8:1::7")],
            ),
        ),
        (
            "a CNAME chain: the addresses belong to the question",
            answer(
                3,
                "cdn.example.test.",
                RecordType::A,
                vec![
                    cname("cdn.example.test.", 60, "edge.cdn.other.test."),
                    cname("edge.cdn.other.test.", 60, "x1.cdn.other.test."),
                    a("x1.cdn.other.test.", 20, "203.0.113.1"),
                    a("x1.cdn.other.test.", 20, "203.0.113.2"),
                    a("x1.cdn.other.test.", 20, "203.0.113.3"),
                ],
            ),
        ),
        (
            "TTLs clamped to min_ttl and max_ttl, one over 2^31 taken as 0; a repeated address \
             keeps one slot, the longest",
            answer(
                4,
                "ttl.example.test.",
                RecordType::A,
                vec![
                    a("ttl.example.test.", 0, "198.51.100.8"),
                    a("ttl.example.test.", 4_000_000_000, "198.51.100.9"),
                    a("ttl.example.test.", 100, "198.51.100.9"),
                    a("ttl.example.test.", 200_000, "198.51.100.11"),
                ],
            ),
        ),
        (
            "a name deeper than the wildcard depth keeps its shortest suffixes",
            answer(
                5,
                "a.b.c.d.e.f.g.h.i.j.example.test.",
                RecordType::A,
                vec![a("a.b.c.d.e.f.g.h.i.j.example.test.", 300, "198.51.100.10")],
            ),
        ),
        (
            "an IPv4-mapped AAAA is that IPv4 address",
            answer(
                6,
                "mapped.example.test.",
                RecordType::AAAA,
                vec![aaaa("mapped.example.test.", 300, "::ffff:198.51.100.11")],
            ),
        ),
        (
            "an answer with no address records nothing",
            answer(
                7,
                "none.example.test.",
                RecordType::A,
                vec![cname("none.example.test.", 300, "elsewhere.test.")],
            ),
        ),
    ];
    for (what, msg) in &cases {
        let expect = lab.exchange(what, &query_of(msg), msg);
        assert!(
            matches!(expect, Expect::Recorded(..) | Expect::Nothing),
            "{what}: the test answer is well formed: {expect:?}"
        );
    }
    // A question or an answer carrying an error, or truncated, records nothing.
    let mut error = cases[0].1.clone();
    error[3] |= 3; // NXDOMAIN
    assert_eq!(
        lab.exchange("an error", &query_of(&error), &error),
        Expect::Nothing
    );
    let mut truncated = cases[0].1.clone();
    truncated[2] |= 0x02;
    assert_eq!(
        lab.exchange("truncated", &query_of(&truncated), &truncated),
        Expect::Nothing
    );
}

#[test]
fn malformed_answers_are_ignored_whole() {
    let mut lab = Lab::new(RULES);
    let good = answer(
        9,
        "www.example.test.",
        RecordType::A,
        vec![
            a("www.example.test.", 300, "198.51.100.7"),
            a("www.example.test.", 300, "198.51.100.8"),
        ],
    );
    // The question is at 12; the answers' owners are pointers to it (0xc00c).
    let question_end = 12 + "www.example.test".len() + 2 + 4;
    let first_owner = question_end;
    assert_eq!(&good[first_owner..first_owner + 2], &[0xc0, 0x0c]);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut forward = good.clone();
    forward[first_owner + 1] = (first_owner + 2) as u8;
    cases.push(("a pointer that points forward", forward));
    let mut self_loop = good.clone();
    self_loop[first_owner + 1] = first_owner as u8;
    cases.push(("a pointer to itself", self_loop));
    let mut past = good.clone();
    past[first_owner] = 0xc3;
    past[first_owner + 1] = 0xff;
    cases.push(("a pointer past the end", past));
    let mut cut = good.clone();
    cut.truncate(good.len() - 2);
    cases.push(("the last record cut short", cut));
    let mut long_a = good.clone();
    // rdlength of the first A: 5, which also shifts the next record.
    long_a[first_owner + 11] = 5;
    cases.push(("an A record of 5 bytes", long_a));
    let mut bad_label = good.clone();
    bad_label[12] = 0x80;
    cases.push(("a label type 10 (reserved)", bad_label));
    // A question of 4 * 63-byte labels: 257 bytes on the wire.
    let long = format!("{l}.{l}.{l}.{l}", l = "a".repeat(63));
    let mut too_long = good[..12].to_vec();
    for label in long.split('.') {
        too_long.push(label.len() as u8);
        too_long.extend_from_slice(label.as_bytes());
    }
    too_long.extend_from_slice(&[0, 0, 1, 0, 1]);
    too_long.extend_from_slice(&good[question_end..]);
    too_long[6] = 0;
    too_long[7] = 0;
    cases.push(("a question over 255 bytes", too_long));
    // A CNAME whose target is a pointer loop.
    let mut loop_cname = answer(
        10,
        "www.example.test.",
        RecordType::A,
        vec![
            cname("www.example.test.", 300, "x.test."),
            a("x.test.", 300, "198.51.100.9"),
        ],
    );
    let rdata = question_end + 2 + 10;
    let n = loop_cname.len();
    loop_cname[rdata] = 0xc0;
    loop_cname[rdata + 1] = rdata as u8;
    let _ = n;
    cases.push(("a CNAME target that points to itself", loop_cname));
    for (what, msg) in &cases {
        // The client asked the question of the well-formed answer (or, for the long name,
        // of its own bytes).
        let query = if what.contains("255") {
            query_of(msg)
        } else if what.contains("CNAME") {
            query_of(&answer(10, "www.example.test.", RecordType::A, vec![]))
        } else {
            query_of(&good)
        };
        // A question that cannot be read cannot be told to be the query's; past it, the
        // answer is the query's.
        let want = if what.contains("label type") || what.contains("255") {
            Expect::Unreadable
        } else {
            Expect::Malformed
        };
        let (expect, _) = reference(msg, &query);
        assert_eq!(expect, want, "{what}: the reference must refuse it");
        lab.exchange(what, &query, msg);
    }
    // An answer to another question than the query's: not read, and the query waits on.
    let other = answer(
        9,
        "www.debian.org.",
        RecordType::A,
        vec![a("www.debian.org.", 300, "198.51.100.66")],
    );
    assert_eq!(
        lab.exchange("another question", &query_of(&good), &other),
        Expect::Unsolicited
    );
    // The same question in other case: read (resolvers randomise the case, servers echo it).
    let mut upper = good.clone();
    upper[13] = b'W';
    assert!(matches!(
        lab.exchange("the question in other case", &query_of(&good), &upper),
        Expect::Recorded(..)
    ));
}

#[test]
fn answers_to_no_query_of_the_host_are_ignored() {
    let mut lab = Lab::new(RULES);
    let msg = answer(
        0x1234,
        "www.example.test.",
        RecordType::A,
        vec![a("www.example.test.", 300, "198.51.100.7")],
    );
    let query = query_of(&msg);
    struct Case {
        what: &'static str,
        query_id: Option<u16>,
        from: &'static str,
        from_port: u16,
        to_port: u16,
    }
    let cases = [
        Case {
            what: "no query was sent",
            query_id: None,
            from: SERVER,
            from_port: 53,
            to_port: HOST_PORT,
        },
        Case {
            what: "another transaction id",
            query_id: Some(0x1235),
            from: SERVER,
            from_port: 53,
            to_port: HOST_PORT,
        },
        Case {
            what: "from a server that was not asked",
            query_id: Some(0x1234),
            from: "192.0.2.54",
            from_port: 53,
            to_port: HOST_PORT,
        },
        Case {
            what: "to another port of the host",
            query_id: Some(0x1234),
            from: SERVER,
            from_port: 53,
            to_port: HOST_PORT + 1,
        },
    ];
    for c in &cases {
        lab.clear();
        if let Some(id) = c.query_id {
            let mut q = query.clone();
            q[..2].copy_from_slice(&id.to_be_bytes());
            lab.send_query(HOST, SERVER, HOST_PORT, &q);
            // The server that was not asked must reach the host: track its flow too.
            if c.from != SERVER || c.to_port != HOST_PORT {
                lab.send_query(HOST, c.from, c.to_port, &[0; 12][..]);
            }
        } else {
            lab.send_query(HOST, SERVER, HOST_PORT, &[0xff; 4]);
        }
        let (action, moved) = lab.receive(c.from, c.from_port, HOST, c.to_port, &msg);
        assert_eq!(action, XDP_PASS, "{}: a tracked flow passes", c.what);
        assert_eq!(
            moved,
            BTreeMap::from([("dns_unsolicited", 1)]),
            "{}",
            c.what
        );
        assert!(
            lab.resolved().is_empty() && lab.seen().is_empty(),
            "{}",
            c.what
        );
    }
    // A second answer to one query: the first is taken, the second ignored.
    lab.clear();
    lab.send_query(HOST, SERVER, HOST_PORT, &query);
    let (_, first) = lab.receive(SERVER, 53, HOST, HOST_PORT, &msg);
    assert_eq!(first.get("dns_answers"), Some(&1));
    let (_, second) = lab.receive(SERVER, 53, HOST, HOST_PORT, &msg);
    assert_eq!(second, BTreeMap::from([("dns_unsolicited", 1)]));
    // An answer whose flow the host never opened is judged by the inbound rules (stealth
    // here), and nothing is read of it.
    lab.clear();
    let (action, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, &msg);
    assert_eq!(action, XDP_DROP);
    assert!(moved.is_empty(), "{moved:?}");
    // IPv6: the same exchange is recorded.
    lab.clear();
    lab.send_query(HOST6, SERVER6, HOST_PORT, &query);
    let (action, moved) = lab.receive(SERVER6, 53, HOST6, HOST_PORT, &msg);
    assert_eq!(action, XDP_PASS);
    assert_eq!(moved.get("dns_answers"), Some(&1), "{moved:?}");
    assert_eq!(lab.resolved().len(), 1);
}

/// The first answer with the query's id and question is the query's answer, whatever it says:
/// the resolver takes it and stops waiting, and so does the kernel, even when it records
/// nothing. Were the query left waiting, a local user could ask the resolver, from a port and
/// with an id of their choice, a question whose answer records nothing (a name that does not
/// exist, a TXT question), and an accomplice forging the resolver's address would have the
/// query's 10 s to answer it with an address of their choice.
#[test]
fn the_querys_answer_uses_it_up_whatever_it_says() {
    let mut lab = Lab::new(RULES);
    let www = "www.example.test.";
    let forged = |id: u16, question: &str, qtype: RecordType| {
        answer(id, question, qtype, vec![a(question, 300, "203.0.113.66")])
    };
    let mut nxdomain = answer(0x1111, "nx-123.example.test.", RecordType::A, vec![]);
    nxdomain[3] |= 3;
    let mut servfail = answer(0x3333, www, RecordType::A, vec![]);
    servfail[3] |= 2;
    let mut truncated = answer(
        0x4444,
        www,
        RecordType::A,
        vec![a(www, 300, "198.51.100.7")],
    );
    truncated[2] |= 0x02;
    let txt = Record::from_rdata(
        name(www),
        300,
        RData::TXT(rdata::TXT::new(vec!["v=test".to_owned()])),
    );
    let mut cut = answer(
        0x6666,
        www,
        RecordType::A,
        vec![a(www, 300, "198.51.100.7")],
    );
    cut.truncate(cut.len() - 2);
    // (what, the resolver's answer, its counter, an answer forged after it)
    let cases = [
        (
            "NXDOMAIN",
            nxdomain,
            "dns_no_address",
            forged(0x1111, "nx-123.example.test.", RecordType::A),
        ),
        (
            "no record of the name (NODATA)",
            answer(0x2222, www, RecordType::A, vec![]),
            "dns_no_address",
            forged(0x2222, www, RecordType::A),
        ),
        (
            "SERVFAIL",
            servfail,
            "dns_no_address",
            forged(0x3333, www, RecordType::A),
        ),
        (
            "truncated",
            truncated,
            "dns_no_address",
            forged(0x4444, www, RecordType::A),
        ),
        (
            "a TXT question",
            answer(0x5555, www, RecordType::TXT, vec![txt]),
            "dns_no_address",
            forged(0x5555, www, RecordType::TXT),
        ),
        (
            "a record cut short after the question",
            cut,
            "dns_malformed",
            forged(0x6666, www, RecordType::A),
        ),
    ];
    for (what, real, counter, fake) in &cases {
        lab.clear();
        lab.send_query(HOST, SERVER, HOST_PORT, &query_of(real));
        let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, real);
        assert_eq!(moved, BTreeMap::from([(*counter, 1)]), "{what}");
        let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, fake);
        assert!(
            lab.resolved().is_empty() && lab.seen().is_empty(),
            "{what}: an answer forged after the real one named {:?}",
            lab.resolved()
        );
        assert_eq!(
            moved,
            BTreeMap::from([("dns_unsolicited", 1)]),
            "{what}: an answer forged after the real one"
        );
        assert!(lab.queries().is_empty(), "{what}: the query is used up");
    }

    // What cannot be told to answer the query leaves it to the answer that can.
    let real = answer(
        0x7777,
        www,
        RecordType::A,
        vec![a(www, 300, "198.51.100.7")],
    );
    let mut no_question = Message::new(0x7777, MessageType::Response, OpCode::Query);
    no_question.add_answers(vec![a(www, 300, "203.0.113.66")]);
    let no_question = no_question.to_vec().expect("encoding");
    let mut not_a_response = forged(0x7777, www, RecordType::A);
    not_a_response[2] &= !0x80;
    let mut another_opcode = forged(0x7777, www, RecordType::A);
    another_opcode[2] |= 2 << 3;
    let mut unreadable = real.clone();
    unreadable[12] = 0x80;
    let cases = [
        ("no question", no_question, "dns_unsolicited"),
        ("not a response", not_a_response, "dns_unsolicited"),
        (
            "not a standard query's answer",
            another_opcode,
            "dns_unsolicited",
        ),
        (
            "another question",
            forged(0x7777, "www.other.test.", RecordType::A),
            "dns_unsolicited",
        ),
        (
            "a question that cannot be read",
            unreadable,
            "dns_malformed",
        ),
    ];
    for (what, early, counter) in &cases {
        lab.clear();
        lab.send_query(HOST, SERVER, HOST_PORT, &query_of(&real));
        let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, early);
        assert_eq!(moved, BTreeMap::from([(*counter, 1)]), "{what}");
        assert_eq!(lab.queries().len(), 1, "{what}: the query waits on");
        let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, &real);
        assert_eq!(
            moved.get("dns_answers"),
            Some(&1),
            "{what}: the real answer after it: {moved:?}"
        );
    }

    // A pointer in the question could only point into the header, whose bytes the sender
    // chooses: here bytes 5 to 7 (the question count's low byte, the answer count) spell the
    // name `x`, and the 16 records the answer count then asks for follow.
    let mut query = query_of(&real);
    query.truncate(12);
    query.extend_from_slice(&[0xc0, 5, 0, 1, 0, 1]);
    let mut header_name = query.clone();
    header_name[2] = 0x81;
    header_name[3] = 0x80;
    header_name[6] = b'x';
    header_name[7] = 0;
    for i in 0..MAX_ANSWERS as u8 {
        // Owner: the root; A, IN, TTL 300, 4 bytes.
        header_name.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 203, 0, 113, i]);
    }
    assert_eq!(
        lab.exchange("a question pointing into the header", &query, &header_name),
        Expect::Unreadable
    );

    // Only a standard query of one question is recorded: the answer to another (an opcode the
    // server refuses, questions it cannot answer in one) may not match it, and would leave
    // it waiting for a forged one.
    let query = query_of(&real);
    let mut status = query.clone();
    status[2] |= 2 << 3;
    let mut two = query.clone();
    two[5] = 2;
    for (what, q) in [("opcode STATUS", status), ("two questions", two)] {
        lab.clear();
        let c0 = lab.counters();
        lab.send_query(HOST, SERVER, HOST_PORT, &q);
        assert!(lab.moved(&c0).is_empty(), "{what}: {:?}", lab.moved(&c0));
        assert!(lab.queries().is_empty(), "{what}: not recorded");
        let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, &real);
        assert_eq!(
            moved,
            BTreeMap::from([("dns_unsolicited", 1)]),
            "{what}: an answer to it"
        );
    }
}

/// An A question's answer names its A records' addresses, an AAAA question's its AAAA
/// records': a server adding records of the other type (or a forger, to a TXT question)
/// names nothing with them.
#[test]
fn only_records_of_the_questions_type_are_kept() {
    let mut lab = Lab::new(RULES);
    let records = || {
        vec![
            cname("www.example.test.", 300, "cdn.other.test."),
            a("cdn.other.test.", 300, "198.51.100.7"),
            aaaa("cdn.other.test.", 300, "2001:db8:1::7"),
        ]
    };
    for (qtype, want) in [
        (RecordType::A, Some("198.51.100.7")),
        (RecordType::AAAA, Some("2001:db8:1::7")),
        (RecordType::TXT, None),
        (RecordType::ANY, None),
    ] {
        let msg = answer(0x0101, "www.example.test.", qtype, records());
        let what = format!("a {qtype} question");
        lab.exchange(&what, &query_of(&msg), &msg);
        let got: Vec<[u8; 16]> = lab.resolved().into_keys().collect();
        let want: Vec<[u8; 16]> = want
            .iter()
            .map(|a| firewall_common::addr::mapped(a.parse().expect("address")))
            .collect();
        assert_eq!(got, want, "{what}");
    }
}

/// A name lasts on an address as long as the shortest TTL of the chain that led to it: once
/// a CNAME expired, the name may point elsewhere, however long the target's address record
/// lasts.
#[test]
fn a_cname_chain_lasts_as_long_as_its_shortest_ttl() {
    let mut lab = Lab::new(RULES);
    let cases = [
        (
            "a CNAME shorter than the address",
            RecordType::A,
            vec![
                cname("good.example.test.", 300, "cdn.other.test."),
                a("cdn.other.test.", 86400, "198.51.100.7"),
            ],
            300,
        ),
        (
            "the shortest of two CNAMEs",
            RecordType::AAAA,
            vec![
                cname("good.example.test.", 3600, "edge.other.test."),
                cname("edge.other.test.", 120, "cdn.other.test."),
                aaaa("cdn.other.test.", 86400, "2001:db8:1::7"),
            ],
            120,
        ),
        (
            "an address shorter than the chain",
            RecordType::A,
            vec![
                cname("good.example.test.", 3600, "cdn.other.test."),
                a("cdn.other.test.", 200, "198.51.100.7"),
            ],
            200,
        ),
        (
            "a CNAME below min_ttl: min_ttl",
            RecordType::A,
            vec![
                cname("good.example.test.", 5, "cdn.other.test."),
                a("cdn.other.test.", 86400, "198.51.100.7"),
            ],
            MIN_TTL,
        ),
    ];
    for (what, qtype, records, ttl) in cases {
        let msg = answer(0x0202, "good.example.test.", qtype, records);
        let before = now_ns();
        assert!(
            matches!(
                lab.exchange(what, &query_of(&msg), &msg),
                Expect::Recorded(..)
            ),
            "{what}"
        );
        let resolved = lab.resolved();
        let expires = resolved
            .values()
            .flat_map(|r| r.names.iter())
            .find(|n| n.name != 0)
            .map(|n| n.expires)
            .expect("a name recorded");
        // To the nearest second: the coarse clock is behind by less than a tick.
        let lasts = (expires + 500_000_000 - before) / 1_000_000_000;
        assert_eq!(lasts, ttl + GRACE, "{what}: seconds the name lasts");
    }
}

/// A query sent over `lo` (to a resolver on the host) is answered over `lo` only, and one that
/// left through a protected interface from the wire only: a host of the network can send a
/// datagram that claims to come from 127.0.0.53, or from the host's own address, and the XDP
/// program reads it before the stack drops it as a martian.
#[test]
fn a_query_is_answered_only_on_the_path_it_was_sent_by() {
    let mut lab = Lab::new(RULES);
    let msg = answer(
        0x4321,
        "www.example.test.",
        RecordType::A,
        vec![a("www.example.test.", 300, "198.51.100.7")],
    );
    let query = query_of(&msg);

    lab.clear();
    lab.send_on_loopback(&query);
    // The XDP program reads only answers of tracked flows: a datagram of the same flow that
    // is no query (no question) opens it.
    lab.send_query(HOST, SERVER, HOST_PORT, &[0; 12]);
    let (action, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, &msg);
    assert_eq!(action, XDP_PASS, "a tracked flow passes");
    assert_eq!(
        moved,
        BTreeMap::from([("dns_unsolicited", 1)]),
        "a query sent over lo, answered from the wire"
    );
    assert!(lab.resolved().is_empty() && lab.seen().is_empty());
    assert_eq!(
        lab.queries().iter().map(|k| k.via).collect::<Vec<_>>(),
        [VIA_LOOPBACK],
        "the query over lo waits for its answer"
    );
    let (_, moved) = lab.receive_on_loopback(&msg);
    assert_eq!(
        moved.get("dns_answers"),
        Some(&1),
        "its answer over lo: {moved:?}"
    );

    lab.clear();
    lab.send_query(HOST, SERVER, HOST_PORT, &query);
    let (verdict, moved) = lab.receive_on_loopback(&msg);
    assert_eq!(verdict, 0, "the loopback program never drops");
    assert_eq!(
        moved,
        BTreeMap::from([("dns_unsolicited", 1)]),
        "a query sent from the wire, answered over lo"
    );
    assert!(lab.resolved().is_empty() && lab.seen().is_empty());
    assert_eq!(
        lab.queries().iter().map(|k| k.via).collect::<Vec<_>>(),
        [VIA_WIRE],
        "the wire's query waits for its answer"
    );
    let (_, moved) = lab.receive(SERVER, 53, HOST, HOST_PORT, &msg);
    assert_eq!(
        moved.get("dns_answers"),
        Some(&1),
        "its answer from the wire: {moved:?}"
    );
}

/// Random answers, well formed and then mutated (bytes changed, cut, pointers aimed
/// anywhere): the kernel records exactly what the reference says, every time.
#[test]
fn random_and_mutated_answers_agree_with_the_reference_parser() {
    let mut lab = Lab::new(RULES);
    let seed: u64 = std::env::var("FW_DNS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let runs: usize = std::env::var("FW_DNS_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        // Fewer under software emulation (the kernel matrix), where each run is slower.
        .unwrap_or(if support::slowdown() > 1 { 300 } else { 1500 });
    println!("seed {seed} (FW_DNS_FUZZ_SEED), {runs} answers (FW_DNS_FUZZ_RUNS)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..runs {
        let mut msg = random_answer(&mut rng);
        // The client's query: the answer's question before any mutation.
        let query = query_of(&msg);
        let mutated = i % 2 == 1;
        if mutated {
            mutate(&mut rng, &mut msg);
        }
        let (_, beyond_limit) = reference(&msg, &query);
        // Every fourth over loopback: the loopback program reads with the same reader.
        let via = if i % 4 == 3 { Via::Loopback } else { Via::Wire };
        let what = format!("answer {i} via {via:?} (seed {seed}): {msg:02x?}");
        let got = lab.exchange_via(via, &what, &query, &msg);
        let kind = match (got, beyond_limit) {
            (_, true) => "malformed: beyond the kernel's limits only",
            (Expect::Unreadable, _) => "unreadable",
            (Expect::Malformed, _) => "malformed",
            (Expect::Nothing, _) => "nothing to record",
            (Expect::Unsolicited, _) => "unsolicited",
            (Expect::Recorded(..), _) => "recorded",
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    println!("{outcomes:?}");
    // The generator must reach every outcome, or the comparison proves little.
    for kind in ["malformed", "nothing to record", "unsolicited", "recorded"] {
        assert!(
            outcomes.get(kind).copied().unwrap_or(0) > runs / 50,
            "too few answers {kind}: {outcomes:?}"
        );
    }
}

/// A label: mostly host-name characters of both cases, sometimes any byte (a dot, a space,
/// non-ASCII: labels are bytes on the wire).
fn random_label(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.random_bool(0.05) {
        rng.random_range(40..=63)
    } else {
        rng.random_range(1..=12)
    };
    (0..len)
        .map(|_| {
            if rng.random_bool(0.02) {
                return rng.random();
            }
            let c = rng.random_range(0..38u8);
            match c {
                0..=25 if rng.random_bool(0.2) => b'A' + c,
                0..=25 => b'a' + c,
                26..=35 => b'0' + c - 26,
                36 => b'-',
                _ => b'_',
            }
        })
        .collect()
}

/// A name: a few random labels, often below one of `base`'s suffixes (so that compression
/// has something to point at), at most 250 bytes on the wire.
fn random_name(rng: &mut StdRng, base: &[&[u8]]) -> Name {
    let mut labels: Vec<Vec<u8>> = (0..rng.random_range(0..=4))
        .map(|_| random_label(rng))
        .collect();
    if rng.random_bool(0.7) {
        let from = rng.random_range(0..base.len());
        labels.extend(base[from..].iter().map(|l| l.to_vec()));
    } else {
        labels.push(random_label(rng));
    }
    while labels.iter().map(|l| l.len() + 1).sum::<usize>() > 250 {
        labels.remove(0);
    }
    Name::from_labels(labels).expect("a name of valid labels")
}

fn random_answer(rng: &mut StdRng) -> Vec<u8> {
    let base: [&[u8]; 2] = [b"example", b"test"];
    let question = random_name(rng, &base);
    let mut records = Vec::new();
    let mut owner = question.clone();
    let n = rng.random_range(0..=MAX_ANSWERS + 3);
    for _ in 0..n {
        let ttl = match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(1..MIN_TTL as u32),
            2 => rng.random_range(0..=u32::MAX),
            _ => rng.random_range(60..100_000),
        };
        match rng.random_range(0..10) {
            0..=1 => {
                let target = random_name(rng, &base);
                records.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::CNAME(rdata::CNAME(target.clone())),
                ));
                owner = target;
            }
            2..=5 => {
                let v4 = Ipv4Addr::from(rng.random_range(0..16u32) | 0xc633_6400);
                records.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::A(rdata::A(v4)),
                ));
            }
            6..=8 => {
                let v6 = Ipv6Addr::from(
                    0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | rng.random_range(0..16u128),
                );
                records.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::AAAA(rdata::AAAA(v6)),
                ));
            }
            _ => records.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::TXT(rdata::TXT::new(vec!["v=test".to_owned()])),
            )),
        }
    }
    let qtype = if rng.random_bool(0.5) {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    let mut m = Message::new(rng.random(), MessageType::Response, OpCode::Query);
    m.add_query(Query::query(question, qtype));
    m.add_answers(records);
    let mut msg = m.to_vec().expect("encoding a random answer");
    if rng.random_bool(0.05) {
        msg[3] |= rng.random_range(1..=5);
    }
    msg
}

fn mutate(rng: &mut StdRng, msg: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=3) {
        if msg.len() <= 13 {
            return;
        }
        match rng.random_range(0..6) {
            0 => {
                // Any byte after the id (the id must still match the query).
                let at = rng.random_range(2..msg.len());
                msg[at] = rng.random();
            }
            1 => {
                let at = rng.random_range(12..msg.len());
                msg.truncate(at);
            }
            2 | 3 => {
                // A pointer somewhere near: back, forward, or at itself.
                let at = rng.random_range(12..msg.len() - 1);
                let target = rng.random_range(0..msg.len() + 8) as u16;
                msg[at] = 0xc0 | (target >> 8) as u8;
                msg[at + 1] = target as u8;
            }
            4 => {
                // A count or a length field.
                let at = [6usize, 7]
                    .get(rng.random_range(0..2))
                    .copied()
                    .unwrap_or(7);
                msg[at] = rng.random_range(0..20);
            }
            _ => {
                let at = rng.random_range(12..msg.len());
                msg[at] = rng.random_range(0..64);
            }
        }
    }
}
