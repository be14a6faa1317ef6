"""What a GWAS job writes: PLINK-style tables, GWAS-SSF files, Manhattan and QQ plots, top hits, and a
self-contained HTML report.

Every function here is a pure function of its inputs (no clocks), so a resumed job writes the same bytes
as an uninterrupted one; only the report's timings differ.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from better.query.output import rows_as_text

SSF_LINEAR = ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta", "standard_error"]
SSF_LOGISTIC = ["chromosome", "base_pair_location", "effect_allele", "other_allele", "odds_ratio", "standard_error"]
SSF_TAIL = ["effect_allele_frequency", "p_value", "neg_log_10_p_value", "rsid", "variant_id", "n"]
GENOME_WIDE, SUGGESTIVE = 5e-8, 1e-5


def write_glm(frame: pl.DataFrame, path: Path) -> None:
    """The PLINK 2-style table (``.glm.linear`` / ``.glm.logistic``): withheld values as ``withheld``."""
    cols = [c for c in frame.columns if c != "WITHHELD"]
    body = "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in rows_as_text(frame))
    path.write_text(body)


def tested(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows with a usable P (not withheld, no error code)."""
    return frame.filter(
        ~pl.col("WITHHELD") & (pl.col("ERRCODE") == ".") & pl.col("P").is_not_null() & pl.col("P").is_not_nan()
    )


def write_ssf(frame: pl.DataFrame, model: str, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """GWAS-SSF data file (gzip, sorted, ``#NA``) and its ``-meta.yaml``; returns the metadata written.

    Only variants with a test result are listed: GWAS-SSF has no way to say "withheld".
    """
    rows = tested(frame)
    effect = "beta" if model == "linear" else "odds_ratio"
    out = pl.DataFrame(
        {
            "chromosome": rows["#CHROM"],
            "base_pair_location": rows["POS"],
            "effect_allele": rows["A1"],
            "other_allele": rows["REF"],
            effect: rows["BETA" if model == "linear" else "OR"],
            "standard_error": rows["SE" if model == "linear" else "LOG(OR)_SE"],
            "effect_allele_frequency": rows["A1_FREQ"],
            "p_value": rows["P"],
            "neg_log_10_p_value": rows["LOG10_P"],
            "rsid": rows["ID"],
            "variant_id": [
                f"{c}_{p}_{r}_{a}"
                for c, p, r, a in zip(rows["#CHROM"], rows["POS"], rows["REF"], rows["ALT"], strict=True)
            ],
            "n": rows["OBS_CT"],
        }
    )
    header = (SSF_LINEAR if model == "linear" else SSF_LOGISTIC) + SSF_TAIL
    lines = ["\t".join(header)]
    for r in out.select(header).iter_rows():
        lines.append("\t".join(_ssf_value(v, c) for v, c in zip(r, header, strict=True)))
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    meta = {
        "data_file_name": path.name,
        "file_type": "GWAS-SSF v1.0",
        "data_file_md5sum": md5,
        "is_harmonised": False,
        "is_sorted": True,
        "coordinate_system": "1-based",
        **meta,
    }
    Path(f"{path}-meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return meta


def _ssf_value(v: object, column: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "#NA"
    if column == "rsid" and v == ".":
        return "#NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def genomic_inflation(p: np.ndarray) -> float:
    """λGC: the median association chi-square (1 df) over its expected median, from P-values."""
    from scipy.stats import chi2

    p = p[np.isfinite(p) & (p > 0)]
    if p.size == 0:
        return float("nan")
    return float(chi2.isf(np.median(p), 1) / chi2.ppf(0.5, 1))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def manhattan(frame: pl.DataFrame, title: str) -> bytes:
    """Manhattan plot (PNG): -log10 P by position, chromosomes side by side, 5e-8 and 1e-5 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tested(frame)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    offset, ticks, labels = 0, [], []
    for i, chrom in enumerate(rows["#CHROM"].unique(maintain_order=True).to_list()):
        part = rows.filter(pl.col("#CHROM") == chrom)
        x = part["POS"].to_numpy() - part["POS"].min() + offset
        ax.scatter(x, part["LOG10_P"].to_numpy(), s=4, color=("#1f4e79", "#7aa6c2")[i % 2], rasterized=True)
        ticks.append(offset + (x.max() - offset) / 2 if x.size else offset)
        labels.append(chrom)
        offset = int(x.max()) + 1 if x.size else offset
    for p, style in ((GENOME_WIDE, "-"), (SUGGESTIVE, "--")):
        ax.axhline(-math.log10(p), color="#c0392b", linestyle=style, linewidth=0.8)
    ax.set_xticks(ticks, labels)
    ax.set_xlabel("chromosome")
    ax.set_ylabel("-log10 P")
    ax.set_title(title)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def qq(frame: pl.DataFrame, title: str) -> tuple[bytes, float]:
    """QQ plot (PNG) of observed against expected -log10 P, with λGC; returns the PNG and λGC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tested(frame)
    observed = np.sort(rows["LOG10_P"].to_numpy())[::-1]
    n = observed.size
    expected = -np.log10((np.arange(1, n + 1) - 0.5) / max(n, 1))
    lam = genomic_inflation(rows["P"].to_numpy())
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(expected, observed, s=4, color="#1f4e79", rasterized=True)
    top = max(expected.max() if n else 1.0, observed.max() if n else 1.0)
    ax.plot([0, top], [0, top], color="#c0392b", linewidth=0.8)
    ax.set_xlabel("expected -log10 P")
    ax.set_ylabel("observed -log10 P")
    ax.set_title(f"{title}\nλGC = {lam:.3f}")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data, lam


@dataclass(frozen=True)
class Gene:
    chrom: str
    start: int  # 0-based, BED
    end: int
    name: str


def read_bed(path: Path) -> list[Gene]:
    """Genes from a BED file (chrom, start, end, name); header and comment lines are skipped."""
    genes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.split("\t")
        try:
            genes.append(Gene(f[0], int(f[1]), int(f[2]), f[3] if len(f) > 3 else f"{f[0]}:{f[1]}"))
        except (IndexError, ValueError):
            from better.engine.errors import InputError

            raise InputError(f"{path}:{number}: not a BED line (chrom, start, end, name)") from None
    return genes


def nearest_gene(chrom: str, pos: int, genes: list[Gene]) -> tuple[str, int]:
    """The closest gene to a 1-based position and the distance in bases (0 inside the gene)."""
    best, dist = ".", -1
    for g in genes:
        if g.chrom != chrom:
            continue
        d = 0 if g.start < pos <= g.end else min(abs(pos - g.start - 1), abs(pos - g.end))
        if dist < 0 or d < dist:
            best, dist = g.name, d
    return best, dist


def top_hits(frame: pl.DataFrame, n: int, genes: list[Gene] | None) -> pl.DataFrame:
    """The ``n`` smallest P-values, with the nearest gene when an annotation is given."""
    rows = tested(frame).sort("LOG10_P", descending=True, maintain_order=True).head(n)
    cols = [
        c
        for c in (
            "#CHROM",
            "POS",
            "ID",
            "REF",
            "ALT",
            "A1",
            "OBS_CT",
            "BETA",
            "OR",
            "SE",
            "LOG(OR)_SE",
            "P",
            "LOG10_P",
            "A1_FREQ",
        )
        if c in rows.columns
    ]
    out = rows.select(cols)
    if genes is not None:
        near = [nearest_gene(c, p, genes) for c, p in zip(out["#CHROM"].to_list(), out["POS"].to_list(), strict=True)]
        out = out.with_columns(
            pl.Series("NEAREST_GENE", [g for g, _ in near]), pl.Series("GENE_DISTANCE", [d for _, d in near])
        )
    return out


def frame_tsv(frame: pl.DataFrame) -> str:
    cols = list(frame.columns)
    text = [
        [("NA" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))) for v in r]
        for r in frame.iter_rows()
    ]
    return "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in text)


def html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape('NA' if v is None else (f'{v:.4g}' if isinstance(v, float) else str(v)))}</td>"
            for v in r
        )
        + "</tr>"
        for r in frame.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1b1b1b; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; } th { background: #f3f5f7; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
.plots img { max-width: 100%; margin-right: 1em; vertical-align: top; }
.note { color: #8a4b00; }
"""


def report_html(title: str, sections: list[str], summary: str) -> str:
    """The self-contained report page (images inline, no outside resources)."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{summary}{''.join(sections)}</body></html>\n"
    )
