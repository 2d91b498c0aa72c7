"""scikit-image's Otsu + distance-transform watershed (+ regionprops) on the Coelho U2OS
images, timed and scored like plateflow's `segment_nuclei` (object F1 at IoU >= 0.5).

    target/bench-venv/bin/python bench/skimage_segment.py ../shared/data/coelho-u2os
"""
import sys, time, pathlib
import numpy as np
from skimage import io, filters, measure, segmentation, feature
from scipy import ndimage as ndi


def segment(img, sigma=2.0, min_distance=7, min_area=30):
    smooth = filters.gaussian(img, sigma=sigma, preserve_range=True)
    mask = smooth > filters.threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(dist, min_distance=min_distance, labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-dist, markers, mask=mask)
    labels = measure.label(np.isin(labels, [r.label for r in measure.regionprops(labels) if r.area >= min_area]) * labels)
    props = measure.regionprops(labels, intensity_image=img)  # measured, as a pipeline would
    return labels, len(props)


def score(pred, truth):
    p, t = pred.ravel(), truth.ravel()
    both = (p > 0) & (t > 0)
    pairs, inter = np.unique(np.stack([p[both], t[both]]), axis=1, return_counts=True)
    ap = np.bincount(p); at = np.bincount(t)
    union = ap[pairs[0]] + at[pairs[1]] - inter
    matched = int((inter * 2 > union).sum())
    return matched, int((ap[1:] > 0).sum()), int((at[1:] > 0).sum())


def main(root):
    root = pathlib.Path(root)
    names = sorted(p.name for p in (root / "images").glob("*.png"))
    imgs = [io.imread(root / "images" / n)[..., 0] if io.imread(root / "images" / n).ndim == 3 else io.imread(root / "images" / n) for n in names]
    truths = [io.imread(root / "labels" / n) for n in names]
    truths = [t[..., 0] if t.ndim == 3 else t for t in truths]
    mp = sum(i.size for i in imgs) / 1e6
    for min_distance in (10, 15, 20, 25):
        t0 = time.perf_counter()
        results = [segment(i.astype(np.float32), sigma=3.0, min_distance=min_distance) for i in imgs]
        s = time.perf_counter() - t0
        m = np_ = nt = 0
        errs = []
        for (lab, _), tr in zip(results, truths):
            a, b, c = score(lab, tr.astype(np.int64))
            m += a; np_ += b; nt += c
            errs.append(abs(b - c) / c)
        prec, rec = m / np_, m / nt
        print(f"skimage min_distance={min_distance}: {len(imgs)} images {mp:.1f} MP in {s:.2f} s = {mp / s:.1f} MP/s; "
              f"F1 {2 * prec * rec / (prec + rec):.3f} (precision {prec:.3f}, recall {rec:.3f}), median count error {np.median(errs):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/coelho-u2os")
