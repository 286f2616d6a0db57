//! Which backend runs the model: the request in [`EngineConfig`], the devices of this build, and
//! the choice between them (a pure function, tested on made-up device lists).
//!
//! Nothing is chosen silently: a requested GPU backend that this build or this device lacks is
//! [`RequestError::BackendUnavailable`] unless the config allows the CPU instead, and every
//! ranking says which backend ran ([`RankStats::backend`](super::RankStats::backend)).

use std::fmt;

use super::EngineConfig;
use crate::error::{Error, RequestError, Result};
use crate::llm::{Backend, Device, DeviceKind};

/// Where a model runs. `Auto` (the default) takes the first GPU the build can use, else the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    #[default]
    Auto,
    Cpu,
    Vulkan,
    OpenCl,
    Metal,
    Cuda,
}

impl BackendKind {
    /// Every kind but `Auto`, in the order listed to users.
    pub const ALL: [BackendKind; 5] =
        [BackendKind::Cpu, BackendKind::Vulkan, BackendKind::OpenCl, BackendKind::Metal, BackendKind::Cuda];

    /// The name ggml's registry gives the backend (`ggml_backend_reg_name`).
    fn registry_name(self) -> &'static str {
        match self {
            BackendKind::Auto => "",
            BackendKind::Cpu => "CPU",
            BackendKind::Vulkan => "Vulkan",
            BackendKind::OpenCl => "OpenCL",
            BackendKind::Metal => "MTL",
            BackendKind::Cuda => "CUDA",
        }
    }

    /// The kind of a registry name; `None` for backends this runtime does not select (BLAS, RPC).
    pub fn from_registry_name(name: &str) -> Option<BackendKind> {
        Self::ALL.into_iter().find(|k| k.registry_name() == name)
    }

    /// Whether this build has the backend compiled in (cargo features `vulkan`, `opencl`,
    /// `metal`, `cuda`). Compiled in does not mean a device was found: see [`devices`].
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Auto | BackendKind::Cpu => true,
            BackendKind::Vulkan => cfg!(feature = "vulkan"),
            BackendKind::OpenCl => cfg!(feature = "opencl"),
            BackendKind::Metal => cfg!(feature = "metal"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Cpu => "cpu",
            BackendKind::Vulkan => "vulkan",
            BackendKind::OpenCl => "opencl",
            BackendKind::Metal => "metal",
            BackendKind::Cuda => "cuda",
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        std::iter::once(BackendKind::Auto).chain(Self::ALL).find(|k| k.to_string().eq_ignore_ascii_case(s)).ok_or_else(
            || Error::invalid("backend", format!("{s:?}: expected auto, cpu, vulkan, opencl, metal or cuda")),
        )
    }
}

/// One device ggml found, as [`devices`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The registry's backend name (`CPU`, `Vulkan`, `OpenCL`, `MTL`, `CUDA`, `BLAS`, ...).
    pub backend_name: String,
    /// The backend as [`EngineConfig::backend`] names it, when it is one this runtime selects.
    pub backend: Option<BackendKind>,
    /// ggml's device name (`CPU`, `Vulkan0`, ...).
    pub name: String,
    /// What the driver calls it.
    pub description: String,
    pub kind: DeviceKind,
    pub memory_free: u64,
    pub memory_total: u64,
}

impl DeviceInfo {
    fn of(d: Device) -> Self {
        let backend_name = d.backend_name();
        let (memory_free, memory_total) = d.memory();
        DeviceInfo {
            backend: BackendKind::from_registry_name(&backend_name),
            backend_name,
            name: d.name(),
            description: d.description(),
            kind: d.kind(),
            memory_free,
            memory_total,
        }
    }

    /// Layers can be offloaded to it (a GPU of a backend this runtime selects).
    pub fn offloads(&self) -> bool {
        self.backend.is_some_and(|b| b != BackendKind::Cpu)
            && matches!(self.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu)
    }
}

/// Every device this build's backends found, the CPU included, in ggml's order.
///
/// ```
/// for d in delrec_runtime::devices() {
///     println!("{} {} ({:?}): {}", d.backend_name, d.name, d.kind, d.description);
/// }
/// assert!(delrec_runtime::devices().iter().any(|d| d.backend_name == "CPU"));
/// ```
pub fn devices() -> Vec<DeviceInfo> {
    Device::all(Backend::get()).into_iter().map(DeviceInfo::of).collect()
}

/// What an engine's model runs on, decided at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// What ran: `Cpu` or a GPU backend, never `Auto`.
    pub kind: BackendKind,
    /// What the config asked for.
    pub requested: BackendKind,
    /// The device layers were offloaded to, if any.
    pub device: Option<DeviceInfo>,
    /// Layers offloaded (out of the model's blocks + the output layer); 0 on the CPU. From
    /// [`choose_backend`], before a model is loaded, the config's request (-1 = all).
    pub gpu_layers: i32,
    /// The requested GPU backend was missing and the config allowed the CPU instead.
    pub fell_back: bool,
}

/// The device a config selects among `devices` (`None`: the CPU), with whether the CPU is a
/// fallback. Mirrors llama.cpp's own preference: a discrete GPU over an integrated one.
pub(crate) fn select(cfg: &EngineConfig, devices: &[DeviceInfo]) -> Result<(Option<usize>, bool)> {
    if cfg.gpu_layers < -1 {
        return Err(Error::invalid("gpu_layers", format!("{}: expected -1 (all) or a layer count", cfg.gpu_layers)));
    }
    let offloading = |want: Option<BackendKind>| {
        let ok = |d: &DeviceInfo| d.offloads() && want.is_none_or(|w| d.backend == Some(w));
        let first = |kind| devices.iter().position(|d| ok(d) && d.kind == kind);
        first(DeviceKind::Gpu).or_else(|| first(DeviceKind::IntegratedGpu))
    };
    match cfg.backend {
        BackendKind::Cpu => Ok((None, false)),
        BackendKind::Auto if cfg.gpu_layers == 0 => Ok((None, false)),
        BackendKind::Auto => Ok((offloading(None), false)),
        want => {
            if cfg.gpu_layers == 0 {
                return Err(Error::invalid(
                    "gpu_layers",
                    format!("0 offloads nothing to the requested backend {want}"),
                ));
            }
            match offloading(Some(want)) {
                Some(i) => Ok((Some(i), false)),
                None if cfg.cpu_fallback => Ok((None, true)),
                None => Err(RequestError::BackendUnavailable {
                    requested: want.to_string(),
                    compiled: want.compiled(),
                    available: devices.iter().filter(|d| d.offloads()).map(|d| d.name.clone()).collect(),
                }
                .into()),
            }
        }
    }
}

/// What [`Engine::open`](super::Engine::open) would run a model on with this config, on this
/// machine, without loading one: an app can show it, or try another config first.
///
/// ```
/// use delrec_runtime::{choose_backend, BackendKind, EngineConfig};
/// let cpu = choose_backend(&EngineConfig { backend: BackendKind::Cpu, ..Default::default() })?;
/// assert_eq!(cpu.kind, BackendKind::Cpu);
/// let auto = choose_backend(&EngineConfig::default())?; // a GPU when there is one
/// println!("auto: {}", auto.kind);
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
pub fn choose_backend(cfg: &EngineConfig) -> Result<BackendInfo> {
    let (_, report) = choose(cfg)?;
    Ok(report(None))
}

/// The device a config selects on this machine, and what to report about it given the
/// model's block count (llama.cpp offloads at most blocks + 1 layers; `None`: no model yet).
pub(crate) fn choose(cfg: &EngineConfig) -> Result<(Option<Device>, impl FnOnce(Option<u32>) -> BackendInfo)> {
    let all = Device::all(Backend::get());
    let infos: Vec<DeviceInfo> = all.iter().map(|&d| DeviceInfo::of(d)).collect();
    let (index, fell_back) = select(cfg, &infos)?;
    let device = index.map(|i| all[i]);
    let info = index.map(|i| infos[i].clone());
    let (requested, gpu_layers) = (cfg.backend, cfg.gpu_layers);
    let report = move |n_layer: Option<u32>| {
        let offloaded = match (&info, n_layer) {
            (None, _) => 0,
            (Some(_), None) => gpu_layers,
            (Some(_), Some(n)) if gpu_layers < 0 => n.saturating_add(1).min(i32::MAX as u32) as i32,
            (Some(_), Some(n)) => gpu_layers.min(n.saturating_add(1).min(i32::MAX as u32) as i32),
        };
        BackendInfo {
            kind: info.as_ref().and_then(|d| d.backend).unwrap_or(BackendKind::Cpu),
            requested,
            device: info,
            gpu_layers: offloaded,
            fell_back,
        }
    };
    Ok((device, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(backend: &str, name: &str, kind: DeviceKind) -> DeviceInfo {
        DeviceInfo {
            backend_name: backend.into(),
            backend: BackendKind::from_registry_name(backend),
            name: name.into(),
            description: String::new(),
            kind,
            memory_free: 0,
            memory_total: 0,
        }
    }

    fn cfg(backend: BackendKind, gpu_layers: i32, cpu_fallback: bool) -> EngineConfig {
        EngineConfig { backend, gpu_layers, cpu_fallback, ..EngineConfig::default() }
    }

    fn phone() -> Vec<DeviceInfo> {
        vec![
            dev("CPU", "CPU", DeviceKind::Cpu),
            dev("BLAS", "BLAS", DeviceKind::Accelerator),
            dev("OpenCL", "GPUOpenCL", DeviceKind::Gpu),
            dev("Vulkan", "Vulkan0", DeviceKind::IntegratedGpu),
        ]
    }

    #[test]
    fn cpu_only_build() {
        let cpu = vec![dev("CPU", "CPU", DeviceKind::Cpu)];
        assert_eq!(select(&cfg(BackendKind::Auto, -1, false), &cpu).unwrap(), (None, false));
        assert_eq!(select(&cfg(BackendKind::Cpu, -1, false), &cpu).unwrap(), (None, false));
        let e = select(&cfg(BackendKind::Vulkan, -1, false), &cpu).unwrap_err();
        assert!(matches!(
            &e,
            Error::BadRequest(RequestError::BackendUnavailable { requested, available, .. })
                if requested == "vulkan" && available.is_empty()
        ));
        // The fallback is taken only when asked for, and reported as one.
        assert_eq!(select(&cfg(BackendKind::Vulkan, -1, true), &cpu).unwrap(), (None, true));
    }

    #[test]
    fn picks_the_requested_backend_and_prefers_discrete_gpus() {
        let d = phone();
        assert_eq!(select(&cfg(BackendKind::Vulkan, -1, false), &d).unwrap(), (Some(3), false));
        assert_eq!(select(&cfg(BackendKind::OpenCl, 10, false), &d).unwrap(), (Some(2), false));
        assert_eq!(select(&cfg(BackendKind::Auto, -1, false), &d).unwrap(), (Some(2), false));
        // An integrated GPU when there is no discrete one.
        let igpu: Vec<_> = d.into_iter().filter(|x| x.name != "GPUOpenCL").collect();
        assert_eq!(select(&cfg(BackendKind::Auto, -1, false), &igpu).unwrap(), (Some(2), false));
        // Never an accelerator or a CPU device, whatever the order.
        let e = select(&cfg(BackendKind::Metal, -1, false), &igpu).unwrap_err();
        assert!(matches!(
            &e,
            Error::BadRequest(RequestError::BackendUnavailable { available, .. }) if available == &["Vulkan0".to_string()]
        ));
    }

    #[test]
    fn layer_counts_are_checked() {
        let d = phone();
        assert_eq!(select(&cfg(BackendKind::Auto, 0, false), &d).unwrap(), (None, false));
        assert!(matches!(
            select(&cfg(BackendKind::Vulkan, 0, false), &d),
            Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "gpu_layers"
        ));
        assert!(select(&cfg(BackendKind::Auto, -2, false), &d).is_err());
    }

    #[test]
    fn names_round_trip() {
        for k in std::iter::once(BackendKind::Auto).chain(BackendKind::ALL) {
            assert_eq!(k.to_string().parse::<BackendKind>().unwrap(), k);
        }
        assert!("gpu".parse::<BackendKind>().is_err());
        assert_eq!(BackendKind::from_registry_name("MTL"), Some(BackendKind::Metal));
        assert_eq!(BackendKind::from_registry_name("BLAS"), None);
        assert!(BackendKind::Cpu.compiled());
    }

    #[test]
    fn this_build_lists_its_cpu() {
        let all = devices();
        assert!(all.iter().any(|d| d.backend == Some(BackendKind::Cpu) && d.kind == DeviceKind::Cpu), "{all:?}");
        // A CPU-only build offloads nowhere, so auto runs on the CPU and says so.
        if !BackendKind::ALL.iter().any(|k| *k != BackendKind::Cpu && k.compiled()) {
            let (device, report) = choose(&EngineConfig::default()).unwrap();
            assert!(device.is_none());
            let info = report(Some(30));
            assert_eq!((info.kind, info.gpu_layers, info.fell_back), (BackendKind::Cpu, 0, false));
        }
    }
}
