//! The port side of the classifier: an array slot per (protocol class, port), painted with
//! the first rule's word for each slot. Painting in rule order with a union-find of the next
//! unpainted slot touches each slot once, whatever the number of overlapping ranges.

use firewall_common::port_slot;

pub(super) fn slot_range(proto: u32, lo: u16, hi: u16) -> (u32, u32) {
    (port_slot(proto, lo), port_slot(proto, hi))
}

fn find(next_free: &mut [u32], mut i: u32) -> u32 {
    let mut root = i;
    while next_free[root as usize] != root {
        root = next_free[root as usize];
    }
    while next_free[i as usize] != root {
        let n = next_free[i as usize];
        next_free[i as usize] = root;
        i = n;
    }
    root
}

pub(super) fn paint(values: &mut [u32], next_free: &mut [u32], lo: u32, hi: u32, w: u32) {
    let mut i = find(next_free, lo);
    while i <= hi {
        values[i as usize] = w;
        next_free[i as usize] = i + 1;
        i = find(next_free, i + 1);
    }
}
