//! TCP connection setup rate across the veth: a client in the sender namespace connects, waits
//! for the server's FIN and closes; a server in the receiver namespace accepts and closes at
//! once (so TIME_WAIT stays on the server side and the client never runs out of ports). Both
//! threads are pinned to the benchmark core, like trafgen: the rate is one core's capacity for
//! both ends, both stacks and the filter.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    os::unix::thread::JoinHandleExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    interrupted,
    lab::{self, Pair, RX_ADDR},
};

pub const TCP_PORT: u16 = 8000;

/// A listening server in the receiver namespace that accepts and closes; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
    /// The server thread's CPU-time clock.
    clock: libc::clockid_t,
}

impl Server {
    pub fn start(pair: &Pair, cpu: usize) -> anyhow::Result<Self> {
        let path = pair.rx_ns_path();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::spawn(move || {
            let listener = (|| {
                lab::enter_ns(&path)?;
                lab::pin_thread(cpu)?;
                let l = TcpListener::bind((Ipv4Addr::from(RX_ADDR), TCP_PORT))?;
                set_accept_timeout(&l, Duration::from_millis(100))?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return 0;
                }
            };
            let mut accepted = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    accepted += 1;
                    drop(s);
                }
            }
            accepted
        });
        rx.recv().context("server thread")??;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive (it runs until the stop flag), the out pointer is valid.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        let server = Self {
            stop,
            thread: Some(thread),
            clock,
        };
        if rc != 0 {
            anyhow::bail!("pthread_getcpuclockid failed ({rc})");
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// accept() honours SO_RCVTIMEO on Linux: the server loop wakes up to see the stop flag.
fn set_accept_timeout(l: &TcpListener, d: Duration) -> anyhow::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(())
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out pointer; on failure ts stays zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Connections per second over one window, and the failures seen.
#[derive(Clone, Debug)]
pub struct ConnSample {
    /// Per second of wall-clock time.
    pub rate: f64,
    /// Per second of CPU time of the client and server threads and the core's ksoftirqd.
    pub cpu_rate: f64,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Runs the connect/close loop from the sender namespace for `secs` seconds.
pub fn connect_loop(
    pair: &Pair,
    server: &Server,
    cpu: usize,
    secs: f64,
) -> anyhow::Result<ConnSample> {
    let addr = SocketAddr::from((Ipv4Addr::from(RX_ADDR), TCP_PORT));
    let server_clock = server.clock;
    let ksoftirqd = lab::ksoftirqd(cpu);
    lab::in_ns(pair.tx_ns(), move || {
        lab::pin_thread(cpu)?;
        let cpu_now = || {
            clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
                + clock_ns(server_clock)
                + ksoftirqd.and_then(lab::runtime_ns).unwrap_or(0)
        };
        let cpu0 = cpu_now();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
        let mut buf = [0u8; 16];
        while Instant::now() < end && !interrupted() {
            let r = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                // The server closes at once: read until its FIN.
                while s.read(&mut buf)? > 0 {}
                Ok(())
            });
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu_s = cpu_now().saturating_sub(cpu0) as f64 / 1e9;
        Ok(ConnSample {
            rate: ok as f64 / elapsed,
            cpu_rate: if cpu_s > 0.0 { ok as f64 / cpu_s } else { 0.0 },
            failed,
            first_error,
        })
    })
}
