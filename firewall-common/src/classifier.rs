//! The classifier's tables and the precedence rule, shared by the kernel and the compiler.
//!
//! Why this shape: a rule set of any size is judged with a constant number of lookups. The
//! compiler (`firewall-daemon/src/compile.md`) folds the rules into a longest-prefix trie of
//! remote addresses ([`AddrValue`]), an array of (protocol, port) slots ([`PortValue`],
//! indexed by [`port_slot`]), a hash of (address class, port class) pairs ([`PairKey`]) for
//! rules that name both, and a load-time constant per protocol for rules that name neither.
//! Each lookup yields at most one candidate *verdict word*; the kernel keeps the smallest.
//!
//! The precedence rule lives in the verdict word ([`verdict`]): the rule index sits in the
//! high bits, so the numerically smallest word is the first matching rule in file order and
//! `min` resolves first-match precedence without scanning rules. [`NO_MATCH`] is larger than
//! every word, so "no candidate" never wins.

use crate::proto::{PROTO_CLASSES, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const ACTION_ALLOW: u32 = 0;
pub const ACTION_REJECT: u32 = 1;
pub const ACTION_STEALTH: u32 = 2;
const ACTION_BITS: u32 = 2;
const ACTION_MASK: u32 = (1 << ACTION_BITS) - 1;

/// "No rule of this kind matches." Larger than every verdict word, so `min` ignores it.
pub const NO_MATCH: u32 = u32::MAX;
/// Rule index recorded for packets decided by `[defaults]`.
pub const DEFAULT_RULE: u32 = (1 << (32 - ACTION_BITS)) - 2;
/// Most rules a rule set may hold (indices below [`DEFAULT_RULE`]).
pub const MAX_RULES: u32 = DEFAULT_RULE;

/// A verdict word packs `rule index << 2 | action`. Because the rule index is in the high bits,
/// the numerically smallest word among several candidates is the first rule in file order: the
/// kernel resolves first-match precedence with `min`, no rule scan.
#[inline(always)]
pub const fn verdict(rule: u32, action: u32) -> u32 {
    (rule << ACTION_BITS) | (action & ACTION_MASK)
}

#[inline(always)]
pub const fn verdict_rule(word: u32) -> u32 {
    word >> ACTION_BITS
}

#[inline(always)]
pub const fn verdict_action(word: u32) -> u32 {
    word & ACTION_MASK
}

/// Number of entries in [`crate::maps::PORTS`]: every TCP port, every UDP port, then one slot
/// each for ICMP and other protocols (they have no ports).
pub const PORT_SLOTS: u32 = 2 * 65536 + 2;

/// Index into [`crate::maps::PORTS`] for a protocol class and local (service) port.
#[inline(always)]
pub const fn port_slot(proto: u32, port: u16) -> u32 {
    match proto {
        PROTO_TCP => port as u32,
        PROTO_UDP => 65536 + port as u32,
        PROTO_ICMP => 2 * 65536,
        _ => 2 * 65536 + 1,
    }
}

/// Value of the address tries: what the longest matching prefix tells about a remote address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrValue {
    /// Address class for [`crate::maps::PAIRS`], or [`NO_MATCH`] when no rule naming both an
    /// address and a port covers this address.
    pub class: u32,
    /// First rule (verdict word) that names this address and matches every protocol and port.
    pub any_proto: u32,
    /// Per protocol class: first rule naming this address and the protocol, with no port.
    pub proto: [u32; PROTO_CLASSES],
    /// The address class's only `PAIRS` entry, carried here instead (unscoped tables only):
    /// its port class, and its verdict word ([`NO_MATCH`] when the class has none or several,
    /// which `class` then names). A rule naming one address and one port, the common form of
    /// a long list, is then decided without a `PAIRS` probe, a cache miss per packet when each
    /// such rule is a class of its own.
    pub pair_port_class: u32,
    pub pair_verdict: u32,
}

impl AddrValue {
    /// The verdict of the inline pair for a packet of port class `port_class`, or
    /// [`NO_MATCH`].
    #[inline(always)]
    pub fn inline_pair(&self, port_class: u32) -> u32 {
        if self.pair_port_class == port_class {
            self.pair_verdict
        } else {
            NO_MATCH
        }
    }
}

/// Value of [`crate::maps::PORTS`]. Both fields hold their value **plus one** (wrapping), so the
/// all-zero entry a new array starts with means "nothing matches" and the daemon only writes
/// the slots rules use. Read them with [`PortValue::class`] and [`PortValue::any_addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortValue {
    class_plus_one: u32,
    any_addr_plus_one: u32,
}

impl PortValue {
    pub const EMPTY: Self = Self::new(NO_MATCH, NO_MATCH);

    /// `class`: port class for [`crate::maps::PAIRS`] or [`NO_MATCH`]; `any_addr`: first rule
    /// (verdict word) that matches this protocol/port from any remote address, or [`NO_MATCH`].
    #[inline(always)]
    pub const fn new(class: u32, any_addr: u32) -> Self {
        Self {
            class_plus_one: class.wrapping_add(1),
            any_addr_plus_one: any_addr.wrapping_add(1),
        }
    }

    #[inline(always)]
    pub const fn class(&self) -> u32 {
        self.class_plus_one.wrapping_sub(1)
    }

    #[inline(always)]
    pub const fn any_addr(&self) -> u32 {
        self.any_addr_plus_one.wrapping_sub(1)
    }
}

/// Key of [`crate::maps::PAIRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub addr_class: u32,
    pub port_class: u32,
}

/// Bits of the `ADDR_TABLES` load-time constant ([`crate::globals::ADDR_TABLES`]): which of
/// the four remote-address tables hold entries, so the kernel skips the lookups of empty ones.
///
/// Why four: a longest-prefix trie's lookup walks one node per level, and a full-length
/// address in a large trie (a blocklist of 100,000 /32s) is a deep walk of cache misses
/// (README, "Many sources": a drop from 20,000 random rule addresses of 100,000 cost 2.4 us,
/// 1.3 us with the hash). Full-length prefixes (/32, /128) go to a hash instead (`EXACT4`,
/// `EXACT6`: one probe), and only shorter ones to the tries (`ADDR4`, `ADDR6`). The compiler folds every enclosing prefix into each value, so an exact entry is
/// already the longest match for its address: the kernel asks the hash first and the trie
/// only when the hash has no entry.
///
/// A hash probe misses the cache too when the table is large (its buckets and entries are
/// spread over megabytes), and traffic from addresses far from every rule would pay it for
/// nothing where a trie gives up at its root. So `EXACT4_FILTER` says which /16 networks hold
/// /32 entries, one bit each ([`exact4_filter_slot`]): 8 KiB that stay in cache, and the hash
/// is probed only for addresses of those networks.
pub const ADDR_EXACT4: u32 = 1;
pub const ADDR_PREFIX4: u32 = 2;
pub const ADDR_EXACT6: u32 = 4;
pub const ADDR_PREFIX6: u32 = 8;

/// Words of `EXACT4_FILTER`: one bit per IPv4 /16.
pub const EXACT4_FILTER_WORDS: u32 = 65536 / 32;

/// The `EXACT4_FILTER` word and bit of an IPv4 address's /16.
#[inline(always)]
pub const fn exact4_filter_slot(addr: [u8; 4]) -> (u32, u32) {
    let slash16 = ((addr[0] as u32) << 8) | addr[1] as u32;
    (slash16 >> 5, 1 << (slash16 & 31))
}

/// Values of the `FRAGMENTS` load-time constant ([`crate::globals::FRAGMENTS`]): what becomes
/// of a non-first fragment, which carries no transport header to judge.
pub const FRAG_ALLOW: u32 = 0;
pub const FRAG_STEALTH: u32 = 1;

const _: () = {
    assert!(core::mem::size_of::<AddrValue>() == 32);
    assert!(core::mem::size_of::<PortValue>() == 8);
    assert!(core::mem::size_of::<PairKey>() == 8);
    assert!(verdict_rule(verdict(DEFAULT_RULE, ACTION_STEALTH)) == DEFAULT_RULE);
    assert!(verdict(DEFAULT_RULE, ACTION_STEALTH) < NO_MATCH);
    assert!(PortValue::EMPTY.class_plus_one == 0 && PortValue::EMPTY.any_addr_plus_one == 0);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), padding-free (sizes asserted above), valid for every bit pattern.
    unsafe impl aya::Pod for super::AddrValue {}
    unsafe impl aya::Pod for super::PortValue {}
    unsafe impl aya::Pod for super::PairKey {}
}
