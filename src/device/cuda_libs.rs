//! The CUDA libraries, loaded at run time by absolute path: from `LORA_TRAIN_CUDA_LIBS` (a folder,
//! or several joined by `:`), or the `nvidia/cu13/lib` folder of the Python `PYTHON` names, else
//! by name through the system's search (the driver's `libcuda.so.1`). cudarc then finds each
//! one already loaded under its soname, so a missing library is our error, not a panic inside
//! cudarc, and `LD_LIBRARY_PATH` (which a process cannot change for its own later loads) is not
//! needed. [`probe_driver`] asks the driver for its version and GPUs, for `doctor`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

/// The variable that points at the CUDA libraries.
pub const LIBS_VAR: &str = "LORA_TRAIN_CUDA_LIBS";

/// What the CUDA build needs, in load order (cuBLAS needs cuBLASLt), by soname: the driver, then
/// cuBLASLt, cuBLAS, cuRAND and NVRTC of CUDA 13.
pub const LIBRARIES: [&str; 5] = [
    "libcuda.so.1",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
];

/// One library's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedLibrary {
    pub name: &'static str,
    pub loaded: bool,
    /// Where it was loaded from: an absolute path, or the soname when the system's search found it.
    pub path: Option<String>,
    /// Why it could not be loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The folders searched before the system's search path.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(LIBS_VAR)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(dir) = python_cuda_dir() {
        dirs.push(dir);
    }
    dirs
}

/// `<site-packages>/nvidia/cu13/lib` of the Python in `PYTHON`, where PyTorch's CUDA wheels put
/// the libraries.
fn python_cuda_dir() -> Option<PathBuf> {
    let python = std::env::var_os("PYTHON")?;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let site = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(site.trim()).join("nvidia/cu13/lib");
    dir.is_dir().then_some(dir)
}

/// Loads every library of [`LIBRARIES`] once per process and keeps them loaded; later calls
/// return the first outcome.
pub fn load() -> &'static [LoadedLibrary] {
    static LOADED: OnceLock<Vec<LoadedLibrary>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dirs = search_dirs();
        LIBRARIES.iter().map(|name| load_one(name, &dirs)).collect()
    })
}

fn load_one(name: &'static str, dirs: &[PathBuf]) -> LoadedLibrary {
    let mut candidates: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .collect();
    // The soname alone: the system's search (the driver lives there, not in a wheel).
    candidates.push(PathBuf::from(name));
    let mut last_error = None;
    for candidate in candidates {
        match open(&candidate) {
            Ok(lib) => {
                // Kept for the life of the process: cudarc finds it by soname.
                std::mem::forget(lib);
                return LoadedLibrary {
                    name,
                    loaded: true,
                    path: Some(candidate.display().to_string()),
                    error: None,
                };
            }
            // The first failure is the telling one: a file in a named folder that would not load.
            Err(e) => {
                // The loader's message names the file.
                last_error.get_or_insert(e);
            }
        }
    }
    LoadedLibrary {
        name,
        loaded: false,
        path: None,
        error: last_error,
    }
}

#[cfg(unix)]
fn open(path: &Path) -> std::result::Result<libloading::Library, String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a CUDA library runs only its initializers, which have no preconditions.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map(Into::into)
        .map_err(|e| dl_error(&e))
}

#[cfg(not(unix))]
fn open(path: &Path) -> std::result::Result<libloading::Library, String> {
    // SAFETY: as above.
    unsafe { libloading::Library::new(path) }.map_err(|e| dl_error(&e))
}

/// libloading's message with the loader's own reason (its source), which says what was missing.
fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => why.to_string(),
        None => e.to_string(),
    }
}

/// Whether the driver (`libcuda.so.1`) loaded.
pub fn driver_loaded() -> bool {
    load().first().is_some_and(|l| l.loaded)
}

/// Why CUDA cannot be used, naming the first library that did not load and the variable that
/// points at it; `None` when all loaded.
pub fn missing() -> Option<String> {
    let lib = load().iter().find(|l| !l.loaded)?;
    let why = lib.error.as_deref().unwrap_or("not found");
    Some(if lib.name == LIBRARIES[0] {
        format!(
            "no CUDA driver found (could not load {}: {why}); install the NVIDIA driver, or set \
             {LIBS_VAR} to the folder that has {}",
            lib.name, lib.name
        )
    } else {
        format!(
            "could not load {} ({why}); set {LIBS_VAR} to the folder with the CUDA 13 libraries \
             (PyTorch's site-packages/nvidia/cu13/lib has them), or PYTHON to a Python that has them",
            lib.name
        )
    })
}

/// The driver's answer: its version and GPUs.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DriverReport {
    /// `13.0` for 13000; `None` when no driver loaded.
    pub version: Option<String>,
    pub gpus: Vec<GpuReport>,
    /// Why the driver could not be asked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    pub index: usize,
    pub name: String,
    /// `9.0` for an H100.
    pub compute_capability: String,
    pub total_mib: u64,
    /// `None` when the device could not be opened to ask.
    pub free_mib: Option<u64>,
}

/// Asks the driver (loaded by [`load`]) for its version and each GPU's name, compute
/// capability and memory, through the driver API directly, so it works in any build.
pub fn probe_driver() -> DriverReport {
    let Some(driver) = load().first().filter(|l| l.loaded) else {
        return DriverReport {
            error: missing(),
            ..Default::default()
        };
    };
    let path = driver.path.clone().unwrap_or_default();
    match driver_api::probe(Path::new(&path)) {
        Ok(report) => report,
        Err(e) => DriverReport {
            error: Some(e),
            ..Default::default()
        },
    }
}

mod driver_api {
    //! The few driver entry points `doctor` needs, by symbol.

    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    use std::path::Path;

    use super::{DriverReport, GpuReport};

    type Status = c_int;
    const COMPUTE_MAJOR: c_int = 75;
    const COMPUTE_MINOR: c_int = 76;

    pub fn probe(path: &Path) -> Result<DriverReport, String> {
        // SAFETY: the library is the CUDA driver (loaded by soname or from the folder the user
        // named); each symbol is used with its documented C signature.
        unsafe {
            let lib = super::open(path)?;
            let sym = |name: &[u8]| -> Result<*const c_void, String> {
                lib.get::<*const c_void>(name)
                    .map(|s| *s)
                    .map_err(|e| format!("the driver lacks {}: {e}", String::from_utf8_lossy(name)))
            };
            let check = |what: &str, status: Status| -> Result<(), String> {
                match status {
                    0 => Ok(()),
                    100 => Err(format!(
                        "{what}: no CUDA-capable device (CUDA_ERROR_NO_DEVICE)"
                    )),
                    s => Err(format!("{what} failed with CUDA error {s}")),
                }
            };
            let init: extern "C" fn(c_uint) -> Status = std::mem::transmute(sym(b"cuInit\0")?);
            let version: extern "C" fn(*mut c_int) -> Status =
                std::mem::transmute(sym(b"cuDriverGetVersion\0")?);
            let count: extern "C" fn(*mut c_int) -> Status =
                std::mem::transmute(sym(b"cuDeviceGetCount\0")?);
            let get: extern "C" fn(*mut c_int, c_int) -> Status =
                std::mem::transmute(sym(b"cuDeviceGet\0")?);
            let name: extern "C" fn(*mut c_char, c_int, c_int) -> Status =
                std::mem::transmute(sym(b"cuDeviceGetName\0")?);
            let attribute: extern "C" fn(*mut c_int, c_int, c_int) -> Status =
                std::mem::transmute(sym(b"cuDeviceGetAttribute\0")?);
            let total: extern "C" fn(*mut usize, c_int) -> Status =
                std::mem::transmute(sym(b"cuDeviceTotalMem_v2\0")?);
            let retain: extern "C" fn(*mut *mut c_void, c_int) -> Status =
                std::mem::transmute(sym(b"cuDevicePrimaryCtxRetain\0")?);
            let release: extern "C" fn(c_int) -> Status =
                std::mem::transmute(sym(b"cuDevicePrimaryCtxRelease_v2\0")?);
            let set_current: extern "C" fn(*mut c_void) -> Status =
                std::mem::transmute(sym(b"cuCtxSetCurrent\0")?);
            let mem_info: extern "C" fn(*mut usize, *mut usize) -> Status =
                std::mem::transmute(sym(b"cuMemGetInfo_v2\0")?);

            let mut v: c_int = 0;
            check("cuDriverGetVersion", version(&mut v))?;
            let mut report = DriverReport {
                version: Some(format!("{}.{}", v / 1000, (v % 1000) / 10)),
                ..Default::default()
            };
            if let Err(e) = check("cuInit", init(0)) {
                report.error = Some(e);
                return Ok(report);
            }
            let mut n: c_int = 0;
            check("cuDeviceGetCount", count(&mut n))?;
            for index in 0..n.max(0) {
                let mut dev: c_int = 0;
                check("cuDeviceGet", get(&mut dev, index))?;
                let mut buf = [0 as c_char; 256];
                check("cuDeviceGetName", name(buf.as_mut_ptr(), 256, dev))?;
                let gpu_name = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
                let (mut major, mut minor) = (0, 0);
                check(
                    "cuDeviceGetAttribute",
                    attribute(&mut major, COMPUTE_MAJOR, dev),
                )?;
                check(
                    "cuDeviceGetAttribute",
                    attribute(&mut minor, COMPUTE_MINOR, dev),
                )?;
                let mut bytes: usize = 0;
                check("cuDeviceTotalMem", total(&mut bytes, dev))?;
                let mut ctx: *mut c_void = std::ptr::null_mut();
                let free_mib = if retain(&mut ctx, dev) == 0 {
                    let (mut free, mut all) = (0usize, 0usize);
                    let ok = set_current(ctx) == 0 && mem_info(&mut free, &mut all) == 0;
                    release(dev);
                    ok.then_some(free as u64 >> 20)
                } else {
                    None
                };
                report.gpus.push(GpuReport {
                    index: index as usize,
                    name: gpu_name,
                    compute_capability: format!("{major}.{minor}"),
                    total_mib: bytes as u64 >> 20,
                    free_mib,
                });
            }
            std::mem::forget(lib);
            Ok(report)
        }
    }
}
