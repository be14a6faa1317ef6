"""What a GWAS job writes: PLINK-style tables, GWAS-SSF files, Manhattan and QQ plots, top hits, and a
self-contained HTML report.

Every function here is a pure function of its inputs (no clocks), so a resumed job writes the same bytes
as an uninterrupted one; only the report's timings differ. Tables are written by
:mod:`better.genomics.tsv` (its precision rule: 6 significant digits); the report's HTML comes from the
fragments of ``templates/report.html`` (package data), filled by :func:`render`, which escapes every value
that is not markup made by another fragment.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import io
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import polars as pl
import yaml

from better.engine.errors import InputError
from better.genomics.tsv import cell, tsv_text, write_tsv
from better.query.output import rows_as_text

SSF_LINEAR = ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta", "standard_error"]
SSF_LOGISTIC = ["chromosome", "base_pair_location", "effect_allele", "other_allele", "odds_ratio", "standard_error"]
SSF_TAIL = ["effect_allele_frequency", "p_value", "neg_log_10_p_value", "rsid", "variant_id", "n"]
GENOME_WIDE, SUGGESTIVE = 5e-8, 1e-5


def write_glm(frame: pl.DataFrame, path: Path) -> None:
    """The PLINK 2-style table (``.glm.linear`` / ``.glm.logistic``): withheld values as ``withheld``.

    Parameters
    ----------
    frame
        The job's rows for one phenotype, in :mod:`better.query.output`'s layout.
    path
        The file to write.
    """
    write_tsv(path, [c for c in frame.columns if c != "WITHHELD"], rows_as_text(frame))


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
            "rsid": [None if v == "." else v for v in rows["ID"].to_list()],  # no ID is missing: #NA
            "variant_id": [
                f"{c}_{p}_{r}_{a}"
                for c, p, r, a in zip(rows["#CHROM"], rows["POS"], rows["REF"], rows["ALT"], strict=True)
            ],
            "n": rows["OBS_CT"],
        }
    )
    header = (SSF_LINEAR if model == "linear" else SSF_LOGISTIC) + SSF_TAIL
    data = tsv_text(header, out.select(header).iter_rows(), na="#NA").encode()
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


def scree(frame: pl.DataFrame) -> bytes:
    """Scree plot (PNG) of a PCA table: each PC's eigenvalue, and the variance it explains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(1, frame.height + 1)
    ax.plot(x, frame["EIGENVALUE"].to_numpy(), marker="o", color="#1f4e79")
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_xlabel("principal component")
    ax.set_ylabel("eigenvalue (GRM)")
    share = frame["VARIANCE_EXPLAINED"].to_numpy()
    ax.set_title(f"PCs 1-{frame.height} explain {100 * share.sum():.1f}% of the variance")
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


#: Significant digits of a number in the report's tables (shown to a reader; the files keep 6).
SHOWN_DIGITS = 4


class Markup(str):
    """HTML made by :func:`render` (or joined from such): inserted into another fragment as it is."""


@cache
def _fragments() -> dict[str, Template]:
    """The named fragments of ``templates/report.html`` (each starts at a ``<!-- fragment: NAME -->`` line)."""
    text = resources.files("better.jobs").joinpath("templates/report.html").read_text(encoding="utf-8")
    parts = re.split(r"^<!-- fragment: (\w+) -->\n", text, flags=re.MULTILINE)
    return {name: Template(body.removesuffix("\n")) for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def render(fragment: str, **values: object) -> Markup:
    """Fill a fragment of the report's template; every value is HTML-escaped unless it is :class:`Markup`.

    Parameters
    ----------
    fragment
        The fragment's name in ``templates/report.html``.
    **values
        Its ``$placeholders``: :class:`Markup` as it is, anything else as escaped text.

    Returns
    -------
    Markup
        The filled fragment.

    Examples
    --------
    >>> render("img", alt="<QQ>", png="AAAA")
    '<img alt="&lt;QQ&gt;" src="data:image/png;base64,AAAA">'
    """
    return Markup(
        _fragments()[fragment].substitute(
            {k: v if isinstance(v, Markup) else html.escape(str(v)) for k, v in values.items()}
        )
    )


def join(parts: list[Markup]) -> Markup:
    """Fragments one after the other, as one piece of markup."""
    return Markup("".join(parts))


def html_table(frame: pl.DataFrame) -> Markup:
    """A table of ``frame``, numbers to :data:`SHOWN_DIGITS` significant digits.

    Parameters
    ----------
    frame
        The rows to show.

    Returns
    -------
    Markup
        The ``<table>``.
    """
    head = join([render("th", value=c) for c in frame.columns])
    rows = [join([render("td", value=cell(v, digits=SHOWN_DIGITS)) for v in r]) for r in frame.iter_rows()]
    body = join([render("row", cells=r) for r in rows])
    return render("table", head=head, body=body)


def img(png: bytes, alt: str) -> Markup:
    """An inline PNG image (a data URL: the report needs no other file).

    Parameters
    ----------
    png
        The image's bytes.
    alt
        Its text alternative.

    Returns
    -------
    Markup
        The ``<img>``.
    """
    return render("img", alt=alt, png=base64.b64encode(png).decode())
