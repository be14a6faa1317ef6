"""PCA: principal components of the pooled, variance-standardised genotypes, with the sample scores kept
at the stations.

Let ``X`` be the pooled ``people x variants`` matrix of standardised genotypes (PLINK 2's ``--pca``:
``(g - 2p) / sqrt(2p(1 - p))`` with ``p`` the pooled ALT frequency, 0 for a missing call). Its principal
components are the eigenvectors of ``A = X'X = sum over stations of X_s'X_s`` (variants x variants).
No one holds ``X``; each station can multiply by its own ``X_s``. A ``pca_product`` round sends a basis
``Q`` (variants x b) and each station returns ``X_s'(X_s Q)``: it computes its people's scores ``X_s Q``
and keeps them, releasing only their products with its genotypes, a sum over its people per variant.
Masked, the coordinator sees only ``A Q``.

The centre runs block Lanczos with full reorthogonalisation on those products: the Ritz values of ``A``
on the Krylov space of a random start converge in far fewer rounds than plain subspace iteration, and
``Q'AQ`` comes from the products already returned, so the Rayleigh-Ritz step costs no extra round. It
stops when every wanted Ritz pair has a relative residual ``||A y - theta y|| / theta`` under
``tolerance``, or after ``max_rounds``.

Eigenvalues are reported as PLINK 2 reports them: those of the genomic relationship matrix
``XX' / M`` (``M`` variants). The last round, ``pca_scores``, sends the loadings: each station computes
its people's scores ``X_s y / sqrt(theta)`` (the unit eigenvectors of ``XX'``, PLINK 2's ``.eigenvec``)
and stores them as covariates ``name1..namek`` of the dataset; only the number of people scored leaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from better.engine.design import KEY_COLUMNS, Block, Targets
from better.engine.errors import InputError
from better.engine.kernels.standardized import standardized_rows
from better.engine.protocol import Protocol
from better.engine.rounds import Analysis, Result, RoundKind, StateArray, StationData, Task

#: Most principal components a query may ask for, and most basis columns a round may send.
MAX_PCS = 50
MAX_BASIS = 128
#: Variants standardised at once (a block of 1,024 x 10,000 samples is 80 MB of float64).
CHUNK = 1024
#: A name the scores are stored under: an identifier, short enough for ``name50``.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}")


# -- station side ----------------------------------------------------------------------------------------
def selected(data: StationData, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """The task's variants at this station: their packed rows ``(found, bytes)`` and their row in the task
    (a variant this station lacks is not among them: all its people are missing there, i.e. at the mean)."""
    columns = [np.asarray(task[f"key_{c}"]).tolist() for c in KEY_COLUMNS]
    wanted = {key: i for i, key in enumerate(zip(*columns, strict=True))}
    few = len(wanted) <= 256
    targets: Targets | None = {c: np.asarray(task[f"key_{c}"]) for c in KEY_COLUMNS} if few else None
    packed: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for b in data.blocks(targets):
        at = _rows_of(b, wanted)
        found = at >= 0
        if found.any():
            packed.append(np.ascontiguousarray(b.packed[found]))
            rows.append(at[found])
    width = (data.design.include.shape[0] + 3) // 4
    if not packed:
        return np.zeros((0, width), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate(packed), np.concatenate(rows)


def _rows_of(block: Block, wanted: dict[tuple[Any, ...], int]) -> np.ndarray:
    keys = zip(*(block.keys[c].tolist() for c in KEY_COLUMNS), strict=True)
    return np.fromiter((wanted.get(k, -1) for k in keys), dtype=np.int64, count=block.packed.shape[0])


def station_scores(data: StationData, task: Task, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This station's people's scores ``X_s basis`` ``(samples, b)`` (0 for people not included), with
    the packed rows and task rows they came from (for the second product)."""
    packed, rows = selected(data, task)
    include = np.ascontiguousarray(data.design.include, dtype=np.bool_)
    mean, scale = np.asarray(task["mean"]), np.asarray(task["scale"])
    scores = np.zeros((include.shape[0], basis.shape[1]))
    for start in range(0, rows.shape[0], CHUNK):
        part = np.arange(start, min(start + CHUNK, rows.shape[0]))
        r = rows[part]
        x = standardized_rows(packed, part, mean[r], scale[r], include)
        scores += x.T @ basis[r]
    return scores, packed, rows


def product_station(task: Task, data: StationData) -> Result:
    """``X_s'(X_s Q)`` ``(rows, b)`` for the task's basis ``Q``: the scores stay here, their products with
    the genotypes leave (a sum over this station's people per variant)."""
    basis = np.asarray(task["basis"], dtype=np.float64)
    scores, packed, rows = station_scores(data, task, basis)
    include = np.ascontiguousarray(data.design.include, dtype=np.bool_)
    mean, scale = np.asarray(task["mean"]), np.asarray(task["scale"])
    product = np.zeros_like(basis)
    for start in range(0, rows.shape[0], CHUNK):
        part = np.arange(start, min(start + CHUNK, rows.shape[0]))
        r = rows[part]
        product[r] = standardized_rows(packed, part, mean[r], scale[r], include) @ scores
    return {"product": product}


def scores_station(task: Task, data: StationData) -> Result:
    """Each included person's scores on the loadings, stored here as covariates ``name1..namek``; only the
    number of people scored leaves."""
    name = str(np.asarray(task["name"]).reshape(-1)[0])
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(f"scores are stored under a name of letters, digits and _ (up to 30), not {name[:40]!r}")
    loadings = np.asarray(task["basis"], dtype=np.float64)
    scores = station_scores(data, task, loadings)[0] / np.asarray(task["divisor"], dtype=np.float64)
    include = np.asarray(data.design.include, dtype=bool)
    scores[~include] = np.nan
    data.save_covariates(name, scores)
    return {"n": np.array(int(include.sum()))}


# -- central side ----------------------------------------------------------------------------------------
def missing_correction(missing: np.ndarray, people: int) -> float:
    """``-2 E[miss_j] + E[miss_jk]`` over people ``j != k``, from each variant's number of people without a
    call (as if calls were missing at random within a variant): added to ``M``, the mean of PLINK's
    per-pair GRM denominators ``M - miss_j - miss_k + miss_jk``.

    >>> missing_correction(np.array([0, 2]), 4)
    -0.8333333333333334
    """
    if people < 2:
        return 0.0
    miss = np.asarray(missing, dtype=np.float64)
    return float(-2.0 * miss.sum() / people + (miss * (miss - 1)).sum() / (people * (people - 1)))


def standardization(alt: np.ndarray, called: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``2p`` and ``1 / sqrt(2p(1 - p))`` per variant from pooled ALT allele and called sample counts."""
    p = alt / (2.0 * called)
    return 2.0 * p, 1.0 / np.sqrt(2.0 * p * (1.0 - p))


@dataclass
class PCAResult:
    """What the coordinator learns: eigenvalues, loadings and how the iteration went."""

    keys: dict[str, np.ndarray]
    alt_freq: np.ndarray
    #: Eigenvalues of ``XX'/M`` (``plink2 --pca meanimpute``), and of ``XX'`` over the mean number of
    #: variants a pair of people is called at (``plink2 --pca``'s missingness correction, on average).
    eigenvalues_meanimpute: np.ndarray
    eigenvalues: np.ndarray
    loadings: np.ndarray
    residuals: np.ndarray
    rounds: int
    converged: bool
    #: The trace of the GRM ``XX'/M``, the sum of all its eigenvalues.
    trace: float
    #: Projection weights ``loading / sqrt(theta)``: a person's score is ``sum_j z_j w_j``.
    weights: np.ndarray

    @property
    def variance_explained(self) -> np.ndarray:
        """Each PC's eigenvalue over the trace of the GRM (the sum of all its eigenvalues)."""
        return self.eigenvalues_meanimpute / self.trace


@dataclass
class ProjectProtocol(Protocol):
    """One ``pca_scores`` round with weights from an earlier PCA: a station that joined later scores its
    people on the same PCs (``PROJECT``)."""

    keys: dict[str, np.ndarray]
    alt_freq: np.ndarray
    weights: np.ndarray
    name: str
    scored: int | None = None

    def next_task(self) -> Task | None:
        if self.rounds:
            return None
        mean, scale = 2.0 * self.alt_freq, 1.0 / np.sqrt(2.0 * self.alt_freq * (1.0 - self.alt_freq))
        return {
            "kind": "pca_scores",
            **{f"key_{c}": self.keys[c] for c in KEY_COLUMNS},
            "mean": mean,
            "scale": scale,
            "basis": self.weights,
            "divisor": np.ones(self.weights.shape[1]),
            "name": np.array([self.name]),
        }

    def receive(self, results: list[Result]) -> None:
        self.scored = int(sum(int(r["n"]) for r in results))
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        return {"SCORED": np.array([self.scored or 0])}


@dataclass
class PCAProtocol(Protocol):
    """Block Lanczos on ``A = X'X`` from the stations' products, then the scores stored at the stations.

    Parameters
    ----------
    keys, genotypes
        The variants (key columns) and their pooled hom-ref, het and hom-alt counts ``(variants, 3)``
        (polymorphic variants only).
    k
        How many PCs.
    name
        Store the scores at the stations as covariates ``name1..namek`` (None: do not store).
    tolerance, max_rounds
        Stop when every wanted Ritz pair's relative residual is under ``tolerance``, or after ``max_rounds``.
    block
        Columns per round (default ``k + 10``, at most :data:`MAX_BASIS`).
    seed
        Of the random start.
    variants, missing_pairs
        ``M`` as PLINK counts it (monomorphic variants of the selection too; default: the polymorphic
        ones), and the mean over pairs of people of the variants both lack a call at,
        minus twice the mean per person (:func:`missing_correction`): PLINK's default GRM divides by
        ``M - miss_j - miss_k + miss_jk`` per pair; ``M + missing_pairs`` is its mean.
    """

    keys: dict[str, np.ndarray]
    genotypes: np.ndarray
    k: int
    name: str | None = None
    tolerance: float = 1e-6
    max_rounds: int = 60
    block: int = 0
    seed: int = 1
    max_columns: int = 1200
    variants: int = 0
    missing_pairs: float = 0.0
    phase: str = "iterate"
    basis: list[np.ndarray] = field(default_factory=list)
    products: list[np.ndarray] = field(default_factory=list)
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ritz: tuple[np.ndarray, np.ndarray] | None = None
    converged: bool = False
    scored: int | None = None
    #: Rows some station withheld (its rules): they leave the PCA, which starts again without them.
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.genotypes = np.asarray(self.genotypes, dtype=np.int64)
        called = self.genotypes.sum(axis=1)
        self.alt_freq = (self.genotypes[:, 1] + 2 * self.genotypes[:, 2]) / (2.0 * np.maximum(called, 1))
        m = self.alt_freq.shape[0]
        if np.any((self.alt_freq <= 0) | (self.alt_freq >= 1)):
            raise InputError("PCA takes polymorphic variants only: leave out those with one allele")
        if not 1 <= self.k <= MAX_PCS:
            raise InputError(f"PCA computes 1 to {MAX_PCS} components, not {self.k}")
        if m <= self.k:
            raise InputError(f"PCA {self.k} needs more than {self.k} polymorphic variants; the selection has {m}")
        self.block = min(self.block or self.k + 10, MAX_BASIS, m)
        self.mean, self.scale = standardization(self.genotypes[:, 1] + 2 * self.genotypes[:, 2], called)
        if self.dropped.shape[0] != m:
            self.dropped = np.zeros(m, dtype=bool)
        self._start()

    def _start(self) -> None:
        m = int((~self.dropped).sum())
        if m <= self.k:
            raise InputError(f"PCA {self.k}: only {m} variants are left after the stations' rules withheld some")
        start = np.random.default_rng(self.seed).standard_normal((m, self.block))
        self.basis, self.products, self.rounds_since_start = [np.linalg.qr(start)[0]], [], 0

    def _state(self, basis: np.ndarray) -> Task:
        kept = ~self.dropped
        return {
            **{f"key_{c}": self.keys[c][kept] for c in KEY_COLUMNS},
            "mean": self.mean[kept],
            "scale": self.scale[kept],
            "basis": basis,
        }

    def next_task(self) -> Task | None:
        if self.phase == "iterate":
            return {"kind": "pca_product", **self._state(self.basis[-1])}
        if self.phase == "scores":
            eig, vectors = self._top()
            return {
                "kind": "pca_scores",
                **self._state(vectors),
                "divisor": np.sqrt(eig),
                "name": np.array([self.name]),
            }
        return None

    def receive(self, results: list[Result]) -> None:
        self.rounds += 1
        if self.phase == "scores":
            self.scored = int(sum(int(r["n"]) for r in results))
            self.phase = "done"
            return
        withheld = np.zeros(int((~self.dropped).sum()), dtype=bool)
        for r in results:
            if "withheld" in r:
                withheld |= np.asarray(r["withheld"], dtype=bool)
        if withheld.any():  # leave those variants out and start again: a partial sum is not the pooled one
            self.dropped[np.flatnonzero(~self.dropped)[withheld]] = True
            self._start()
            return
        self.products.append(np.sum([np.asarray(r["product"], dtype=np.float64) for r in results], axis=0))
        self._rayleigh_ritz()
        if self.converged or self.rounds >= self.max_rounds:
            self.phase = "scores" if self.name else "done"
            return
        self._extend()

    def _rayleigh_ritz(self) -> None:
        Q, AQ = np.hstack(self.basis), np.hstack(self.products)
        T = Q.T @ AQ
        theta, Z = np.linalg.eigh((T + T.T) / 2)
        order = np.argsort(theta)[::-1][: self.k]
        theta, Z = theta[order], Z[:, order]
        self.ritz = (theta, Z)
        residual = AQ @ Z - Q @ (Z * theta)
        self.residuals = np.linalg.norm(residual, axis=0) / np.maximum(np.abs(theta), 1e-300)
        self.converged = bool(np.all(self.residuals < self.tolerance))

    def _extend(self) -> None:
        Q = np.hstack(self.basis)
        if Q.shape[1] + self.block > self.max_columns:  # thick restart: A(QZ) = (AQ)Z, no extra round
            Z = self._restart_vectors()
            self.basis, self.products = [Q @ Z], [np.hstack(self.products) @ Z]
            Q = self.basis[0]
        w = self.products[-1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q @ (Q.T @ w)
        q, r = np.linalg.qr(w)
        if np.abs(np.diag(r)).max(initial=0.0) < 1e-10 * np.abs(self.products[-1]).max(initial=1.0):
            self.converged = True  # the basis spans an invariant subspace: the Ritz pairs are exact
            self.phase = "scores" if self.name else "done"
            return
        self.basis.append(q)

    def _restart_vectors(self) -> np.ndarray:
        """The coefficients of the top ``block`` Ritz vectors in the current basis."""
        Q, AQ = np.hstack(self.basis), np.hstack(self.products)
        T = Q.T @ AQ
        theta, Z = np.linalg.eigh((T + T.T) / 2)
        return np.asarray(Z[:, np.argsort(theta)[::-1][: self.block]])

    def _top(self) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` eigenvalues of ``A`` and their unit eigenvectors (loadings), signs fixed so that
        each loading's largest entry is positive."""
        assert self.ritz is not None
        theta, Z = self.ritz
        vectors = np.hstack(self.basis[: len(self.products)]) @ Z
        vectors /= np.linalg.norm(vectors, axis=0)
        flip = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])] < 0
        vectors[:, flip] *= -1
        return theta, vectors

    def result(self) -> dict[str, np.ndarray]:
        out = self.pca()
        k = out.eigenvalues.shape[0]
        return {
            "PC": np.array([f"PC{i + 1}" for i in range(k)], dtype=object),
            "EIGENVALUE": out.eigenvalues,
            "EIGENVALUE_MEANIMPUTE": out.eigenvalues_meanimpute,
            "VARIANCE_EXPLAINED": out.variance_explained,
            "RESIDUAL": out.residuals,
        }

    def pca(self) -> PCAResult:
        """Eigenvalues of the GRM ``XX'/M``, the loadings, and how the iteration ended."""
        theta, vectors = self._top()
        kept = ~self.dropped
        m = self.variants or int(kept.sum())
        trace = self._trace(kept) / m
        return PCAResult(
            keys={c: self.keys[c][kept] for c in KEY_COLUMNS},
            alt_freq=self.alt_freq[kept],
            eigenvalues_meanimpute=theta / m,
            eigenvalues=theta / (m + self.missing_pairs),
            loadings=vectors,
            residuals=self.residuals.copy(),
            rounds=self.rounds,
            converged=self.converged,
            trace=trace,
            weights=vectors / np.sqrt(theta),
        )

    def _trace(self, kept: np.ndarray) -> float:
        """``trace(X'X)``: per variant, the sum over called people of ``(g - 2p)^2 / (2p(1 - p))``, from the
        pooled genotype counts."""
        c = self.genotypes[kept].astype(np.float64)
        mean, scale = self.mean[kept], self.scale[kept]
        squares = sum(c[:, g] * (g - mean) ** 2 for g in range(3))
        return float((squares * scale**2).sum())


_ROWS = {f"key_{c}": StateArray(np.int64 if c == "pos" else str, ("rows",)) for c in KEY_COLUMNS}
_STANDARDIZE = {
    "mean": StateArray(np.float64, ("rows",), finite=True),
    "scale": StateArray(np.float64, ("rows",), finite=True),
}

ROUNDS = (
    RoundKind(
        "pca_product",
        product_station,
        state={**_ROWS, **_STANDARDIZE, "basis": StateArray(np.float64, ("rows", "cols"), finite=True)},
        scope="task",
        sealed="never",
        rules=("minor_allele_count",),
        judged_groups=1,
        zeroed=("product",),
        rules_from="counts",
        max_cols=MAX_BASIS,
    ),
    RoundKind(
        "pca_scores",
        scores_station,
        state={
            **_ROWS,
            **_STANDARDIZE,
            "basis": StateArray(np.float64, ("rows", "cols"), finite=True),
            "divisor": StateArray(np.float64, ("cols",), finite=True),
            "name": StateArray(str, (1,)),
        },
        scope="task",
        sealed="never",
        whole_count=True,
        max_cols=MAX_PCS,
    ),
)
ANALYSES = (Analysis("pca", ("variant_keys", "counts", "pca_product", "pca_scores")),)
