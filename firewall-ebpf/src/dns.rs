//! Names: the queries the host sends (egress), the answers it receives (XDP), and the names an
//! outbound call's destination was resolved from (cgroup hooks). Why and what is trusted:
//! `firewall_common::dns`.
//!
//! The answer is read by a program of its own, `firewall_dns`, which the XDP program
//! tail-calls (`DNS_PROGS`) once it has let a UDP datagram from port 53 pass: the reading has
//! the kernel's whole 512-byte stack and its own verification (the XDP program's frame leaves
//! too little of the stack to call it), and the XDP program is verified as before. If the
//! tail call fails (no program in `DNS_PROGS`), the datagram passes unread and
//! `dns_record_failed` counts it.
//!
//! The answer is copied into this CPU's [`DnsScratch`] (at most [`DNS_VIEW`] bytes) and read
//! there with masked indices, so every read is in bounds whatever the message says; each name
//! walk is bounded by [`MAX_NAME_STEPS`] and the records by [`MAX_ANSWERS`]. Nothing is
//! recorded until the whole answer section read has been checked: a malformed answer leaves
//! no trace but its counter (and, past its question, the query used up).
//!
//! Names are followed as hickory-proto's decoder follows them (the tests' reference): a
//! compression pointer must point before the start of the name (or name part) it is in, and
//! a name part reached by a pointer must end before where the pointer was followed from, so
//! pointers can only go back and never loop; a name is at most 255 bytes on the wire. The
//! question's name may hold no pointer: the only bytes before it are the header's.
//!
//! Which answer is the query's: a response to a standard query with one question, that
//! question being the query's byte for byte from offset 12 (ASCII case aside), with the
//! query's id, addresses and ports (the key): what a resolver checks before it takes an
//! answer and stops waiting. That answer uses the query up whatever it says next (the delete
//! is the claim: of two answers on two CPUs, one reads on): an error, the truncation bit (a
//! truncated answer is asked again over TCP, which is not read: README, "Outbound rules by
//! name"), a class other than IN, a question other than A or AAAA, no address, or records
//! that are malformed (the resolver, too, fails the lookup rather than wait for another
//! answer). Were the query left waiting after an answer that records nothing, a local user
//! could send one (for a name that does not exist, say), from a port and with an id of their
//! choice, and an accomplice forging the server's address would have the query's lifetime to
//! answer it with an address. An answer that is not the query's (another id or question, no
//! question, not a response) or cannot be told to be (a question that cannot be read) leaves
//! it to the real answer: the server echoes the question asked, so the real answer's question
//! is unreadable only when the query's is, and then no answer to it can record anything. Of
//! the query's answer, only the address records of the question's type are kept (A for A,
//! AAAA for AAAA; a CNAME chain leads to them).

use aya_ebpf::{
    EbpfContext as _, Global,
    cty::c_void,
    helpers::{bpf_get_socket_cookie, bpf_loop, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use firewall_common::{
    AddrValue, Counter, NO_MATCH, PROTO_UDP,
    dns::{
        CLASS_IN, DNS_PORT, DNS_QUERY_ENTRIES, DNS_VIEW, DnsOn, DnsQuery, DnsQueryKey, END_EXACT,
        END_WILDCARD, MAX_ANSWERS, MAX_NAME_STEPS, NAME_TEXT, NO_GROUP, NameHasher, NameKey,
        NameSlot, QUERY_LIFETIME_NS, QUESTION_BYTES, RESOLVED_ENTRIES, RESOLVED_NAMES, Resolved,
        ResolvedName, SEEN_NAME_ENTRIES, SeenName, TYPE_A, TYPE_AAAA, TYPE_CNAME, VIA_LOOPBACK,
        VIA_WIRE, WILDCARD_DEPTH, fold,
    },
};

use crate::{
    addr::{Addr, AddrWords},
    classifier::{min, pair_verdict, port_class},
    counters::count,
    parse::{self, Packet, Parsed},
    scratch::this_cpus,
};

/// Non-zero when the rules in force name names: only then are queries and answers read
/// (inbound copy) and destinations looked up (outbound copy).
#[unsafe(no_mangle)]
static DNS_NAMES: Global<u32> = Global::new(0);
/// The verdict word for an outbound call no rule decides to an address without a name (see
/// [`unnamed_default`]); the daemon sets it in the outbound copy.
#[unsafe(no_mangle)]
static DNS_UNNAMED: Global<u32> = Global::new(firewall_common::verdict(
    firewall_common::DEFAULT_RULE,
    firewall_common::ACTION_ALLOW,
));
/// `[dns] min_ttl`, `max_ttl`, `grace`, in seconds: how long a recorded name lasts is its
/// record's TTL (or a CNAME's, if shorter: see [`record`]) clamped to the first two, plus the
/// third.
#[unsafe(no_mangle)]
static DNS_MIN_TTL: Global<u32> = Global::new(60);
#[unsafe(no_mangle)]
static DNS_MAX_TTL: Global<u32> = Global::new(86400);
#[unsafe(no_mangle)]
static DNS_GRACE: Global<u32> = Global::new(30);

/// Queries awaiting their answer -> until when they may be answered, and their question.
#[map]
static DNS_QUERIES: LruHashMap<DnsQueryKey, DnsQuery> = LruHashMap::pinned(DNS_QUERY_ENTRIES, 0);
/// The egress program's room for the query it records. Its own, not `DNS_SCRATCH`: the XDP
/// program may run on this CPU between two of its instructions (a softirq); egress runs with
/// them held off.
#[map]
static QUERY_SCRATCH: PerCpuArray<DnsQuery> = PerCpuArray::with_max_entries(1, 0);
/// Address -> the names it was seen under.
#[map]
static RESOLVED: LruHashMap<[u8; 16], Resolved> = LruHashMap::pinned(RESOLVED_ENTRIES, 0);
/// Name key -> the name's text and its suffixes' keys.
#[map]
static SEEN_NAMES: LruHashMap<u64, SeenName> = LruHashMap::pinned(SEEN_NAME_ENTRIES, 0);
/// The hash key, drawn by the daemon.
#[map]
static NAME_KEY: Array<NameKey> = Array::pinned(1, 0);
/// Whether the rules in force read answers, and their `[dns]` times, for the loopback program
/// (which belongs to no generation: its copy's globals are not the rules').
#[map]
static DNS_ON: Array<DnsOn> = Array::pinned(1, 0);
/// Slot 0: `firewall_dns_loopback_read`, set by the daemon with the loopback program. Pinned:
/// the copy of the object it comes from is closed once it is attached, and the kernel empties
/// a program array no one holds.
#[map]
static DNS_LOOPBACK_PROGS: ProgramArray = ProgramArray::pinned(1, 0);
/// Slot 0: `firewall_dns`, set by the daemon when the rules name names.
#[map]
static DNS_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// The rules' names (outbound copy): exact and wildcard keys -> what the rules naming them
/// say, as an address entry says it (class, first rule per protocol, inline pair).
#[map]
static NAMES: HashMap<NameSlot, AddrValue> = HashMap::with_max_entries(1, 0);
/// Non-zero when groups of rules about programs name names (see [`names_rule`]).
#[unsafe(no_mangle)]
static NAMES_SCOPED: Global<u32> = Global::new(0);

const VIEW_MASK: usize = DNS_VIEW - 1;
/// Room for the label offsets of one name (a power of two above [`MAX_NAME_STEPS`]).
const LABEL_SLOTS: usize = 64;
const _: () = assert!(LABEL_SLOTS > MAX_NAME_STEPS);
const _: () = assert!(MAX_ANSWERS.is_power_of_two());
const _: () = assert!(NAME_TEXT.is_power_of_two());

/// This CPU's room for one answer: the message, the question's labels, the addresses found.
#[repr(C)]
pub(crate) struct DnsScratch {
    buf: [u8; DNS_VIEW],
    labels: [u16; LABEL_SLOTS],
    addrs: [[u8; 16]; MAX_ANSWERS],
    ttls: [u32; MAX_ANSWERS],
    seen: SeenName,
    query: DnsQueryKey,
    resolved: Resolved,
    /// The query's question (`DnsQuery::question`, `len`), compared with the answer's.
    question: [u8; QUESTION_BYTES],
    question_len: u32,
    _pad: u32,
    /// [`same_question`]'s state.
    compare_len: u64,
    compare_differ: u64,
    /// What the XDP program hands to `firewall_dns`: where the UDP header is, and when.
    l4_off: u64,
    now: u64,
    walk: Walk,
    records: Records,
    keys: Keys,
}

#[map]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

/// Egress: a query leaving for port 53 from a socket of the host (on egress the parser's
/// `local` is the destination).
#[inline(always)]
pub(crate) fn query_leaves(ctx: &TcContext, pkt: &Packet, now: u64) {
    if DNS_NAMES.load() == 0 {
        return;
    }
    record_query(ctx, pkt, now, VIA_WIRE);
}

/// Records a query leaving for port 53 from a socket of the host (a protected interface's
/// egress, `via` [`VIA_WIRE`], or `lo`'s, [`VIA_LOOPBACK`]).
#[inline(always)]
fn record_query(ctx: &TcContext, pkt: &Packet, now: u64, via: u8) {
    if pkt.proto != PROTO_UDP || pkt.local_port != DNS_PORT {
        return;
    }
    // Forwarded packets (a container's, a VM's, a routed client's) have no socket here: their
    // queries are not the host's, and their answers must name nothing.
    // SAFETY: the helper takes an skb context; it returns 0 when the packet has no socket.
    if unsafe { bpf_get_socket_cookie(ctx.as_ptr()) } == 0 {
        return;
    }
    // A fixed size: `load_bytes` may ask the kernel for zero bytes, which the verifier refuses.
    let Ok(hdr) = ctx.load::<[u8; 6]>(pkt.l4_off + 8) else {
        return;
    };
    if hdr[2] & 0x80 != 0 {
        // An answer: the host serves DNS.
        return;
    }
    // Only what the reader can match its answer with: a standard query (opcode 0) of one
    // question. The answer to another (an opcode the server refuses, questions it does not
    // answer in one) would match no recorded query and leave it waiting, free for a forged
    // answer asking its bytes as a standard query.
    if hdr[2] & 0x78 != 0 || hdr[4] != 0 || hdr[5] != 1 {
        return;
    }
    let Some(q) = this_cpus(&QUERY_SCRATCH) else {
        return;
    };
    let start = pkt.l4_off + 8 + 12;
    let avail = (ctx.len() as usize).saturating_sub(start);
    let n = if avail > QUESTION_BYTES {
        QUESTION_BYTES
    } else {
        avail
    };
    let Some(n) = bounded(n, 5, QUESTION_BYTES) else {
        return;
    };
    // SAFETY: copies `n` (5 to QUESTION_BYTES) bytes into the scratch room's question.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            start as u32,
            q.question.as_mut_ptr().cast(),
            n as u32,
        )
    } != 0
    {
        return;
    }
    q.len = n as u32;
    q.deadline = now + QUERY_LIFETIME_NS;
    let mut key = DnsQueryKey {
        local: [0; 16],
        server: [0; 16],
        local_port: pkt.remote_port,
        txid: u16::from_ne_bytes([hdr[0], hdr[1]]),
        via,
        _pad: [0; 3],
    };
    pkt.remote.write_mapped(&mut key.local);
    pkt.local.write_mapped(&mut key.server);
    if DNS_QUERIES.insert(&key, q, 0).is_ok() {
        count(Counter::DnsQueries);
    } else {
        count(Counter::DnsRecordFailed);
    }
}

/// XDP: a UDP datagram from port 53 that passes (its verdict counted). If the rules name
/// names, `firewall_dns` takes over (a tail call: this does not return) and passes it once
/// read; else, or if the tail call fails, this returns and the caller passes it.
#[inline(always)]
pub(crate) fn answer_arrives(ctx: &XdpContext, pkt: &Packet, now: u64) {
    if DNS_NAMES.load() == 0 || pkt.proto != PROTO_UDP || pkt.remote_port != DNS_PORT {
        return;
    }
    if !hand_over(pkt, now, VIA_WIRE) {
        return;
    }
    // SAFETY: the slot holds an XDP program of this object, or nothing.
    unsafe { DNS_PROGS.tail_call(ctx, 0) };
    count(Counter::DnsRecordFailed);
}

/// Puts what the reader needs of an answer that arrives (`pkt`, received as the host
/// receives it) in this CPU's scratch room, before the tail call; false if there is none.
/// `via`: the way the answer came, which must be the way its query left
/// ([`firewall_common::dns::VIA_LOOPBACK`] says why).
#[inline(always)]
fn hand_over(pkt: &Packet, now: u64, via: u8) -> bool {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return false;
    };
    pkt.local.write_mapped(&mut s.query.local);
    pkt.remote.write_mapped(&mut s.query.server);
    s.query.local_port = pkt.local_port;
    s.query.via = via;
    s.query._pad = [0; 3];
    s.l4_off = pkt.l4_off as u64;
    s.now = now;
    true
}

/// `firewall_dns`: reads the answer the XDP program handed over (see [`answer_arrives`]).
#[inline(always)]
pub(crate) fn read(ctx: &XdpContext) {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return;
    };
    let (l4_off, now) = (s.l4_off, s.now);
    let ttls = Ttls {
        min: DNS_MIN_TTL.load(),
        max: DNS_MAX_TTL.load(),
        grace: DNS_GRACE.load(),
    };
    count_outcome(read_answer(ctx, l4_off, now, &ttls));
}

#[inline(always)]
fn count_outcome(outcome: u32) {
    count(match outcome {
        READ_RECORDED => Counter::DnsAnswers,
        READ_UNSOLICITED => Counter::DnsUnsolicited,
        READ_NOTHING => Counter::DnsNoAddress,
        READ_FAILED => Counter::DnsRecordFailed,
        _ => Counter::DnsMalformed,
    });
}

/// `[dns] min_ttl`, `max_ttl`, `grace` (seconds).
struct Ttls {
    min: u32,
    max: u32,
    grace: u32,
}

// Loopback. A resolver on the host (systemd-resolved, dnsmasq, unbound) answers its clients
// over `lo`, from a cache that may have been filled before the firewall started, or before the
// rules named the name: those answers never cross a protected interface. A TC program on the
// egress of `lo` in the daemon's network namespace (`firewall_dns_loopback`) sees both ways:
// a client's query to the resolver (with the client's socket) is recorded as on a protected
// interface, and the resolver's answer is read as it is sent, before the backlog delivers it
// to the client. The query is recorded as sent over `lo` (`VIA_LOOPBACK`) and each reader
// finds only the queries sent its own way: a datagram from the network may claim to come from
// 127.0.0.53, or from the host's own address, and the XDP program reads it before the stack
// drops it as a martian. Only this namespace's `lo`: a `lo` of another namespace (a container's, or
// one an unprivileged user made with a user namespace, where binding port 53 is allowed) is
// not looked at, so nothing answered there names an address here. The program holds no
// rules, so it belongs to no generation and reads `DNS_ON` instead of the globals. It never
// drops.

/// TC egress on `lo`: a query to a resolver on the host, or its answer (tail-calling the
/// reader, `firewall_dns_loopback_read`, as the XDP program does: the parser's frame and the
/// reader's do not fit in one stack).
#[inline(always)]
pub(crate) fn loopback(ctx: &TcContext) {
    if !DNS_ON.get(0).is_some_and(|on| on.on != 0) {
        return;
    }
    let Ok(Parsed::Packet(pkt)) = parse::parse(ctx) else {
        return;
    };
    if pkt.proto != PROTO_UDP {
        return;
    }
    let now = crate::clock::now();
    // On egress the parser's `local` is the destination.
    if pkt.local_port == DNS_PORT {
        record_query(ctx, &pkt, now, VIA_LOOPBACK);
        return;
    }
    if pkt.remote_port != DNS_PORT || !hand_over(&pkt, now, VIA_LOOPBACK) {
        return;
    }
    // SAFETY: the slot holds a TC program of this object, or nothing.
    unsafe { DNS_LOOPBACK_PROGS.tail_call(ctx, 0) };
    count(Counter::DnsRecordFailed);
}

/// `firewall_dns_loopback_read`: reads the answer [`loopback`] handed over.
#[inline(always)]
pub(crate) fn loopback_read(ctx: &TcContext) {
    let Some(on) = DNS_ON.get(0) else {
        return;
    };
    let ttls = Ttls {
        min: on.min_ttl,
        max: on.max_ttl,
        grace: on.grace,
    };
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return;
    };
    let (l4_off, now) = (s.l4_off, s.now);
    count_outcome(read_answer(ctx, l4_off, now, &ttls));
}

/// Copies bytes of the packet: XDP's and socket buffers' helpers.
trait LoadBytes {
    /// # Safety
    /// `dst` has room for `len` bytes.
    unsafe fn load_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> i64;
}

impl LoadBytes for XdpContext {
    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's.
        unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), off, dst, len) }
    }
}

impl LoadBytes for TcContext {
    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's.
        unsafe { bpf_skb_load_bytes(self.as_ptr().cast(), off, dst, len) }
    }
}

const READ_RECORDED: u32 = 0;
const READ_UNSOLICITED: u32 = 1;
const READ_NOTHING: u32 = 2;
const READ_MALFORMED: u32 = 3;
const READ_FAILED: u32 = 4;

/// Copies the message into the scratch room, checks it answers a recorded query, reads it and
/// records what it says.
#[inline(always)]
fn read_answer<C: LoadBytes>(ctx: &C, l4_off: u64, now: u64, ttls: &Ttls) -> u32 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return READ_FAILED;
    };
    let off = l4_off as u32;
    // The UDP length, not the frame's: Ethernet pads short frames.
    // SAFETY: the helper copies at most the 2 bytes asked into the scratch room.
    if unsafe { ctx.load_bytes(off + 4, s.buf.as_mut_ptr().cast(), 2) } != 0 {
        return READ_MALFORMED;
    }
    let udp_len = u16::from_be_bytes([s.buf[0], s.buf[1]]) as usize;
    if udp_len < 8 + 12 {
        return READ_MALFORMED;
    }
    let mut len = udp_len - 8;
    if len > DNS_VIEW {
        len = DNS_VIEW;
    }
    let Some(len) = bounded(len, 12, DNS_VIEW) else {
        return READ_MALFORMED;
    };
    // SAFETY: `len` is between 12 and the room's size.
    if unsafe { ctx.load_bytes(off + 8, s.buf.as_mut_ptr().cast(), len as u32) } != 0 {
        // The datagram is shorter than its UDP length says.
        return READ_MALFORMED;
    }
    s.query.txid = u16::from_ne_bytes([s.buf[0], s.buf[1]]);
    // SAFETY: the value is copied out at once (its question into the scratch room).
    match unsafe { DNS_QUERIES.get(&s.query) } {
        Some(q) if q.deadline >= now => {
            s.question = q.question;
            s.question_len = q.len;
        }
        _ => return READ_UNSOLICITED,
    }
    let Some(key) = NAME_KEY.get(0) else {
        return READ_FAILED;
    };
    if key.is_unset() {
        return READ_FAILED;
    }
    let question = match question(len) {
        Ok(q) => q,
        Err(outcome) => return outcome,
    };
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return READ_FAILED;
    };
    // The query's answer, whatever it says next: the resolver takes it and waits no more, so
    // the query is used up here, before the rest is read (see the header). The delete is the
    // claim: of two answers on two CPUs, one reads on.
    if DNS_QUERIES.remove(&s.query).is_err() {
        return READ_UNSOLICITED;
    }
    let found = parse(len, &question, key);
    if found < 0 {
        return READ_MALFORMED;
    }
    if found == 0 {
        return READ_NOTHING;
    }
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return READ_FAILED;
    };
    record(s, found as usize, now, ttls)
}

/// The answer's question, once it is the query's: where it ends (before its type) and its
/// number of labels.
struct Question {
    end: usize,
    labels: usize,
}

/// Whether the message is the query's answer, by its header and question, as the resolver
/// tells (see the header): `Err` with the outcome if not (`READ_UNSOLICITED`), or if it cannot
/// be told (`READ_MALFORMED`: a question that cannot be read, or cut short).
#[inline(always)]
fn question(len: usize) -> Result<Question, u32> {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return Err(READ_FAILED);
    };
    let flags = u16_at(s, 2);
    // A response (QR) to a standard query (opcode 0, the only one recorded), with one
    // question to compare.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || u16_at(s, 4) != 1 {
        return Err(READ_UNSOLICITED);
    }
    let Some((end, labels)) = walk(len, 12, true) else {
        return Err(READ_MALFORMED);
    };
    if end + 4 > len {
        return Err(READ_MALFORMED);
    }
    if !same_question(end + 4 - 12) {
        return Err(READ_UNSOLICITED);
    }
    Ok(Question { end, labels })
}

/// Whether the answer's question, `len` bytes from offset 12, is the query's (ASCII case
/// aside). In `bpf_loop` with its state in the scratch room, as the other loops (see below):
/// a plain loop bounded by `len` became a pointer walk whose end 6.1's verifier could not see,
/// and one of a constant count made it explore every byte's branches.
#[inline(always)]
fn same_question(len: usize) -> bool {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return false;
    };
    if len > s.question_len as usize || len > QUESTION_BYTES {
        return false;
    }
    s.compare_len = len as u64;
    s.compare_differ = 0;
    // SAFETY: the callback takes no context.
    unsafe {
        bpf_loop(
            QUESTION_BYTES as u32,
            compare_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    this_cpus(&DNS_SCRATCH).is_some_and(|s| s.compare_differ == 0)
}

/// One byte of [`same_question`].
extern "C" fn compare_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return STOP;
    };
    if index >= s.compare_len {
        return STOP;
    }
    let i = index as usize;
    let Some(&b) = s.question.get(i) else {
        return STOP;
    };
    if fold(at_view(&s.buf, 12 + i)) != fold(b) {
        s.compare_differ = 1;
        return STOP;
    }
    NEXT
}

/// The message's byte at `i` (masked, see [`view`]); the masked index is always in the room,
/// but the compiler cannot know it, and an index past it would be a panic.
#[inline(always)]
fn at_view(buf: &[u8; DNS_VIEW], i: usize) -> u8 {
    buf.get(view(i)).copied().unwrap_or(0)
}

/// `x` if it is within `lo..=hi`, with both bounds on the value returned as the verifier sees
/// it, for a helper's length. LLVM drops a check it can prove from earlier ones, and merges
/// the two checks of a range into one comparison of `x - lo`, whose bound the verifier of 6.1
/// does not carry back to `x`; so each bound is checked on a value read anew through the
/// stack (which the verifier follows, and LLVM cannot see through), the upper one first.
#[inline(always)]
fn bounded(x: usize, lo: usize, hi: usize) -> Option<usize> {
    let mut slot = x;
    // SAFETY: reads and a write of a local.
    unsafe {
        let a = core::ptr::read_volatile(&slot);
        if a > hi {
            return None;
        }
        core::ptr::write_volatile(&mut slot, a);
        let b = core::ptr::read_volatile(&slot);
        if b < lo {
            return None;
        }
        Some(b)
    }
}

/// `i` within the message room, by a mask LLVM cannot drop: when it could prove the mask
/// changes nothing (after a comparison with the message's length), it added the unmasked
/// index to the room's address, and Linux 6.12's verifier, which had not kept that
/// comparison's bound, refused the access.
#[inline(always)]
fn view(i: usize) -> usize {
    let mask = VIEW_MASK;
    // SAFETY: a read of a local.
    i & unsafe { core::ptr::read_volatile(&mask) }
}

#[inline(always)]
fn u16_at(s: &DnsScratch, i: usize) -> u16 {
    u16::from_be_bytes([at_view(&s.buf, i), at_view(&s.buf, i + 1)])
}

// The loops over a name's labels and over the answer's records run in `bpf_loop` (Linux
// 5.17), and their state lives in this CPU's scratch room, not on the stack. The verifier
// follows a callback's iterations until the state it starts from repeats; a value read from a
// map is one it knows nothing of, so each callback's state repeats at once, while on the stack
// every iteration's offsets and lengths were new ranges to explore (the first version, with
// plain loops and then with state on the stack, went past the verifier's million
// instructions). Every index is masked to its array, which is all the verifier needs.

/// Continue, stop (`bpf_loop`'s callback return values).
const NEXT: i64 = 0;
const STOP: i64 = 1;

/// A name walk's state (`walk`).
#[repr(C)]
struct Walk {
    len: u64,
    pos: u64,
    part_start: u64,
    limit: u64,
    end: u64,
    wire: u64,
    labels: u64,
    /// Non-zero for the question's name: its labels' offsets are kept, and it may hold no
    /// compression pointer (see [`question`]).
    question: u64,
    /// 0: done, the name is fine; 1: malformed; 2: not finished yet.
    state: u64,
}

/// One step of a name walk: a label, a pointer or the root label.
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return STOP;
    };
    let w = &mut s.walk;
    let len = w.len as usize;
    let pos = w.pos as usize;
    if pos >= w.limit as usize || pos >= len {
        w.state = 1;
        return STOP;
    }
    let b = at_view(&s.buf, pos);
    if b == 0 {
        if w.end == 0 {
            w.end = w.pos + 1;
        }
        w.state = 0;
        return STOP;
    }
    if b & 0xc0 == 0xc0 {
        if w.question != 0 || pos + 1 >= len {
            w.state = 1;
            return STOP;
        }
        let target = (u64::from(b & 0x3f) << 8) | u64::from(at_view(&s.buf, pos + 1));
        if target >= w.part_start {
            w.state = 1;
            return STOP;
        }
        if w.end == 0 {
            w.end = w.pos + 2;
        }
        w.limit = w.part_start;
        w.part_start = target;
        w.pos = target;
        return NEXT;
    }
    if b & 0xc0 != 0 {
        w.state = 1;
        return STOP;
    }
    let l = u64::from(b);
    if w.pos + 1 + l > w.len {
        w.state = 1;
        return STOP;
    }
    w.wire += l + 1;
    if w.wire > 255 {
        w.state = 1;
        return STOP;
    }
    if w.question != 0 {
        let i = (w.labels as usize) & (LABEL_SLOTS - 1);
        s.labels[i] = pos as u16;
    }
    w.labels += 1;
    w.pos += 1 + l;
    NEXT
}

/// Walks the name at `start` (hickory-proto's rules, see above). Returns where the name ends
/// in the message (after its root label, or after its first pointer) and its number of
/// labels; for the `question`'s name, the offsets of its labels' length bytes go to
/// `s.labels`, the first first, and a pointer makes it malformed. `None` if malformed, or
/// longer than [`MAX_NAME_STEPS`] steps.
#[inline(always)]
fn walk(len: usize, start: usize, question: bool) -> Option<(usize, usize)> {
    let s = this_cpus(&DNS_SCRATCH)?;
    s.walk = Walk {
        len: len as u64,
        pos: start as u64,
        part_start: start as u64,
        limit: u64::MAX,
        end: 0,
        wire: 1,
        labels: 0,
        question: u64::from(question),
        state: 2,
    };
    // SAFETY: the callback takes no context.
    unsafe {
        bpf_loop(
            MAX_NAME_STEPS as u32,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let s = this_cpus(&DNS_SCRATCH)?;
    (s.walk.state == 0).then_some((s.walk.end as usize, s.walk.labels as usize))
}

/// The answer section's reading state (`parse`).
#[repr(C)]
struct Records {
    len: u64,
    pos: u64,
    answers: u64,
    found: u64,
    malformed: u64,
    /// The question's type: the only address records kept (A or AAAA).
    qtype: u64,
    /// The shortest TTL of the CNAMEs read (see [`record`]).
    chain_ttl: u64,
}

/// One record of the answer section.
extern "C" fn record_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return STOP;
    };
    if index >= s.records.answers {
        return STOP;
    }
    let len = s.records.len as usize;
    let start = s.records.pos as usize;
    let Some((owner_end, _)) = walk(len, start, false) else {
        return malformed();
    };
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return STOP;
    };
    let pos = owner_end;
    if pos + 10 > len {
        return malformed();
    }
    let rtype = u16_at(s, pos);
    let class = u16_at(s, pos + 2);
    let ttl = (u32::from(u16_at(s, pos + 4)) << 16) | u32::from(u16_at(s, pos + 6));
    // A TTL with the high bit set is 0 (RFC 2181, 8).
    let ttl = if ttl & 0x8000_0000 != 0 { 0 } else { ttl };
    let rdlen = usize::from(u16_at(s, pos + 8));
    let rdata = pos + 10;
    if rdata + rdlen > len {
        return malformed();
    }
    if class == CLASS_IN && (rtype == TYPE_A || rtype == TYPE_AAAA) {
        let want = if rtype == TYPE_A { 4 } else { 16 };
        if rdlen != want {
            return malformed();
        }
        if u64::from(rtype) != s.records.qtype {
            // Not what was asked: a server's extra, or a forger's, names nothing.
            s.records.pos = (rdata + rdlen) as u64;
            return NEXT;
        }
        let i = (s.records.found as usize) & (MAX_ANSWERS - 1);
        let mut a = [0u8; 16];
        if rtype == TYPE_A {
            a[10] = 0xff;
            a[11] = 0xff;
            for k in 0..4 {
                a[12 + k] = at_view(&s.buf, rdata + k);
            }
        } else {
            for (k, b) in a.iter_mut().enumerate() {
                *b = at_view(&s.buf, rdata + k);
            }
        }
        s.addrs[i] = a;
        s.ttls[i] = ttl;
        s.records.found += 1;
    } else if rtype == TYPE_CNAME {
        match walk(len, rdata, false) {
            Some((e, _)) if e == rdata + rdlen => {}
            _ => return malformed(),
        }
        let Some(s) = this_cpus(&DNS_SCRATCH) else {
            return STOP;
        };
        if u64::from(ttl) < s.records.chain_ttl {
            s.records.chain_ttl = u64::from(ttl);
        }
    }
    if let Some(s) = this_cpus(&DNS_SCRATCH) {
        s.records.pos = (rdata + rdlen) as u64;
    }
    NEXT
}

/// Marks the answer malformed and ends the records' loop.
#[inline(always)]
fn malformed() -> i64 {
    if let Some(s) = this_cpus(&DNS_SCRATCH) {
        s.records.malformed = 1;
    }
    STOP
}

/// Reads the query's answer past its `question` ([`question`]): fills `s.seen` with the
/// question's name and its keys, `s.addrs`/`s.ttls` with the addresses. Returns how many
/// addresses, or -1 if the message is malformed.
#[inline(always)]
fn parse(len: usize, question: &Question, key: &NameKey) -> i32 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return -1;
    };
    let flags = u16_at(s, 2);
    // Truncated (TC: asked again over TCP, which is not read) or an error (RCODE).
    if flags & 0x0200 != 0 || flags & 0x000f != 0 {
        return 0;
    }
    let answers = u64::from(u16_at(s, 6));
    let (qend, labels) = (question.end, question.labels);
    let qtype = u16_at(s, qend);
    if u16_at(s, qend + 2) != CLASS_IN || labels == 0 || (qtype != TYPE_A && qtype != TYPE_AAAA) {
        return 0;
    }
    name_keys(labels, key);
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return -1;
    };
    s.records = Records {
        len: len as u64,
        pos: (qend + 4) as u64,
        answers,
        found: 0,
        malformed: 0,
        qtype: u64::from(qtype),
        chain_ttl: u64::MAX,
    };
    // SAFETY: the callback takes no context.
    unsafe {
        bpf_loop(
            MAX_ANSWERS as u32,
            record_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return -1;
    };
    if s.records.malformed != 0 {
        return -1;
    }
    (s.records.found as usize & (2 * MAX_ANSWERS - 1)) as i32
}

/// The question's hashing state (`name_keys`).
#[repr(C)]
struct Keys {
    h: NameHasher,
    labels: u64,
    tpos: u64,
}

/// One label of the question, the last first: its length and bytes into the hash, its text
/// into place, and the key of the suffix it ends.
extern "C" fn key_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return STOP;
    };
    if index >= s.keys.labels {
        return STOP;
    }
    let j = (s.keys.labels - 1 - index) as usize;
    let at = usize::from(s.labels[j & (LABEL_SLOTS - 1)]);
    let l = usize::from(at_view(&s.buf, at));
    s.keys.h.push(l as u8);
    // The text holds the labels as on the wire (length, bytes), the first first: this label
    // goes before those already placed.
    let tpos = (s.keys.tpos as usize).wrapping_sub(l + 1);
    s.seen.text[tpos & (NAME_TEXT - 1)] = l as u8;
    for i in 0..63 {
        if i >= l {
            break;
        }
        let b = fold(at_view(&s.buf, at + 1 + i));
        s.keys.h.push(b);
        s.seen.text[(tpos + 1 + i) & (NAME_TEXT - 1)] = b;
    }
    s.keys.tpos = tpos as u64;
    if j > 0 {
        let i = index as usize;
        if i < WILDCARD_DEPTH {
            s.seen.suffixes[i] = s.keys.h.finish_with(END_WILDCARD);
            s.seen.count = i as u32 + 1;
        }
    }
    NEXT
}

/// The question's keys and text (into `s.seen`), from its `labels` label offsets.
#[inline(always)]
fn name_keys(labels: usize, key: &NameKey) {
    let Some(s) = this_cpus(&DNS_SCRATCH) else {
        return;
    };
    // Text length: each label's length byte and bytes.
    let mut text_len = labels;
    for i in 0..MAX_NAME_STEPS {
        if i >= labels {
            break;
        }
        text_len += usize::from(at_view(
            &s.buf,
            usize::from(s.labels[i & (LABEL_SLOTS - 1)]),
        ));
    }
    s.seen.len = text_len as u32;
    s.seen.count = 0;
    s.seen.suffixes = [0; WILDCARD_DEPTH];
    s.seen.text = [0; NAME_TEXT];
    s.keys = Keys {
        h: NameHasher::new(key),
        labels: labels as u64,
        tpos: text_len as u64,
    };
    // SAFETY: the callback takes no context.
    unsafe {
        bpf_loop(
            MAX_NAME_STEPS as u32,
            key_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if let Some(s) = this_cpus(&DNS_SCRATCH) {
        s.resolved.names[0].name = s.keys.h.finish_with(END_EXACT);
    }
}

/// Records the `found` addresses of `s` under the question's name. Each lasts the shortest TTL
/// of its record and of the answer's CNAMEs: the question's name holds on the address only
/// as long as every link of the chain that led to it, and a CNAME's expiry lets the name
/// point elsewhere. The reader does not follow the chain by names (every address of the
/// question's type gets the question's name, see the header), so it takes every CNAME read:
/// one out of the chain, which servers do not send, can only shorten it.
#[inline(always)]
fn record(s: &mut DnsScratch, found: usize, now: u64, ttls: &Ttls) -> u32 {
    let name = s.resolved.names[0].name;
    if SEEN_NAMES.insert(&name, &s.seen, 0).is_err() {
        return READ_FAILED;
    }
    let (lo, hi, grace) = (
        u64::from(ttls.min),
        u64::from(ttls.max),
        u64::from(ttls.grace),
    );
    let mut outcome = READ_RECORDED;
    for i in 0..MAX_ANSWERS {
        if i >= found {
            break;
        }
        let mut ttl = u64::from(s.ttls[i]);
        if ttl > s.records.chain_ttl {
            ttl = s.records.chain_ttl;
        }
        if ttl < lo {
            ttl = lo;
        }
        if ttl > hi {
            ttl = hi;
        }
        let expires = now + (ttl + grace) * 1_000_000_000;
        let addr = &s.addrs[i];
        match RESOLVED.get_ptr_mut(addr) {
            // SAFETY: a slot of the map's value; concurrent writers on other CPUs at worst
            // overwrite a slot, which a later answer writes again.
            Some(r) => unsafe { add_name(&mut *r, name, expires, now) },
            None => {
                s.resolved.names[0] = ResolvedName { name, expires };
                for k in 1..RESOLVED_NAMES {
                    s.resolved.names[k] = ResolvedName::default();
                }
                if RESOLVED.insert(addr, &s.resolved, 0).is_err() {
                    outcome = READ_FAILED;
                }
            }
        }
        count(Counter::DnsAddresses);
    }
    outcome
}

/// Adds `name` to an address's names: its own slot if it has one (the later expiry wins),
/// else an empty or expired slot, else the slot that expires first.
#[inline(always)]
fn add_name(r: &mut Resolved, name: u64, expires: u64, now: u64) {
    let mut pick = 0;
    let mut soonest = u64::MAX;
    for k in 0..RESOLVED_NAMES {
        let slot = &r.names[k];
        if slot.name == name {
            if slot.expires < expires {
                r.names[k].expires = expires;
            }
            return;
        }
        let e = if slot.name == 0 || slot.expires < now {
            0
        } else {
            slot.expires
        };
        if e < soonest {
            soonest = e;
            pick = k;
        }
    }
    r.names[pick] = ResolvedName { name, expires };
}

/// Outbound: what a destination's names say to the rules about every process. `.0`: the first
/// rule about a name `remote` has (not expired), for the protocol class `proto` and the
/// destination port `port`, or [`NO_MATCH`]; `.1`: whether it has a name at all.
#[inline(always)]
pub(crate) fn name_verdict(remote: &Addr, proto: u32, port: u16, now: u64) -> (u32, bool) {
    if DNS_NAMES.load() == 0 {
        return (NO_MATCH, false);
    }
    let w = AddrWords::of(remote);
    let (best, named) = names_rule(w, NO_GROUP, proto, port_class(proto, port), now);
    if named {
        count(Counter::OutNamed);
    }
    (best, named)
}

/// For a group of rules about programs (`selector.rs`): the first of its rules about a name
/// the destination has, or [`NO_MATCH`]; `port_class` is the group's.
#[inline(always)]
pub(crate) fn group_name_rule(remote: AddrWords, group: u32, proto: u32, port_class: u32) -> u32 {
    if NAMES_SCOPED.load() == 0 {
        return NO_MATCH;
    }
    names_rule(remote, group, proto, port_class, crate::clock::now()).0
}

/// The names `remote` has (each name, and the wildcard keys of its suffixes) looked up among
/// the names of `group`; whether it has any.
#[inline(always)]
fn names_rule(remote: AddrWords, group: u32, proto: u32, pc: u32, now: u64) -> (u32, bool) {
    let mut key = [0u8; 16];
    let (hi, lo) = if remote.v4 {
        (0, 0xffff_0000 | (remote.hi << 32))
    } else {
        (remote.hi, remote.lo)
    };
    key[..8].copy_from_slice(&hi.to_ne_bytes());
    key[8..].copy_from_slice(&lo.to_ne_bytes());
    // SAFETY: read at once; a concurrent update at worst shows a slot old or new.
    let Some(r) = (unsafe { RESOLVED.get(&key) }) else {
        return (NO_MATCH, false);
    };
    let mut best = NO_MATCH;
    let mut named = false;
    for k in 0..RESOLVED_NAMES {
        let slot = &r.names[k];
        if slot.name == 0 || slot.expires < now {
            continue;
        }
        named = true;
        best = min(best, rule_of(slot.name, group, proto, pc));
        // SAFETY: as above.
        if let Some(seen) = unsafe { SEEN_NAMES.get(&slot.name) } {
            for i in 0..WILDCARD_DEPTH {
                if i >= seen.count as usize {
                    break;
                }
                best = min(best, rule_of(seen.suffixes[i], group, proto, pc));
            }
        }
    }
    (best, named)
}

/// What an outbound call no rule decides gets when its destination has no name:
/// `[defaults] outbound`, or with `[dns] enforce` `reject` instead of `allow`.
#[inline(always)]
pub(crate) fn unnamed_default() -> u32 {
    DNS_UNNAMED.load()
}

/// What the rules of `group` naming the name (or wildcard) `key` say for this protocol and
/// port class.
#[inline(always)]
fn rule_of(key: u64, group: u32, proto: u32, port_class: u32) -> u32 {
    let slot = NameSlot {
        key,
        group,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    match unsafe { NAMES.get(&slot) } {
        Some(v) => min(
            min(v.any_proto, v.proto[(proto & 3) as usize]),
            min(v.inline_pair(port_class), pair_verdict(v.class, port_class)),
        ),
        None => NO_MATCH,
    }
}
