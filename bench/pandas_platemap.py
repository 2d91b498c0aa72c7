"""The peer of `cargo bench -p plateflow-coordinator --bench engine -- platemap`: the same
plate map (MAP_PLATES x 384 rows, default 300) read by pandas.read_csv, as a comma CSV and as
Excel writes it in a decimal-comma locale (BOM, semicolons, CRLF, `0,5`), once with the
separator and decimal mark given (pandas' fastest form, its C parser) and once sniffed
(`sep=None`, the Python parser: what plateflow does, finding the separator itself).

    python3 -m venv /tmp/pd && /tmp/pd/bin/pip install pandas && /tmp/pd/bin/python bench/pandas_platemap.py
"""
import io
import os
import time

import pandas as pd

plates = int(os.environ.get("MAP_PLATES", "300"))
rows, cols = 16, 24
comma = ["plate,well,treatment,dose_uM,control\n"]
excel = ["\ufeffplate;well;treatment;dose_uM;control\r\n"]
for p in range(plates):
    for r in range(rows):
        letter = chr(ord("A") + r)
        for c in range(cols):
            t = f"cpd{(r * cols + c) % 37}"
            d = "%g" % (((p + r * cols + c) % 12) * 0.25)
            k = "negative" if c == 0 else "positive" if c == 23 else ""
            comma.append(f"P{p},{letter}{c + 1:02},{t},{d},{k}\n")
            excel.append(f"P{p};{letter}{c + 1:02};{t};{d.replace('.', ',')};{k}\r\n")
comma = "".join(comma).encode()
excel = "".join(excel).encode()
n = plates * rows * cols
print(f"## pandas {pd.__version__} platemap: {plates} plates x 384 wells = {n} rows")
for form, data, kw in [
    ("comma CSV, C parser", comma, {}),
    ("Excel, sep/decimal given", excel, {"sep": ";", "decimal": ",", "encoding": "utf-8-sig"}),
    ("Excel, sep sniffed", excel, {"sep": None, "engine": "python", "decimal": ",", "encoding": "utf-8-sig"}),
]:
    t = time.perf_counter()
    df = pd.read_csv(io.BytesIO(data), **kw)
    secs = time.perf_counter() - t
    assert len(df) == n, form
    print(f"parse {form:<26} {len(data) / 1e6:6.1f} MB {secs * 1e3:8.1f} ms {n / secs / 1e6:6.2f} M rows/s")
t = time.perf_counter()
df = pd.read_csv(io.BytesIO(comma))
size = sum(len(g.sort_values(["well"]).to_csv(index=False)) for _, g in df.groupby("plate"))
print(f"one sorted CSV slice per plate (groupby): {(time.perf_counter() - t) * 1e3:.1f} ms ({size / 1e6:.1f} MB)")
