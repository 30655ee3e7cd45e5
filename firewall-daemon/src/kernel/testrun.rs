//! Running programs on frames in the kernel (BPF_PROG_TEST_RUN), for the tests and benchmarks.
//!
//! The differential tests and `testrun_bench` drive the real programs of a generation through
//! the kernel without attaching them anywhere, veth peers in tests need a program that passes
//! everything, and the benchmark sends its frames with the object's generator. None of it is
//! the firewall's business at run time, so it is compiled only with the `testrun` feature,
//! which the crate's tests and examples turn on (through its dev-dependency on itself) and the
//! shipped binaries do not.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpLink},
};

use super::{
    Generation, generation::xdp_program, links::attach_xdp, object::verifier_context,
    pins::prepare_pin_dir, tables::fill_hash,
};
use crate::{EBPF_OBJECT, host::interfaces::LinkLayer};
use firewall_common::generator::GenConfig;
use rules::model::XdpMode;

impl Generation {
    /// Runs the egress program once on `frame` (BPF_PROG_TEST_RUN); returns its TC action.
    pub fn test_run_egress(&mut self, frame: &[u8]) -> anyhow::Result<i32> {
        self.test_run_egress_on(LinkLayer::Ethernet, frame)
    }

    /// [`Self::test_run_egress`] with the program for interfaces of `link`.
    pub fn test_run_egress_on(&mut self, link: LinkLayer, frame: &[u8]) -> anyhow::Result<i32> {
        Ok(run_program(self.egress(link)?, frame, 1)?.0 as i32)
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN); returns the XDP action and the
    /// frame as the program left it.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        self.test_run_on(LinkLayer::Ethernet, frame)
    }

    /// [`Self::test_run`] with the program for interfaces of `link` (for [`LinkLayer::Ip`],
    /// `frame` starts at the IP header).
    pub fn test_run_on(&mut self, link: LinkLayer, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let (action, out, _) = run_program(self.program_for(link)?, frame, 1)?;
        Ok((action, out))
    }

    /// Runs the program `repeat` times on `frame` in the kernel; returns ns per run as the
    /// kernel measured it.
    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        time_program(self.program()?, frame, repeat)
    }
}

/// One BPF_PROG_TEST_RUN of `frame`, `repeat` times (XDP or TC): the program's return value,
/// the frame as the program left it, and the kernel's ns per run.
fn run_program<P>(prog: &P, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, Vec<u8>, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    // Room for replies that grow the frame (ICMP errors prepend up to 48 bytes).
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out, res.duration.as_nanos() as f64))
}

fn time_program(prog: &Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    Ok(run_program(prog, frame, repeat)?.2)
}

/// The loopback program (`loopback::load`), loaded and not attached: a test run's socket
/// buffer has a socket, as the host's programs' packets on `lo` have.
pub struct Loopback {
    ebpf: Ebpf,
}

impl Loopback {
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: super::loopback::load(pin_dir)?,
        })
    }

    /// Runs the program once on `frame` (Ethernet, as on `lo`); returns its TC action.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<i32> {
        Ok(self.run(frame, 1)?.0 as i32)
    }

    /// The program's time for `frame`, in ns (the kernel's average over `repeat` runs).
    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        Ok(self.run(frame, repeat)?.2)
    }

    fn run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, Vec<u8>, f64)> {
        let prog: &mut aya::programs::SchedClassifier = super::object::program_mut(
            &mut self.ebpf,
            firewall_common::DNS_LOOPBACK_PROGRAM,
            "a TC program",
        )?;
        run_program(prog, frame, repeat)
    }
}

/// The object's pass-everything program, loaded on its own: for veth peers in tests (native
/// XDP_TX on veth is only delivered when the peer has an XDP program) and as the benchmark floor.
pub struct PassProgram {
    ebpf: Ebpf,
}

/// The object loaded for one XDP program that runs on its own (the helpers below): the
/// program `name` is loaded, after `configure` has set the loader's globals and map sizes.
fn load_alone<'a>(
    pin_dir: &'a Path,
    name: &str,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> anyhow::Result<Ebpf> {
    prepare_pin_dir(pin_dir)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    configure(&mut loader);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    xdp_program(&mut ebpf, name)?
        .load()
        .map_err(verifier_context)?;
    Ok(ebpf)
}

impl PassProgram {
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        let ebpf = load_alone(pin_dir, firewall_common::XDP_PASS_PROGRAM, |l| {
            super::diagnostics::set_level(l)
        })?;
        Ok(Self { ebpf })
    }

    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, firewall_common::XDP_PASS_PROGRAM)
    }

    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        time_program(self.program()?, frame, repeat)
    }

    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
    ) -> anyhow::Result<(XdpLink, &'static str)> {
        attach_xdp(self.program()?, ifname, mode)
    }
}

/// The benchmark's frame generator (`firewall_common::generator`), loaded on its own with its
/// settings. It redirects into an interface, so load it in the namespace of that interface.
pub struct FrameGenerator {
    ebpf: Ebpf,
}

impl FrameGenerator {
    pub fn load(pin_dir: &Path, config: GenConfig) -> anyhow::Result<Self> {
        let ebpf = load_alone(pin_dir, firewall_common::generator::GEN_PROGRAM, |l| {
            l.override_global(firewall_common::globals::GEN_CONFIG, &config, true);
        })?;
        Ok(Self { ebpf })
    }

    /// Sends `count` frames made from `template` in live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
    /// `batch` frames per batch). Returns when they are sent, or with an error when a signal
    /// interrupted the run.
    pub fn send(&mut self, template: &[u8], count: u32, batch: u32) -> anyhow::Result<()> {
        let prog = xdp_program(&mut self.ebpf, firewall_common::generator::GEN_PROGRAM)?;
        prog.test_run(TestRunOptions {
            data_in: Some(template),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..Default::default()
        })
        .context("BPF_PROG_RUN in live-frame mode")?;
        Ok(())
    }
}

/// The benchmark's reference blocklist (`firewall-ebpf/src/blocklist.rs`), loaded on its own
/// with `addrs` in its map: what any XDP blocklist pays per packet, timed beside the firewall.
pub struct BlocklistProgram {
    ebpf: Ebpf,
}

impl BlocklistProgram {
    pub fn load(pin_dir: &Path, addrs: &[[u8; 4]]) -> anyhow::Result<Self> {
        let entries = u32::try_from(addrs.len().max(1)).context("too many addresses")?;
        let mut ebpf = load_alone(pin_dir, firewall_common::XDP_BLOCKLIST_PROGRAM, |l| {
            l.map_max_entries(firewall_common::maps::BENCH_BLOCKLIST, entries);
        })?;
        // Written the way the rule maps are (one batch update).
        fill_hash(
            &mut ebpf,
            firewall_common::maps::BENCH_BLOCKLIST,
            addrs.iter().map(|a| (*a, 1u32)),
        )
        .context("filling BENCH_BLOCKLIST")?;
        Ok(Self { ebpf })
    }

    fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, firewall_common::XDP_BLOCKLIST_PROGRAM)
    }

    /// Runs the program once on `frame`: its XDP action.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<u32> {
        Ok(run_program(self.program()?, frame, 1)?.0)
    }

    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        time_program(self.program()?, frame, repeat)
    }
}
