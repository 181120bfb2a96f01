//! WGSL compiled to SPIR-V that tells a Vulkan driver to keep subnormal `f32` values and to
//! fuse no float operation into another.
//!
//! The lsq and ggml kernels do plain `f32` arithmetic that must round as the CPU reference
//! rounds, step by step. WGSL promises neither of the two things that needs:
//! * subnormals: WGSL leaves them to the device, and NVIDIA's Vulkan driver flushes them unless
//!   the SPIR-V asks otherwise (seen on an H200, driver 580.159: `gpu::lsq`'s probe got zeros).
//!   SPIR-V's float controls (`SPV_KHR_float_controls`, core in Vulkan 1.2 and SPIR-V 1.4) have
//!   the execution mode `DenormPreserve 32` for exactly this;
//! * no contraction: WGSL lets a compiler fuse `a * b + c` into one rounding. The shaders put
//!   every such product through `opaque` (an OR with a uniform that is zero at run time), but
//!   that is a trick a compiler may yet see through: the first version was an XOR, and
//!   NVIDIA's compiler cancelled two XORs in a row and fused (Q4_0 with an importance matrix
//!   gave other bytes in 0.8% of blocks on the H200). SPIR-V's own word for it is the
//!   `NoContraction` decoration (GLSL's `precise`), which every Vulkan driver must honour, so
//!   every float arithmetic result here carries it.
//!
//! naga (wgpu's shader compiler) writes neither, so on Vulkan we compile the WGSL with naga
//! ourselves, as wgpu would, add the capability, the extension, the mode and the decorations,
//! and hand the words to wgpu as a passthrough module.
//!
//! A driver may ignore the mode (Vulkan makes it a property, `shaderDenormPreserveFloat32`,
//! which wgpu does not expose): the subnormal probe and the kernels' self-tests, built the same
//! way, still decide whether the adapter runs them, so a driver that flushes anyway is refused,
//! never trusted.

use spirv::{Capability, Decoration, ExecutionMode, Op};

/// The SPIR-V of entry point `entry` of `wgsl`, with overrides `constants` resolved, subnormal
/// `f32` values kept (`DenormPreserve 32`) and no float operation contracted
/// (`NoContraction`). Errors are naga's, as text.
pub fn exact_f32(wgsl: &str, entry: &str, constants: &[(&str, f64)]) -> Result<Vec<u32>, String> {
    make_exact(&compile(wgsl, entry, constants)?)
}

/// naga's SPIR-V for `entry` of `wgsl` with `constants` resolved.
fn compile(wgsl: &str, entry: &str, constants: &[(&str, f64)]) -> Result<Vec<u32>, String> {
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| e.emit_to_string(wgsl))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default()).validate(&module).map_err(|e| format!("{e:?}"))?;
    let mut values = naga::back::PipelineConstants::default();
    values.extend(constants.iter().map(|&(k, v)| (k.to_string(), v)));
    let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((naga::ShaderStage::Compute, entry)), &values).map_err(|e| e.to_string())?;
    // What wgpu's Vulkan backend asks of naga, where it matters to a compute kernel: indices
    // and buffer accesses clamped in bounds, loops bounded. SPIR-V 1.0 runs on every Vulkan
    // device. Workgroup memory is not zeroed: naga's portable way (wgpu uses the driver's
    // where Vulkan 1.3 has it, which we cannot ask about) made the lsq kernel 14x slower on
    // lavapipe, and the quantize kernel writes every workgroup word before it reads it (stage
    // A the tile's data, stage B its groups' parameters and bounds, each behind a barrier).
    let options = naga::back::spv::Options {
        lang_version: (1, 0),
        flags: naga::back::spv::WriterFlags::empty(),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            image_load: naga::proc::BoundsCheckPolicy::Restrict,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        // Binding (g, b) becomes descriptor set g, binding b: what wgpu's layouts give.
        fake_missing_bindings: true,
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: entry.to_string() };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline)).map_err(|e| e.to_string())
}

/// The float arithmetic whose results get `NoContraction`: everything SPIR-V may fuse.
const FLOAT_ARITHMETIC: [Op; 14] = [
    Op::FNegate,
    Op::FAdd,
    Op::FSub,
    Op::FMul,
    Op::FDiv,
    Op::FRem,
    Op::FMod,
    Op::VectorTimesScalar,
    Op::MatrixTimesScalar,
    Op::VectorTimesMatrix,
    Op::MatrixTimesVector,
    Op::MatrixTimesMatrix,
    Op::OuterProduct,
    Op::Dot,
];

/// The sections of SPIR-V's logical layout that come before the types: the decorations go at
/// the end of these (the annotations are the last of them).
const BEFORE_TYPES: [Op; 22] = [
    Op::Capability,
    Op::Extension,
    Op::ExtInstImport,
    Op::MemoryModel,
    Op::EntryPoint,
    Op::ExecutionMode,
    Op::ExecutionModeId,
    Op::String,
    Op::SourceExtension,
    Op::Source,
    Op::SourceContinued,
    Op::Name,
    Op::MemberName,
    Op::ModuleProcessed,
    Op::Decorate,
    Op::MemberDecorate,
    Op::DecorationGroup,
    Op::GroupDecorate,
    Op::GroupMemberDecorate,
    Op::DecorateId,
    Op::DecorateString,
    Op::MemberDecorateString,
];

/// `words` with `OpCapability DenormPreserve`, `OpExtension "SPV_KHR_float_controls"`,
/// `OpExecutionMode DenormPreserve 32` on its (single) entry point and `OpDecorate NoContraction`
/// on the result of every instruction of [`FLOAT_ARITHMETIC`], each in the section where
/// SPIR-V's logical layout puts it (capabilities, extensions, modes after the entry points,
/// decorations at the end of the annotations).
fn make_exact(words: &[u32]) -> Result<Vec<u32>, String> {
    const HEADER: usize = 5;
    let instructions = instructions(words)?;
    let is = |i: &(usize, u16, usize), ops: &[Op]| ops.iter().any(|&op| op as u16 == i.1);
    let last = |op: Op| instructions.iter().filter(|i| i.1 == op as u16).map(|i| i.0 + i.2).next_back();
    let after_capabilities = last(Op::Capability).ok_or("the module declares no capability")?;
    let entry = instructions.iter().filter(|i| i.1 == Op::EntryPoint as u16).collect::<Vec<_>>();
    let [&(at, _, len)] = entry.as_slice() else { return Err(format!("{} entry points, one expected", entry.len())) };
    let entry_id = words[at + 2];
    let after_entry = at + len;
    let types = instructions.iter().find(|i| !is(i, &BEFORE_TYPES)).map_or(words.len(), |i| i.0);

    let capability = [inst(Op::Capability, 2), Capability::DenormPreserve as u32];
    let mut extension = vec![0];
    extension.extend(string("SPV_KHR_float_controls"));
    extension[0] = inst(Op::Extension, extension.len());
    let mode = [inst(Op::ExecutionMode, 4), entry_id, ExecutionMode::DenormPreserve as u32, 32];
    // Word 2 of each of these instructions is its result id.
    let decorations = instructions
        .iter()
        .filter(|i| is(i, &FLOAT_ARITHMETIC))
        .flat_map(|i| [inst(Op::Decorate, 3), words[i.0 + 2], Decoration::NoContraction as u32]);

    let mut out = Vec::with_capacity(words.len() + words.len() / 4);
    out.extend_from_slice(&words[..after_capabilities.max(HEADER)]);
    out.extend_from_slice(&capability);
    out.extend_from_slice(&extension);
    out.extend_from_slice(&words[after_capabilities..after_entry]);
    out.extend_from_slice(&mode);
    out.extend_from_slice(&words[after_entry..types]);
    out.extend(decorations);
    out.extend_from_slice(&words[types..]);
    Ok(out)
}

/// (offset, opcode, word count) of every instruction after the 5-word header.
fn instructions(words: &[u32]) -> Result<Vec<(usize, u16, usize)>, String> {
    if words.len() < 5 || words[0] != spirv::MAGIC_NUMBER {
        return Err("not a SPIR-V module".into());
    }
    let mut out = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let len = (words[at] >> 16) as usize;
        if len == 0 || at + len > words.len() {
            return Err(format!("a malformed instruction at word {at}"));
        }
        out.push((at, words[at] as u16, len));
        at += len;
    }
    Ok(out)
}

/// The first word of an instruction: its word count over its opcode.
fn inst(op: Op, words: usize) -> u32 {
    (words as u32) << 16 | op as u32
}

/// A SPIR-V literal string: UTF-8, nul-terminated, zero-padded to whole little-endian words.
fn string(s: &str) -> Vec<u32> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lsq kernel and a ggml kernel compile, and each module gains exactly the capability,
    /// the extension, the mode and one `NoContraction` per float arithmetic result, each in its
    /// section, with every other word unchanged.
    #[test]
    fn the_exact_kernels_get_denorm_preserve_and_no_contraction_and_nothing_else() {
        let lsq = crate::gpu::shaders::quantize_source();
        let q4_k = crate::gpu::shaders::ggml_source(crate::gpu::shaders::GGML_KQUANTS);
        for (src, entry, constants) in [(&lsq, "quantize_pass", &[("LSQ", 1.0)][..]), (&q4_k, "quantize_blocks_sub", &[("TYPE", 12.0), ("UNIT", 1.0)][..])] {
            let words = exact_f32(src, entry, constants).unwrap();
            let ins = instructions(&words).unwrap();
            let pos = |op: Op| ins.iter().position(|i| i.1 == op as u16).unwrap();
            let cap = ins.iter().find(|i| i.1 == Op::Capability as u16 && words[i.0 + 1] == Capability::DenormPreserve as u32).expect("the capability");
            let ext = ins.iter().find(|i| i.1 == Op::Extension as u16).expect("the extension");
            assert_eq!(&words[ext.0 + 1..ext.0 + ext.2], string("SPV_KHR_float_controls").as_slice());
            let entry_at = ins[pos(Op::EntryPoint)];
            let mode = ins.iter().find(|i| i.1 == Op::ExecutionMode as u16 && words[i.0 + 2] == ExecutionMode::DenormPreserve as u32).expect("the mode");
            assert_eq!(&words[mode.0 + 1..mode.0 + 4], &[words[entry_at.0 + 2], ExecutionMode::DenormPreserve as u32, 32]);
            // The logical layout: capabilities, extensions, memory model, entry point, modes.
            assert!(cap.0 < ext.0 && ext.0 < ins[pos(Op::MemoryModel)].0 && entry_at.0 < mode.0);

            // Every float result is decorated, once, among the annotations (before any type).
            let float_results: Vec<u32> = ins.iter().filter(|i| FLOAT_ARITHMETIC.iter().any(|&op| op as u16 == i.1)).map(|i| words[i.0 + 2]).collect();
            let ours: Vec<&(usize, u16, usize)> =
                ins.iter().filter(|i| i.1 == Op::Decorate as u16 && words[i.0 + 2] == Decoration::NoContraction as u32).collect();
            assert!(float_results.len() >= 20, "{entry}: only {} float operations", float_results.len());
            assert_eq!(ours.iter().map(|i| words[i.0 + 1]).collect::<Vec<_>>(), float_results);
            let first_type = ins.iter().position(|i| !BEFORE_TYPES.iter().any(|&op| op as u16 == i.1)).unwrap();
            assert!(ours.iter().all(|i| i.0 < ins[first_type].0 && i.0 > mode.0));

            // Taking ours out again gives naga's own module for the same source.
            let plain = compile(src, entry, constants).unwrap();
            let added = |i: &(usize, u16, usize)| i.0 == cap.0 || i.0 == ext.0 || i.0 == mode.0 || ours.iter().any(|o| o.0 == i.0);
            let stripped: Vec<u32> = ins.iter().filter(|i| !added(i)).flat_map(|i| words[i.0..i.0 + i.2].iter().copied()).collect();
            assert_eq!(&words[..5], &plain[..5]);
            assert_eq!(stripped, plain[5..]);
        }
    }

    #[test]
    fn an_unset_override_and_a_wrong_entry_point_are_errors() {
        let src = crate::gpu::shaders::quantize_source();
        assert!(exact_f32(&src, "no_such_entry", &[]).is_err());
        assert!(exact_f32("fn f() {", "f", &[]).is_err());
        assert!(make_exact(&[1, 2, 3]).is_err());
    }

    #[test]
    fn literal_strings_are_nul_terminated_and_padded() {
        assert_eq!(string("abc"), vec![u32::from_le_bytes(*b"abc\0")]);
        assert_eq!(string("abcd"), vec![u32::from_le_bytes(*b"abcd"), 0]);
    }
}
