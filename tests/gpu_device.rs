//! `device="auto"` and device recovery, in a process of their own (destroying the shared device
//! would fail every other GPU test running beside them). Runs on whatever adapter wgpu finds
//! (lavapipe in CI); without one these tests fail unless `ARROW_QUANT_SKIP_GPU_TESTS=1`.

mod common;

use arrow_quant_v2::backend::{Backend, QuantJob};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::device::{auto, backend, describe, gpu_with_fallback, probe, Device};
use arrow_quant_v2::gpu::GpuBackend;
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantConfig, QuantError};

/// The tests take turns: one of them destroys the shared device.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gpu() -> Option<&'static GpuBackend> {
    common::shared_gpu()
}

/// (packed, scale bits, zero-point bits) of a 4-bit g64 quantize of `n` values on `b`.
fn quantize(b: &dyn Backend, n: usize) -> arrow_quant_v2::Result<(Vec<u8>, Vec<u32>, Vec<u32>)> {
    let w: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
    let layout = GroupLayout::new(n / 512, 512, QuantConfig::new(BitWidth::B4, 64).unwrap());
    let (mut p, mut s, mut z) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
    b.quantize(&mut [QuantJob { name: "w", weights: &w, layout, packed: &mut p, scales: &mut s, zero_points: &mut z }])?;
    Ok((p, s.iter().map(|x| x.to_bits()).collect(), z.iter().map(|x| x.to_bits()).collect()))
}

fn software() -> bool {
    gpu().is_some_and(|g| g.is_software())
}

/// On a software adapter (lavapipe in CI) "auto" is the CPU, and says why; wherever it chose
/// the GPU, the reason is a measurement in which the GPU was faster.
#[test]
fn auto_picks_the_faster_path_and_says_why() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if gpu().is_none() {
        return;
    }
    let choice = auto();
    let text = describe(Device::Auto).unwrap();
    eprintln!("{text}");
    assert!(text.contains("[auto: "), "{text}");
    let forced = std::env::var(arrow_quant_v2::gpu::ALLOW_SOFTWARE_ENV).is_ok_and(|v| v == "1");
    if software() && !forced {
        assert!(!choice.gpu, "{}", choice.reason);
        assert!(text.starts_with("cpu ("), "{text}");
        assert!(choice.reason.contains("software adapter"), "{}", choice.reason);
        let lsq = arrow_quant_v2::device::auto_for(Method::Lsq);
        assert!(!lsq.gpu && lsq.reason.contains("software adapter"), "{}", lsq.reason);
    }
    if choice.gpu && !forced {
        assert!(choice.reason.starts_with("measured faster"), "{}", choice.reason);
    }
}

/// The measurement itself: on a software adapter the CPU path wins it, and the race reports
/// both sides' throughput on the same probe.
#[test]
fn the_race_measures_both_paths() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(g) = gpu() else { return };
    let r = probe::race_on(&CpuBackend::new(), g, 1 << 20, Method::MinMax).unwrap();
    eprintln!("{r}");
    assert!(r.cpu_s > 0.0 && r.gpu_s > 0.0 && r.cpu_s.is_finite() && r.gpu_s.is_finite());
    assert_eq!(r.bytes, 4 << 20);
    assert!(r.to_string().contains(" GB/s"), "{r}");
    if g.is_software() {
        assert!(!r.gpu_faster(), "a software adapter measured faster than the CPU path: {r}");
    }
}

/// The search has its own race (lsq is compute-bound: the GPU may win it where it loses
/// min/max), on the same terms; an adapter that cannot run lsq exactly refuses it instead.
#[test]
fn the_race_measures_the_search_too() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(g) = gpu() else { return };
    match probe::race_on(&CpuBackend::new(), g, 1 << 16, Method::Lsq) {
        Ok(r) => {
            eprintln!("{r}");
            assert!(r.cpu_s > 0.0 && r.gpu_s > 0.0 && r.to_string().ends_with("group 128, lsq)"), "{r}");
            if g.is_software() {
                assert!(!r.gpu_faster(), "a software adapter measured faster than the CPU path: {r}");
            }
        }
        Err(QuantError::Unsupported(m)) => assert!(m.contains("subnormal"), "{m}"),
        Err(e) => panic!("{e}"),
    }
}

/// A lost device is not sticky: after the device is destroyed (as a driver reset would), the
/// next "gpu" call gets a new device and the same bytes, and the GPU under "auto" never fails
/// a call because of it.
#[test]
fn a_lost_device_is_replaced_on_the_next_call() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(g) = gpu() else { return };
    let want = quantize(&CpuBackend::new(), 1 << 21).unwrap();
    assert!(quantize(g, 1 << 21).unwrap() == want);

    g.lose_device_for_test();
    // A call on the lost device itself is an error, never a crash or wrong bytes.
    match quantize(g, 1 << 21) {
        Err(QuantError::Device(msg)) => eprintln!("on the lost device: {msg}"),
        Ok(got) => assert!(got == want, "the lost device returned different bytes"),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
    // "auto"'s GPU wrapper falls back to the CPU or to a new device: the call succeeds.
    assert!(quantize(gpu_with_fallback(), 1 << 21).unwrap() == want);
    // And "gpu" gets a new device.
    let again = backend(Device::Gpu).unwrap();
    assert!(!std::ptr::eq(again as *const dyn Backend as *const u8, g as *const GpuBackend as *const u8), "the lost backend was handed out again");
    assert!(quantize(again, 1 << 21).unwrap() == want);
}
