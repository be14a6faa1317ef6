"""PCA and PRUNE: the kernels against slow twins, the federated protocols against pooled references (numpy's
eigen-decomposition; a PLINK 2 ``--indep-pairwise`` written from its specification), the scores stored at a
station, and the query language."""

from __future__ import annotations

import itertools
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from better.engine.analyses import ld_prune
from better.engine.analyses.ld_prune import PruneProtocol, prune
from better.engine.analyses.pca import PCAProtocol
from better.engine.design import KEY_COLUMNS, Block, Design
from better.engine.errors import InputError
from better.engine.kernels.ld import pair_sums
from better.engine.kernels.standardized import missing_per_sample, standardized_rows
from better.engine.protocol import GenotypeData, Protocol, execute
from better.genomics.ingest import ingest_vcf
from better.genomics.packing import pack_genotypes
from better.genomics.store import Store
from better.query.parser import QueryError, parse
from better.station_api.config import Policy
from better.station_api.policy import release

#: PLINK 2's relative slack on the r² threshold and on frequency ties.
EPS = 2.0**-44


# -- helpers -----------------------------------------------------------------------------------------------
def keys_of(chrom: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    m = pos.shape[0]
    return {
        "chrom": np.asarray(chrom).astype(str),
        "pos": np.asarray(pos, dtype=np.int64),
        "ref": np.array(["A"] * m),
        "alt": np.array(["G"] * m),
    }


def genotype_counts(codes: np.ndarray) -> np.ndarray:
    """``(variants, 3)``: hom-ref, het and hom-alt calls."""
    return np.stack([(codes == g).sum(axis=1) for g in range(3)], axis=1).astype(np.int64)


def split(rng: np.random.Generator, n: int, stations: int) -> list[np.ndarray]:
    """The samples (pooled indices) of each station: random, some stations of 1 or 2 people."""
    order = rng.permutation(n)
    sizes = []
    left = n
    for s in range(stations - 1):
        most = left - (stations - 1 - s)  # leave at least one for each later station
        size = int(rng.integers(1, 3)) if rng.random() < 0.4 else int(rng.integers(1, max(2, most // 2 + 1)))
        sizes.append(min(size, most))
        left -= sizes[-1]
    sizes.append(left)
    return np.split(order, np.cumsum(sizes)[:-1])


def stations_of(
    keys: dict[str, np.ndarray],
    codes: np.ndarray,
    members: list[np.ndarray],
    include: np.ndarray,
    lacks: dict[int, int],
    block: int,
) -> list[GenotypeData]:
    """One in-memory station per member list: its own samples' codes in blocks of ``block`` variants
    (station ``s`` does not have variant ``lacks[s]`` at all)."""
    data = []
    for s, idx in enumerate(members):
        rows = np.array([v for v in range(codes.shape[0]) if lacks.get(s) != v], dtype=np.int64)
        blocks = [
            Block(
                keys={c: keys[c][rows[a : a + block]] for c in KEY_COLUMNS},
                packed=pack_genotypes(codes[np.ix_(rows[a : a + block], idx)]),
            )
            for a in range(0, rows.shape[0], block)
        ]
        design = Design(np.ones((idx.shape[0], 1)), np.zeros(idx.shape[0]), include[idx].copy(), ("intercept",))
        data.append(GenotypeData(design, lambda targets, b=blocks: b))
    return data


def drive(proto: Protocol, data: list[GenotypeData]) -> dict[str, np.ndarray]:
    while (task := proto.next_task()) is not None:
        proto.receive([execute(task, d) for d in data])
    return proto.result()


# -- kernels against slow twins --------------------------------------------------------------------------
def standardized_twin(
    codes: np.ndarray, rows: np.ndarray, mean: np.ndarray, scale: np.ndarray, include: np.ndarray
) -> np.ndarray:
    out = np.zeros((rows.shape[0], codes.shape[1]))
    for r, v in enumerate(rows):
        for i in range(codes.shape[1]):
            if codes[v, i] != 3 and include[i]:
                out[r, i] = (codes[v, i] - mean[r]) * scale[r]
    return out


def pair_sums_twin(codes: np.ndarray, span: np.ndarray) -> np.ndarray:
    out = np.zeros((codes.shape[0], int(span.max(initial=0)), 6), dtype=np.int64)
    for i in range(codes.shape[0]):
        for d in range(span[i]):
            both = (codes[i] != 3) & (codes[i + 1 + d] != 3)
            x = codes[i][both].astype(np.int64) - 1
            y = codes[i + 1 + d][both].astype(np.int64) - 1
            out[i, d] = [both.sum(), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
    return out


@st.composite
def code_blocks(draw: st.DrawFn) -> tuple[np.ndarray, np.random.Generator]:
    n = draw(st.integers(1, 23))
    m = draw(st.integers(0, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = draw(st.sampled_from([[0.25] * 4, [0.6, 0.25, 0.1, 0.05], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]))
    return rng.choice(4, size=(m, n), p=p).astype(np.int8), rng


@settings(max_examples=60)
@given(code_blocks())
def test_standardized_rows__equals_twin(block: tuple[np.ndarray, np.random.Generator]) -> None:
    codes, rng = block
    m, n = codes.shape
    rows = rng.integers(0, m, size=int(rng.integers(0, 2 * m + 1))) if m else np.zeros(0, dtype=np.int64)
    mean = rng.uniform(0.0, 2.0, size=rows.shape[0])
    scale = rng.uniform(0.5, 20.0, size=rows.shape[0])
    include = rng.random(n) < 0.8
    got = standardized_rows(pack_genotypes(codes), rows, mean, scale, include)
    assert got.shape == (rows.shape[0], n)
    np.testing.assert_allclose(got, standardized_twin(codes, rows, mean, scale, include), rtol=1e-15, atol=0)


@settings(max_examples=60)
@given(code_blocks())
def test_missing_per_sample__equals_twin(block: tuple[np.ndarray, np.random.Generator]) -> None:
    codes, _ = block
    got = missing_per_sample(pack_genotypes(codes), codes.shape[1])
    assert got.tolist() == (codes == 3).sum(axis=0).tolist()


@settings(max_examples=60)
@given(code_blocks())
def test_pair_sums__equals_twin(block: tuple[np.ndarray, np.random.Generator]) -> None:
    codes, rng = block
    m = codes.shape[0]
    span = np.array([rng.integers(0, m - i) for i in range(m)], dtype=np.int64)
    got = pair_sums(codes, span)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, pair_sums_twin(codes, span))


def test_pair_sums__refuses_a_span_past_the_last_row() -> None:
    codes = np.zeros((3, 4), dtype=np.int8)
    for span in ([0, 2, 0], [3, 0, 0], [0, 0, 1], [-1, 0, 0]):
        with pytest.raises(ValueError, match="span"):
            pair_sums(codes, np.array(span))
    assert pair_sums(codes, np.array([2, 1, 0])).shape == (3, 2, 6)


# -- PCA against the pooled eigen-decomposition ----------------------------------------------------------
def structured_cohort(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``(m, n)`` codes of two populations with different allele frequencies, 2% missing calls; variant 0
    monomorphic."""
    group = rng.random(n) < rng.uniform(0.2, 0.5)
    f0 = rng.uniform(0.05, 0.5, size=m)
    f1 = np.clip(f0 + rng.normal(0.0, 0.2, size=m), 0.02, 0.98)
    g = rng.binomial(2, np.where(group[None, :], f1[:, None], f0[:, None]))
    codes = np.where(rng.random((m, n)) < 0.02, 3, g).astype(np.int8)
    codes[0] = 0
    return codes


def standardized_pooled(codes: np.ndarray) -> np.ndarray:
    """``(samples, variants)`` Z: ``(g - 2p) / sqrt(2p(1 - p))`` with the pooled ALT frequency over called
    samples; 0 where missing, and for a variant with one allele."""
    called = codes != 3
    alt = np.where(called, codes, 0).sum(axis=1)
    p = alt / (2.0 * np.maximum(called.sum(axis=1), 1))
    poly = (p > 0) & (p < 1)
    scale = np.where(poly, 1.0 / np.sqrt(2.0 * p * (1.0 - p) + ~poly), 0.0)
    z = np.where(called, (codes - 2.0 * p[:, None]) * scale[:, None], 0.0)
    return z.T


def plink_grm(codes: np.ndarray) -> np.ndarray:
    """PLINK 2's default ``--pca`` matrix: ``(ZZ')_jk`` over the variants both are called at,
    ``M - miss_j - miss_k + miss_jk``, and ``M - miss_j`` on the diagonal."""
    z = standardized_pooled(codes)
    miss = (codes == 3).T.astype(np.float64)  # (samples, variants)
    both = miss @ miss.T
    per = miss.sum(axis=1)
    denominator = codes.shape[0] - per[:, None] - per[None, :] + both
    np.fill_diagonal(denominator, codes.shape[0] - per)
    return np.asarray(z @ z.T / denominator)


def relative_gaps(w: np.ndarray, k: int) -> np.ndarray:
    """Per value of the first ``k`` (descending): the relative distance to its nearest neighbour."""
    return np.array([min(abs(w[i] - w[j]) for j in (i - 1, i + 1) if 0 <= j < w.shape[0]) / w[i] for i in range(k)])


@st.composite
def pca_cases(draw: st.DrawFn) -> dict:
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "n": draw(st.integers(60, 150)),
        "m": draw(st.integers(40, 120)),
        "stations": draw(st.integers(1, 4)),
        "exclude": draw(st.booleans()),
        "block": draw(st.sampled_from([7, 32, 1000])),
        "store": draw(st.booleans()),
    }


# no shrinking: a failing example runs the iteration to its cap of rounds, and each shrink step again
@settings(max_examples=15, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(pca_cases())
def test_pca__equals_the_pooled_eigen_decomposition(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    n, m, k = case["n"], case["m"], 3
    codes = structured_cohort(rng, n, m)
    members = split(rng, n, case["stations"])
    include = (rng.random(n) > 0.05) if case["exclude"] else np.ones(n, dtype=bool)
    lacks: dict[int, int] = {}
    if len(members) > 1:
        codes[1, members[0]] = 3  # every call missing at the first station
        lacks[1] = 2  # the second station does not have variant 2 at all
        codes[2, members[1]] = 3
        for v, s in ((1, 0), (2, 1)):  # both still polymorphic among the others' people
            others = np.setdiff1d(np.arange(n), members[s])
            include[others[0]] = True
            codes[v, others[0]] = 1
    analysed = codes[:, include]  # the people analysed (a variant a station lacks: missing there)
    genotypes = np.column_stack([genotype_counts(analysed), (analysed == 3).sum(axis=1)])
    keys = keys_of(np.array(["1"] * m), np.cumsum(rng.integers(1, 1000, size=m)))
    data = stations_of(keys, codes, members, include, lacks, case["block"])
    name = "t" if case["store"] else ""
    proto = PCAProtocol(keys=keys, genotypes=genotypes, k=k, name=name)  # the monomorphic variant counts in M
    table = drive(proto, data)
    res = proto.pca()
    assert res.converged, (proto.rounds, res.residuals)
    assert proto.scored == int(include.sum())
    assert list(table["PC"]) == ["PC1", "PC2", "PC3"]

    # the reference: the pooled Z of the people analysed, M counting the monomorphic variant too
    z = standardized_pooled(analysed)
    w, v = np.linalg.eigh(z @ z.T / m)
    w, v = w[::-1], v[:, ::-1]
    gaps = relative_gaps(w, k)
    np.testing.assert_allclose(res.trace, np.trace(z @ z.T) / m, rtol=1e-10)
    theta = res.eigenvalues_meanimpute * m
    assert res.loadings.shape == (m, k)
    assert np.abs(res.loadings[0]).max() < 1e-12  # the monomorphic variant: no weight
    np.testing.assert_allclose(np.linalg.norm(res.loadings, axis=0), 1.0, rtol=1e-12)
    top = np.abs(res.loadings).argmax(axis=0)
    assert (res.loadings[top, np.arange(k)] > 0).all()  # signs: each loading's largest entry is positive
    np.testing.assert_allclose(res.weights, res.loadings / np.sqrt(theta), rtol=1e-12)
    # the eigenvalues of every PC not tied with a neighbour
    for i in np.flatnonzero(gaps > 1e-6):
        np.testing.assert_allclose(res.eigenvalues_meanimpute[i], w[i], rtol=1e-8, err_msg=f"PC{i + 1}")
    # PLINK's default eigenvalues (its missingness correction), to second order in the missing fraction
    # (measured: within 4.8e-3 in these small cohorts, where meanimpute's are up to 5e-2 off)
    plink = np.linalg.eigvalsh(plink_grm(analysed))[::-1][:k]
    np.testing.assert_allclose(res.eigenvalues, plink, rtol=1e-2)
    # a PC the centre calls separated is, and its eigenvector is determined: it is numpy's
    assert (res.separated[gaps > 2e-2]).all() and not res.separated[gaps < 5e-3].any(), (gaps, res.separated)
    assert res.separated[0]  # the populations
    for i in np.flatnonzero(res.separated):
        loading = z.T @ v[:, i]
        assert abs(res.loadings[:, i] @ loading) / np.linalg.norm(loading) > 1 - 1e-8, f"PC{i + 1}"
    if not name:
        assert all(not d.covariates for d in data)
        return
    scores = np.full((n, k), np.nan)
    for idx, d in zip(members, data, strict=True):
        assert d.covariates["t"].shape == (idx.shape[0], k)
        scores[idx] = d.covariates["t"]
    assert np.isnan(scores[~include]).all() and np.isfinite(scores[include]).all()
    scores = scores[include]
    # the stations' scores are the pooled Z times the released loadings over sqrt(theta)
    np.testing.assert_allclose(scores, z @ res.weights, rtol=0, atol=1e-10)
    for i in np.flatnonzero(res.separated):  # unit eigenvectors of ZZ' (PLINK's .eigenvec)
        np.testing.assert_allclose(np.linalg.norm(scores[:, i]), 1.0, rtol=1e-6)
        assert abs(scores[:, i] @ v[:, i]) / np.linalg.norm(scores[:, i]) > 1 - 1e-8, f"PC{i + 1}"


@pytest.mark.parametrize(
    ("n", "m", "monomorphic"),
    [
        (60, 45, 0),  # blocks of 13 columns fill the 45 dimensions in 4 rounds
        (100, 50, 1),  # X'X has rank 49: a variant with one allele is a zero row of X
        (30, 100, 0),  # more variants than people: X'X has rank 29
    ],
)
def test_pca__small_problems__the_krylov_basis_outgrows_the_rank(n: int, m: int, monomorphic: int) -> None:
    """The iteration must still end with the exact eigenpairs (an exhausted Krylov space is an invariant
    subspace), and no weight on a variant with one allele."""
    rng = np.random.default_rng(5)
    codes = structured_cohort(rng, n, m + 1)[1:]
    codes[:monomorphic] = 0
    genotypes = np.column_stack([genotype_counts(codes), (codes == 3).sum(axis=1)])
    keys = keys_of(np.array(["1"] * m), np.arange(1, m + 1) * 10)
    data = stations_of(keys, codes, [np.arange(n // 2), np.arange(n // 2, n)], np.ones(n, dtype=bool), {}, 1000)
    proto = PCAProtocol(keys=keys, genotypes=genotypes, k=3, name="t")
    drive(proto, data)
    res = proto.pca()
    z = standardized_pooled(codes)
    w, v = np.linalg.eigh(z @ z.T / m)
    assert res.converged and proto.rounds < 20, (proto.rounds, res.residuals)
    np.testing.assert_allclose(res.eigenvalues_meanimpute, w[::-1][:3], rtol=1e-8)
    assert np.abs(res.loadings[:monomorphic]).max(initial=0.0) < 1e-12
    scores = np.concatenate([d.covariates["t"] for d in data])
    for i in np.flatnonzero(res.separated):
        assert abs(scores[:, i] @ v[:, -1 - i]) > 1 - 1e-8, f"PC{i + 1}"


def test_pca__refuses_what_it_cannot_compute() -> None:
    keys = keys_of(np.array(["1"] * 5), np.arange(1, 6))
    genotypes = np.array([[3, 4, 3, 0]] * 5)
    for k in (0, 51, 5):  # 1 to 50 components, and fewer than the variants
        with pytest.raises(InputError):
            PCAProtocol(keys=keys, genotypes=genotypes, k=k)
    one_allele = genotypes.copy()
    one_allele[1:3] = [[10, 0, 0, 0], [0, 0, 7, 3]]  # count in M, but not as variants with both alleles
    PCAProtocol(keys=keys, genotypes=one_allele, k=2)
    with pytest.raises(InputError, match="both alleles"):
        PCAProtocol(keys=keys, genotypes=one_allele, k=3)


@pytest.mark.parametrize("few", [1, 2, 4])
def test_pca_scores__a_withheld_count_releases_nothing_about_the_few(few: int) -> None:
    """A station with 1 to 4 people scored, in the clear: its count is withheld, and so are the sums over
    those people (from which one person's squared scores would follow)."""
    rng = np.random.default_rng(few)
    n, m = 120, 80
    codes = structured_cohort(rng, n, m)
    codes[1, -1] = 3  # the last person lacks a call or two
    codes[5, -1] = 3
    genotypes = np.column_stack([genotype_counts(codes), (codes == 3).sum(axis=1)])
    keys = keys_of(np.array(["1"] * m), np.arange(1, m + 1) * 10)
    data = stations_of(keys, codes, [np.arange(n - few), np.arange(n - few, n)], np.ones(n, dtype=bool), {}, 1000)
    proto = PCAProtocol(keys=keys, genotypes=genotypes, k=3, name="t")
    while (task := proto.next_task()) is not None:
        results = [execute(task, d) for d in data]
        if task["kind"] == "pca_scores":
            out, summary = release("pca_scores", results[1], Policy())
            assert summary["withheld"] and int(out["n"]) == 0
            for name, a in out.items():
                assert name in ("n", "withheld") or not np.asarray(a).any(), (name, a)
        proto.receive(results)
    assert proto.phase == "done"


# -- PRUNE against PLINK 2's --indep-pairwise (order 1), written from its specification -------------------
def r2_above(a: np.ndarray, b: np.ndarray, thr: float) -> bool:
    """PLINK's test on the samples called at both: ``cov² > thr v1 v2`` in integer sums of ``x = g - 1``."""
    both = (a != 3) & (b != 3)
    x = a[both].astype(np.int64) - 1
    y = b[both].astype(np.int64) - 1
    n = int(both.sum())
    cov = float(n * int((x * y).sum()) - int(x.sum()) * int(y.sum()))
    v1 = float(n * int((x * x).sum()) - int(x.sum()) ** 2)
    v2 = float(n * int((y * y).sum()) - int(y.sum()) ** 2)
    return cov * cov > thr * v1 * v2


def greedy_twin(chrom, pos, counts, high, window: int, step: int, kb: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    """PLINK 2 v2.00a3.5's pruning (PLINK 1.9's order) from ``high(i, k)`` (global indices, ``i < k``);
    ``window`` in variants, or (``kb``) in bases. Returns the removed mask."""
    c0, c1, c2 = counts[:, 0], counts[:, 1], counts[:, 2]
    called = c0 + c1 + c2
    dead = ((c0 == 0) & (c2 == 0)) | (c0 == called) | (c2 == called)  # one genotype, or none: removed
    ref = np.array([(2 * a + b) / (2 * t) if t else 0.5 for a, b, t in zip(c0, c1, called, strict=True)])
    majf = np.maximum(ref, 1 - ref)
    removed = np.zeros(pos.shape[0], dtype=bool)
    pieces = []
    for c in dict.fromkeys(chrom.tolist()):  # chromosomes; kb: also cut where a gap exceeds the window
        idx = np.flatnonzero(chrom == c).tolist()
        piece = [idx[0]]
        for a, b in itertools.pairwise(idx):
            if kb and pos[b] >= window and pos[b] - window > pos[a]:
                pieces.append(piece)
                piece = []
            piece.append(b)
        pieces.append(piece)
    for s in (p for p in pieces if len(p) > 1):
        size, bp = len(s), [int(pos[v]) for v in s]

        def gone(v: int, s: list[int] = s) -> bool:
            return bool(removed[s[v]])

        if kb:
            end = 1
            while end < size and bp[end] <= bp[0] + window:
                end += 1
        else:
            end = min(window, size)
        start, loaded, win, first = 0, 0, [], {}
        while True:
            for v in range(loaded, end):
                win.append(v)
                removed[s[v]] |= dead[s[v]]
                first[v] = v + 1
            loaded = end
            while True:  # until a pass removes nothing
                before = sum(gone(v) for v in win)
                for fp, i in enumerate(win):
                    if gone(i) or first[i] >= end:
                        continue
                    for q in range(fp + 1, len(win)):
                        k = win[q]
                        if gone(k) or k < first[i] or not high(s[i], s[k]):
                            continue
                        if majf[s[i]] > majf[s[k]] * (1 + EPS):
                            removed[s[i]] = True
                        else:
                            removed[s[k]] = True
                            after = [z for z in win[q + 1 :] if not gone(z)]
                            first[i] = after[0] if after else end
                        break
                    else:
                        first[i] = end
                if sum(gone(v) for v in win) == before:
                    break
            if end == size:
                break
            if kb:
                beyond = bp[end]
                start += 1
                while bp[start] < beyond - window:
                    start += 1
                end += 1
                while end < size and bp[end] <= bp[start] + window:
                    end += 1
            else:
                start += step
                end = min(start + window, size)
            win = [v for v in win if not gone(v) and v >= start]
    return removed


def prune_twin(chrom: np.ndarray, pos: np.ndarray, codes: np.ndarray, window: int, step: int, r2: float, kb: bool):  # type: ignore[no-untyped-def]
    """``plink2 --indep-pairwise window[kb] step r2`` on the pooled codes: the removed mask."""
    thr = r2 * (1 + EPS)
    memo: dict[tuple[int, int], bool] = {}

    def high(i: int, k: int) -> bool:
        if (i, k) not in memo:
            memo[i, k] = r2_above(codes[i], codes[k], thr)
        return memo[i, k]

    bases = int(window * 1000 * (1 + EPS)) if kb else window
    return greedy_twin(chrom, pos, genotype_counts(codes), high, bases, step, kb)


def linked_cohort(rng: np.random.Generator, n: int, m: int, chromosomes: int, spread: bool):  # type: ignore[no-untyped-def]
    """Codes with LD (each haplotype variant mostly a noisy copy of the previous), 2% missing calls,
    monomorphic, all-het, all-missing and duplicated variants; sorted keys on ``chromosomes`` chromosomes
    plus one with a single variant; ``spread``: positions kilobases apart with larger gaps."""
    hap = np.zeros((m, 2 * n), dtype=np.int8)
    for j in range(m):
        if j and rng.random() < 0.7:
            hap[j] = hap[j - 1] ^ (rng.random(2 * n) < rng.choice([0.0, 0.02, 0.1, 0.3]))
        else:
            hap[j] = rng.random(2 * n) < rng.uniform(0.02, 0.6)
    codes = (hap[:, :n] + hap[:, n:]).astype(np.int8)
    kind = rng.random(m)
    codes[kind < 0.03] = 0
    codes[(kind >= 0.03) & (kind < 0.05)] = 1
    codes[(kind >= 0.05) & (kind < 0.07)] = 2
    codes = np.where(rng.random((m, n)) < 0.02, 3, codes).astype(np.int8)
    codes[(kind >= 0.07) & (kind < 0.08)] = 3
    chrom = np.sort(rng.integers(1, chromosomes + 1, size=m)).astype(str)
    pos = np.zeros(m, dtype=np.int64)
    for c in np.unique(chrom):
        at = np.flatnonzero(chrom == c)
        steps = rng.integers(1, 1500, size=at.size) if spread else rng.integers(1, 100, size=at.size)
        if spread:
            big = rng.random(at.size) < 0.08
            steps[big] = rng.integers(5000, 30000, size=int(big.sum()))
        pos[at] = np.cumsum(steps)
    return np.r_[chrom, ["9"]], np.r_[pos, [100]], np.r_[codes, codes[:1]]


@st.composite
def prune_cases(draw: st.DrawFn) -> dict:
    kb = draw(st.booleans())
    if kb:
        window, step = draw(st.integers(1, 8)), 1
    else:
        window = draw(st.integers(2, 25))
        step = draw(st.integers(1, window))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "n": draw(st.integers(20, 100)),
        "m": draw(st.integers(20, 150)),
        "chromosomes": draw(st.integers(1, 3)),
        "stations": draw(st.integers(1, 4)),
        "exclude": draw(st.booleans()),
        "kb": kb,
        "window": window,
        "step": step,
        "r2": draw(st.sampled_from([0.05, 0.1, 0.2, 0.5, 0.8, 0.95])),
        "pairs_per_round": draw(st.sampled_from([5, 60, ld_prune.PAIRS_PER_ROUND])),
        "block": draw(st.sampled_from([9, 1000])),
    }


@settings(max_examples=100)
@given(prune_cases())
def test_prune__equals_plink2_indep_pairwise(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    n = case["n"]
    chrom, pos, codes = linked_cohort(rng, n, case["m"], case["chromosomes"], spread=case["kb"])
    m = pos.shape[0]
    members = split(rng, n, case["stations"])
    include = (rng.random(n) > 0.1) if case["exclude"] else np.ones(n, dtype=bool)
    lacks = {1: int(rng.integers(0, m))} if len(members) > 1 else {}
    if lacks:  # the second station does not have that variant: its people are missing there
        codes[lacks[1], members[1]] = 3
    counted = np.where(include[None, :], codes, 3)
    keys = keys_of(chrom, pos)
    data = stations_of(keys, codes, members, include, lacks, case["block"])
    with mock.patch.object(ld_prune, "PAIRS_PER_ROUND", case["pairs_per_round"]):
        proto = PruneProtocol(
            keys=keys,
            genotypes=genotype_counts(counted),
            window=case["window"],
            step=case["step"],
            r2=case["r2"],
            kb=case["kb"],
        )
    table = drive(proto, data)
    want = prune_twin(chrom, pos, counted, case["window"], case["step"], case["r2"], case["kb"])
    assert proto.removed is not None
    assert np.flatnonzero(proto.removed).tolist() == np.flatnonzero(want).tolist()
    assert list(table["PRUNE"]) == ["out" if r else "in" for r in want]
    for c in KEY_COLUMNS:
        np.testing.assert_array_equal(table[c], keys[c])
    assert not want[-1]  # the chromosome of one variant keeps it


@settings(max_examples=60)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_prune__from_any_verdicts__equals_the_greedy_twin(seed: int, kb: bool) -> None:
    """The greedy rule alone, on arbitrary high-LD verdicts and frequencies with many ties."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 60))
    chrom = np.sort(rng.integers(1, 4, size=m)).astype(str)
    pos = np.concatenate([np.cumsum(rng.integers(1, 700, size=int((chrom == c).sum()))) for c in np.unique(chrom)])
    genotypes = rng.integers(0, 4, size=(m, 3))
    hits = rng.random((m, m)) < rng.choice([0.05, 0.3, 0.8])
    window = int(rng.integers(1000, 4000)) if kb else int(rng.integers(2, 12))
    step = 1 if kb else int(rng.integers(1, window + 1))
    got = prune(chrom, pos.astype(np.int64), genotypes, hits, window, step, kb)
    want = greedy_twin(chrom, pos, genotypes, lambda i, k: bool(hits[i, k - i - 1]), window, step, kb)
    assert got.tolist() == want.tolist()


def test_prune__a_window_reaching_too_many_variants_is_refused() -> None:
    m = ld_prune.MAX_SPAN + 2
    with pytest.raises(InputError, match="window"):
        PruneProtocol(
            keys=keys_of(np.array(["1"] * m), np.arange(1, m + 1)),
            genotypes=np.ones((m, 3)),
            window=10,
            step=1,
            r2=0.2,
            kb=True,
        )


def test_prune__a_withheld_variant_leaves_the_candidates_and_the_rounds_start_again() -> None:
    keys = keys_of(np.array(["1"] * 4), np.arange(1, 5))
    proto = PruneProtocol(keys=keys, genotypes=np.ones((4, 3), dtype=np.int64), window=3, step=1, r2=0.2)
    task = proto.next_task()
    assert task is not None
    proto.receive([{"pairs": np.zeros((4, 2, 6), dtype=np.int64), "withheld": np.array([0, 1, 0, 0], dtype=bool)}])
    again = proto.next_task()
    assert again is not None and again["key_pos"].tolist() == [1, 3, 4] and proto.left_out == 1
    proto.receive([{"pairs": np.zeros((3, 2, 6), dtype=np.int64)}])
    assert proto.next_task() is None
    assert proto.result()["pos"].tolist() == [1, 3, 4]


# -- scores stored at a station ----------------------------------------------------------------------------
def catalog_view(store: Store, dataset: str) -> dict[str, list]:
    with store.catalog() as con:
        cur = con.execute(f'SELECT * FROM "phenotypes_{dataset}" ORDER BY sample_index')
        names = [c[0] for c in cur.description]
        return dict(zip(names, (list(col) for col in zip(*cur.fetchall(), strict=True)), strict=True))


def by_index(table: pa.Table, column: str) -> dict[int, float | None]:
    return dict(zip(table.column("sample_index").to_pylist(), table.column(column).to_pylist(), strict=True))


def test_save_covariates__shows_in_phenotypes_catalog_and_summary(tmp_path: Path, small_cohort: Path) -> None:
    store = Store.create(tmp_path / "station")
    ingest_vcf(store, "c", str(small_cohort / "milano.vcf.gz"), str(small_cohort / "milano.pheno.tsv"))
    ds = store.dataset("c")
    before = ds.phenotypes()
    n = ds.samples().num_rows
    assert {"pc1", "pc2"} <= set(before.column_names) and before.num_rows == n
    values = np.random.default_rng(1).normal(size=(n, 3))
    values[4, :] = np.nan  # not scored
    ds.save_covariates("gpc", values)

    def check(values: np.ndarray) -> None:
        k = values.shape[1]
        wanted = [f"gpc{i + 1}" for i in range(k)]
        ph = Store.open(store.path).dataset("c").phenotypes()
        assert ph.num_rows == n
        assert [c for c in ph.column_names if c.startswith("gpc")] == wanted
        assert set(before.column_names) <= set(ph.column_names)
        view = catalog_view(store, "c")
        assert [c for c in view if c.startswith("gpc")] == wanted
        assert view["sample_index"] == list(range(n))
        assert view["pc1"] == [by_index(before, "pc1")[i] for i in range(n)]  # the ingested phenotypes stay
        for c, name in enumerate(wanted):
            want = [None if np.isnan(x) else float(x) for x in values[:, c]]
            got = by_index(ph, name)
            assert [got[i] for i in range(n)] == want
            assert view[name] == want
        (info,) = [d for d in store.summary() if d["name"] == "c"]
        assert sorted(c for c in info["phenotype_columns"] if c.startswith("gpc")) == wanted
        assert all(info["phenotype_columns"][c] == "float64" for c in wanted)

    check(values)
    again = np.random.default_rng(2).normal(size=(n, 2))  # stored again: replaces gpc1..gpc3
    ds.save_covariates("gpc", again)
    check(again)
    with pytest.raises(InputError, match="pc1"):  # the ingested pc1..pc4
        ds.save_covariates("pc", np.zeros((n, 2)))
    ds.save_covariates("x", np.zeros((n, 12)))
    with pytest.raises(InputError, match="x11"):  # x11, x12 are x's
        ds.save_covariates("x1", np.zeros((n, 2)))
    check(again)


# -- the query language ------------------------------------------------------------------------------------
def test_parse__pca_and_prune() -> None:
    q = parse("PCA 10 ON 22 WHERE maf >= 0.05 PRUNE 50 5 0.1 AS pc")
    assert q.verb == "pca" and q.pcs == 10
    assert q.prune is not None
    assert (q.prune.window, q.prune.kb, q.prune.step, q.prune.r2) == (50, False, 5, 0.1)
    assert q.store_as is not None and q.store_as.text == "pc"
    assert [r.chrom for r in q.regions] == ["22"]
    assert [c.column.text for c in q.variant_conditions] == ["maf"]
    q = parse("PRUNE 200kb 0.2")
    assert q.verb == "prune" and q.pcs == 0 and q.store_as is None
    assert q.prune is not None and (q.prune.window, q.prune.kb, q.prune.step, q.prune.r2) == (200, True, 1, 0.2)
    q = parse("prune 20 0.5 where maf >= 0.01")
    assert q.prune is not None and (q.prune.window, q.prune.kb, q.prune.step, q.prune.r2) == (20, False, 1, 0.5)
    q = parse("PCA 4")
    assert q.verb == "pca" and q.pcs == 4 and q.prune is None and q.store_as is None
    q = parse("PRUNE 50 5 0")  # r² 0 is allowed, as in plink2 (every correlated pair is pruned)
    assert q.prune is not None and q.prune.r2 == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "PCA 0",
        "PCA 51",
        "PRUNE 1 0.1",
        "PRUNE 50 60 0.1",
        "PRUNE 200kb 5 0.1",
        "PRUNE 50 5 1.5",
        "PRUNE 50 0 0.1",
        "PRUNE 50 5 1",
        "PRUNE 50 5 -0.1",
        "PCA 10 AS 1pc",
        "PCA 10 AS abcdefghijabcdefghijabcdefghijx",
    ],
)
def test_parse__pca_and_prune_errors(text: str) -> None:
    with pytest.raises(QueryError):
        parse(text)
