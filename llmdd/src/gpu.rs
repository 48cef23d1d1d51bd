//! GPU context of the traced ranks, so a finding can say when the late rank's GPU is the
//! reason: per device memory, SM and memory clocks, utilisation, temperature, power,
//! throttle reasons, PCIe throughput and NVLink errors, from NVML (libnvidia-ml, loaded at
//! run time: the binary runs without it), mapped to the ranks that use each device (the
//! device's compute processes, else CUDA_VISIBLE_DEVICES and LOCAL_RANK). On AMD nodes the
//! ROCm SMI library gives memory, utilisation, temperature and power the same way.
//!
//! The sampling source is a trait so that the mapping and the findings' context are plain
//! data work, tested with recorded samples; `Nvml` is the real source.

use std::collections::BTreeMap;

use serde::Serialize;

/// NVML's clock throttle reasons (`nvmlClocksThrottleReason*`, stable bits of nvml.h).
pub mod throttle {
    pub const GPU_IDLE: u64 = 0x1;
    pub const APPLICATIONS_CLOCKS_SETTING: u64 = 0x2;
    pub const SW_POWER_CAP: u64 = 0x4;
    pub const HW_SLOWDOWN: u64 = 0x8;
    pub const SYNC_BOOST: u64 = 0x10;
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
    pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
    pub const DISPLAY_CLOCK_SETTING: u64 = 0x100;

    /// The reasons that slow a busy GPU down against its will (power, heat, hardware).
    pub const SLOWING: u64 = SW_POWER_CAP
        | HW_SLOWDOWN
        | SW_THERMAL_SLOWDOWN
        | HW_THERMAL_SLOWDOWN
        | HW_POWER_BRAKE_SLOWDOWN;

    /// Names of the bits set in `bits`.
    pub fn names(bits: u64) -> Vec<&'static str> {
        [
            (GPU_IDLE, "gpu_idle"),
            (APPLICATIONS_CLOCKS_SETTING, "applications_clocks_setting"),
            (SW_POWER_CAP, "sw_power_cap"),
            (HW_SLOWDOWN, "hw_slowdown"),
            (SYNC_BOOST, "sync_boost"),
            (SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
            (HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
            (HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
            (DISPLAY_CLOCK_SETTING, "display_clock_setting"),
        ]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

/// One device at one sampling. Fields a device does not support are `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub sm_clock_max_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub util_percent: Option<u32>,
    pub mem_util_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// Raw throttle-reason bits (see [`throttle`]).
    #[serde(skip)]
    pub throttle_bits: u64,
    pub throttle_reasons: Vec<&'static str>,
    pub pcie_tx_kib_per_s: Option<u32>,
    pub pcie_rx_kib_per_s: Option<u32>,
    /// NVLink data-link errors (replay, recovery, CRC) summed over active links, since boot.
    pub nvlink_errors: Option<u64>,
    /// Processes with a compute context on the device (host pids).
    #[serde(skip)]
    pub pids: Vec<u32>,
}

/// Where GPU samples come from.
pub trait GpuSource: Send {
    /// Every device now.
    fn sample(&mut self) -> Result<Vec<GpuSample>, String>;
}

/// NVML through nvml-wrapper (libnvidia-ml.so.1 opened at run time).
pub struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// Opens NVML, or says in one line why there is no GPU context.
    pub fn open() -> Result<Nvml, String> {
        match nvml_wrapper::Nvml::init() {
            Ok(n) => Ok(Nvml(n)),
            Err(nvml_wrapper::error::NvmlError::LibloadingError(_)) => {
                Err("libnvidia-ml.so.1 not found (no NVIDIA driver on this node)".to_string())
            }
            Err(e) => Err(format!("NVML did not start: {e}")),
        }
    }
}

impl GpuSource for Nvml {
    fn sample(&mut self) -> Result<Vec<GpuSample>, String> {
        use nvml_wrapper::enum_wrappers::{
            device::{Clock, PcieUtilCounter, TemperatureSensor},
            nv_link::ErrorCounter,
        };
        let n = self.0.device_count().map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(n as usize);
        for index in 0..n {
            let d = self.0.device_by_index(index).map_err(|e| e.to_string())?;
            let mem = d.memory_info().ok();
            let util = d.utilization_rates().ok();
            let throttle_bits = d.current_throttle_reasons().map(|r| r.bits()).unwrap_or(0);
            let mut nvlink: Option<u64> = None;
            for link in 0..18 {
                let l = d.link_wrapper_for(link);
                if !l.is_active().unwrap_or(false) {
                    continue;
                }
                let errs: u64 = [
                    ErrorCounter::DlReplay,
                    ErrorCounter::DlRecovery,
                    ErrorCounter::DlCrcFlit,
                    ErrorCounter::DlCrcData,
                ]
                .into_iter()
                .filter_map(|c| l.error_counter(c).ok())
                .sum();
                *nvlink.get_or_insert(0) += errs;
            }
            let pids = d
                .running_compute_processes()
                .map(|ps| ps.into_iter().map(|p| p.pid).collect())
                .unwrap_or_default();
            out.push(GpuSample {
                index,
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_default(),
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                sm_clock_mhz: d.clock_info(Clock::SM).ok(),
                sm_clock_max_mhz: d.max_clock_info(Clock::SM).ok(),
                mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
                util_percent: util.as_ref().map(|u| u.gpu),
                mem_util_percent: util.as_ref().map(|u| u.memory),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
                throttle_bits,
                throttle_reasons: throttle::names(throttle_bits),
                pcie_tx_kib_per_s: d.pcie_throughput(PcieUtilCounter::Send).ok(),
                pcie_rx_kib_per_s: d.pcie_throughput(PcieUtilCounter::Receive).ok(),
                nvlink_errors: nvlink,
                pids,
            });
        }
        Ok(out)
    }
}

/// AMD GPUs through the ROCm SMI library (librocm_smi64, opened at run time). The scalar
/// readings only (memory, utilisation, temperature, power): the clock structures change
/// layout between ROCm releases, and a wrong layout would be a wrong number.
pub struct RocmSmi {
    lib: libloading::Library,
}

/// `rsmi_status_t` success.
const RSMI_OK: u32 = 0;

impl RocmSmi {
    /// Opens and initialises ROCm SMI, or says in one line why not.
    pub fn open() -> Result<RocmSmi, String> {
        // SAFETY: opening a library runs its initialisers; ROCm SMI's are benign.
        let lib = unsafe { libloading::Library::new("librocm_smi64.so.1") }
            .or_else(|_| unsafe { libloading::Library::new("librocm_smi64.so") })
            .map_err(|_| "librocm_smi64.so not found (no ROCm on this node)".to_string())?;
        // SAFETY: rsmi_init(uint64_t flags) per rocm_smi.h.
        let rc = unsafe {
            let init: libloading::Symbol<unsafe extern "C" fn(u64) -> u32> = lib
                .get(b"rsmi_init\0")
                .map_err(|e| format!("ROCm SMI without rsmi_init: {e}"))?;
            init(0)
        };
        if rc != RSMI_OK {
            return Err(format!("ROCm SMI did not start (rsmi_init status {rc})"));
        }
        Ok(RocmSmi { lib })
    }

    /// Calls `name(device, [arg,] &mut out)` for an integer output; `None` on any failure.
    fn read<T: Default>(&self, name: &[u8], dev: u32, arg: Option<u32>) -> Option<T> {
        let mut out = T::default();
        // SAFETY: each name used below has the rocm_smi.h signature
        // `rsmi_status_t f(uint32_t dv_ind, [uint32_t/enum arg,] T *out)` with a scalar T.
        let rc = unsafe {
            match arg {
                Some(a) => {
                    let f: libloading::Symbol<unsafe extern "C" fn(u32, u32, *mut T) -> u32> =
                        self.lib.get(name).ok()?;
                    f(dev, a, &mut out)
                }
                None => {
                    let f: libloading::Symbol<unsafe extern "C" fn(u32, *mut T) -> u32> =
                        self.lib.get(name).ok()?;
                    f(dev, &mut out)
                }
            }
        };
        (rc == RSMI_OK).then_some(out)
    }
}

impl GpuSource for RocmSmi {
    fn sample(&mut self) -> Result<Vec<GpuSample>, String> {
        let mut n: u32 = 0;
        // SAFETY: rsmi_num_monitor_devices(uint32_t *num_devices).
        let rc = unsafe {
            let f: libloading::Symbol<unsafe extern "C" fn(*mut u32) -> u32> = self
                .lib
                .get(b"rsmi_num_monitor_devices\0")
                .map_err(|e| e.to_string())?;
            f(&mut n)
        };
        if rc != RSMI_OK {
            return Err(format!("rsmi_num_monitor_devices status {rc}"));
        }
        Ok((0..n)
            .map(|dev| GpuSample {
                index: dev,
                name: "AMD GPU".into(),
                // RSMI_MEM_TYPE_VRAM = 0.
                memory_used_bytes: self.read::<u64>(b"rsmi_dev_memory_usage_get\0", dev, Some(0)),
                memory_total_bytes: self.read::<u64>(b"rsmi_dev_memory_total_get\0", dev, Some(0)),
                util_percent: self.read::<u32>(b"rsmi_dev_busy_percent_get\0", dev, None),
                // Sensor 0 (edge), RSMI_TEMP_CURRENT = 0, in millidegrees.
                temperature_c: temperature(self, dev),
                // Sensor 0, microwatts.
                power_w: self
                    .read::<u64>(b"rsmi_dev_power_ave_get\0", dev, Some(0))
                    .map(|uw| uw as f64 / 1e6),
                ..Default::default()
            })
            .collect())
    }
}

fn temperature(r: &RocmSmi, dev: u32) -> Option<u32> {
    let mut out: i64 = 0;
    // SAFETY: rsmi_dev_temp_metric_get(uint32_t dv_ind, uint32_t sensor_type,
    // rsmi_temperature_metric_t metric, int64_t *temperature).
    let rc = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(u32, u32, u32, *mut i64) -> u32> =
            r.lib.get(b"rsmi_dev_temp_metric_get\0").ok()?;
        f(dev, 0, 0, &mut out)
    };
    (rc == RSMI_OK && out >= 0).then_some((out / 1000) as u32)
}

/// What a process says about the devices it may use (from its start-up environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceHints {
    /// `CUDA_VISIBLE_DEVICES` (indices or UUIDs), as listed.
    pub visible: Option<Vec<String>>,
    pub local_rank: Option<u32>,
}

/// How a process was mapped to its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MappedBy {
    /// The device lists the process among its compute processes.
    ComputeProcess,
    /// CUDA_VISIBLE_DEVICES (and LOCAL_RANK to pick among several).
    Environment,
}

/// The device each process uses: its compute contexts first (exact), else its environment:
/// the LOCAL_RANK-th (or only) entry of CUDA_VISIBLE_DEVICES, as an index or a UUID; else,
/// with nothing visible-listed, device LOCAL_RANK.
pub fn map_devices(
    samples: &[GpuSample],
    procs: &BTreeMap<u32, DeviceHints>,
) -> BTreeMap<u32, (u32, MappedBy)> {
    let mut out = BTreeMap::new();
    for (&pid, hints) in procs {
        if let Some(d) = samples.iter().find(|s| s.pids.contains(&pid)) {
            out.insert(pid, (d.index, MappedBy::ComputeProcess));
            continue;
        }
        let pick = |list: &Vec<String>| -> Option<String> {
            match (list.len(), hints.local_rank) {
                (1, _) => list.first().cloned(),
                (_, Some(r)) => list.get(r as usize).cloned(),
                _ => None,
            }
        };
        let entry = match &hints.visible {
            Some(list) => pick(list),
            None => hints.local_rank.map(|r| r.to_string()),
        };
        let Some(entry) = entry else { continue };
        let found = match entry.trim().parse::<u32>() {
            Ok(i) => samples.iter().find(|s| s.index == i),
            Err(_) => samples
                .iter()
                .find(|s| !s.uuid.is_empty() && s.uuid.starts_with(entry.trim())),
        };
        if let Some(d) = found {
            out.insert(pid, (d.index, MappedBy::Environment));
        }
    }
    out
}

/// Samples devices at most every `interval`; remembers why there is no GPU context.
pub struct GpuMonitor {
    source: Option<Box<dyn GpuSource>>,
    /// Why there is no GPU context (said once).
    pub missing: Option<String>,
    pub latest: Vec<GpuSample>,
    /// NVLink error counts at the previous sampling, per device: findings use the increase.
    prev_nvlink: BTreeMap<u32, u64>,
    /// NVLink errors new since the previous sampling, per device.
    pub nvlink_new: BTreeMap<u32, u64>,
}

impl GpuMonitor {
    /// NVML when present, else a monitor that says why not.
    pub fn open() -> GpuMonitor {
        let nvml = match Nvml::open() {
            Ok(n) => return GpuMonitor::with_source(Box::new(n)),
            Err(why) => why,
        };
        match RocmSmi::open() {
            Ok(r) => GpuMonitor::with_source(Box::new(r)),
            Err(rocm) => GpuMonitor {
                source: None,
                missing: Some(format!("{nvml}; {rocm}")),
                latest: Vec::new(),
                prev_nvlink: BTreeMap::new(),
                nvlink_new: BTreeMap::new(),
            },
        }
    }

    pub fn with_source(source: Box<dyn GpuSource>) -> GpuMonitor {
        GpuMonitor {
            source: Some(source),
            missing: None,
            latest: Vec::new(),
            prev_nvlink: BTreeMap::new(),
            nvlink_new: BTreeMap::new(),
        }
    }

    pub fn available(&self) -> bool {
        self.source.is_some()
    }

    /// Takes a sample; a failing source is dropped with its reason.
    pub fn sample(&mut self) {
        let Some(src) = self.source.as_mut() else {
            return;
        };
        match src.sample() {
            Ok(s) => {
                self.nvlink_new.clear();
                for d in &s {
                    if let Some(n) = d.nvlink_errors {
                        if let Some(p) = self.prev_nvlink.insert(d.index, n) {
                            self.nvlink_new.insert(d.index, n.saturating_sub(p));
                        }
                    }
                }
                self.latest = s;
            }
            Err(e) => {
                self.missing = Some(format!("NVML stopped answering: {e}"));
                self.source = None;
            }
        }
    }
}

/// A GPU context line for a culprit on device `dev`, and a changed suggestion when its GPU
/// is the likely cause: it is throttled by power or heat, its SM clock is well below its
/// peers' (median of the other mapped devices), or its NVLink errors grew.
pub fn culprit_context(
    dev: &GpuSample,
    peers: &[&GpuSample],
    nvlink_new: u64,
) -> (String, Option<String>) {
    let mut clocks: Vec<u32> = peers.iter().filter_map(|p| p.sm_clock_mhz).collect();
    clocks.sort_unstable();
    let peer_clock = clocks.get(clocks.len() / 2).copied();
    let opt = |v: Option<u32>, unit: &str| v.map_or("?".to_string(), |v| format!("{v}{unit}"));
    let line = format!(
        "gpu: device {} ({}) SM clock {} (peers' median {}, max {}), utilisation {}, {} , \
         {}, throttle reasons: {}{}",
        dev.index,
        dev.name,
        opt(dev.sm_clock_mhz, " MHz"),
        opt(peer_clock, " MHz"),
        opt(dev.sm_clock_max_mhz, " MHz"),
        opt(dev.util_percent, "%"),
        opt(dev.temperature_c, " C"),
        dev.power_w
            .map_or("? W".to_string(), |w| format!("{w:.0} W")),
        if dev.throttle_reasons.is_empty() {
            "none".to_string()
        } else {
            dev.throttle_reasons.join(", ")
        },
        if nvlink_new > 0 {
            format!("; {nvlink_new} new NVLink errors")
        } else {
            String::new()
        }
    );
    let slowing = dev.throttle_bits & throttle::SLOWING;
    let hint = if slowing != 0 {
        Some(format!(
            "its GPU is throttled ({}): check cooling, power limits and the node's power \
             supply (nvidia-smi -q -d PERFORMANCE) before the network",
            throttle::names(slowing).join(", ")
        ))
    } else if let (Some(mine), Some(peer)) = (dev.sm_clock_mhz, peer_clock) {
        (f64::from(mine) < 0.85 * f64::from(peer)).then(|| {
            format!(
                "its GPU runs at {mine} MHz against its peers' {peer} MHz: look at its clocks \
                 and application clock settings (nvidia-smi -q -d CLOCK)"
            )
        })
    } else {
        None
    };
    let hint = hint.or_else(|| {
        (nvlink_new > 0).then(|| {
            "its GPU's NVLink links report new errors: check them (nvidia-smi nvlink -e) \
             before the code"
                .to_string()
        })
    });
    (line, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, clock: u32, bits: u64, pids: &[u32]) -> GpuSample {
        GpuSample {
            index,
            uuid: format!("GPU-{index:04}-aaaa"),
            name: "H200".into(),
            sm_clock_mhz: Some(clock),
            sm_clock_max_mhz: Some(1980),
            util_percent: Some(97),
            temperature_c: Some(71),
            power_w: Some(650.0),
            throttle_bits: bits,
            throttle_reasons: throttle::names(bits),
            pids: pids.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn devices_map_by_compute_process_then_environment() {
        let samples = vec![
            dev(0, 1980, 0, &[100]),
            dev(1, 1980, 0, &[]),
            dev(2, 1980, 0, &[]),
        ];
        let mut procs = BTreeMap::new();
        procs.insert(100, DeviceHints::default());
        procs.insert(
            101,
            DeviceHints {
                visible: Some(vec!["1".into()]),
                local_rank: Some(1),
            },
        );
        procs.insert(
            102,
            DeviceHints {
                visible: Some(vec!["GPU-0000".into(), "GPU-0002".into()]),
                local_rank: Some(1),
            },
        );
        procs.insert(
            103,
            DeviceHints {
                visible: None,
                local_rank: Some(1),
            },
        );
        procs.insert(
            104,
            DeviceHints {
                visible: Some(vec!["0".into(), "1".into()]),
                local_rank: None,
            },
        );
        let m = map_devices(&samples, &procs);
        assert_eq!(m.get(&100), Some(&(0, MappedBy::ComputeProcess)));
        assert_eq!(m.get(&101), Some(&(1, MappedBy::Environment)));
        assert_eq!(m.get(&102), Some(&(2, MappedBy::Environment)), "by UUID");
        assert_eq!(m.get(&103), Some(&(1, MappedBy::Environment)), "LOCAL_RANK");
        assert_eq!(
            m.get(&104),
            None,
            "two visible devices and no local rank: unknown"
        );
    }

    #[test]
    fn a_throttled_or_slow_gpu_changes_the_suggestion() {
        let peers = [
            dev(0, 1980, 0, &[]),
            dev(1, 1975, 0, &[]),
            dev(3, 1980, 0, &[]),
        ];
        let peers: Vec<&GpuSample> = peers.iter().collect();
        let hot = dev(
            2,
            1400,
            throttle::HW_THERMAL_SLOWDOWN | throttle::GPU_IDLE,
            &[],
        );
        let (line, hint) = culprit_context(&hot, &peers, 0);
        assert!(
            line.contains("SM clock 1400 MHz") && line.contains("median 1980"),
            "{line}"
        );
        assert!(line.contains("hw_thermal_slowdown"), "{line}");
        let hint = hint.expect("throttled");
        assert!(hint.contains("throttled (hw_thermal_slowdown)"), "{hint}");
        // Not throttled, but clocked well below the others.
        let (_, hint) = culprit_context(&dev(2, 1500, 0, &[]), &peers, 0);
        assert!(hint.expect("slow clock").contains("1500 MHz against"));
        // A healthy GPU: context only.
        let (_, hint) = culprit_context(&dev(2, 1970, throttle::GPU_IDLE, &[]), &peers, 0);
        assert!(hint.is_none());
        let (line, hint) = culprit_context(&dev(2, 1970, 0, &[]), &peers, 12);
        assert!(line.contains("12 new NVLink errors"));
        assert!(hint.expect("nvlink").contains("NVLink"));
    }

    struct Recorded(Vec<Vec<GpuSample>>);
    impl GpuSource for Recorded {
        fn sample(&mut self) -> Result<Vec<GpuSample>, String> {
            if self.0.is_empty() {
                return Err("device lost".into());
            }
            Ok(self.0.remove(0))
        }
    }

    #[test]
    fn the_monitor_tracks_new_nvlink_errors_and_a_lost_source() {
        let mut a = dev(0, 1980, 0, &[]);
        a.nvlink_errors = Some(5);
        let mut b = a.clone();
        b.nvlink_errors = Some(9);
        let mut m = GpuMonitor::with_source(Box::new(Recorded(vec![vec![a], vec![b]])));
        m.sample();
        assert!(m.nvlink_new.is_empty(), "no increase on the first sample");
        m.sample();
        assert_eq!(m.nvlink_new.get(&0), Some(&4));
        m.sample();
        assert!(!m.available());
        assert!(m.missing.as_deref().unwrap_or("").contains("device lost"));
    }

    #[test]
    fn without_nvml_the_monitor_says_why_in_one_line() {
        // This machine kind has no NVIDIA driver; where one is, NVML opens.
        let m = GpuMonitor::open();
        if !m.available() {
            let why = m.missing.expect("a reason");
            assert!(!why.contains('\n'), "{why}");
            assert!(
                why.contains("libnvidia-ml") || why.contains("NVML"),
                "{why}"
            );
            assert!(
                why.contains("librocm_smi64") || why.contains("ROCm"),
                "{why}"
            );
        }
    }
}
