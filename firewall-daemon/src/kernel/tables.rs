//! The rule tables of a generation: how big each map is and what goes in it.
//!
//! Every per-generation map is created for one compiled rule set, so it is sized for exactly
//! that set (the kernel refuses empty maps: at least one entry) and filled before any program
//! of the generation is attached. Which count sizes which map is the registry's
//! ([`firewall_common::maps::MAPS`]); the connection tables take their size from `[conntrack]`
//! unless a pinned table is adopted. The keys and values are the compiler's, written as the
//! kernel program reads them (compile.md).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::anyhow;
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use firewall_common::{
    AddrValue, DEFAULT_RULE, PROTO_CLASSES, PairKey, PortValue,
    ct::{CtConfig, state},
    dns::NameKey,
    identity::{GroupKey, ScopedSlot},
    maps::{self, Capacity, CtSize, MapSpec, RuleCount},
    verdict,
};

use super::pins::table_capacity;
use crate::compile::Compiled;
use rules::model::{Conntrack, InvalidPolicy, Ruleset};

/// How many entries the map sized by `count` needs for `compiled` (before the minimum of 1).
pub fn rule_count(count: RuleCount, c: &Compiled) -> usize {
    use crate::compile::runtime::Table;
    let g = &c.groups;
    // Runtime sets: room for members added in place (`compile/runtime.rs`).
    let room = |table| c.runtime.as_ref().map(|r| r.capacity(table));
    match count {
        RuleCount::Addr4 if let Some(n) = room(Table::Prefix4) => n,
        RuleCount::Addr6 if let Some(n) = room(Table::Prefix6) => n,
        RuleCount::Exact4 if let Some(n) = room(Table::Exact4) => n,
        RuleCount::Exact6 if let Some(n) = room(Table::Exact6) => n,
        RuleCount::Pairs if let Some(n) = room(Table::Pairs) => n,
        RuleCount::Rules => c.rule_count as usize,
        RuleCount::Addr4 => c.prefixes4().count(),
        RuleCount::Addr6 => c.prefixes6().count(),
        RuleCount::Exact4 => c.exact4().count(),
        RuleCount::Exact6 => c.exact6().count(),
        RuleCount::Pairs => c.pairs.len(),
        RuleCount::Groups => g.len(),
        RuleCount::Units => c.units.len(),
        RuleCount::ScopedAddr4 => g.iter().map(|g| g.addr4.len()).sum(),
        RuleCount::ScopedAddr6 => g.iter().map(|g| g.addr6.len()).sum(),
        RuleCount::ScopedPorts => g.iter().map(|g| g.ports.len()).sum(),
        RuleCount::Names => c.names.len() + g.iter().map(|g| g.names.len()).sum::<usize>(),
    }
}

/// The number of entries to create `spec` with for this rule set, or `None` to keep the
/// object's (fixed) size. A pinned connection table keeps its own size.
pub fn capacity(
    spec: &MapSpec,
    compiled: &Compiled,
    ruleset: &Ruleset,
    pin_dir: &Path,
) -> anyhow::Result<Option<u32>> {
    Ok(match spec.capacity {
        Capacity::Indexed(_) | Capacity::Fixed(_) => None,
        Capacity::Rules(count) => Some((rule_count(count, compiled) as u32).max(1)),
        Capacity::Conntrack(size) => {
            let configured = match size {
                CtSize::Table => ruleset.conntrack.table_size,
                CtSize::Unconfirmed => ruleset.conntrack.unconfirmed_size,
            };
            Some(table_capacity(pin_dir, spec.name, configured)?)
        }
    })
}

/// The tracker's settings as the datapath reads them.
pub fn ct_config(ct: &Conntrack, generation: u32) -> CtConfig {
    let t = &ct.timeouts;
    let mut timeout_ns = [0u64; state::SLOTS];
    for (s, secs) in [
        (state::SYN_SENT, t.tcp_syn_sent),
        (state::SYN_RECV, t.tcp_syn_recv),
        (state::ESTABLISHED, t.tcp_established),
        (state::FIN_WAIT, t.tcp_fin_wait),
        (state::CLOSE_WAIT, t.tcp_close_wait),
        (state::LAST_ACK, t.tcp_last_ack),
        (state::TIME_WAIT, t.tcp_time_wait),
        (state::CLOSE, t.tcp_close),
        (state::UDP_UNREPLIED, t.udp_unreplied),
        (state::UDP_REPLIED, t.udp_replied),
        (state::ICMP_ECHO, t.icmp),
    ] {
        timeout_ns[s as usize] = u64::from(secs) * 1_000_000_000;
    }
    let action = match ct.invalid {
        InvalidPolicy::Stealth => firewall_common::ACTION_STEALTH,
        InvalidPolicy::Reject => firewall_common::ACTION_REJECT,
    };
    CtConfig {
        timeout_ns,
        invalid_verdict: verdict(DEFAULT_RULE, action),
        generation,
    }
}

/// Sum over CPUs of the first `n` entries of the per-CPU array `name` (counters, rule hits).
pub(super) fn per_cpu_sums(ebpf: &Ebpf, name: &str, n: u32) -> anyhow::Result<Vec<u64>> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("map {name} missing"))?;
    let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    (0..n).map(|i| Ok(arr.get(&i, 0)?.iter().sum())).collect()
}

fn fill_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: impl Iterator<Item = (u8, [u8; N], AddrValue)>,
) -> anyhow::Result<()> {
    let mut t: LpmTrie<&mut MapData, [u8; N], AddrValue> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    for (prefix_len, addr, v) in entries {
        t.insert(&Key::new(u32::from(prefix_len), addr), &v, 0)?;
    }
    Ok(())
}

/// Writes every `(key, value)` of `entries` into the hash map `name`: with
/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6; aya 0.16 has no binding for it), one `bpf()` call for
/// the lot instead of one per entry (at 100,000 rules, about 60 ms of a reload); where the
/// kernel refuses the batch, one call per entry for whatever it did not take.
pub(super) fn fill_hash<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: impl Iterator<Item = (K, V)>,
) -> anyhow::Result<()> {
    let (keys, values): (Vec<K>, Vec<V>) = entries.unzip();
    let map = map_mut(ebpf, name)?;
    let done = update_batch(map, &keys, &values);
    let mut h: HashMap<&mut MapData, K, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
    for (k, v) in keys.iter().zip(&values).skip(done) {
        h.insert(k, v, 0)?;
    }
    Ok(())
}

/// `BPF_MAP_UPDATE_BATCH` of `keys` and `values` into `map`: how many entries the kernel
/// wrote (all of them, or those before the first it refused).
fn update_batch<K: Pod, V: Pod>(map: &aya::maps::Map, keys: &[K], values: &[V]) -> usize {
    use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_MAP_UPDATE_BATCH};
    let data = match map {
        aya::maps::Map::HashMap(d) => d,
        _ => return 0,
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        // SAFETY: bpf_attr is plain data; all-zero is its "nothing set" value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // The batch member of the union, the one this command reads.
        attr.batch.keys = keys[done..].as_ptr() as u64;
        attr.batch.values = values[done..].as_ptr() as u64;
        attr.batch.count = (keys.len() - done) as u32;
        attr.batch.map_fd = fd as u32;
        // SAFETY: the attribute points into `keys` and `values`, which outlive the call; the
        // kernel reads `count` entries of each and writes back only `attr.batch.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        // SAFETY: as above.
        let wrote = unsafe { attr.batch.count } as usize;
        done += wrote;
        if rc < 0 || wrote == 0 {
            break;
        }
    }
    done
}

pub(super) fn fill(ebpf: &mut Ebpf, c: &Compiled) -> anyhow::Result<()> {
    fill_trie(
        ebpf,
        maps::ADDR4,
        c.prefixes4()
            .map(|(n, v)| (n.prefix_len(), n.network().octets(), *v)),
    )?;
    fill_trie(
        ebpf,
        maps::ADDR6,
        c.prefixes6()
            .map(|(n, v)| (n.prefix_len(), n.network().octets(), *v)),
    )?;
    fill_hash(
        ebpf,
        maps::EXACT4,
        c.exact4().map(|(n, v)| (n.addr().octets(), *v)),
    )?;
    {
        let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps::EXACT4_FILTER)?)?;
        for (word, bits) in c.exact4_filter() {
            a.set(word, &bits, 0)?;
        }
    }
    fill_hash(
        ebpf,
        maps::EXACT6,
        c.exact6().map(|(n, v)| (n.addr().octets(), *v)),
    )?;
    {
        let mut a: Array<&mut MapData, PortValue> = Array::try_from(map_mut(ebpf, maps::PORTS)?)?;
        for (slot, v) in &c.ports {
            a.set(*slot, v, 0)?;
        }
    }
    {
        let mut h: HashMap<&mut MapData, PairKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::PAIRS)?)?;
        for (k, v) in &c.pairs {
            h.insert(k, v, 0)?;
        }
    }
    {
        let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps::LOG_RULES)?)?;
        for index in &c.log_rules {
            a.set(*index, &1, 0)?;
        }
    }
    if c.uses_names() {
        let key = name_key(ebpf)?;
        fill_hash(ebpf, maps::NAMES, c.name_entries(&key))?;
    }
    fill_groups(ebpf, c)
}

/// The key of the names' hash (`firewall_common::dns`): the pinned one, or, the first time
/// names are read on this host, one drawn now and pinned. Both copies of a generation ask
/// (the inbound one before it reads any answer), on two threads: one draw at a time, so they
/// cannot pin two keys.
pub(super) fn name_key(ebpf: &mut Ebpf) -> anyhow::Result<NameKey> {
    static DRAW: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = DRAW
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut a: Array<&mut MapData, NameKey> = Array::try_from(map_mut(ebpf, maps::NAME_KEY)?)?;
    let key = a.get(&0, 0)?;
    if !key.is_unset() {
        return Ok(key);
    }
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        return Err(anyhow!(
            "drawing the names' hash key: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (k0, k1) = bytes.split_at(8);
    let key = NameKey {
        k0: u64::from_ne_bytes(k0.try_into()?),
        k1: u64::from_ne_bytes(k1.try_into()?),
    };
    a.set(0, &key, 0)?;
    Ok(key)
}

/// Writes an update of runtime sets' members (`compile/runtime.rs`) into live maps: the new
/// `PAIRS` entries and `EXACT4_FILTER` bits first, so that no address entry names a class or
/// sits in a /16 the kernel cannot see yet; then the address entries, each replaced in one
/// map update (a packet sees the old value or the new one, never a mix).
pub(super) fn write_change(ebpf: &mut Ebpf, ch: &crate::compile::Change) -> anyhow::Result<()> {
    use ipnet::IpNet;
    if !ch.pairs.is_empty() {
        let mut h: HashMap<&mut MapData, PairKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::PAIRS)?)?;
        for (k, v) in &ch.pairs {
            h.insert(k, v, 0)?;
        }
    }
    if !ch.filter.is_empty() {
        let mut a: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps::EXACT4_FILTER)?)?;
        for (word, bits) in &ch.filter {
            a.set(*word, bits, 0)?;
        }
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (net, v) in &ch.addrs {
        match net {
            IpNet::V4(n) => v4.push((n.prefix_len(), n.network().octets(), *v)),
            IpNet::V6(n) => v6.push((n.prefix_len(), n.network().octets(), *v)),
        }
    }
    write_family(ebpf, maps::EXACT4, maps::ADDR4, &v4)?;
    write_family(ebpf, maps::EXACT6, maps::ADDR6, &v6)
}

/// One family's address entries (prefix length, network, value or `None` to remove): the
/// full-length ones into the hash `exact`, the others into the trie `trie`.
fn write_family<const N: usize>(
    ebpf: &mut Ebpf,
    exact: &str,
    trie: &str,
    entries: &[(u8, [u8; N], Option<AddrValue>)],
) -> anyhow::Result<()> {
    let full = (N * 8) as u8;
    {
        let mut h: HashMap<&mut MapData, [u8; N], AddrValue> =
            HashMap::try_from(map_mut(ebpf, exact)?)?;
        for (_, a, v) in entries.iter().filter(|e| e.0 == full) {
            match v {
                Some(v) => h.insert(a, v, 0)?,
                None => h.remove(a)?,
            }
        }
    }
    let mut t: LpmTrie<&mut MapData, [u8; N], AddrValue> = LpmTrie::try_from(map_mut(ebpf, trie)?)?;
    for (len, a, v) in entries.iter().filter(|e| e.0 < full) {
        let key = Key::new(u32::from(*len), *a);
        match v {
            Some(v) => t.insert(&key, v, 0)?,
            None => t.remove(&key)?,
        }
    }
    Ok(())
}

/// A key of the scoped tries: the group id (big-endian, matched whole) before the address, and
/// the prefix length counting both.
fn scoped_key<const N: usize>(group: u32, addr: &[u8], prefix_len: u8) -> (u8, [u8; N]) {
    let mut k = [0u8; N];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(addr);
    (32 + prefix_len, k)
}

/// The tables of the rules with selectors (compile.md, "Rules about programs").
fn fill_groups(ebpf: &mut Ebpf, c: &Compiled) -> anyhow::Result<()> {
    if c.groups.is_empty() {
        return Ok(());
    }
    fill_trie(
        ebpf,
        maps::SCOPED_ADDR4,
        c.groups.iter().flat_map(|g| {
            g.addr4.iter().map(move |(n, v)| {
                let (len, k) = scoped_key::<8>(g.id, &n.network().octets(), n.prefix_len());
                (len, k, *v)
            })
        }),
    )?;
    fill_trie(
        ebpf,
        maps::SCOPED_ADDR6,
        c.groups.iter().flat_map(|g| {
            g.addr6.iter().map(move |(n, v)| {
                let (len, k) = scoped_key::<20>(g.id, &n.network().octets(), n.prefix_len());
                (len, k, *v)
            })
        }),
    )?;
    {
        let mut h: HashMap<&mut MapData, ScopedSlot, PortValue> =
            HashMap::try_from(map_mut(ebpf, maps::SCOPED_PORTS)?)?;
        for g in &c.groups {
            for (slot, v) in &g.ports {
                h.insert(
                    &ScopedSlot {
                        group: g.id,
                        slot: *slot,
                    },
                    v,
                    0,
                )?;
            }
        }
    }
    {
        let mut h: HashMap<&mut MapData, u32, [u32; PROTO_CLASSES]> =
            HashMap::try_from(map_mut(ebpf, maps::SCOPED_PROTO)?)?;
        for g in &c.groups {
            h.insert(&g.id, &g.proto_verdicts, 0)?;
        }
    }
    {
        let mut h: HashMap<&mut MapData, GroupKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::GROUPS)?)?;
        for g in &c.groups {
            h.insert(&g.key, &g.id, 0)?;
        }
    }
    let mut h: HashMap<&mut MapData, u64, u32> = HashMap::try_from(map_mut(ebpf, maps::UNITS)?)?;
    for id in c.units.keys() {
        h.insert(id, &1, 0)?;
    }
    Ok(())
}

pub(super) fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use firewall_common::maps::{Capacity, Kind, MAPS, of_kind};

    use super::*;
    use crate::compile;
    use rules::config;

    fn compiled(text: &str) -> (Ruleset, Compiled) {
        let rs = config::parse(text, Path::new("t.toml")).expect("parse");
        let c = compile::compile(&rs, &Default::default()).expect("compile");
        (rs, c)
    }

    #[test]
    fn rule_maps_are_sized_for_the_rules_and_never_empty() {
        let (rs, c) = compiled(
            "[[rule]]\nproto = \"tcp\"\nport = 22\nremote = \"10.0.0.0/8\"\naction = \"allow\"\n\
             [[rule]]\nproto = \"tcp\"\nport = 80\nremote = \"2001:db8::/32\"\naction = \"reject\"\n",
        );
        // No pins there: the connection tables take the configured sizes.
        let pin_dir = Path::new("/nonexistent/firewall-test");
        let size = |name: &str| {
            let spec = MAPS.iter().find(|m| m.name == name).expect("registered");
            capacity(spec, &c, &rs, pin_dir).expect("capacity")
        };
        assert_eq!(size(maps::RULE_HITS), Some(c.rule_count));
        assert_eq!(size(maps::ADDR4), Some(c.addr4.len() as u32));
        assert_eq!(size(maps::ADDR6), Some(c.addr6.len() as u32));
        // No full-length prefix: the exact tables are created with their one entry.
        assert_eq!(size(maps::EXACT4), Some(1));
        assert_eq!(size(maps::EXACT6), Some(1));
        assert!(c.groups.is_empty() && c.units.is_empty());
        for name in [
            maps::GROUPS,
            maps::UNITS,
            maps::SCOPED_ADDR4,
            maps::SCOPED_PORTS,
        ] {
            assert_eq!(size(name), Some(1), "{name}: the kernel refuses empty maps");
        }
        assert_eq!(size(maps::CT_EST), Some(rs.conntrack.table_size));
        assert_eq!(size(maps::CT_NEW), Some(rs.conntrack.unconfirmed_size));
        assert_eq!(size(maps::CT_LOCAL), Some(rs.conntrack.unconfirmed_size));
        // Fixed in the object.
        assert_eq!(size(maps::PORTS), None);
        assert_eq!(size(maps::COUNTERS), None);
    }

    #[test]
    fn full_length_prefixes_go_to_the_hashes_with_their_enclosing_prefixes_folded_in() {
        use firewall_common::{ADDR_EXACT4, ADDR_EXACT6, ADDR_PREFIX4, ADDR_PREFIX6};
        let (_, c) = compiled(
            "[[rule]]\nremote = \"10.0.0.0/24\"\naction = \"reject\"\n\
             [[rule]]\nproto = \"udp\"\nremote = [\"10.0.0.7\", \"10.9.9.9/32\"]\naction = \"allow\"\n\
             [[rule]]\nremote = \"2001:db8::1/128\"\naction = \"allow\"\n",
        );
        let exact: Vec<_> = c.exact4().map(|(n, _)| n.to_string()).collect();
        assert_eq!(exact, ["10.0.0.7/32", "10.9.9.9/32"]);
        assert_eq!(c.prefixes4().count(), 1);
        assert_eq!((c.exact6().count(), c.prefixes6().count()), (1, 0));
        assert_eq!(c.addr_tables(), ADDR_EXACT4 | ADDR_PREFIX4 | ADDR_EXACT6);
        assert_eq!(c.addr_tables() & ADDR_PREFIX6, 0);
        // 10.0/16 and 10.9/16 hold /32s: word 0x0a00 >> 5 = 80, bits 0 and 9.
        assert_eq!(
            c.exact4_filter().into_iter().collect::<Vec<_>>(),
            [(80, 1 | 1 << 9)]
        );
        // 10.0.0.7 sits inside 10.0.0.0/24: its hash entry carries the /24's rule too, since
        // the kernel does not ask the trie when the hash answers.
        let (_, v) = c.exact4().next().expect("10.0.0.7");
        assert_eq!(v.any_proto, verdict(0, firewall_common::ACTION_REJECT));
        let pin_dir = Path::new("/nonexistent/firewall-test");
        let rs = config::parse("", Path::new("t.toml")).expect("parse");
        let size = |name: &str| {
            let spec = MAPS.iter().find(|m| m.name == name).expect("registered");
            capacity(spec, &c, &rs, pin_dir).expect("capacity")
        };
        assert_eq!(size(maps::EXACT4), Some(2));
        assert_eq!(size(maps::ADDR4), Some(1));
        assert_eq!(
            size(maps::ADDR6),
            Some(1),
            "empty, created with its one entry"
        );
    }

    #[test]
    fn every_per_generation_map_but_the_fixed_ones_is_sized_from_the_rules() {
        for spec in of_kind(Kind::Generation) {
            let fixed = matches!(spec.capacity, Capacity::Indexed(_) | Capacity::Fixed(_));
            assert_eq!(
                fixed,
                spec.name == maps::PORTS
                    || spec.name == maps::CT_CONFIG
                    || spec.name == maps::EXACT4_FILTER
                    || spec.name == maps::DNS_PROGS,
                "{}",
                spec.name
            );
        }
    }
}
