//! The compute devices ggml registered in this build: the CPU always, and the GPUs of the
//! backends compiled in (Vulkan, OpenCL, Metal, CUDA) that found a device at init.
//!
//! A [`Device`] is a handle to ggml's registry entry, which lives as long as the process, so
//! handles are `Copy` and may cross threads. Model loads name the one device they offload to
//! (`ModelParams::device`) instead of letting llama.cpp pick: what ran is then known, never
//! guessed.

use std::ffi::{c_char, CStr};

use llama_cpp_sys_2 as sys;

use super::Backend;

/// What kind of processor a device is (ggml's `ggml_backend_dev_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Cpu,
    /// A discrete GPU.
    Gpu,
    /// A GPU sharing the host's memory (phones, laptops).
    IntegratedGpu,
    /// An accelerator used together with the CPU (BLAS, AMX), not a place to offload layers.
    Accelerator,
    /// A device made of others (tensor split), which this runtime never creates.
    Meta,
}

/// One registered device.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    ptr: sys::ggml_backend_dev_t,
}

// SAFETY: registry devices are created once at backend init and never freed; their name,
// description, type and memory queries are safe from any thread.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings owned by the registry (process lifetime).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Device {
    /// Every device, in ggml's registry order (the CPU included).
    pub fn all(_: Backend) -> Vec<Device> {
        // SAFETY: the registry is initialized (`Backend`); indexes below the count are valid.
        let n = unsafe { sys::ggml_backend_dev_count() };
        (0..n)
            .filter_map(|i| {
                let ptr = unsafe { sys::ggml_backend_dev_get(i) };
                (!ptr.is_null()).then_some(Device { ptr })
            })
            .collect()
    }

    /// The device's name in ggml (`CPU`, `Vulkan0`, `MTL0`, `CUDA0`, `GPUOpenCL`, ...).
    pub fn name(self) -> String {
        // SAFETY: a live registry device.
        text(unsafe { sys::ggml_backend_dev_name(self.ptr) })
    }

    /// What the driver calls it (`llvmpipe (LLVM 15.0.6, 256 bits)`, `Apple M2`, ...).
    pub fn description(self) -> String {
        // SAFETY: a live registry device.
        text(unsafe { sys::ggml_backend_dev_description(self.ptr) })
    }

    /// The name of the backend that registered it (`CPU`, `Vulkan`, `OpenCL`, `MTL`, `CUDA`).
    pub fn backend_name(self) -> String {
        // SAFETY: a live registry device; its registry entry lives as long.
        let reg = unsafe { sys::ggml_backend_dev_backend_reg(self.ptr) };
        if reg.is_null() {
            return String::new();
        }
        text(unsafe { sys::ggml_backend_reg_name(reg) })
    }

    pub fn kind(self) -> DeviceKind {
        // SAFETY: a live registry device.
        match unsafe { sys::ggml_backend_dev_type(self.ptr) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_META => DeviceKind::Meta,
            _ => DeviceKind::Accelerator,
        }
    }

    /// (free, total) bytes of the device's memory, as its driver reports them (0 when unknown).
    pub fn memory(self) -> (u64, u64) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a live registry device; both out-pointers are valid.
        unsafe { sys::ggml_backend_dev_memory(self.ptr, &mut free, &mut total) };
        (free as u64, total as u64)
    }

    /// A place to offload layers to (a GPU of some backend).
    pub fn offloads(self) -> bool {
        matches!(self.kind(), DeviceKind::Gpu | DeviceKind::IntegratedGpu)
    }

    pub(crate) fn as_ptr(self) -> sys::ggml_backend_dev_t {
        self.ptr
    }
}
