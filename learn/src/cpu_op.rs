//! What plateflow's custom Candle ops share: the contiguous data of a CPU tensor, and one
//! dispatch over the float types they support.

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// A vector of `len` values (room for `capacity`) built in parallel, `chunk` values at a
/// time by `fill(chunk index, chunk)`. Saves the zeroing pass `vec![0; len]` makes over
/// buffers the op overwrites anyway (whole activations, a few MB per layer).
///
/// # Safety
/// `fill` must write every element of every chunk it is given.
pub unsafe fn par_build<T: Send>(
    len: usize,
    capacity: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity.max(len));
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the caller's `fill` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Initialises `chunk` row by row (`row_len` values each, row r set to `value_of_row(r)`)
/// and hands it back as initialised values. Buffers an op fills in parallel start this way
/// in the thread that then uses them, instead of one `vec![0; n]` pass on a single thread
/// (tens of MB per training step here).
pub fn init_rows<T: Copy>(
    chunk: &mut [MaybeUninit<T>],
    row_len: usize,
    value_of_row: impl Fn(usize) -> T,
) -> &mut [T] {
    for (r, row) in chunk.chunks_mut(row_len.max(1)).enumerate() {
        let v = value_of_row(r);
        for x in row {
            x.write(v);
        }
    }
    // SAFETY: every element was written just above; MaybeUninit<T> has T's layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<T>] as *mut [T]) }
}
