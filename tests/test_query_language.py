"""The query language: parsing, errors with carets, fuzzing, and the planner's checks and plan shapes
(against station catalogs given directly: no server needed)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from better.query.parser import QueryError, parse
from better.query.planner import StationCatalog, plan

VARIABLES = {"age": "number", "sex": "integer", "ldl": "number", "case": "integer", "smoking": "text", "pc1": "number"}


def catalogs(extra: dict[str, dict[str, str]] | None = None, kind: str = "variants") -> list[StationCatalog]:
    out = []
    for name in ("milano", "nijmegen", "barcelona"):
        variables = dict(VARIABLES)
        variables.update((extra or {}).get(name, {}))
        dataset = {"name": "cohort", "kind": kind, "variables": variables, "variants": 8000}
        out.append(StationCatalog(name, {"cohort": dataset}))
    return out


def test_design_examples__parse() -> None:
    examples = {
        "COUNT samples WHERE sex = 1 AND age > 60": ("count", None),
        "FREQ 22:100000-200000 WHERE maf >= 0.01": ("freq", None),
        "GWAS LINEAR ldl ~ age + sex + pc1 + pc2 ON 22 WHERE maf >= 0.01 AND call_rate >= 0.95": ("gwas", "linear"),
        "GWAS LOGISTIC case ~ age + sex + pc1 + pc2 ADJUST station": ("gwas", "logistic"),
        "EXPLAIN GWAS LINEAR ldl ~ age + sex": ("gwas", "linear"),
        "explain hwe on chr22:1-1,000,000, X": ("hwe", None),
    }
    for text, (verb, model) in examples.items():
        q = parse(text)
        assert (q.verb, q.model) == (verb, model), text
    assert parse("EXPLAIN GWAS LINEAR ldl ~ age").explain
    assert [str(r) for r in parse("HWE ON chr22:1-1,000,000, X").regions] == ["chr22:1-1000000", "X"]


def test_keywords__are_case_insensitive_and_names_are_not() -> None:
    a = parse("gwas logistic case ~ Age adjust STATION test FIRTH")
    assert a.test == "firth" and a.adjust_station and a.covariates[0].text == "Age"


def caret(text: str, token: str, rfind: bool = False) -> str:
    """The caret line under ``token`` in ``text`` ('' for the end of the text)."""
    start = (text.rfind(token) if rfind else text.index(token)) if token else len(text)
    return "  " + " " * start + "^" * max(1, len(token))


@pytest.mark.parametrize(
    ("text", "message", "token"),
    [
        ("GWAS LINEAR ldl ~", "ends too early; expected a name", ""),
        ("GWAS QUADRATIC x ~ y", "expected LINEAR or LOGISTIC", "QUADRATIC"),
        ("FREQ 22:9-1", "start must not exceed end", "22:9-1"),
        ("COUNT WHERE age >> 3", "unexpected '>'", ">"),
        ("COUNT WHERE age > 3 OR sex = 1", "unexpected 'OR'", "OR"),
        (
            "SELECT * FROM t",
            "expected BEACON, COUNT, COVERAGE, EXPLAIN, FREQ, GWAS, HWE, PCA, PILEUP, PROJECT, PRUNE or READS",
            "SELECT",
        ),
    ],
)
def test_syntax_errors__point_at_the_token(text: str, message: str, token: str) -> None:
    with pytest.raises(QueryError) as err:
        parse(text)
    lines = str(err.value).splitlines()
    assert message in lines[0]
    want = caret(text, token, rfind=token == ">")
    assert lines[2] == want


# -- fuzzing --------------------------------------------------------------------------------------------
WORDS = [
    "GWAS",
    "LINEAR",
    "LOGISTIC",
    "COUNT",
    "FREQ",
    "HWE",
    "EXPLAIN",
    "WHERE",
    "AND",
    "ON",
    "ADJUST",
    "station",
    "TEST",
    "score",
    "~",
    "+",
    ",",
    "=",
    "<=",
    ">",
    "!=",
    "IS",
    "NOT",
    "MISSING",
    "ldl",
    "age",
    "22",
    "22:1-100",
    "X:5",
    "'PASS'",
    "0.01",
    "-3",
    "1e400",
    "maf",
    "filter",
    "(",
    ")",
    ";",
    "\n",
    "é",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=14))
def test_fuzz__token_soup_parses_or_fails_cleanly(words: list[str]) -> None:
    text = " ".join(words)
    try:
        q = parse(text)
    except QueryError as exc:
        assert "\n" in str(exc) and "^" in str(exc)
    else:
        assert q.verb in ("count", "freq", "hwe", "gwas")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz__any_text_parses_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(QueryError):  # anything else (a lark error, a traceback) fails the test
        parse(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=14))
def test_fuzz__planning_parsed_queries_fails_only_with_query_errors(words: list[str]) -> None:
    with contextlib.suppress(QueryError):
        plan(parse(" ".join(words)), catalogs())


# -- the planner's checks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message", "token"),
    [
        ("GWAS LINEAR ldl ~ agee + sex", "unknown column 'agee' (did you mean 'age'?)", "agee"),
        ("GWAS LINEAR ldl ~ bmi", "column 'bmi' exists at milano, nijmegen but not at barcelona", "bmi"),
        ("GWAS LINEAR ldl ~ smoking", "column 'smoking' holds text", "smoking"),
        ("COUNT WHERE smoking > 'a'", "text column 'smoking' takes only = or !=", "smoking"),
        ("COUNT WHERE age = 'old'", "holds numbers: compare it with a number", "'old'"),
        ("COUNT WHERE maf > 0.1", "maf filters variants; COUNT counts samples", "maf"),
        ("FREQ WHERE filter = 'LowQual'", "the only FILTER condition is filter = 'PASS'", "filter"),
    ],
)
def test_semantic_errors__point_at_the_token(text: str, message: str, token: str) -> None:
    with pytest.raises(QueryError) as err:
        plan(parse(text), catalogs({"milano": {"bmi": "number"}, "nijmegen": {"bmi": "number"}}))
    lines = str(err.value).splitlines()
    assert message in lines[0], lines[0]
    assert lines[2] == caret(text, token)


def test_a_name_twice_in_the_formula__points_at_the_second() -> None:
    text = "GWAS LINEAR ldl ~ age + age"
    with pytest.raises(QueryError, match="'age' appears twice in the formula") as err:
        plan(parse(text), catalogs())
    assert str(err.value).splitlines()[2] == caret(text, "age", rfind=True)


def test_plan_shapes() -> None:
    cats = catalogs()
    lin = plan(parse("GWAS LINEAR ldl ~ age WHERE maf >= 0.05"), cats)
    assert (lin.counts_source, lin.separate_counts_round) == ("linear", False)
    hwe = plan(parse("GWAS LINEAR ldl ~ age WHERE hwe_p > 1e-6"), cats)
    assert (hwe.counts_source, hwe.separate_counts_round) == ("counts", True)
    log = plan(parse("GWAS LOGISTIC case ~ age WHERE maf > 0.01"), cats)
    assert (log.counts_source, log.separate_counts_round) == ("score", False)
    log_hwe = plan(parse("GWAS LOGISTIC case ~ age WHERE hwe_p > 1e-6"), cats)
    assert (log_hwe.counts_source, log_hwe.separate_counts_round) == ("counts", True)
    naive = plan(parse("GWAS LOGISTIC case ~ age WHERE maf > 0.1"), cats, naive=True)
    assert (naive.counts_source, naive.separate_counts_round) == ("counts", True)
    assert plan(parse("FREQ WHERE filter = 'PASS'"), cats).model.pass_only
    adj = plan(parse("GWAS LINEAR ldl ~ age + sex ADJUST station"), cats)
    assert adj.k == 1 + 2 + 2 and "(k = 5)" in adj.explain()
    adj.secure = True
    assert "its own selection is audited and its own cells judged too" in adj.explain()
    assert plan(parse("COUNT"), cats).explain().splitlines()[2].startswith("round 1: `sample_count`")


def test_dataset__chosen_when_there_is_one_and_asked_for_otherwise() -> None:
    two = [StationCatalog("a", {"x": {"name": "x", "variables": VARIABLES, "variants": 1}, "y": {}})]
    with pytest.raises(QueryError, match="holds 2 datasets"):
        plan(parse("COUNT"), two)
    assert plan(parse("COUNT"), two, dataset="x").model.dataset == "x"


def test_read_statements__parse_and_refuse_what_they_cannot_take() -> None:
    q = parse("PILEUP 22:16050075, 22:16050080 WHERE sex = 1 MIN_BASE_QUALITY 20 MIN_MAPPING_QUALITY 30")
    assert (q.verb, len(q.regions), q.min_base_quality, q.min_mapping_quality) == ("pileup", 2, 20, 30)
    assert parse("coverage ON 22:1-1000 where age > 50").verb == "coverage"
    assert parse("READS").verb == "reads"
    with pytest.raises(QueryError, match="PILEUP takes positions"):
        parse("PILEUP 22:1-100")
    with pytest.raises(QueryError, match="a quality between 0 and 93"):
        parse("PILEUP 22:5 MIN_BASE_QUALITY 94")
    with pytest.raises(QueryError, match="maf filters variants; COVERAGE has no variants"):
        plan(parse("COVERAGE WHERE maf > 0.1"), catalogs({}, kind="reads"))
    with pytest.raises(
        QueryError,
        match=r"holds no dataset of reads \(it holds: cohort \(variants\)\); one is made with better ingest-bam",
    ):
        plan(parse("READS"), catalogs({}))
