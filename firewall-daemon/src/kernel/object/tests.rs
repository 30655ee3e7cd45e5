//! The registry of maps and globals against the built object, parsed without a kernel.

use std::collections::BTreeMap;

use aya_obj::{EbpfSectionKind, maps::PinningType};
use firewall_common::maps::{Capacity, GLOBALS, Kind, MAPS};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use crate::EBPF_OBJECT;

/// (map type, key size, value size, entries, pinned by name) of every map of the object.
fn object_maps() -> BTreeMap<String, (u32, u32, u32, u32, bool)> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the eBPF object parses");
    obj.maps
        .iter()
        .filter(|(_, m)| {
            // The data sections holding the globals are maps to the loader, not declared ones.
            !matches!(
                m.section_kind(),
                EbpfSectionKind::Data | EbpfSectionKind::Rodata | EbpfSectionKind::Bss
            )
        })
        .map(|(name, m)| {
            (
                name.clone(),
                (
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.pinning() == PinningType::ByName,
                ),
            )
        })
        .collect()
}

/// Name and size of every global (`Global<T>`) of the object: the exported data symbols of
/// its read-only data, where the loader patches them.
fn object_globals() -> BTreeMap<String, u64> {
    let file = object::File::parse(EBPF_OBJECT).expect("the eBPF object is an ELF file");
    file.symbols()
        .filter(|s| s.is_global() && s.kind() == SymbolKind::Data)
        .filter(|s| {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(|n| n.starts_with(".rodata")))
                .unwrap_or(false)
        })
        .map(|s| (s.name().expect("symbol name").to_string(), s.size()))
        .collect()
}

#[test]
fn the_object_has_exactly_the_registrys_maps() {
    let found = object_maps();
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    let mut registered: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
    registered.sort_unstable();
    assert_eq!(names, registered, "maps of the object vs the registry");
    for spec in MAPS {
        let (map_type, key, value, entries, pinned) = found[spec.name];
        let name = spec.name;
        assert_eq!(map_type, spec.map_type as u32, "{name}: map type");
        assert_eq!(key as usize, spec.key_size, "{name}: key size");
        if let Some(size) = spec.value_size {
            assert_eq!(value as usize, size, "{name}: value size");
        }
        assert_eq!(pinned, spec.kind == Kind::Shared, "{name}: pinned by name");
        match spec.capacity {
            Capacity::Indexed(n) | Capacity::Fixed(n) => {
                assert_eq!(entries, n, "{name}: entries");
            }
            // Sized at load: the object's placeholder.
            Capacity::Rules(_) | Capacity::Conntrack(_) => assert_eq!(entries, 1, "{name}"),
        }
    }
}

#[test]
fn the_object_has_exactly_the_registrys_globals() {
    let found = object_globals();
    let registered: BTreeMap<String, u64> = GLOBALS
        .iter()
        .map(|g| (g.name.to_string(), g.size as u64))
        .collect();
    assert_eq!(found, registered, "globals of the object vs the registry");
}
