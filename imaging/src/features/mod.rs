//! Per-object measurements that reproduce CellProfiler's MeasureObjectSizeShape,
//! MeasureObjectIntensity and MeasureTexture, so numbers from plateflow can be compared with
//! (and substituted for) CellProfiler's columns. Plain functions over a label image: no I/O.
//!
//! Every function makes a fixed number of passes over the label image and then does small
//! per-object work (hulls, sorting an object's own pixels, one bounding-box crop): the cost
//! does not grow with objects × pixels.
//!
//! Where CellProfiler's own definition is quirky it is followed anyway (and said so), because
//! the point of these numbers is that they match what biologists already have. The choices
//! that differ from CellProfiler are named on the field concerned (mainly the Feret
//! diameters, on pixel corners).
//!
//! One file per feature family: [`shape`] (AreaShape, Zernike, Feret), [`intensity`]
//! (MeasureObjectIntensity) and [`texture`] (Haralick); what they share is here.

mod intensity;
mod shape;
#[cfg(test)]
mod tests;
mod texture;

pub use intensity::*;
pub use shape::*;
pub use texture::*;

use crate::segment::Labels;

/// The label of pixel `i`, or 0 when it is not a measured object (ids above `count` are left
/// alone rather than trusted).
#[inline]
fn object(labels: &Labels, i: usize) -> usize {
    let l = labels.data[i];
    if l <= labels.count {
        l as usize
    } else {
        0
    }
}
