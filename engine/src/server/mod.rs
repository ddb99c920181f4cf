//! The download server: worker threads (one per core), each with its own listener
//! (SO_REUSEPORT), its own connections and its own io_uring ring or epoll instance.
//!
//! Nothing is shared on the request path but read-only resources (`Arc`); password checks and
//! store reads go to the auth pool ([`auth`]). SIGTERM/SIGINT drain: workers stop accepting,
//! idle connections close, in-flight downloads finish or are cut after `--drain-timeout`.
//!
//! # One request, file by file
//! 1. accept: [`worker`] admits a socket from the listener (the connection cap and its 503,
//!    the EMFILE back-off) and owns everything the two drivers share; [`uring`] and [`epoll`]
//!    only submit operations and feed completions back.
//! 2. parse and 3. authorize: [`conn`], the connection state machine, parses the head
//!    ([`crate::http`]) and authorizes from the worker's caches or parks on the [`auth`] pool.
//! 4. respond: [`respond`] picks the representation and writes the head and body pieces.
//! 5. shape: [`shaping`] asks the per-user shaper how many body bytes the next send may
//!    carry, parks the connection when none, and wakes it.
//! 6. send: [`send`] plans the next `sendmsg`/`sendfile` from the mapped segments
//!    ([`segment`]) and advances the response by what the kernel took; [`sndbuf`] bounds
//!    an unshaped download's kernel send buffer until its client proves it reads.
//! 7. account: [`credit`] turns the client's TCP acknowledgements ([`socket`]: `TCP_INFO`)
//!    into credits, batched per loop iteration.
//! 8. commit: the completion ledger ([`crate::completion`]) applies the credits and records a
//!    completion in SQLite.
//!
//! The state machine makes no syscall itself: it asks its [`socket::ConnSocket`]; [`sys`]
//! holds the checked syscall wrappers, [`ctx`] the per-worker context, [`stats`] the counters.
//!
//! HTTPS (`--tls-listen`): each worker has a second listener; a connection accepted there
//! carries a [`tls::TlsSession`], the layer between the state machine and the socket (rustls
//! in user space, file bytes read with `pread`, acknowledgements credited per whole record).
//! SIGHUP and the admin API's `POST /tls/reload` reload [`tls::Certificates`].
//!
//! SIGHUP with `--config FILE` also re-reads the file ([`crate::config::reload`] decides what
//! changed): the global rate goes to the shaper, the default rate and rate classes to
//! [`shaping::LiveRates`], the webhook URL to the ledger's sender, the log level to the log
//! filter; a refused file changes nothing.

pub mod auth;
pub mod conn;
pub mod credit;
pub mod ctx;
pub mod epoll;
pub mod resources;
pub mod respond;
pub mod segment;
pub mod send;
pub mod shaping;
pub mod sndbuf;
pub mod socket;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod uring;
pub mod worker;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::config::{DriverChoice, ServeConfig, UringFeatures};
use crate::demo::DemoInfo;
use crate::storage::Storage as _;
use crate::storage::Store;

use auth::{AuthPool, Inbox};
use resources::Resource;
use worker::{Worker, WorkerInit};

/// The driver every worker runs.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    Uring(uring::Features),
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Driver::Uring(features) => write!(f, "io_uring ({features})"),
            Driver::Epoll => f.write_str("epoll"),
        }
    }
}

/// The driver `serve` runs with this configuration, and why: one decision shared by
/// [`run`] and `weir check-system`. An error is a configuration that cannot start
/// (`--driver uring` where io_uring does not work).
pub fn pick_driver(cfg: &ServeConfig) -> anyhow::Result<(Driver, String)> {
    if std::env::var_os("WEIR_FORCE_EPOLL").is_some() && cfg.driver == DriverChoice::Auto {
        return Ok((Driver::Epoll, "WEIR_FORCE_EPOLL is set".into()));
    }
    let level = match cfg.uring_features {
        UringFeatures::Full => "full",
        UringFeatures::Minimal => "minimal (the 5.10 set)",
    };
    match cfg.driver {
        DriverChoice::Epoll => Ok((Driver::Epoll, "--driver epoll".into())),
        DriverChoice::Uring => uring::probe(cfg.uring_features)
            .map(|f| {
                (
                    Driver::Uring(f),
                    format!("--driver uring, features {level}"),
                )
            })
            .map_err(|why| anyhow::anyhow!("--driver uring: {why}")),
        DriverChoice::Auto => match uring::probe(cfg.uring_features) {
            Ok(f) => Ok((
                Driver::Uring(f),
                format!(
                    "--driver auto: io_uring works and has every opcode needed; features {level}"
                ),
            )),
            Err(why) => Ok((
                Driver::Epoll,
                format!("--driver auto: io_uring unavailable ({why})"),
            )),
        },
    }
}

fn choose_driver(cfg: &ServeConfig) -> anyhow::Result<Driver> {
    let (driver, why) = pick_driver(cfg)?;
    if matches!(driver, Driver::Epoll) && cfg.driver == DriverChoice::Auto {
        tracing::warn!(reason = %why, "io_uring unavailable; using the epoll driver");
    }
    Ok(driver)
}

/// Run the server until SIGTERM/SIGINT has drained it.
pub fn run(cfg: ServeConfig, demo: Option<DemoInfo>) -> anyhow::Result<()> {
    let nofile = sys::raise_nofile();
    let store = Store::open(&cfg.data_dir)
        .with_context(|| format!("opening data dir {}", cfg.data_dir.display()))?;
    let secret = Arc::new(store.secret()?);
    let mut resources: HashMap<String, Arc<Resource>> = HashMap::new();
    for item in store.items()? {
        match Resource::load(&item) {
            Ok(r) => {
                resources.insert(item.id.clone(), Arc::new(r));
            }
            Err(e) => tracing::error!(item = %item.id, error = %e, "item not served"),
        }
    }
    drop(store);
    let driver = choose_driver(&cfg)?;
    let workers = cfg.workers.max(1);
    let (driver_name, driver_features) = match driver {
        Driver::Uring(f) => (
            "io_uring",
            format!("level={:?} {f}", cfg.uring_features).to_lowercase(),
        ),
        Driver::Epoll => ("epoll", String::new()),
    };
    let access_log = match &cfg.access_log {
        Some(path) => Some(
            crate::accesslog::AccessLog::start(
                crate::accesslog::Target::parse(path),
                cfg.log_format,
                driver_name.to_string(),
            )
            .with_context(|| format!("opening the access log {path}"))?,
        ),
        None => None,
    };

    // The certificates first: a bad file stops the start with a clear error.
    let certs = match &cfg.tls {
        Some(t) => Some(Arc::new(tls::Certificates::load(t).with_context(|| {
            format!(
                "--tls-cert {} / --tls-key {}",
                t.cert.display(),
                t.key.display()
            )
        })?)),
        None => None,
    };
    let (addr, listeners) = match cfg.listen {
        Some(a) => {
            let (addr, l) = bind_all(a, workers)?;
            (Some(addr), l.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    let (tls_addr, tls_listeners) = match &cfg.tls {
        Some(t) => {
            let (addr, l) = bind_all(t.listen, workers)?;
            (Some(addr), l.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };

    let mut wakes = Vec::new();
    let mut inboxes = Vec::new();
    let mut inbox_rx = Vec::new();
    for _ in 0..workers {
        let wake = Arc::new(sys::eventfd()?);
        let (tx, rx) = crossbeam_channel::unbounded();
        inboxes.push(Inbox {
            tx,
            wake_fd: wake.as_raw_fd(),
        });
        inbox_rx.push(rx);
        wakes.push(wake);
    }
    let pool = AuthPool::start(
        cfg.data_dir.clone(),
        cfg.auth_threads,
        inboxes,
        resources.clone(),
        cfg.credential_cache_ttl,
        cfg.grace_period,
    )?;

    let shaper = shaping::server_shaper(&cfg);
    let live_rates = shaping::LiveRates::new(cfg.default_user_rate, cfg.rate_classes.clone());
    let worker_stats: Vec<Arc<stats::WorkerStats>> = (0..workers).map(|_| Arc::default()).collect();
    // The completion ledger: credits in, completions (cart -> history, event, webhook) out. Started
    // before the admin listener (its metrics include the ledger's) and before any worker (it
    // replays the map files a killed process left before workers write new ones).
    let ledger = if cfg.accounting {
        let mut lc = crate::completion::LedgerConfig::new(cfg.data_dir.clone());
        lc.webhook = cfg.webhook.clone();
        Some(crate::completion::Ledger::start(lc)?)
    } else {
        if cfg.webhook.is_some() {
            anyhow::bail!("--webhook needs accounting (drop --no-accounting)");
        }
        None
    };
    let draining = Arc::new(AtomicBool::new(false));
    {
        let draining = draining.clone();
        let wake_fds: Vec<i32> = wakes.iter().map(|w| w.as_raw_fd()).collect();
        let wakes_alive = wakes.clone();
        let certs = certs.clone();
        let shaper = shaper.clone();
        let live_rates = live_rates.clone();
        let ledger = ledger.as_ref().map(|(l, _)| l.clone());
        let mut running = cfg.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGUSR1,
        ])?;
        let access_log = access_log.clone();
        std::thread::Builder::new()
            .name("weir-signals".into())
            .spawn(move || {
                let _keep = wakes_alive;
                for sig in signals.forever() {
                    if sig == signal_hook::consts::SIGHUP {
                        reload_config(&mut running, &shaper, &live_rates, ledger.as_ref());
                        // Certificate rotation (a certbot deploy hook): new handshakes only.
                        match &certs {
                            Some(c) => {
                                let _ = c.reload();
                            }
                            None if running.reload.is_none() => tracing::info!(
                                "SIGHUP: no --tls-listen and no --config, nothing to reload"
                            ),
                            None => {}
                        }
                        continue;
                    }
                    if sig == signal_hook::consts::SIGUSR1 {
                        // logrotate renamed the access log: write to a new file of its name.
                        if let Some(log) = &access_log {
                            log.reopen();
                        }
                        continue;
                    }
                    tracing::info!(signal = sig, "shutting down: draining connections");
                    draining.store(true, Ordering::Release);
                    for &fd in &wake_fds {
                        sys::eventfd_wake(fd);
                    }
                }
            })?;
    }

    let ledger_stats = ledger.as_ref().map(|(l, _)| l.stats());
    let admin_addr = match cfg.admin_listen {
        Some(addr) => {
            let token = match &cfg.admin_token {
                Some(t) => t.clone(),
                None => Store::open(&cfg.data_dir)?.admin_token()?,
            };
            let draining = draining.clone();
            let wake_fds: Vec<i32> = wakes.iter().map(|w| w.as_raw_fd()).collect();
            let wakes_alive = wakes.clone();
            let state = crate::admin::AdminState {
                token,
                data_dir: cfg.data_dir.clone(),
                metrics: {
                    let worker_stats = worker_stats.clone();
                    let ledger_stats = ledger_stats.clone();
                    let access_stats = access_log.as_ref().map(|l| l.stats());
                    let pool = pool.clone();
                    let shaper = shaper.clone();
                    let prev = std::sync::Mutex::new(None);
                    let info = stats::info_families(driver_name, &driver_features);
                    Box::new(move || {
                        let mut extra = ledger_stats
                            .as_ref()
                            .map(|l| l.metrics())
                            .unwrap_or_default();
                        extra.extend(
                            access_stats
                                .as_ref()
                                .map(|a| a.metrics())
                                .unwrap_or_default(),
                        );
                        extra.push((
                            "weir_auth_queue_depth",
                            "Requests queued for the auth pool (lookups and password checks).",
                            pool.queued() as u64,
                        ));
                        let mut out = stats::render(&worker_stats, &extra);
                        stats::render_families(&mut out, &stats::shaper_families(&shaper, &prev));
                        stats::render_families(&mut out, &info);
                        out
                    })
                },
                ready: {
                    let worker_stats = worker_stats.clone();
                    let draining = draining.clone();
                    Box::new(move || {
                        if draining.load(Ordering::Acquire) {
                            return Err("draining".to_string());
                        }
                        let stopped = worker_stats
                            .iter()
                            .filter(|w| !w.running.load(Ordering::Acquire))
                            .count();
                        if stopped > 0 {
                            return Err(format!("{stopped} worker(s) not running"));
                        }
                        Ok(())
                    })
                },
                downloads: {
                    let worker_stats = worker_stats.clone();
                    Box::new(move || worker_stats.iter().flat_map(|w| w.live()).collect())
                },
                cut: {
                    let worker_stats = worker_stats.clone();
                    let wake_fds = wake_fds.clone();
                    let wakes_alive = wakes.clone();
                    Box::new(move |user: &str| {
                        let _keep = &wakes_alive;
                        for (w, &fd) in worker_stats.iter().zip(&wake_fds) {
                            w.request_cut(user);
                            sys::eventfd_wake(fd);
                        }
                    })
                },
                rates: Some(Arc::new(ShaperControl {
                    shaper: shaper.clone(),
                    rates: live_rates.clone(),
                })),
                tls_reload: certs.clone().map(|c| {
                    Box::new(move || c.reload().map_err(|e| format!("{e:#}")))
                        as Box<dyn Fn() -> Result<(), String> + Send + Sync>
                }),
                drain: Box::new(move || {
                    let _keep = &wakes_alive;
                    draining.store(true, Ordering::Release);
                    for &fd in &wake_fds {
                        sys::eventfd_wake(fd);
                    }
                }),
            };
            Some(crate::admin::spawn(addr, state)?)
        }
        None => None,
    };
    let driver_desc = driver.to_string();
    tracing::info!(driver = %driver_desc, workers, nofile, items = resources.len(), "weir starting");
    if let Some(a) = admin_addr {
        println!("weir: admin API on http://{a} (bearer token: --admin-token, WEIR_ADMIN_TOKEN or DATA/admin-token)");
    }
    print_banner(addr, tls_addr, workers, &driver_desc, demo.as_ref());

    let credit_sink = ledger.as_ref().map(|(l, _)| credit::to_ledger(l.clone()));
    let cfg = Arc::new(cfg);
    let mut handles = Vec::new();
    for (id, (((listener, tls_listener), wake), inbox)) in listeners
        .into_iter()
        .zip(tls_listeners)
        .zip(wakes)
        .zip(inbox_rx)
        .enumerate()
    {
        let init = WorkerInit {
            id,
            cfg: cfg.clone(),
            listener,
            tls_listener,
            certs: certs.clone(),
            wake,
            inbox,
            secret: secret.clone(),
            resources: resources.clone(),
            pool: pool.clone(),
            draining: draining.clone(),
            credit_sink: credit_sink.clone(),
            credit_watermark: ledger.as_ref().map(|(l, _)| l.durable_watermark()),
            stats: worker_stats[id].clone(),
            shaper: shaper.clone(),
            rates: live_rates.clone(),
            access_log: access_log.clone(),
        };
        let running = worker_stats[id].clone();
        // Running from now: readiness must not flap while the thread starts.
        running.running.store(true, Ordering::Release);
        handles.push(
            std::thread::Builder::new()
                .name(format!("weir-worker-{id}"))
                .spawn(move || {
                    let w = Worker::new(init);
                    let res = match driver {
                        Driver::Uring(f) => uring::run(w, f),
                        Driver::Epoll => epoll::run(w),
                    };
                    if let Err(e) = &res {
                        tracing::error!(worker = id, error = %e, "worker failed");
                    }
                    running.running.store(false, Ordering::Release);
                    res
                })?,
        );
    }
    let mut failed = false;
    for h in handles {
        failed |= !matches!(h.join(), Ok(Ok(())));
    }
    if let Some(log) = &access_log {
        // The last lines out before exiting.
        log.close();
    }
    if let Some((_, thread)) = ledger {
        // Apply the last credits and flush the journal before exiting.
        thread.shutdown();
    }
    if failed {
        anyhow::bail!("a worker failed");
    }
    tracing::info!("drained; bye");
    Ok(())
}

/// Bind one `SO_REUSEPORT` listener per worker on `addr` (port 0: the first picks one, the
/// others share it); returns the bound address.
fn bind_all(
    addr: std::net::SocketAddr,
    workers: usize,
) -> anyhow::Result<(std::net::SocketAddr, Vec<std::os::fd::OwnedFd>)> {
    let first =
        sys::reuseport_listener(addr, 4096).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = sys::local_addr(first.as_fd())?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(sys::reuseport_listener(bound, 4096)?);
    }
    Ok((bound, listeners))
}

/// Live rate changes from the admin API, applied to the shared shaper.
/// SIGHUP with `--config`: re-read the file; refuse a bad one in one error line (file, line,
/// reason) and keep running as before; else apply what can change live and log what changed.
fn reload_config(
    running: &mut ServeConfig,
    shaper: &weir_shaper::Shaper,
    rates: &shaping::LiveRates,
    ledger: Option<&crate::completion::Ledger>,
) {
    const REFUSED: &str = "SIGHUP: configuration refused, nothing changed";
    let Some(source) = &running.reload else {
        return;
    };
    let file = source.file.display().to_string();
    let mut new = match source.read() {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("{REFUSED}: {e}");
            return;
        }
    };
    if std::env::var_os("WEIR_LOG").is_some() {
        // WEIR_LOG wins over the file, as at start: the file's log_level is not a change.
        new.log_level = running.log_level.clone();
    }
    let changes = crate::config::reload::diff(running, &new);
    // What can fail first, so that a refusal leaves everything as it was.
    if let (Some(old), Some(url), Some(ledger)) = (&running.webhook, &new.webhook, ledger) {
        if old != url {
            if let Err(e) = ledger.set_webhook_url(url) {
                tracing::error!("{REFUSED}: {file}: webhook: {e}");
                return;
            }
            running.webhook = Some(url.clone());
        }
    }
    if let Err(e) = crate::config::reload::apply_log_level(&new.log_level) {
        tracing::error!("{REFUSED}: {file}: log_level: {e}");
        return;
    }
    if running.global_rate != new.global_rate {
        shaper.set_global_rate(new.global_rate);
    }
    rates.set(new.default_user_rate, new.rate_classes.clone());
    tracing::info!("SIGHUP: reloaded {file}: {}", changes.describe());
    // What needs a restart stays as it runs, so that the next reload reports it again.
    running.global_rate = new.global_rate;
    running.log_level = new.log_level;
    running.default_user_rate = new.default_user_rate;
    running.rate_classes = new.rate_classes;
}

struct ShaperControl {
    shaper: Arc<weir_shaper::Shaper>,
    rates: Arc<shaping::LiveRates>,
}

impl crate::admin::RateControl for ShaperControl {
    fn set_user_rate(&self, user: &str, rate: Option<weir_shaper::Rate>) {
        let limits =
            weir_shaper::UserLimits::new(rate.unwrap_or_else(|| self.rates.default_rate()));
        self.shaper.set_user_limits(user, limits);
    }

    fn set_global_rate(&self, rate: weir_shaper::Rate) {
        self.shaper.set_global_rate(rate);
    }

    fn user_connections(&self, user: &str) -> u64 {
        self.shaper
            .user_stats(user)
            .map_or(0, |s| u64::from(s.active_connections))
    }
}

fn print_banner(
    addr: Option<std::net::SocketAddr>,
    tls_addr: Option<std::net::SocketAddr>,
    workers: usize,
    driver: &str,
    demo: Option<&DemoInfo>,
) {
    let mut out = std::io::stdout().lock();
    let (scheme, shown) = match (addr, tls_addr) {
        (Some(a), _) => ("http", a),
        (None, Some(a)) => ("https", a),
        (None, None) => return,
    };
    if let Some(d) = demo {
        let _ = writeln!(out, "weir: demo catalog: {}", d.items.join(", "));
        let _ = writeln!(out, "weir: demo credentials: {}:{}", d.user, d.password);
        let _ = writeln!(
            out,
            "weir: try:  curl -u {u}:{p} -o demo-64m {scheme}://{shown}/d/demo-64m",
            u = d.user,
            p = d.password
        );
        let _ = writeln!(
            out,
            "weir:       axel -n 40 -o demo-64m.axel {scheme}://{u}:{p}@{shown}/d/demo-64m",
            u = d.user,
            p = d.password
        );
    }
    // The HTTPS line first: tests and scripts wait for the plain one as "ready".
    if let Some(a) = tls_addr {
        let _ = writeln!(
            out,
            "weir: listening on https://{a} ({driver}, {workers} workers)"
        );
    }
    if let Some(a) = addr {
        let _ = writeln!(
            out,
            "weir: listening on http://{a} ({driver}, {workers} workers)"
        );
    }
    let _ = out.flush();
}
