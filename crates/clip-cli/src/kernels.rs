//! CUDA kernels: where cubecl keeps its compilation and autotune caches, and what it compiled.
//!
//! On CUDA the first training step is spent JIT-compiling (NVRTC) and autotuning kernels, one
//! set per convolution and matmul shape (bench/gpu/NOTES.md). `clip` keeps cubecl's PTX cache
//! and autotune cache in one per-user directory, so that a second run loads what the first one
//! compiled, and counts compilations, so that a slow first step says what it was doing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variable: a directory for the kernel caches, or `off` for none.
pub const CACHE_ENV: &str = "CLIP_KERNEL_CACHE";
/// Environment variable: a file that receives one line per compilation and autotune event.
pub const TRACE_ENV: &str = "CLIP_KERNEL_TRACE";

/// Where the kernel caches go, as decided at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSetup {
    /// Caches in this directory.
    Dir(PathBuf),
    /// A `cubecl.toml` (or `burn.toml`) was found at this path: its settings are used as they are.
    UserConfig(PathBuf),
    /// Turned off with `CLIP_KERNEL_CACHE=off`.
    Off,
}

/// The cache directory asked for by the environment: `CLIP_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/clip/kernels`, else `~/.cache/clip/kernels`. `None` when turned off.
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env(CACHE_ENV).filter(|v| !v.is_empty()) {
        Some(v) if v.eq_ignore_ascii_case("off") || v == "0" || v.eq_ignore_ascii_case("false") => {
            None
        }
        Some(v) => Some(PathBuf::from(v)),
        None => {
            let base = env("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    env("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".cache"))
                })
                .unwrap_or_else(std::env::temp_dir);
            Some(base.join("clip").join("kernels"))
        }
    }
}

/// A cubecl config file in `dir` or above, which cubecl itself would read.
pub fn user_cubecl_config(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .flat_map(|d| {
            ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"].map(|name| d.join(name))
        })
        .find(|p| p.is_file())
}

/// Decides where the caches go; [`configure`] applies it.
pub fn plan_caches() -> CacheSetup {
    if let Some(path) = std::env::current_dir().ok().and_then(|d| user_cubecl_config(&d)) {
        return CacheSetup::UserConfig(path);
    }
    match cache_dir_from(|k| std::env::var(k).ok()) {
        Some(dir) => CacheSetup::Dir(dir),
        None => CacheSetup::Off,
    }
}

/// Starts counting kernel events (and tracing them to `CLIP_KERNEL_TRACE` when set). Call once,
/// first thing in `main`.
pub fn start_counting() {
    install_event_counter(std::env::var_os(TRACE_ENV).map(PathBuf::from));
}

/// Points cubecl's PTX and autotune caches at the planned directory, once, before the first
/// CUDA work (cubecl reads its settings when the first device client starts).
pub fn prepare_cuda() -> &'static CacheSetup {
    static SETUP: std::sync::OnceLock<CacheSetup> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let mut setup = plan_caches();
        if let CacheSetup::Dir(dir) = &setup {
            if let Err(err) = std::fs::create_dir_all(dir) {
                eprintln!("warning: the kernel cache {} cannot be created ({err}); kernels will not be cached", dir.display());
                setup = CacheSetup::Off;
            }
        }
        #[cfg(feature = "cuda")]
        cuda::apply(&setup);
        setup
    })
}

impl std::fmt::Display for CacheSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheSetup::Dir(dir) => write!(f, "{}", dir.display()),
            CacheSetup::UserConfig(path) => write!(f, "as set in {}", path.display()),
            CacheSetup::Off => write!(f, "off ({CACHE_ENV}=off)"),
        }
    }
}

/// Kernel events counted since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Kernels compiled by NVRTC in this process.
    pub compiled: u64,
    /// Kernels loaded from the PTX cache instead.
    pub from_cache: u64,
    /// Operation shapes autotuned (each one benchmarks several kernel variants).
    pub tuned: u64,
}

impl KernelCounts {
    pub fn any(&self) -> bool {
        self.compiled + self.from_cache + self.tuned > 0
    }
}

impl std::fmt::Display for KernelCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kernels compiled, {} loaded from the cache, {} shapes autotuned",
            self.compiled, self.from_cache, self.tuned
        )
    }
}

static COMPILED: AtomicU64 = AtomicU64::new(0);
static FROM_CACHE: AtomicU64 = AtomicU64::new(0);
static TUNED: AtomicU64 = AtomicU64::new(0);

pub fn counts() -> KernelCounts {
    KernelCounts {
        compiled: COMPILED.load(Ordering::Relaxed),
        from_cache: FROM_CACHE.load(Ordering::Relaxed),
        tuned: TUNED.load(Ordering::Relaxed),
    }
}

/// What one cubecl log record means for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelEvent {
    Compiled,
    FromCache,
    Tuned,
}

fn classify(target: &str, message: &str) -> Option<KernelEvent> {
    if !target.starts_with("cubecl") {
        return None;
    }
    if message == "Compiling kernel" {
        Some(KernelEvent::Compiled)
    } else if message == "Using PTX cache" {
        Some(KernelEvent::FromCache)
    } else if message.starts_with("Tuning ") {
        Some(KernelEvent::Tuned)
    } else {
        None
    }
}

/// A `log` sink that counts cubecl's compilation and autotune records (and writes them to a
/// trace file when asked); everything else is dropped.
struct EventCounter {
    start: Instant,
    trace: Option<Mutex<std::fs::File>>,
}

impl log::Log for EventCounter {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("cubecl")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let event = classify(record.target(), &message);
        match event {
            Some(KernelEvent::Compiled) => COMPILED.fetch_add(1, Ordering::Relaxed),
            Some(KernelEvent::FromCache) => FROM_CACHE.fetch_add(1, Ordering::Relaxed),
            Some(KernelEvent::Tuned) => TUNED.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        if let Some(file) = &self.trace {
            if event.is_some() || record.level() <= log::Level::Info {
                let line = format!(
                    "{:.3}\t{}\t{}\n",
                    self.start.elapsed().as_secs_f64(),
                    record.target(),
                    message
                );
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Whether `path` is a kernel trace clip wrote (empty, or its first line `SECONDS\tcubecl...\t`):
/// only such a file is replaced by a new trace.
fn is_trace(path: &std::path::Path) -> bool {
    let head = clip_data::fs::read_head(path, 256);
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut fields = first.split(|&b| b == b'\t');
    let seconds = fields
        .next()
        .and_then(|f| std::str::from_utf8(f).ok())
        .is_some_and(|f| f.parse::<f64>().is_ok());
    head.is_empty()
        || (seconds
            && fields.next().is_some_and(|t| t.starts_with(b"cubecl"))
            && fields.next().is_some())
}

fn install_event_counter(trace: Option<PathBuf>) {
    let trace = trace.filter(|path| {
        match clip_data::fs::claim_file(
            path,
            false,
            is_trace,
            "Name a new file in CLIP_KERNEL_TRACE.",
        ) {
            Ok(()) => true,
            Err(err) => {
                eprintln!("warning: no kernel trace: {err}");
                false
            }
        }
    });
    let trace = trace.and_then(|path| match std::fs::File::create(&path) {
        Ok(f) => Some(Mutex::new(f)),
        Err(err) => {
            eprintln!("warning: cannot write the kernel trace {}: {err}", path.display());
            None
        }
    });
    let counter = EventCounter { start: Instant::now(), trace };
    if log::set_boxed_logger(Box::new(counter)).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Bytes the CUDA allocator holds (reserved, in use) on the default device; `None` off CUDA.
pub fn cuda_memory() -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    {
        cuda::memory()
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// Prints, every few seconds while alive, how long `what` has been running and the kernel
/// counts so far: a first CUDA step can spend minutes compiling, and a run killed by a time
/// limit then still says how far it got.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Only on CUDA: elsewhere nothing is compiled.
    pub fn start(what: &'static str, every_s: u64, backend: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if every_s > 0 && backend == "cuda" {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut next = Duration::from_secs(every_s);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if t0.elapsed() >= next && !stop.load(Ordering::Relaxed) {
                        eprintln!(
                            "[{:>5.0} s] {what} still running: {}",
                            t0.elapsed().as_secs_f64(),
                            counts()
                        );
                        next += Duration::from_secs(every_s);
                    }
                }
            });
        }
        Heartbeat { stop }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::CacheSetup;
    use cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    use cubecl::Runtime;

    pub fn apply(setup: &CacheSetup) {
        let CacheSetup::Dir(dir) = setup else { return };
        if CubeClRuntimeConfig::storage().lock().is_some() {
            eprintln!("warning: cubecl was configured before the kernel cache could be set; kernels will not be cached");
            return;
        }
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.autotune.cache = CacheConfig::File(dir.clone());
        config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        CubeClRuntimeConfig::set(config);
    }

    pub fn memory() -> Option<(u64, u64)> {
        let client = CudaRuntime::client(&CudaDevice::default());
        let usage = client.memory_usage().ok()?;
        Some((usage.bytes_reserved, usage.bytes_in_use))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn only_a_trace_of_ours_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.tsv");
        std::fs::write(&ours, "0.125\tcubecl_runtime::tune\tTuning matmul\n").unwrap();
        let empty = dir.path().join("empty.tsv");
        std::fs::write(&empty, "").unwrap();
        let theirs = dir.path().join("notes.txt");
        std::fs::write(&theirs, "my notes\n").unwrap();
        assert!(is_trace(&ours) && is_trace(&empty) && !is_trace(&theirs));
    }

    #[test]
    fn cache_dir_follows_the_environment() {
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.cache/clip/kernels"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")])),
            Some(PathBuf::from("/xdg/clip/kernels"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/home/u"), (CACHE_ENV, "/k")])),
            Some(PathBuf::from("/k"))
        );
        assert_eq!(cache_dir_from(env(&[("HOME", "/home/u"), (CACHE_ENV, "off")])), None);
        assert_eq!(cache_dir_from(env(&[(CACHE_ENV, "OFF")])), None);
    }

    #[test]
    fn a_user_cubecl_toml_above_the_working_directory_is_found() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(user_cubecl_config(&deep).filter(|p| p.starts_with(root.path())), None);
        std::fs::write(root.path().join("a/cubecl.toml"), "[autotune]\nlevel = \"minimal\"\n")
            .unwrap();
        assert_eq!(user_cubecl_config(&deep), Some(root.path().join("a/cubecl.toml")));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cubecl_keeps_both_caches_in_the_planned_directory() {
        use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        let dir = tempfile::tempdir().unwrap();
        cuda::apply(&CacheSetup::Dir(dir.path().to_path_buf()));
        let config = CubeClRuntimeConfig::get();
        assert_eq!(config.autotune.cache.root(), dir.path());
        assert_eq!(
            config.compilation.cache.as_ref().map(|c| c.root()),
            Some(dir.path().to_path_buf())
        );
        // A second attempt (cubecl already configured) leaves it alone instead of panicking.
        cuda::apply(&CacheSetup::Dir(PathBuf::from("/elsewhere")));
        assert_eq!(CubeClRuntimeConfig::get().autotune.cache.root(), dir.path());
    }

    #[test]
    fn cubecl_log_records_are_counted_and_traced() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("kernels.tsv");
        install_event_counter(Some(trace.clone()));
        let before = counts();
        log::trace!(target: "cubecl_cuda::compute::context", "Compiling kernel");
        log::trace!(target: "cubecl_cuda::compute::context", "Compiling kernel");
        log::trace!(target: "cubecl_cuda::compute::context", "Using PTX cache");
        log::info!(target: "cubecl_runtime::tune::tuner", "Tuning ConvAutotuneKey {{ batch: 64 }}");
        log::info!(target: "tokenizers", "Tuning unrelated");
        let after = counts();
        assert_eq!(after.compiled - before.compiled, 2);
        assert_eq!(after.from_cache - before.from_cache, 1);
        assert_eq!(after.tuned - before.tuned, 1);
        let text = std::fs::read_to_string(&trace).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.contains("\tcubecl_runtime::tune::tuner\tTuning ConvAutotuneKey { batch: 64 }"),
            "{text}"
        );
    }

    #[test]
    fn only_cubecl_compilation_and_tuning_records_count() {
        assert_eq!(
            classify("cubecl_cuda::compute::context", "Compiling kernel"),
            Some(KernelEvent::Compiled)
        );
        assert_eq!(
            classify("cubecl_cuda::compute::context", "Using PTX cache"),
            Some(KernelEvent::FromCache)
        );
        assert_eq!(
            classify("cubecl_runtime::tune::tuner", "Tuning MatmulAutotuneKey { m: 64 }"),
            Some(KernelEvent::Tuned)
        );
        assert_eq!(classify("tokenizers", "Compiling kernel"), None);
        assert_eq!(
            classify("cubecl_runtime::tune::tune_cache", "Loaded 3 autotune cached entries"),
            None
        );
    }
}
