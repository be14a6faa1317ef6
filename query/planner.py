"""From a parsed query to a plan: checked against what the stations hold, split into rounds.

:func:`check` resolves names against the stations' catalogs (``GET /station``): an unknown column, one
that only some stations have, or a comparison of the wrong type is a :class:`~better.query.parser.QueryError`
with a caret. :func:`plan` decides the rounds. Variant filters (maf, mac, call_rate, hwe_p, r2) are pooled
quantities, so they are computed centrally from pooled counts (on dosages, dosage sums):

- FREQ / HWE: from the counts round itself.
- GWAS LINEAR: maf, mac, call_rate and r2 from the linear round's own sums (``Σg`` and ``Σg²`` over called
  samples and the missing count ride along); hwe_p needs genotype counts, so a counts round runs beside
  the linear one.
- GWAS LOGISTIC: maf, mac, call_rate and r2 from the score round's case/control allele counts and ``Σg²``,
  before the Newton rounds, so that filtered-out variants cost no Newton work; hwe_p needs a counts round
  beside it.

A *naive* plan (``naive=True``) always runs a separate counts round first and filters at the end; the
tests check that it gives the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from better.engine.analyses import analysis as declared_analysis
from better.engine.filters import VariantCondition, VariantFilter
from better.genomics.selection import suggest
from better.query.parser import READ_VERBS, Condition, Name, Query
from better.query.remote import Model
from better.wire.messages import Condition as WireCondition


@dataclass(frozen=True)
class StationCatalog:
    """What one station says it holds (from ``GET /station``): datasets, their variables and sizes."""

    name: str
    datasets: dict[str, dict[str, Any]]
    software: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    agreement_key: str | None = None

    def dataset(self, wanted: str | None, kind: str = "variants") -> str:
        """The dataset to query: ``wanted`` if it is of ``kind``, else the station's only one of that kind."""
        if wanted is not None and self.datasets.get(wanted, {}).get("kind", "variants") == kind:
            return wanted
        fitting = sorted(n for n, d in self.datasets.items() if d.get("kind", "variants") == kind)
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            have = ", ".join(f"{n} ({d.get('kind', 'variants')})" for n, d in sorted(self.datasets.items()))
            how = "better ingest-bam" if kind == "reads" else "better ingest"
            raise ValueError(
                f"station {self.name} holds no dataset of {kind} (it holds: {have or 'nothing'}); "
                f"one is made with {how}"
            )
        raise ValueError(
            f"station {self.name} holds {len(fitting)} datasets of {kind} ({', '.join(fitting)}); "
            'name one with dataset = "..." in the federation file'
        )


@dataclass
class Plan:
    """What will run: the main analysis' model, the filter and where its counts come from, the rounds."""

    query: Query
    model: Model
    variant_filter: VariantFilter
    pass_only: bool
    counts_source: str  # "counts" (own round), "linear" (rides along), "score" (rides along) or "none"
    separate_counts_round: bool
    naive: bool
    stations: list[str]
    variants_per_station: dict[str, int] = field(default_factory=dict)
    k: int = 1
    #: Secure aggregation: stations mask their releases and the centre sees only their sum.
    secure: bool = False
    #: Each station's disclosure policy, as it reports it.
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Stations whose dataset holds dosages (analysed on them, as PLINK 2 does with ``dosage=DS``).
    with_dosages: tuple[str, ...] = ()

    def explain(self) -> str:
        """The plan in words: rounds, station tasks, what each station releases, estimated bytes."""
        q = self.query
        lines = [f"plan for: {' '.join(q.text.split())}", f"stations: {', '.join(self.stations)}"]
        if self.with_dosages:
            lines.append(
                f"dosages at {', '.join(self.with_dosages)}: regressions, frequencies and the maf, mac, call_rate and "
                "r2 filters use them; HWE, PCA and PRUNE use the hard calls (PCA unlike plink2 --pca)"
            )
        m = max(self.variants_per_station.values(), default=0)
        scope = "the regions asked for" if q.regions else "every variant"
        k = self.k
        round_no = 1
        if self.separate_counts_round:
            when = "first" if self.naive else "beside the main round"
            lines.append(
                f"round {round_no}: `counts` task at every station ({when}): genotype counts per variant over "
                f"{scope} for the analysed samples; ~{_mb(m * 4 * 8)} per station"
            )
            round_no += 1
        if q.verb == "count":
            lines.append(f"round {round_no}: `sample_count` task at every station: one count (withheld if 1..4)")
        elif q.verb == "coverage":
            lines.append(
                f"round {round_no}: `coverage` task at every station: per target of {scope}, over the selected "
                "samples: samples, bases, summed depth, bases and samples at >= 10x, 20x, 30x (a target with 1..4 "
                "such samples is withheld)"
            )
        elif q.verb == "reads":
            lines.append(
                f"round {round_no}: `reads` task at every station: the samtools flagstat counters and the MAPQ "
                "histogram, summed over the selected samples"
            )
        elif q.verb == "pileup":
            lines.append(
                f"round {round_no}: `pileup` task at every station: read counts of A, C, G, T, N and deletions at "
                f"{len(q.regions)} position(s), read from the indexed files (base quality >= "
                f"{q.min_base_quality}, mapping quality >= {q.min_mapping_quality}); withheld where 1..4 samples "
                "carry a base"
            )
        elif q.verb in ("pca", "prune", "project"):
            lines.extend(self._structure_rounds(round_no, scope, m))
        elif q.verb in ("freq", "hwe", "beacon"):
            lines.append(
                f"round {round_no}: `counts` task at every station: genotype counts (hom-ref, het, hom-alt, "
                f"missing) per variant over {scope}; ~{_mb(m * 4 * 8)} per station"
            )
        elif q.model == "linear":
            per_variant = (k + 3 + k * k + k + 1) * 8
            lines.append(
                f"round {round_no}: `linear` task at every station: per variant C'g, g'g, g'y and, over samples "
                f"with a missing genotype, their count, Σcc', Σcy, Σy²; totals C'C, C'y, y'y, n "
                f"(k = {k}); ~{_mb(m * per_variant)} per station"
            )
        else:
            lines.append(f"rounds {round_no}..: `logistic_null` at every station until the null model converges")
            lines.append(
                "  each releases C'WC, C'(y-p), the log-likelihood, sample and case counts "
                f"(k = {k}); a few hundred bytes"
            )
            lines.append(
                f"next round: `logistic_score`: per variant g'(y-p), g'Wg, C'Wg, Σ_missing wcc', Σ_missing c(y-p), "
                f"case/control allele counts; ~{_mb(m * (2 + 2 * k + k * k + 6) * 8)} per station"
            )
            if q.test != "score":
                lines.append(
                    "then `logistic_newton` rounds for the variants still being fitted (usually two, more for "
                    f"Firth): X'WX, X'(y-p) per variant (k + 1 = {k + 1})"
                )
        central = self._central()
        lines.append(f"central: {central}")
        if self.pass_only:
            lines.append("stations use only records whose FILTER is PASS (or '.') at that station")
        lines.extend(self._disclosure())
        if self.secure:
            lines.append(
                "secure aggregation: on. A `variant_keys` round first lists each station's variants; every "
                "later release is laid on their union and masked, 16 bytes per number (uncompressed), so the "
                "coordinator sees only the sum over stations"
            )
        else:
            lines.append("secure aggregation: off (each station's release is seen by the coordinator)")
        return "\n".join(lines)

    def _structure_rounds(self, round_no: int, scope: str, m: int) -> list[str]:
        """PCA and PRUNE: the counts round, the LD rounds, the PCA rounds, the scores."""
        q = self.query
        lines = [
            f"round {round_no}: `counts` task at every station: genotype counts per variant over {scope}, for "
            f"the variant filter, the frequencies and the rules; ~{_mb(m * 4 * 8)} per station"
        ]
        if q.prune is not None:
            window = f"{q.prune.window} kb" if q.prune.kb else f"{q.prune.window} variants"
            pairs = m * (q.prune.window - 1 if not q.prune.kb else 50)
            lines.append(
                f"rounds {round_no + 1}..: `ld_pairs` tasks (up to 250,000 pairs each): per pair of variants within "
                f"{window}, over the people called at both, n, Σx, Σy, Σx², Σy², Σxy (integers); "
                f"~{_mb(pairs * 6 * (16 if self.secure else 8))} per station in all; then PLINK 2's "
                f"--indep-pairwise {q.prune} greedy pruning, centrally"
            )
        if q.verb == "project":
            lines.append(
                f"then `pca_scores`: the weights of {q.weights_file} go out, each station stores its people's scores "
                f"as covariates {q.store_as.text if q.store_as else ''}1.. and releases only how many it scored"
            )
        if q.verb == "pca":
            b = q.pcs + 10
            lines.append(
                f"then `pca_product` rounds (block Lanczos, usually 5 to 30, at most 60): the coordinator sends a "
                f"basis Q of {b} columns per variant and each station returns X_s'(X_s Q), a sum over its people per "
                f"variant; the people's scores X_s Q stay at the station; ~{_mb(m * b * (16 if self.secure else 8))} "
                "per station and round, as much again sent"
            )
            stored = (
                f"stores its people's scores as covariates {q.store_as.text}1..{q.store_as.text}{q.pcs} of the dataset"
                if q.store_as is not None
                else "computes its people's scores (not stored: no AS)"
            )
            lines.append(
                f"last round: `pca_scores`: the loadings go out, each station {stored} and releases how many it "
                "scored and six sums per PC over them (for PLINK's missingness-corrected eigenvalues)"
            )
        return lines

    def _disclosure(self) -> list[str]:
        """Which of the stations' rules apply to this query, and on what they are judged."""
        q = self.query
        k = max((int(p.get("min_cell_count", 5)) for p in self.policies.values()), default=5)
        mac = max((int(p.get("min_minor_allele_count", 5)) for p in self.policies.values()), default=5)
        where = (
            "on the totals over the stations (sealed rounds: each station sums the others' masked counts "
            "itself, the coordinator sees none of them)"
            if self.secure
            else "on each station's own counts"
        )
        lines = [
            "disclosure control, judged " + where + ":",
            f"  query audit: refused if, with everything the stations released before, the selection would "
            f"single out 1..{k - 1} people (a count is shown as withheld)",
        ]
        rules = {
            "freq": [f"minor_allele_count (1..{mac - 1} copies)"],
            "beacon": [
                f"minor_allele_count (1..{mac - 1} copies; such a variant is shown as present, its counts withheld)"
            ],
            "hwe": [f"minor_allele_count (1..{mac - 1} copies)"],
            "pca": [f"minor_allele_count (1..{mac - 1} copies; such variants are left out of the PCA)"],
            "prune": [f"minor_allele_count (1..{mac - 1} copies; such variants are left out)"],
            "coverage": [f"small_cells (1..{k - 1} samples behind a target)"],
            "pileup": [f"small_cells (1..{k - 1} samples behind a base)"],
        }.get(q.verb, [])
        if q.verb == "gwas":
            finish = self.secure and all(bool(p.get("finish_rows", False)) for p in self.policies.values())
            rules = [
                f"minor_allele_count (1..{mac - 1} copies)",
                f"missing_genotypes (1..{k - 1} people without a call"
                + (
                    "; such variants are finished by the stations, which release only their results)" if finish else ")"
                ),
                f"carriers (1..{k - 1} people called, or carrying either allele)"
                if q.model == "linear"
                else f"case_control_cells (1..{k - 1} cases or controls called, or carrying either allele)",
            ]
        if rules:
            lines.append("  rows withheld by: " + "; ".join(rules) + " (the WITHHELD_BY column names the rule)")
        if q.adjust_station and self.secure:
            lines.append(
                "  ADJUST station: each station's indicator columns carry its own sums, so its own selection is "
                "audited and its own cells judged too"
            )
        return lines

    def _central(self) -> str:
        q = self.query
        steps = {
            "count": "add the counts",
            "coverage": "add the sums by target; mean depth and fractions",
            "reads": "add the counters; percentages and MAPQ summary",
            "pileup": "add the read counts",
            "freq": "add the counts; ALT_FREQS, OBS_CT",
            "beacon": "add the counts; keep the variants asked about; EXISTS where someone carries the ALT allele",
            "hwe": "add the counts; HWE exact test",
            "prune": "add the pair sums; r² per pair; PLINK 2's greedy pruning per window",
            "project": "add the numbers of people scored",
            "pca": "add the products; Rayleigh-Ritz on the Krylov basis until every wanted eigenpair's relative "
            "residual is under 1e-4 (and, for separated PCs, the loading's error bound); eigenvalues, loadings",
        }
        text = steps.get(q.verb, "")
        if q.verb == "gwas":
            text = "combine the sums; per variant estimates, SE, test statistic and P (PLINK 2 --glm semantics)"
        if self.variant_filter.conditions:
            where = {
                "counts": "from the counts round",
                "linear": "riding along the linear round (Σg and missing counts)",
                "score": "from the score round's counts, before any Newton round",
            }[self.counts_source]
            conds = " AND ".join(f"{c.name} {c.op} {c.value:g}" for c in self.variant_filter.conditions)
            text += f"; filter {conds} on pooled counts, {where}"
        return text


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def check(query: Query, catalogs: list[StationCatalog], datasets: dict[str, str]) -> None:
    """Check names and types against every station's catalog; raise a QueryError at the token."""
    variables = {c.name: c.datasets[datasets[c.name]]["variables"] for c in catalogs}
    everywhere = set.intersection(*(set(v) for v in variables.values())) if variables else set()
    anywhere = set.union(*(set(v) for v in variables.values())) if variables else set()

    def kind(name: Name) -> str:
        if name.text in everywhere:
            return str(next(iter(variables.values()))[name.text])
        if name.text in anywhere:
            have = [s for s, v in variables.items() if name.text in v]
            lack = [s for s, v in variables.items() if name.text not in v]
            raise query.error(name, f"column {name.text!r} exists at {', '.join(have)} but not at {', '.join(lack)}")
        raise query.error(name, f"unknown column {name.text!r}{suggest(name.text, sorted(everywhere))}")

    if query.verb == "gwas":
        assert query.phenotype is not None
        for name in (query.phenotype, *query.covariates):
            if kind(name) == "text":
                raise query.error(name, f"column {name.text!r} holds text; the model needs numbers")
        seen: set[str] = set()
        for name in (query.phenotype, *query.covariates):
            if name.text in seen:
                raise query.error(name, f"{name.text!r} appears twice in the formula")
            seen.add(name.text)
        if query.model == "linear" and query.test != "wald":
            raise query.error((0, len(query.text)), "TEST applies to GWAS LOGISTIC only")
    elif query.adjust_station:
        raise query.error((0, len(query.text)), "ADJUST station applies to GWAS only")
    for cond in query.sample_conditions:
        k = kind(cond.column)
        if cond.op in ("is_missing", "not_missing"):
            continue
        if k == "text" and not isinstance(cond.value, str):
            raise query.error(cond.value_at, f"column {cond.column.text!r} holds text: compare it with 'quoted text'")
        if k != "text" and isinstance(cond.value, str):
            raise query.error(cond.value_at, f"column {cond.column.text!r} holds numbers: compare it with a number")
        if k == "text" and cond.op not in ("=", "!="):
            raise query.error(cond.column, f"text column {cond.column.text!r} takes only = or !=")
    for cond in query.variant_conditions:
        if query.verb == "count":
            raise query.error(cond.column, f"{cond.column.text} filters variants; COUNT counts samples")
        if query.verb == "beacon":
            raise query.error(cond.column, f"{cond.column.text} filters variants; BEACON asks about the variants named")
        if query.verb == "project":
            raise query.error(cond.column, f"{cond.column.text} filters variants; PROJECT uses the weights file's")
        if query.verb in READ_VERBS:
            raise query.error(cond.column, f"{cond.column.text} filters variants; {query.verb.upper()} has no variants")
        if cond.column.text == "filter":
            if cond.op != "=" or not isinstance(cond.value, str) or cond.value.upper() != "PASS":
                raise query.error(cond.column, "the only FILTER condition is filter = 'PASS'")
        elif cond.op in ("is_missing", "not_missing") or not isinstance(cond.value, float):
            raise query.error(
                cond.column, f"{cond.column.text} compares with a number, e.g. {cond.column.text} >= 0.01"
            )


def plan(
    query: Query,
    catalogs: list[StationCatalog],
    dataset: str | None = None,
    naive: bool = False,
    label: str | None = None,
) -> Plan:
    """Check ``query`` against the stations and choose its rounds."""
    analysis = {"gwas": f"gwas_{query.model}", "prune": "ld_prune", "project": "pca", "beacon": "freq"}.get(
        query.verb, query.verb
    )
    data = declared_analysis(analysis).data  # the kind of dataset it reads: variants, or aligned reads
    try:
        datasets = {c.name: c.dataset(dataset, data) for c in catalogs}
    except ValueError as exc:
        raise query.error((0, len(query.text)), str(exc)) from None
    for c in catalogs:
        if datasets[c.name] not in c.datasets:
            raise query.error(
                (0, len(query.text)),
                f"station {c.name} has no dataset {datasets[c.name]!r}{suggest(datasets[c.name], list(c.datasets))}",
            )
    for c in catalogs:
        have = c.datasets[datasets[c.name]].get("kind", "variants")
        if have != data:
            verb = query.verb.upper()
            raise query.error(
                (0, len(query.text)),
                f"station {c.name}'s dataset {datasets[c.name]!r} holds {have}; {verb} needs "
                + ("aligned reads (better ingest-bam)" if data == "reads" else "variants (better ingest)"),
            )
    check(query, catalogs, datasets)
    names = {datasets[c.name] for c in catalogs}
    if len(names) > 1:
        raise query.error(
            (0, len(query.text)), f"the stations name their dataset differently ({', '.join(sorted(names))})"
        )
    conds = tuple(
        VariantCondition(c.column.text, c.op, float(c.value))  # type: ignore[arg-type]
        for c in query.variant_conditions
        if c.column.text != "filter"
    )
    vf = VariantFilter(conds)
    pass_only = any(c.column.text == "filter" for c in query.variant_conditions)
    model = Model(
        dataset=names.pop(),
        analysis=analysis,
        phenotype=query.phenotype.text if query.phenotype else None,
        covariates=tuple(n.text for n in query.covariates),
        binary=query.model == "logistic",
        where=tuple(_wire(c) for c in query.sample_conditions),
        regions=tuple(str(r) for r in query.regions),
        adjust_station=query.adjust_station,
        label=label,
        pass_only=pass_only,
    )
    if query.verb in ("freq", "hwe", "beacon"):
        source, separate = ("counts" if vf.conditions else "none"), False
    elif query.verb == "count" or not vf.conditions:
        source, separate = "none", False
    elif naive:
        source, separate = "counts", True
    elif query.model == "linear":
        source, separate = ("counts", True) if vf.needs_genotypes else ("linear", False)
    else:  # the score round's allele counts give maf, mac, call_rate; HWE needs genotype counts
        source, separate = ("counts", True) if vf.needs_genotypes else ("score", False)
    k = 1 + len(query.covariates) + (len(catalogs) - 1 if query.adjust_station else 0)
    return Plan(
        query=query,
        model=model,
        variant_filter=vf,
        pass_only=pass_only,
        counts_source=source,
        separate_counts_round=separate,
        naive=naive,
        stations=[c.name for c in catalogs],
        variants_per_station={c.name: int(c.datasets[datasets[c.name]]["variants"]) for c in catalogs},
        with_dosages=tuple(c.name for c in catalogs if c.datasets[datasets[c.name]].get("dosages")),
        k=k,
        policies={c.name: c.policy for c in catalogs},
    )


def _wire(c: Condition) -> WireCondition:
    return WireCondition(column=c.column.text, op=c.op, value=c.value)
