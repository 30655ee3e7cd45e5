//! IPv4 and IPv6 addresses in the one 16-byte form the maps use.
//!
//! Every map key that holds an address (flows, local addresses, bound sockets) stores IPv4 as
//! its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) next to a family byte ([`crate::ct::FAMILY_V4`]
//! or [`crate::ct::FAMILY_V6`]), so one key layout serves both families. The family is kept
//! apart from the bytes on purpose: an IPv6 packet whose address is IPv4-mapped is not the
//! IPv4 flow it spells (see `rules::model::embeds_ipv4`). These helpers are the one place the
//! daemon, the reference evaluator and the tests convert between the two forms; `core::net`
//! only, so the kernel side could use them too.

use core::net::{IpAddr, Ipv6Addr};

use crate::ct::{FAMILY_V4, FAMILY_V6};

/// The family byte of `ip` as the maps store it.
pub fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// `ip` as 16 bytes: IPv4 as `::ffff:a.b.c.d`, IPv6 as is.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// 16 bytes back to an address: `::ffff:a.b.c.d` is IPv4, anything else IPv6.
pub fn unmapped(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An address of a map key, by the key's family byte: an IPv6 key's address stays IPv6 even in
/// the `::ffff:0:0/96` form (the datapath drops such packets, so none should be tracked), where
/// [`unmapped`] would read it as IPv4.
pub fn of_family(a: [u8; 16], family: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match (family, v6.to_ipv4_mapped()) {
        (FAMILY_V4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps; any other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    /// `::ffff:192.0.2.7`.
    const MAPPED: IpAddr = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207));

    #[test]
    fn family_follows_the_type_not_the_bytes() {
        assert_eq!(family(V4), FAMILY_V4);
        assert_eq!(family(V6), FAMILY_V6);
        assert_eq!(family(MAPPED), FAMILY_V6);
    }

    #[test]
    fn mapped_is_the_ipv4_mapped_form() {
        assert_eq!(
            mapped(V4),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
        assert_eq!(mapped(MAPPED), mapped(V4));
        let IpAddr::V6(v6) = V6 else { unreachable!() };
        assert_eq!(mapped(V6), v6.octets());
    }

    #[test]
    fn unmapped_inverts_mapped() {
        for ip in [V4, V6] {
            assert_eq!(unmapped(mapped(ip)), ip);
        }
        // The mapped form of an IPv6 socket's address reads back as IPv4.
        assert_eq!(unmapped(mapped(MAPPED)), V4);
        // `::` and `::1` are not mapped addresses.
        assert_eq!(unmapped([0; 16]), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(
            unmapped(Ipv6Addr::LOCALHOST.octets()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn of_family_unmaps_only_ipv4_keys() {
        assert_eq!(of_family(mapped(V4), FAMILY_V4), V4);
        assert_eq!(of_family(mapped(V6), FAMILY_V6), V6);
        // An IPv6 key holding a mapped address is the IPv6 flow it was.
        assert_eq!(of_family(mapped(V4), FAMILY_V6), MAPPED);
    }

    #[test]
    fn canonical_unmaps_only_mapped_addresses() {
        assert_eq!(canonical(MAPPED), V4);
        assert_eq!(canonical(V4), V4);
        assert_eq!(canonical(V6), V6);
        // IPv4-compatible (deprecated) addresses are not IPv4-mapped.
        let compatible = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0xc000, 0x0207));
        assert_eq!(canonical(compatible), compatible);
    }
}
