"""Parse the query language into a :class:`Query` (grammar: ``query/grammar.lark``, docs/query-language.md).

Every error, from the grammar or from the meaning, is a :class:`QueryError` that shows the query with a
caret under the offending token and, where it can, the closest valid name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.exceptions import VisitError

from better.engine.analyses.pca import MAX_PCS
from better.engine.errors import BetterError
from better.genomics.regions import Region
from better.wire.messages import MAX_CONDITIONS, MAX_REGIONS

#: Pooled variant quantities usable in WHERE; anything else names a phenotype column.
VARIANT_FILTERS = ("maf", "mac", "call_rate", "hwe_p", "r2", "filter")
MAX_QUERY_CHARS = 10_000
#: Statements over aligned reads (a "reads" dataset) rather than variants.
READ_VERBS = ("coverage", "reads", "pileup")

_FRIENDLY = {
    "NAME": "a name",
    "REGION": "a region (chrom:start-end)",
    "INT": "a chromosome",
    "SIGNED_NUMBER": "a number",
    "STRING": "a 'quoted text'",
    "OP": "a comparison (= != < <= > >=)",
    "TILDE": "'~'",
    "PLUS": "'+'",
    "COMMA": "','",
    "MODEL": "LINEAR or LOGISTIC",
    "TEST_KIND": "WALD, SCORE or FIRTH",
    "MIN_BQ": "MIN_BASE_QUALITY",
    "MIN_MQ": "MIN_MAPPING_QUALITY",
    "PRUNE_WINDOW": "a window (variants, or kb: 200kb)",
    "PRUNE": "PRUNE",
    "AS": "AS name",
    "ALLELES": "alleles (REF>ALT, e.g. A>G)",
    "$END": "the end of the query",
}


class QueryError(BetterError):
    """A query that cannot be run, with the place in it: ``message``, then the query and a caret line."""

    def __init__(self, text: str, start: int, end: int, message: str) -> None:
        self.text, self.start, self.end, self.message = text, start, end, message
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line = text[line_start : line_end if line_end >= 0 else len(text)]
        col = start - line_start
        width = max(1, min(end, line_start + len(line)) - start)
        super().__init__(f"{message}\n  {line}\n  {' ' * col}{'^' * width}")


@dataclass(frozen=True)
class Name:
    """A name as written, with where it stands in the query."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Condition:
    """``column op value`` in WHERE; ``op`` is also ``is_missing`` / ``not_missing`` (value None)."""

    column: Name
    op: str
    value: float | str | None
    value_at: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Prune:
    """LD pruning as PLINK 2's ``--indep-pairwise``: a window of ``window`` variants (or kilobases, with
    ``kb``), moved ``step`` variants at a time, pruning pairs with r² above ``r2``."""

    window: int
    kb: bool
    step: int
    r2: float

    def __str__(self) -> str:
        return f"{self.window}{'kb' if self.kb else ''} {self.step} {self.r2:g}"


@dataclass(frozen=True)
class Query:
    """A parsed query: what to compute, over which samples and variants."""

    text: str
    verb: Literal["count", "freq", "hwe", "beacon", "gwas", "coverage", "reads", "pileup", "pca", "prune", "project"]
    explain: bool = False
    model: Literal["linear", "logistic"] | None = None
    phenotype: Name | None = None
    covariates: tuple[Name, ...] = ()
    regions: tuple[Region, ...] = ()
    sample_conditions: tuple[Condition, ...] = ()
    variant_conditions: tuple[Condition, ...] = ()
    adjust_station: bool = False
    test: Literal["wald", "score", "firth"] = "wald"
    #: PILEUP: bases below this quality, reads below this mapping quality are not counted.
    min_base_quality: int = 13
    min_mapping_quality: int = 0
    #: PCA: how many components, LD pruning first (also PRUNE's own), and the name to store scores under.
    pcs: int = 0
    prune: Prune | None = None
    store_as: Name | None = None
    #: PROJECT: the weights file a PCA wrote (``--out``), to score a station's people on those PCs.
    weights_file: str | None = None
    #: BEACON: the REF and ALT bases asked about at one position (IUPAC codes as wildcards), or None.
    alleles: tuple[str, str] | None = None
    names_used: tuple[Name, ...] = field(default=(), compare=False)

    def error(self, at: Name | tuple[int, int], message: str) -> QueryError:
        start, end = (at.start, at.end) if isinstance(at, Name) else at
        return QueryError(self.text, start, end, message)


@cache
def _parser() -> Lark:
    return Lark((Path(__file__).parent / "grammar.lark").read_text(), parser="lalr", lexer="contextual")


def parse(text: str) -> Query:
    """Parse ``text``; raise :class:`QueryError` pointing at the problem.

    Examples
    --------
    >>> q = parse("gwas linear ldl ~ age + sex ON 22 WHERE maf >= 0.01 AND age > 40 ADJUST station")
    >>> q.verb, q.model, q.phenotype.text, [c.text for c in q.covariates], q.adjust_station
    ('gwas', 'linear', 'ldl', ['age', 'sex'], True)
    >>> [(c.column.text, c.op, c.value) for c in q.variant_conditions + q.sample_conditions]
    [('maf', '>=', 0.01), ('age', '>', 40.0)]
    """
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(text[:80], 0, 1, f"a query of {len(text)} characters is over the {MAX_QUERY_CHARS} limit")
    if not text.strip():
        raise QueryError(
            text,
            0,
            1,
            "empty query: start with COUNT, FREQ, HWE, BEACON, GWAS, PCA, PRUNE, PROJECT, COVERAGE, READS, PILEUP "
            "or EXPLAIN",
        )
    try:
        tree = _parser().parse(text)
        return _Build(text).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, QueryError):
            raise exc.orig_exc from None
        raise
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None


def _syntax_error(text: str, exc: UnexpectedInput) -> QueryError:
    pos = exc.pos_in_stream if exc.pos_in_stream is not None else len(text)
    if isinstance(exc, UnexpectedEOF):
        expected = sorted({_FRIENDLY.get(t, t) for t in exc.expected})
        return QueryError(text, len(text), len(text) + 1, f"the query ends too early; expected {_or(expected)}")
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            expected = sorted({_FRIENDLY.get(t, t) for t in exc.accepts or exc.expected})
            return QueryError(text, len(text), len(text) + 1, f"the query ends too early; expected {_or(expected)}")
        expected = sorted({_FRIENDLY.get(t, t) for t in exc.accepts or exc.expected})
        end = pos + max(1, len(str(tok)))
        return QueryError(text, pos, end, f"unexpected {str(tok)!r}; expected {_or(expected)}")
    if isinstance(exc, UnexpectedCharacters):
        return QueryError(text, pos, pos + 1, f"unexpected character {text[pos]!r}")
    return QueryError(text, pos, pos + 1, "cannot read the query here")


def _or(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items) or "something else"
    return ", ".join(items[:-1]) + " or " + items[-1]


def _name(tok: Token) -> Name:
    start = int(tok.start_pos or 0)
    return Name(str(tok), start, start + len(str(tok)))


class _Build(Transformer):
    """Parse tree -> :class:`Query`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def start(self, items: list) -> Query:
        explain = len(items) == 2
        q: Query = items[-1]
        return Query(**{**q.__dict__, "explain": explain})

    # -- pieces -------------------------------------------------------------------------------------
    def region(self, items: list[Token]) -> Region:
        tok = items[0]
        try:
            return Region.parse(str(tok))
        except BetterError as exc:
            start = int(tok.start_pos or 0)
            raise QueryError(self.text, start, start + len(str(tok)), str(exc)) from None

    def regions(self, items: list) -> tuple[Region, ...]:
        return tuple(i for i in items if isinstance(i, Region))

    def value(self, items: list[Token]) -> tuple[float | str, tuple[int, int]]:
        tok = items[0]
        start = int(tok.start_pos or 0)
        at = (start, start + len(str(tok)))
        if tok.type == "STRING":
            return str(tok)[1:-1], at
        number = float(str(tok))
        if not math.isfinite(number):
            raise QueryError(self.text, *at, f"{str(tok)!r} is not a finite number")
        return number, at

    def compare(self, items: list) -> Condition:
        column, op, (value, at) = items
        return Condition(_name(column), str(op), value, at)

    def missing(self, items: list[Token]) -> Condition:
        return Condition(_name(items[0]), "is_missing", None)

    def not_missing(self, items: list[Token]) -> Condition:
        return Condition(_name(items[0]), "not_missing", None)

    def where(self, items: list) -> tuple[Condition, ...]:
        return tuple(i for i in items if isinstance(i, Condition))

    def formula(self, items: list[Token]) -> tuple[Name, tuple[Name, ...]]:
        names = [_name(t) for t in items if t.type == "NAME"]
        return names[0], tuple(names[1:])

    def adjust(self, _: list[Token]) -> bool:
        return True

    def test(self, items: list[Token]) -> str:
        return str(items[1]).lower()

    # -- statements -------------------------------------------------------------------------------------
    def _parts(self, items: list) -> dict:
        out: dict = {"regions": (), "where": (), "adjust": False, "test": "wald"}
        for i in items:
            if isinstance(i, tuple) and (not i or isinstance(i[0], Region)):
                out["regions"] = i if i else out["regions"]
            if isinstance(i, tuple) and i and isinstance(i[0], Condition):
                out["where"] = i
            if i is True:
                out["adjust"] = True
            if isinstance(i, str) and i in ("wald", "score", "firth"):
                out["test"] = i
        return out

    def _query(self, verb: str, items: list, **extra: object) -> Query:
        parts = self._parts(items)
        where = parts["where"]
        variant = tuple(c for c in where if c.column.text.lower() in VARIANT_FILTERS)
        sample = tuple(c for c in where if c.column.text.lower() not in VARIANT_FILTERS)
        if len(sample) > MAX_CONDITIONS:
            extra_at = sample[MAX_CONDITIONS].column
            raise QueryError(
                self.text, extra_at.start, extra_at.end, f"at most {MAX_CONDITIONS} sample conditions in a query"
            )
        if len(parts["regions"]) > MAX_REGIONS:
            raise QueryError(self.text, 0, len(self.text), f"at most {MAX_REGIONS} regions in a query; merge them")
        return Query(
            text=self.text,
            verb=verb,  # type: ignore[arg-type]
            regions=parts["regions"],
            sample_conditions=sample,
            variant_conditions=tuple(
                Condition(Name(c.column.text.lower(), c.column.start, c.column.end), c.op, c.value, c.value_at)
                for c in variant
            ),
            adjust_station=parts["adjust"],
            test=parts["test"],
            **extra,  # type: ignore[arg-type]
        )

    def count(self, items: list) -> Query:
        return self._query("count", items)

    def freq(self, items: list) -> Query:
        return self._query("freq", items)

    def hwe(self, items: list) -> Query:
        return self._query("hwe", items)

    def beacon(self, items: list) -> Query:
        region = next(i for i in items if isinstance(i, Region))
        tok = next((i for i in items if isinstance(i, Token) and i.type == "ALLELES"), None)
        alleles = None
        if tok is not None:
            if region.end - region.start != 1:
                start = int(tok.start_pos or 0)
                raise QueryError(
                    self.text, start, start + len(str(tok)), "REF>ALT names the alleles at one position (chrom:pos)"
                )
            ref, alt = str(tok).upper().split(">")
            alleles = (ref, alt)
        rest = [i for i in items if isinstance(i, tuple)]
        return self._query("beacon", [(region,), *rest], alleles=alleles)

    def coverage(self, items: list) -> Query:
        return self._query("coverage", items)

    def reads(self, items: list) -> Query:
        return self._query("reads", items)

    def min_bq(self, items: list[Token]) -> tuple[str, int]:
        return "min_base_quality", self._quality(items[1], 93)

    def min_mq(self, items: list[Token]) -> tuple[str, int]:
        return "min_mapping_quality", self._quality(items[1], 255)

    def _quality(self, tok: Token, top: int) -> int:
        value = int(str(tok))
        if value > top:
            start = int(tok.start_pos or 0)
            raise QueryError(self.text, start, start + len(str(tok)), f"a quality between 0 and {top}")
        return value

    def pileup(self, items: list) -> Query:
        q = self._query("pileup", items)
        for r in q.regions:
            if r.end - r.start != 1:
                raise QueryError(self.text, 0, len(self.text), f"PILEUP takes positions (chrom:pos), not {r}")
        if len(q.regions) > 256:
            raise QueryError(self.text, 0, len(self.text), "PILEUP takes at most 256 positions at a time")
        quality = dict(i for i in items if isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str))
        return Query(**{**q.__dict__, **quality})

    def prune_clause(self, items: list[Token]) -> Prune:
        window_tok, *numbers = items[1:]
        text = str(window_tok).lower()
        kb = text.endswith("kb")
        window = int(text[:-2] if kb else text)
        start = int(window_tok.start_pos or 0)
        if window < (1 if kb else 2):
            raise QueryError(self.text, start, start + len(text), "a window of at least 2 variants (or 1kb)")
        step_tok, r2_tok = (numbers[0], numbers[1]) if len(numbers) == 2 else (None, numbers[0])
        step = 1
        if step_tok is not None:
            at = int(step_tok.start_pos or 0)
            if not str(step_tok).isdigit() or int(str(step_tok)) < 1:
                raise QueryError(
                    self.text, at, at + len(str(step_tok)), "the step is a whole number of variants, 1 or more"
                )
            step = int(str(step_tok))
            if kb and step != 1:
                raise QueryError(self.text, at, at + len(str(step_tok)), "a window in kb moves 1 variant at a time")
            if not kb and step > window:
                raise QueryError(self.text, at, at + len(str(step_tok)), "the step cannot be larger than the window")
        r2 = float(str(r2_tok))
        if not 0.0 <= r2 < 1.0:  # as plink2 --indep-pairwise
            at = int(r2_tok.start_pos or 0)
            raise QueryError(self.text, at, at + len(str(r2_tok)), "the r² threshold is at least 0 and below 1")
        return Prune(window, kb, step, r2)

    def as_name(self, items: list[Token]) -> Name:
        name = _name(items[1])
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,29}", name.text):
            raise QueryError(self.text, name.start, name.end, "a name of letters, digits and _ (up to 30)")
        return name

    def pca(self, items: list) -> Query:
        count = next(t for t in items if isinstance(t, Token) and t.type == "INT")
        pcs = int(str(count))
        if not 1 <= pcs <= MAX_PCS:
            start = int(count.start_pos or 0)
            raise QueryError(self.text, start, start + len(str(count)), f"PCA computes 1 to {MAX_PCS} components")
        prune = next((i for i in items if isinstance(i, Prune)), None)
        store_as = next((i for i in items if isinstance(i, Name)), None)
        return self._query("pca", items, pcs=pcs, prune=prune, store_as=store_as)

    def prune(self, items: list) -> Query:
        prune = next(i for i in items if isinstance(i, Prune))
        return self._query("prune", items, prune=prune)

    def project(self, items: list) -> Query:
        path = next(str(t)[1:-1] for t in items if isinstance(t, Token) and t.type == "STRING")
        store_as = next(i for i in items if isinstance(i, Name))
        return self._query("project", items, weights_file=path, store_as=store_as)

    def gwas(self, items: list) -> Query:
        model = next(str(t).lower() for t in items if isinstance(t, Token) and t.type == "MODEL")
        phenotype, covariates = next(i for i in items if isinstance(i, tuple) and i and isinstance(i[0], Name))
        return self._query("gwas", items, model=model, phenotype=phenotype, covariates=covariates)
