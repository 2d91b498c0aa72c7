"""scikit-image peer for plateflow's "segment + features" throughput on the SBS plate
(96 fields, 640x640, Channel1 = GFP, Channel2 = DNA/Hoechst), measuring a comparable
feature set per field:

  1. nuclei from DNA: Gaussian sigma 3, Otsu, distance transform, `peak_local_max` seeds
     (min_distance 7), watershed on -distance inside the mask, objects < 30 px dropped;
  2. cells = `expand_labels(nuclei, distance=8)` (an 8 px ring); cytoplasm = cells minus
     the nucleus pixels;
  3. per compartment (nuclei, cells, cytoplasm) `regionprops_table`: area, perimeter,
     eccentricity, major/minor axis length, orientation, solidity, extent,
     feret_diameter_max, centroid, and on both channels intensity mean/min/max plus std and
     median (custom `extra_properties` pixel_std = np.std, pixel_median = np.median of the
     object's pixels; skimage 0.26's own intensity_std/intensity_median are not asked for);
  4. Haralick-like texture per object, channel and compartment: `graycomatrix` on the
     object's bounding-box crop quantised to 32 levels (byte * 31 // 255, as plateflow and
     CellProfiler do), distance 3, angles 0/45/90/135 degrees (the diagonals are passed as
     distance 3*sqrt(2) so that skimage's rounding gives a (3, 3) step like mahotas, not
     (2, 2)), symmetric, pixels outside the
     object set to level 0 and the level-0 row/column removed before normalising (only
     in-object pairs of non-zero level count, like mahotas' ignore_zeros; a dark in-object
     pixel of level 0 is dropped too, as in CellProfiler/plateflow); `graycoprops` contrast,
     correlation, ASM, homogeneity, energy, dissimilarity averaged over the 4 angles; an
     object with no pair in some direction gets 0 for all six (as CellProfiler/plateflow);
  5. Zernike moments: SKIPPED -- scikit-image has no Zernike features, so this peer does
     less work than plateflow's feature step there.

Then per cell the nuclear/cytoplasmic GFP ratio (mean GFP in nucleus / mean GFP in
cytoplasm; cells with an empty or all-black cytoplasm are skipped); the per-well median
ratio is correlated with SBS_Doses from 1049_Metadata.csv (Spearman) as a sanity check.

The TIFFs are 8-bit palette-coded with an identity grey ramp (entry i = i*257 on R, G, B);
they are read with tifffile as the raw page indices (the ramp is checked, the script stops
otherwise), and the indices are used as intensities. Reading is timed apart and not part of
the MP/s figures. Megapixels count one 640x640 plane per field (0.4096 MP).

Two timed passes over the images held in memory: segmentation alone (steps 1-2), then
segmentation + all features (1-4 + ratio); wall-clock, `--jobs` worker processes (default
1, i.e. one core).

    target/bench-venv/bin/python bench/skimage_features.py ../shared/data/sbs-plate [--limit N] [--jobs N]
"""
import argparse, csv, pathlib, re, time, warnings
from multiprocessing import Pool
import numpy as np
import tifffile
from scipy import ndimage as ndi, stats
from skimage import filters, measure, segmentation, feature

LEVELS = 32
# skimage rounds (d sin a, d cos a): distance 3 at 45/135 degrees would be a (2, 2) step, so
# the diagonals get distance 3*sqrt(2), i.e. the (3, 3) step of mahotas/CellProfiler/plateflow.
OFFSETS = [(3, [0, np.pi / 2]), (3 * np.sqrt(2), [np.pi / 4, 3 * np.pi / 4])]
TEXTURE = ("contrast", "correlation", "ASM", "homogeneity", "energy", "dissimilarity")
SHAPE = ("label", "area", "perimeter", "eccentricity", "axis_major_length", "axis_minor_length",
         "orientation", "solidity", "extent", "feret_diameter_max", "centroid",
         "intensity_mean", "intensity_min", "intensity_max")
RAMP = np.arange(256, dtype=np.uint16) * 257


def read_palette_tiff(path):
    """Raw 8-bit palette indices, after checking the palette is a grey ramp."""
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        data = page.asarray()  # tifffile returns the indices, not the RGB expansion
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
            cm = page.colormap
            if not (cm.shape == (3, 256) and all(np.array_equal(c, RAMP) for c in cm)):
                raise SystemExit(f"{path}: palette is not an identity grey ramp")
    if data.dtype != np.uint8 or data.ndim != 2:
        raise SystemExit(f"{path}: expected a 2-D 8-bit plane, got {data.dtype} {data.shape}")
    return data


def pixel_std(mask, img):
    return np.std(img[mask])


def pixel_median(mask, img):
    return np.median(img[mask])


def segment(dna, sigma=3.0, min_distance=7, min_area=30, ring=8):
    smooth = filters.gaussian(dna, sigma=sigma, preserve_range=True)
    mask = smooth > filters.threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(dist, min_distance=min_distance, labels=measure.label(mask),
                                   exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-dist, markers, mask=mask)
    small = np.bincount(labels.ravel()) < min_area
    small[0] = False
    labels[small[labels]] = 0
    nuclei, _, _ = segmentation.relabel_sequential(labels)
    cells = segmentation.expand_labels(nuclei, distance=ring)
    cyto = cells.copy()
    cyto[nuclei > 0] = 0
    return nuclei, cells, cyto


def texture(labels, quantised):
    """Per object: the six graycoprops features averaged over the 4 angles (in-object,
    non-zero-level pairs only)."""
    out = {}
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        lab = i + 1
        crop = np.where(labels[sl] == lab, quantised[sl], 0).astype(np.uint8)
        glcm = np.concatenate(
            [feature.graycomatrix(crop, [d], a, levels=LEVELS, symmetric=True) for d, a in OFFSETS], axis=3)
        glcm = glcm[1:, 1:].astype(np.float64)
        sums = glcm.sum(axis=(0, 1), keepdims=True)
        if (sums == 0).any():
            out[lab] = np.zeros(len(TEXTURE))
            continue
        glcm /= sums
        out[lab] = np.array([feature.graycoprops(glcm, p).mean() for p in TEXTURE])
    return out


def features(nuclei, cells, cyto, gfp, dna):
    both = np.stack([gfp, dna], axis=-1)
    quantised = [(ch.astype(np.uint16) * (LEVELS - 1) // 255).astype(np.uint8) for ch in (gfp, dna)]
    tables = {}
    for name, labels in (("nuclei", nuclei), ("cells", cells), ("cytoplasm", cyto)):
        t = measure.regionprops_table(labels, intensity_image=both, properties=SHAPE,
                                      extra_properties=(pixel_std, pixel_median))
        for ch, q in zip(("GFP", "DNA"), quantised):
            tex = texture(labels, q)
            rows = np.array([tex[l] for l in t["label"]]).reshape(-1, len(TEXTURE))
            for k, p in enumerate(TEXTURE):
                t[f"texture_{p}_{ch}"] = rows[:, k]
        tables[name] = t
    return tables


def nc_ratio(tables):
    """Per cell: mean GFP in the nucleus / mean GFP in the cytoplasm (channel 0 = GFP)."""
    nuc = dict(zip(tables["nuclei"]["label"], tables["nuclei"]["intensity_mean-0"]))
    cyt = dict(zip(tables["cytoplasm"]["label"], tables["cytoplasm"]["intensity_mean-0"]))
    return np.array([nuc[l] / cyt[l] for l in nuc if l in cyt and cyt[l] > 0])


IMAGES = []  # (gfp, dna) per field; module global so forked workers share it


def seg_only(i):
    nuclei, cells, cyto = segment(IMAGES[i][1])
    return int(nuclei.max())


def seg_and_features(i):
    warnings.simplefilter("ignore")
    gfp, dna = IMAGES[i]
    nuclei, cells, cyto = segment(dna)
    tables = features(nuclei, cells, cyto, gfp, dna)
    n_cols = sum(len(t) for t in tables.values())
    return int(nuclei.max()), len(tables["cytoplasm"]["label"]), n_cols, nc_ratio(tables)


def timed(fn, n, jobs):
    t0 = time.perf_counter()
    if jobs > 1:
        with Pool(jobs) as pool:
            res = pool.map(fn, range(n), chunksize=1)
    else:
        res = [fn(i) for i in range(n)]
    return time.perf_counter() - t0, res


def loadavg():
    return pathlib.Path("/proc/loadavg").read_text().split()[:3]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="../shared/data/sbs-plate")
    ap.add_argument("--limit", type=int, default=None, help="only the first N fields")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    a = ap.parse_args()
    root = pathlib.Path(a.root)

    fields = []
    for p in root.glob("Channel1-*.tif"):
        m = re.fullmatch(r"Channel1-(\d+)-([A-Z])-(\d+)\.tif", p.name)
        fields.append((int(m.group(1)), m.group(2) + m.group(3), p))
    fields.sort()
    fields = fields[: a.limit]
    dose = {}
    with open(root / "1049_Metadata.csv") as f:
        for row in csv.DictReader(f):
            dose[int(row["ImageNumber"])] = float(row["SBS_Doses"])

    t0 = time.perf_counter()
    for nn, _, p in fields:
        gfp = read_palette_tiff(p)
        dna = read_palette_tiff(p.with_name(p.name.replace("Channel1-", "Channel2-", 1)))
        assert gfp.shape == dna.shape
        IMAGES.append((gfp, dna))
    t_read = time.perf_counter() - t0
    n = len(IMAGES)
    mp = n * 640 * 640 / 1e6

    print(f"load average at start: {' '.join(loadavg())}; jobs {a.jobs}")
    warnings.simplefilter("ignore")
    t_seg, seg_counts = timed(seg_only, n, a.jobs)
    t_all, res = timed(seg_and_features, n, a.jobs)
    print(f"load average at end:   {' '.join(loadavg())}")

    objects = sum(r[0] for r in res)
    assert objects == sum(seg_counts)
    cyto_objects = sum(r[1] for r in res)
    n_cols = res[0][2] if res else 0
    medians = [np.median(r[3]) if len(r[3]) else np.nan for r in res]
    doses = [dose[nn] for nn, _, _ in fields]
    ok = [i for i, m in enumerate(medians) if np.isfinite(m)]
    rho, pval = stats.spearmanr([doses[i] for i in ok], [medians[i] for i in ok]) if len(ok) > 2 else (np.nan, np.nan)

    print(f"fields {n}, {mp:.4f} MP (one 640x640 plane per field), read in {t_read:.2f} s (not counted)")
    print(f"objects: {objects} nuclei = {objects} cells, {cyto_objects} non-empty cytoplasms; "
          f"{n_cols} columns per object over the 3 compartments (label included)")
    print(f"segmentation alone:         {t_seg:.2f} s = {mp / t_seg:.3f} MP/s")
    print(f"segmentation + features:    {t_all:.2f} s = {mp / t_all:.3f} MP/s")
    print(f"per-well median N/C GFP ratio vs SBS_Doses: Spearman rho {rho:.3f} (p {pval:.2g}, {len(ok)} wells); "
          f"ratios: {sum(len(r[3]) for r in res)} cells, well medians {np.nanmin(medians):.3f}..{np.nanmax(medians):.3f}")


if __name__ == "__main__":
    main()
