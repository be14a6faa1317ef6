"""A named zoo of edge-case VCFs (text), written by tests into temporary folders."""

from __future__ import annotations

HEADER = """##fileformat=VCFv4.2
##contig=<ID=22>
##contig=<ID=X>
##FILTER=<ID=LowQual,Description="low">
##INFO=<ID=AC,Number=A,Type=Integer,Description="ac">
##INFO=<ID=AD,Number=R,Type=Integer,Description="ad">
##INFO=<ID=DP,Number=1,Type=Integer,Description="dp">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DP,Number=1,Type=Integer,Description="depth">
"""
COLS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"


def vcf(samples: list[str], records: list[str]) -> str:
    cols = COLS + ("\tFORMAT\t" + "\t".join(samples) if samples else "")
    return HEADER + cols + "\n" + "".join(r + "\n" for r in records)


ZOO: dict[str, str] = {
    "one_variant": vcf(["a", "b"], ["22\t100\trs1\tA\tG\t50\tPASS\tDP=3\tGT\t0/1\t1/1"]),
    "all_missing": vcf(
        ["a", "b", "c"],
        ["22\t100\t.\tA\tG\t.\t.\t.\tGT\t./.\t.\t.|.", "22\t200\t.\tC\tT\t.\t.\t.\tGT\t./.\t./.\t./."],
    ),
    "no_samples": vcf([], ["22\t100\trs1\tA\tG\t50\tPASS\tDP=3", "22\t150\trs2\tA\tC,T\t.\t.\t."]),
    "multiallelic": vcf(
        ["a", "b", "c", "d"],
        [
            "22\t100\trs1\tA\tC,G\t50\tPASS\tAC=1,2;AD=5,6,7;DP=10\tGT:DP\t0/1:3\t1/2:4\t./2:.\t2|2:9",
            "22\t200\t.\tAT\tA,ATT,ATTT\t.\tLowQual\tDP=3\tGT\t3/3\t0|1\t.\t2/1",
        ],
    ),
    "haploid_x": vcf(
        ["m1", "f1", "m2"],
        ["X\t300\trs3\tG\tT\t20\tPASS\t.\tGT\t1\t0/1\t.", "X\t400\trs4\tG\tA,C\t20\tPASS\t.\tGT\t2\t1|2\t0"],
    ),
    "gt_not_first": vcf(
        ["a", "b"],
        [
            "22\t100\trs1\tA\tG\t50\tPASS\t.\tDP:GT\t7:0/1\t.:1|1",
            "22\t101\trs2\tA\tG\t50\tPASS\t.\tDP:GT\t7\t3:0/0",
        ],
    ),
    "ref_only": vcf(["a", "b"], ["22\t100\trs1\tA\t.\t50\tPASS\t.\tGT\t0/0\t0|0"]),
    "many_alleles": vcf(
        ["a", "b"],
        ["22\t100\trs1\tA\t" + ",".join(f"A{'C' * i}" for i in range(1, 13)) + "\t.\t.\t.\tGT\t0/11\t12|3"],
    ),
    "crlf_no_final_newline": vcf(
        ["a", "b"],
        ["22\t100\trs1\tA\tG\t50\tPASS\t.\tGT\t0/1\t1/1", "22\t200\trs2\tA\tG\t50\tPASS\t.\tGT\t0/0\t./1"],
    )
    .replace("\n", "\r\n")
    .rstrip("\r\n"),
    "two_chromosomes": vcf(
        ["a", "b", "c", "d", "e"],
        [f"{c}\t{p}\t.\tA\tG\t.\tPASS\t.\tGT\t0/1\t1/1\t0/0\t./.\t1|0" for c in ("22", "X") for p in (5, 5, 9)],
    ),
}
