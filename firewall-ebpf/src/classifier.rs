//! The classifier: which rule decides a packet or a socket call, with a fixed number of
//! lookups whatever the number of rules.
//!
//! Design (`firewall-daemon/src/compile.md` has the compiler's side): the compiler folds the
//! rules into tables, each of which answers one question with at most one candidate rule:
//!
//! - `EXACT4` / `EXACT6`, hashes of full-length prefixes (/32, /128), then `ADDR4` / `ADDR6`,
//!   longest-prefix tries of the shorter ones (`Key<[u8; 4]>`, `Key<[u8; 16]>`, looked up at
//!   full length) when the hash has no entry: the first rule that names only this address
//!   (`AddrValue::any_proto`), the first per protocol class (`AddrValue::proto`), and the
//!   address's *class* for `PAIRS`. Why a hash before the trie: `firewall_common::ADDR_EXACT4`.
//! - `PORTS`, an array indexed by `port_slot(proto class, port)` (every TCP port, every UDP
//!   port, one slot for ICMP, one for other protocols): the first rule that names only this
//!   protocol and port (`PortValue::any_addr`) and the port's class for `PAIRS`.
//! - `PAIRS`, a hash keyed by (address class, port class) (`PairKey`): the first rule that
//!   needs both. Classes group the addresses (ports) that the rules naming both treat alike,
//!   so the map holds one entry per pair of classes, not per pair of values.
//! - `PROTO_VERDICTS`, a load-time constant: per protocol class, the first rule that names
//!   neither an address nor a port.
//!
//! The precedence rule: each candidate is a verdict word (`rule index << 2 | action`), so the
//! numerically smallest is the first rule in file order, and [`min`] over the candidates is
//! first-match semantics without a rule scan. `NO_MATCH` is larger than every word. When no
//! rule matches, the direction's default applies: [`DEFAULT_INBOUND`] or
//! [`DEFAULT_OUTBOUND`] (`[defaults]`, rule index `DEFAULT_RULE`).
//!
//! Rules about programs, units and users are the same tables per group of owners
//! (`selector.rs`); their candidate joins the others through the same [`min`].
//!
//! The rule maps are created per rule-set generation and sized by the daemon
//! (`map_max_entries`); the load-time constants are set per generation too (a reload loads a
//! new program), so the verifier sees them as constants and prunes what a rule set does not
//! use. The outbound copy of the object holds the outbound rules in the same maps.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use firewall_common::{
    ACTION_ALLOW, ACTION_STEALTH, ADDR_EXACT4, ADDR_EXACT6, ADDR_PREFIX4, ADDR_PREFIX6, AddrValue,
    DEFAULT_RULE, EXACT4_FILTER_WORDS, NO_MATCH, PORT_SLOTS, PROTO_CLASSES, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, PairKey, PortValue, exact4_filter_slot, port_slot, verdict, verdict_rule,
};

use crate::{
    addr::{Addr, AddrWords},
    parse::Packet,
};

/// `[defaults] inbound`, as a verdict word: for inbound packets no rule matches.
#[unsafe(no_mangle)]
pub(crate) static DEFAULT_INBOUND: Global<u32> = Global::new(verdict(DEFAULT_RULE, ACTION_STEALTH));
/// `[defaults] outbound`, as a verdict word. Set in the outbound copy of the program.
#[unsafe(no_mangle)]
pub(crate) static DEFAULT_OUTBOUND: Global<u32> = Global::new(verdict(DEFAULT_RULE, ACTION_ALLOW));
/// Non-zero when `PAIRS` holds entries: lets the verifier prune the lookup.
#[unsafe(no_mangle)]
static HAS_PAIRS: Global<u32> = Global::new(1);
/// Which address tables hold entries (`ADDR_EXACT4` | ...): lets the verifier prune the
/// lookups of empty ones.
#[unsafe(no_mangle)]
static ADDR_TABLES: Global<u32> =
    Global::new(ADDR_EXACT4 | ADDR_PREFIX4 | ADDR_EXACT6 | ADDR_PREFIX6);
#[unsafe(no_mangle)]
static PROTO_VERDICTS: Global<[u32; PROTO_CLASSES]> = Global::new([NO_MATCH; PROTO_CLASSES]);

// Rule maps: created per generation, sized by the daemon (`map_max_entries`).
#[map]
static ADDR4: LpmTrie<[u8; 4], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static ADDR6: LpmTrie<[u8; 16], AddrValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static EXACT4: HashMap<[u8; 4], AddrValue> = HashMap::with_max_entries(1, 0);
#[map]
static EXACT4_FILTER: Array<u32> = Array::with_max_entries(EXACT4_FILTER_WORDS, 0);
#[map]
static EXACT6: HashMap<[u8; 16], AddrValue> = HashMap::with_max_entries(1, 0);
#[map]
static PORTS: Array<PortValue> = Array::with_max_entries(PORT_SLOTS, 0);
#[map]
static PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(1, 0);
/// Per rule index: the packets and calls each rule decided (not `[defaults]`).
#[map]
static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// First-match classification of a parsed packet: its remote address, protocol class and
/// local (destination) port.
#[inline(always)]
pub(crate) fn classify(pkt: &Packet) -> u32 {
    classify_parts(&pkt.remote, pkt.proto, pkt.local_port)
}

/// [`classify`] on its parts: the remote address, the `PROTO_*` class and the port the rules
/// name. Inbound that is the packet's local (destination) port; the outbound copy of the
/// program (cgroup hooks, `outbound.rs`) passes the destination address and port of a
/// connect() or sendmsg(), and its maps hold the outbound rules.
#[inline(always)]
pub(crate) fn classify_parts(remote: &Addr, proto: u32, port: u16) -> u32 {
    let proto = proto & 3;
    let (port_class, mut best) = match PORTS.get(port_slot(proto, port)) {
        Some(v) => (v.class(), v.any_addr()),
        None => (NO_MATCH, NO_MATCH),
    };
    let r = AddrWords::of(remote);
    let packed = addr_verdict(
        u64::from(r.v4),
        r.hi,
        r.lo,
        u64::from(proto),
        u64::from(port_class),
    );
    let addr_class = (packed >> 32) as u32;
    best = min(best, packed as u32);
    // A match rather than an index: indexing a stack array makes LLVM OR an offset into the
    // frame pointer, which the verifier rejects.
    let pv = PROTO_VERDICTS.load();
    best = min(
        best,
        match proto {
            PROTO_TCP => pv[0],
            PROTO_UDP => pv[1],
            PROTO_ICMP => pv[2],
            _ => pv[3],
        },
    );
    min(best, pair_verdict(addr_class, port_class))
}

/// What the rules say about a remote address for the protocol class `proto` and the port
/// class `port_class`, packed as `class << 32 | first rule` ([`NO_MATCH`] in both halves when
/// no prefix holds it): its full-length entry if it has one (already folded with every
/// enclosing prefix, so the longest match), else the trie's longest prefix; the first rule
/// includes the entry's inline pair ([`AddrValue::inline_pair`]). The address comes as
/// [`AddrWords`].
///
/// A BPF subprogram taking scalars, so that its keys live in its own frame: inlined, the
/// probes of the exact tables made the XDP program's frame 32 bytes larger, and the verifier
/// refused the call chain of rules about programs (512 bytes of stack for a chain of calls).
#[inline(never)]
fn addr_verdict(v4: u64, hi: u64, lo: u64, proto: u64, port_class: u64) -> u64 {
    let tables = ADDR_TABLES.load();
    let value = if v4 != 0 {
        let a = (hi as u32).to_ne_bytes();
        let mut v = None;
        if tables & ADDR_EXACT4 != 0 && exact4_may_hold(&a) {
            // SAFETY: the value is read at once, before any other map call.
            v = unsafe { EXACT4.get(&a) };
        }
        if v.is_none() && tables & ADDR_PREFIX4 != 0 {
            v = ADDR4.get(&Key::new(32, a));
        }
        v
    } else {
        let h = hi.to_ne_bytes();
        let l = lo.to_ne_bytes();
        let a = [
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
            l[6], l[7],
        ];
        let mut v = None;
        if tables & ADDR_EXACT6 != 0 {
            // SAFETY: as above.
            v = unsafe { EXACT6.get(&a) };
        }
        if v.is_none() && tables & ADDR_PREFIX6 != 0 {
            v = ADDR6.get(&Key::new(128, a));
        }
        v
    };
    match value {
        Some(v) => {
            let best = min(
                min(v.any_proto, v.proto[(proto & 3) as usize]),
                v.inline_pair(port_class as u32),
            );
            (u64::from(v.class) << 32) | u64::from(best)
        }
        None => u64::MAX,
    }
}

/// Whether `EXACT4` may hold `a`: its /16 holds some /32 entry.
#[inline(always)]
fn exact4_may_hold(a: &[u8; 4]) -> bool {
    let (word, bit) = exact4_filter_slot(*a);
    matches!(EXACT4_FILTER.get(word), Some(w) if *w & bit != 0)
}

/// The port class of `port` for the protocol class `proto` ([`NO_MATCH`] if none): what a
/// name's entry is paired with (`dns.rs`).
#[inline(always)]
pub(crate) fn port_class(proto: u32, port: u16) -> u32 {
    match PORTS.get(port_slot(proto & 3, port)) {
        Some(v) => v.class(),
        None => NO_MATCH,
    }
}

/// The `PAIRS` entry of an address class and a port class (unscoped and group classes share
/// the map: their ids never collide), or `NO_MATCH`.
#[inline(always)]
pub(crate) fn pair_verdict(addr_class: u32, port_class: u32) -> u32 {
    if HAS_PAIRS.load() == 0 || addr_class == NO_MATCH || port_class == NO_MATCH {
        return NO_MATCH;
    }
    let key = PairKey {
        addr_class,
        port_class,
    };
    // SAFETY: the value is a plain u32 copied out immediately.
    match unsafe { PAIRS.get(&key) } {
        Some(word) => *word,
        None => NO_MATCH,
    }
}

/// Counts a decision of rule `word` in `RULE_HITS` (not for `[defaults]`).
#[inline(always)]
pub(crate) fn count_rule_hit(word: u32) {
    if let Some(hits) = RULE_HITS.get_ptr_mut(verdict_rule(word)) {
        // SAFETY: per-CPU slot.
        unsafe { *hits += 1 };
    }
}

/// The precedence rule: of two candidate verdict words, the first rule in file order.
#[inline(always)]
pub(crate) fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}
