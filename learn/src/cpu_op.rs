//! What plateflow's custom Candle ops share: the contiguous data of a CPU tensor, and one
//! dispatch over the float types they support.

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The contiguous data of a CPU tensor as `T` (an error names the op otherwise).
pub fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&T::cpu_storage_as_slice(s)?[a..b])
}

/// Evaluates `$body` with the type alias `$t` set to f32 or f64, following the dtype of
/// `$storage`, and wraps the resulting `Vec` in that dtype's `CpuStorage`; other dtypes are
/// an error naming `$op`.
macro_rules! float_op {
    ($op:expr, $storage:expr, |$t:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                #[allow(dead_code)]
                type $t = f32;
                candle_core::CpuStorage::F32($body)
            }
            candle_core::CpuStorage::F64(_) => {
                #[allow(dead_code)]
                type $t = f64;
                candle_core::CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 tensors only", $op),
        }
    };
}
pub(crate) use float_op;
