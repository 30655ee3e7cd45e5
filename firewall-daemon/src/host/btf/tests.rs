use super::*;

/// The offset in bytes of `strukt.field` according to bpftool's own reading of the running
/// kernel's BTF (`bpftool btf dump file ... format raw`), summed through anonymous members
/// the way the kernel lays them out. An independent reader of the same BTF: offsets depend
/// on the kernel's configuration, not its version, so no number in this file could be
/// right on every build. `None` with a reason when bpftool cannot answer.
fn bpftool_offset(raw: &str, strukt: &str, field: &str) -> Option<u32> {
    // [ID] KIND 'name' ... then one tab-indented line per member: 'name' type_id=N bits_offset=B
    struct Ty<'a> {
        kind: &'a str,
        name: &'a str,
        members: Vec<(&'a str, u32, u32)>,
    }
    let mut types: std::collections::HashMap<u32, Ty> = Default::default();
    let mut current = None;
    let kv = |line: &str, key: &str| -> Option<u32> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
    };
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix('[') {
            let (id, rest) = rest.split_once("] ")?;
            let id: u32 = id.parse().ok()?;
            let (kind, rest) = rest.split_once(' ')?;
            let name = rest.split('\'').nth(1).unwrap_or("");
            types.insert(
                id,
                Ty {
                    kind,
                    name,
                    members: Vec::new(),
                },
            );
            current = Some(id);
        } else if let (Some(id), Some(member)) = (current, line.strip_prefix('\t')) {
            let name = member.split('\'').nth(1).unwrap_or("");
            if let (Some(ty), Some(bits)) = (kv(member, "type_id="), kv(member, "bits_offset=")) {
                types.get_mut(&id)?.members.push((name, ty, bits));
            }
        }
    }
    fn find(types: &std::collections::HashMap<u32, Ty>, id: u32, field: &str) -> Option<u32> {
        for &(name, ty, bits) in &types.get(&id)?.members {
            if name == field {
                return Some(bits / 8);
            }
            let inner = types.get(&ty)?;
            if name == "(anon)"
                && matches!(inner.kind, "STRUCT" | "UNION")
                && let Some(off) = find(types, ty, field)
            {
                return Some(bits / 8 + off);
            }
        }
        None
    }
    let id = types
        .iter()
        .find(|(_, t)| t.kind == "STRUCT" && t.name == strukt)
        .map(|(id, _)| *id)?;
    find(&types, id, field)
}

#[test]
fn offsets_resolve_on_this_kernel() {
    let started = std::time::Instant::now();
    let off = KernelOffsets::resolve().expect("resolving offsets from vmlinux BTF");
    eprintln!("{off:?} in {:?}", started.elapsed());
    for (name, value) in off.globals() {
        assert_ne!(*value, 0, "{name}");
    }
    let raw = match std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            eprintln!(
                "SKIPPED the cross-check: bpftool failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!(
                "SKIPPED the cross-check: bpftool not runnable ({e}); `cargo xtask setup` installs it"
            );
            return;
        }
    };
    for (strukt, field, ours) in [
        ("task_struct", "mm", off.task_mm),
        ("mm_struct", "exe_file", off.mm_exe_file),
        ("file", "f_inode", off.file_inode),
        ("inode", "i_ino", off.inode_ino),
        ("inode", "i_sb", off.inode_sb),
        ("super_block", "s_dev", off.sb_dev),
    ] {
        let theirs = bpftool_offset(&raw, strukt, field)
            .unwrap_or_else(|| panic!("bpftool's dump has no {strukt}.{field}"));
        assert_eq!(
            ours, theirs,
            "{strukt}.{field}: ours {ours}, bpftool {theirs}"
        );
    }
}

/// The cross-check's reader on a hand-made dump: a member inside an anonymous struct at a
/// non-zero offset is found at the sum of both offsets (as `mm_struct.exe_file` is).
#[test]
fn bpftool_reader_sums_anonymous_members() {
    let raw = "[1] INT 'long' size=8 bits_offset=0 nr_bits=64 encoding=(none)\n\
               [2] STRUCT 'outer' size=64 vlen=2\n\
               \t'a' type_id=1 bits_offset=0\n\
               \t'(anon)' type_id=3 bits_offset=128\n\
               [3] STRUCT '(anon)' size=16 vlen=2\n\
               \t'b' type_id=1 bits_offset=0\n\
               \t'c' type_id=1 bits_offset=64\n";
    assert_eq!(bpftool_offset(raw, "outer", "a"), Some(0));
    assert_eq!(bpftool_offset(raw, "outer", "c"), Some(24));
    assert_eq!(bpftool_offset(raw, "outer", "missing"), None);
}

#[test]
fn missing_btf_file_is_named() {
    let err =
        KernelOffsets::resolve_file(Path::new("/nonexistent/vmlinux")).expect_err("no such file");
    assert!(
        format!("{err:#}").contains("/nonexistent/vmlinux"),
        "{err:#}"
    );
}

#[test]
fn garbage_btf_is_an_error() {
    let err = KernelOffsets::resolve_btf(&[0u8; 64], "garbage.btf").expect_err("not BTF");
    assert!(format!("{err:#}").contains("garbage.btf"), "{err:#}");
}

#[test]
fn missing_struct_and_field_are_named() {
    let data = fs::read(VMLINUX_BTF).expect("vmlinux BTF");
    let btf = Btf::parse(&data, VMLINUX_BTF).expect("parse");
    let err = btf
        .member("no_such_struct_xyz", "mm", Expect::PtrTo("mm_struct"))
        .expect_err("no such struct");
    let msg = format!("{err:#}");
    assert!(msg.contains("struct no_such_struct_xyz not found"), "{msg}");
    assert!(msg.contains(VMLINUX_BTF), "{msg}");

    let err = btf
        .member("task_struct", "no_such_field", Expect::PtrTo("mm_struct"))
        .expect_err("no such field");
    let msg = format!("{err:#}");
    assert!(msg.contains("task_struct.no_such_field"), "{msg}");
    assert!(msg.contains(VMLINUX_BTF), "{msg}");

    // Wrong expectations are refused, not silently accepted.
    let err = btf
        .member("task_struct", "mm", Expect::PtrTo("file"))
        .expect_err("mm points to mm_struct");
    assert!(
        format!("{err:#}").contains("expected struct file"),
        "{err:#}"
    );
    let err = btf
        .member("super_block", "s_dev", Expect::Int(8))
        .expect_err("s_dev is 4 bytes");
    assert!(
        format!("{err:#}").contains("is 4 bytes, expected 8"),
        "{err:#}"
    );
}

/// A hand-built BTF blob, so the anonymous-member arithmetic and the checks are tested
/// independently of the running kernel's layout.
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;

impl BtfBuilder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
        let name = self.string(name);
        for w in [name, (kind << 24) | vlen, size_or_type] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.header(name, KIND_INT, 0, bytes);
        self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
        id
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.header("", KIND_PTR, 0, to)
    }

    fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.header(name, KIND_TYPEDEF, 0, to)
    }

    /// Members: (name, type id, byte offset).
    fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let id = self.header(name, kind, members.len() as u32, size);
        for (m, ty, off) in members {
            let m = self.string(m);
            for w in [m, *ty, off * 8] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        id
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// The six structs, with `mm_struct.exe_file` two anonymous levels down (a struct inside
/// a union), as on recent kernels.
fn synthetic(ino_bytes: u32) -> Vec<u8> {
    let mut b = BtfBuilder::new();
    let ulong = b.int("long unsigned int", 8);
    let uint = b.int("unsigned int", 4);
    let ino = b.int("ino_int", ino_bytes);
    let dev_t = b.typedef("dev_t", uint);
    // btfparse derives the pointer size from list_head (two pointers).
    b.aggregate(KIND_STRUCT, "list_head", 16, &[]);
    let sb = b.aggregate(
        KIND_STRUCT,
        "super_block",
        32,
        &[("s_list", ulong, 0), ("s_dev", dev_t, 16)],
    );
    let sb_ptr = b.ptr(sb);
    let inode = b.aggregate(
        KIND_STRUCT,
        "inode",
        96,
        &[
            ("i_mode", uint, 0),
            ("i_sb", sb_ptr, 40),
            ("i_ino", ino, 64),
        ],
    );
    let inode_ptr = b.ptr(inode);
    let file = b.aggregate(
        KIND_STRUCT,
        "file",
        64,
        &[("f_mode", uint, 0), ("f_inode", inode_ptr, 32)],
    );
    let file_ptr = b.ptr(file);
    let inner = b.aggregate(
        KIND_STRUCT,
        "",
        24,
        &[("pad", ulong, 0), ("exe_file", file_ptr, 16)],
    );
    let union = b.aggregate(KIND_UNION, "", 24, &[("", inner, 0), ("other", ulong, 0)]);
    let mm = b.aggregate(
        KIND_STRUCT,
        "mm_struct",
        2048,
        &[("pgd", ulong, 0), ("", union, 1000)],
    );
    let mm_ptr = b.ptr(mm);
    b.aggregate(
        KIND_STRUCT,
        "task_struct",
        4096,
        &[("state", uint, 0), ("mm", mm_ptr, 1136)],
    );
    b.finish()
}

#[test]
fn offsets_sum_through_anonymous_members() {
    let off = KernelOffsets::resolve_btf(&synthetic(8), "synthetic").expect("resolve");
    assert_eq!(
        off,
        KernelOffsets {
            task_mm: 1136,
            mm_exe_file: 1016,
            file_inode: 32,
            inode_ino: 64,
            inode_sb: 40,
            sb_dev: 16,
        }
    );
}

#[test]
fn wrong_member_size_is_refused() {
    let err = KernelOffsets::resolve_btf(&synthetic(4), "synthetic").expect_err("4-byte i_ino");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("inode.i_ino in synthetic is 4 bytes, expected 8"),
        "{msg}"
    );
}
