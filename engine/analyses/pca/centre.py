"""The centre half of PCA: block Lanczos on the stations' products, PLINK 2's eigenvalues, projection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.analyses.pca.station import MOMENTS
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.protocol import Protocol
from better.engine.rounds import Result, Task

#: Most principal components a query may ask for, and most basis columns a round may send.
MAX_PCS = 50
MAX_BASIS = 128
#: Two eigenvalues closer than this (relative) are not separated: their eigenvectors are not determined
#: one by one, only the plane they span.
SEPARATION = 1e-2


def variance_scale(p: np.ndarray) -> np.ndarray:
    """``1 / sqrt(2p(1 - p))``, and 0 where ``p`` is 0 or 1 (a variant with one allele adds nothing).

    >>> np.round(variance_scale(np.array([0.5, 0.0])), 6).tolist()
    [1.414214, 0.0]
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((p > 0) & (p < 1), 1.0 / np.sqrt(2 * p * (1 - p)), 0.0)


def standardization(genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled ALT frequency, ``2p`` and ``1 / sqrt(2p(1 - p))`` per variant from hom-ref, het and hom-alt
    counts; a variant with one allele seen (or none called: ``p = 0.5``, as PLINK) gets scale 0.

    >>> [np.round(a, 6).tolist() for a in standardization(np.array([[1, 2, 1], [3, 0, 0]]))]
    [[0.5, 0.0], [1.0, 0.0], [1.414214, 0.0]]
    """
    g = np.asarray(genotypes, dtype=np.float64)
    called = g.sum(axis=1)
    p = np.where(called > 0, (g[:, 1] + 2 * g[:, 2]) / np.maximum(2 * called, 1), 0.5)
    return p, 2 * p, np.where(called > 0, variance_scale(p), 0.0)


def plink_eigenvalues(
    theta: np.ndarray, moments: np.ndarray, variants: int, missing: np.ndarray, people: int
) -> np.ndarray:
    """PLINK 2's default ``--pca`` eigenvalues, from ``XX'``'s (``theta``) and the stations' moments.

    PLINK divides each pair ``j, k`` of its GRM by the variants both are called at, ``M - m_j - m_k +
    m_jk``, and each diagonal entry by ``M - m_j``. Expanding ``1 / (M - x)`` to second order in the
    missing fraction around the eigenvector ``u`` of ``XX'`` (``XX'u = theta u``), the Rayleigh quotient
    of PLINK's GRM at ``u`` needs only sums over people weighted by ``u_j^2`` (:data:`MOMENTS`) and, for
    ``m_jk``, its mean over pairs from the variants' missing counts. Within 1e-4 of PLINK's eigenvalues
    with 1% of calls missing, flat spectrum or not (``tests/validation/test_pca_plink2.py``).
    """
    M = float(variants)
    a, b, c1, c2, c3, c4 = (moments[MOMENTS.index(n)] for n in MOMENTS)
    mv = np.asarray(missing, dtype=np.float64)
    n = float(max(people, 2))
    pair_missing = float((mv * (mv - 1)).sum() / (n * (n - 1)))
    mean_missing = float(mv.sum() / n)
    first = (1 - pair_missing / M) * (theta - a) / M + 2 * (theta * c1 - c2) / M**2 + b
    second = (2 * (theta * c3 - c4) + 2 * (theta * (2 * mean_missing * c1 - mean_missing**2) - c4)) / M**3
    return np.asarray(first + second)


@dataclass
class PCAResult:
    """What the coordinator learns: eigenvalues, loadings and how the iteration went."""

    keys: dict[str, np.ndarray]
    alt_freq: np.ndarray
    #: Eigenvalues of ``XX'/M`` (``plink2 --pca meanimpute``), and PLINK's default ones (its missingness
    #: correction, :func:`plink_eigenvalues`).
    eigenvalues_meanimpute: np.ndarray
    eigenvalues: np.ndarray
    loadings: np.ndarray
    residuals: np.ndarray
    #: Per PC: its eigenvalue is at least :data:`SEPARATION` (relative) from its neighbours'.
    separated: np.ndarray
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
class PCAProtocol(Protocol):
    """Block Lanczos on ``A = X'X`` from the stations' products, then a scores round.

    Parameters
    ----------
    keys, genotypes
        The variants (key columns) and their pooled hom-ref, het, hom-alt and missing counts
        ``(variants, 4)``. Variants with one allele seen count in ``M`` and add nothing, as in PLINK.
    k
        How many PCs.
    name
        Store the scores at the stations as covariates ``name1..namek`` ("": only the scores round's sums).
    tolerance, vector_tolerance, max_rounds
        Stop when every wanted Ritz pair's relative residual ``||A y - theta y|| / theta`` is under
        ``tolerance`` and, for PCs whose eigenvalue is separated, the bound on its eigenvector's angle
        (residual over relative gap) under ``vector_tolerance``; or after ``max_rounds``.
    block
        Columns per round (default ``k + 10``, at most :data:`MAX_BASIS`).
    seed
        Of the random start.
    """

    keys: dict[str, np.ndarray]
    genotypes: np.ndarray
    k: int
    name: str = ""
    tolerance: float = 1e-4
    vector_tolerance: float = 1e-4
    max_rounds: int = 60
    block: int = 0
    seed: int = 1
    max_columns: int = 1200
    phase: str = "iterate"
    #: The orthonormal Krylov basis and ``A`` times it, column blocks filled round by round (``used``
    #: columns, and the last block sent, ``sent``), and ``T = Q'AQ`` over the columns with a product.
    Q: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    AQ: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    T: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    used: int = 0
    sent: int = 0
    last: int = 0
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ritz: tuple[np.ndarray, np.ndarray] | None = None
    converged: bool = False
    scored: int | None = None
    moments: np.ndarray | None = None
    separated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: Rows some station withheld (its rules): they leave the PCA, which starts again without them.
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.genotypes = np.asarray(self.genotypes, dtype=np.int64)
        if not 1 <= self.k <= MAX_PCS:
            raise InputError(f"PCA computes 1 to {MAX_PCS} components, not {self.k}")
        people = int(self.genotypes[0].sum()) if self.genotypes.shape[0] else 0
        if self.k >= people - 1:  # centred, X has rank at most people - 1
            raise InputError(f"PCA {self.k} needs at least {self.k + 2} people; the selection has {people}")
        self.alt_freq, self.mean, self.scale = standardization(self.genotypes[:, :3])
        if self.dropped.shape[0] != self.scale.shape[0]:
            self.dropped = np.zeros(self.scale.shape[0], dtype=bool)
        self._start()

    def _start(self) -> None:
        informative = int(((self.scale > 0) & ~self.dropped).sum())
        if informative <= self.k:
            raise InputError(
                f"PCA {self.k} needs more than {self.k} variants with both alleles seen; the selection has "
                f"{informative}: widen the regions or the variant filter"
            )
        self.block = min(self.block or self.k + 10, MAX_BASIS, informative)
        kept = ~self.dropped
        m = int(kept.sum())
        start = np.random.default_rng(self.seed).standard_normal((m, self.block))
        start[self.scale[kept] == 0] = 0.0  # variants with one allele: rows of zeros in X
        width = m if m <= self.max_columns else self.max_columns // self.block * self.block
        self.Q, self.AQ, self.T = np.zeros((m, width)), np.zeros((m, width)), np.zeros((width, width))
        self.Q[:, : self.block] = np.linalg.qr(start)[0]
        self.used, self.sent, self.last, self.ritz = 0, self.block, 0, None

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
            return {"kind": "pca_product", **self._state(self.Q[:, self.used : self.sent])}
        if self.phase == "scores":
            theta, vectors = self._top()
            return {
                "kind": "pca_scores",
                **self._state(vectors),
                "divisor": np.sqrt(theta),
                "name": np.array([self.name]),
            }
        return None

    def receive(self, results: list[Result]) -> None:
        self.rounds += 1
        if self.phase == "scores":
            self.scored = int(sum(int(r["n"]) for r in results))
            self.moments = np.sum([np.asarray(r["moments"], dtype=np.float64) for r in results], axis=0)
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
        new = slice(self.used, self.sent)
        self.AQ[:, new] = np.sum([np.asarray(r["product"], dtype=np.float64) for r in results], axis=0)
        done = slice(0, self.sent)
        self.T[done, new] = self.Q[:, done].T @ self.AQ[:, new]  # T grows by a block row and column
        self.T[new, done] = self.T[done, new].T
        self.last, self.used = self.used, self.sent
        self._rayleigh_ritz()
        if self.converged or self.rounds >= self.max_rounds or not self._extend():
            self.phase = "scores"

    def _rayleigh_ritz(self) -> None:
        Q, AQ, T = self.Q[:, : self.used], self.AQ[:, : self.used], self.T[: self.used, : self.used]
        theta, Z = np.linalg.eigh((T + T.T) / 2)
        order = np.argsort(theta)[::-1]
        theta, Z = theta[order], Z[:, order]
        wanted = min(self.k, theta.shape[0])
        self.ritz = (theta[:wanted], Z[:, :wanted])
        residual = AQ @ Z[:, :wanted] - Q @ (Z[:, :wanted] * theta[:wanted])
        scale = np.maximum(np.abs(theta[:wanted]), 1e-300)
        self.residuals = np.linalg.norm(residual, axis=0) / scale
        gaps = self._gaps(theta, wanted)
        separated = self.separated = gaps >= SEPARATION
        angle = self.residuals / np.maximum(gaps, 1e-300)
        self.converged = bool(
            np.all(self.residuals < self.tolerance) and np.all(~separated | (angle < self.vector_tolerance))
        )

    @staticmethod
    def _gaps(theta: np.ndarray, wanted: int) -> np.ndarray:
        """Per wanted Ritz value, the relative distance to the nearest other Ritz value."""
        gaps = np.full(wanted, np.inf)
        for i in range(wanted):
            others = np.abs(np.delete(theta, i) - theta[i])
            if others.size:
                gaps[i] = others.min() / max(abs(theta[i]), 1e-300)
        return gaps

    def _extend(self) -> bool:
        """Add the next block; False when the basis already spans an invariant subspace (the Ritz pairs are
        then exact)."""
        width = self.Q.shape[1]
        if self.used >= width == self.Q.shape[0]:  # the basis spans every variant: the Ritz pairs are exact
            self.converged = True
            return False
        if self.used + self.block > width and width < self.Q.shape[0]:  # thick restart: A(QZ) = (AQ)Z
            Q, AQ, T = self.Q[:, : self.used], self.AQ[:, : self.used], self.T[: self.used, : self.used]
            theta, Z = np.linalg.eigh((T + T.T) / 2)
            top = np.argsort(theta)[::-1][: self.block]
            Z = Z[:, top]
            self.Q[:, : self.block], self.AQ[:, : self.block] = Q @ Z, AQ @ Z
            self.T[:] = 0.0
            self.T[: self.block, : self.block] = np.diag(theta[top])
            self.last, self.used = 0, self.block
        Q = self.Q[:, : self.used]
        last = self.AQ[:, self.last : self.used]
        w = last
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q @ (Q.T @ w)
        # keep only the directions the products really add: where X'X has lower rank than the variants (more
        # variants than people, variants with one allele) the block loses rank, and QR would invent columns
        u, sigma, _ = np.linalg.svd(w, full_matrices=False)
        new = u[:, sigma > 1e-10 * max(float(np.abs(last).max(initial=0.0)), 1e-300)]
        if new.shape[1] == 0:  # the basis spans an invariant subspace: the Ritz pairs are exact
            self.converged = True
            return False
        new = new - Q @ (Q.T @ new)
        q = np.linalg.qr(new)[0]
        q = q[:, : min(self.block, width - self.used)]  # the last block of a small problem may be narrower
        self.Q[:, self.used : self.used + q.shape[1]] = q
        self.sent = self.used + q.shape[1]
        return True

    def _top(self) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` eigenvalues of ``A`` and their unit eigenvectors (loadings), signs fixed so that
        each loading's largest entry is positive."""
        assert self.ritz is not None
        theta, Z = self.ritz
        vectors = self.Q[:, : self.used] @ Z
        vectors /= np.linalg.norm(vectors, axis=0)
        flip = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])] < 0
        vectors[:, flip] *= -1
        return theta, vectors

    def result(self) -> dict[str, np.ndarray]:
        out = self.pca()
        return {
            "PC": np.array([f"PC{i + 1}" for i in range(out.eigenvalues.shape[0])], dtype=object),
            "EIGENVALUE": out.eigenvalues,
            "EIGENVALUE_MEANIMPUTE": out.eigenvalues_meanimpute,
            "VARIANCE_EXPLAINED": out.variance_explained,
            "SEPARATED": out.separated,
            "RESIDUAL": out.residuals,
        }

    def pca(self) -> PCAResult:
        """Eigenvalues (meanimpute, and PLINK's default ones once the scores round is in), loadings, and how
        the iteration ended."""
        theta, vectors = self._top()
        kept = ~self.dropped
        m = int(kept.sum())
        meanimpute = theta / m
        missing = self.genotypes[kept, 3]
        people = int(self.genotypes[0].sum()) if self.genotypes.shape[0] else 0
        plink = plink_eigenvalues(theta, self.moments, m, missing, people) if self.moments is not None else meanimpute
        return PCAResult(
            keys={c: self.keys[c][kept] for c in KEY_COLUMNS},
            alt_freq=self.alt_freq[kept],
            eigenvalues_meanimpute=meanimpute,
            eigenvalues=plink,
            loadings=vectors,
            residuals=self.residuals.copy(),
            separated=self.separated.copy(),
            rounds=self.rounds,
            converged=self.converged,
            trace=self._trace(kept) / m,
            weights=vectors / np.sqrt(theta),
        )

    def _trace(self, kept: np.ndarray) -> float:
        """``trace(X'X)``: per variant, the sum over called people of ``(g - 2p)^2 / (2p(1 - p))``, from the
        pooled genotype counts."""
        c = self.genotypes[kept, :3].astype(np.float64)
        mean, scale = self.mean[kept], self.scale[kept]
        squares = sum(c[:, g] * (g - mean) ** 2 for g in range(3))
        return float((squares * scale**2).sum())


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
        p = self.alt_freq
        return {
            "kind": "pca_scores",
            **{f"key_{c}": self.keys[c] for c in KEY_COLUMNS},
            "mean": 2.0 * p,
            "scale": variance_scale(p),
            "basis": self.weights,
            "divisor": np.ones(self.weights.shape[1]),
            "name": np.array([self.name]),
        }

    def receive(self, results: list[Result]) -> None:
        self.scored = int(sum(int(r["n"]) for r in results))
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        return {"SCORED": np.array([self.scored or 0])}
