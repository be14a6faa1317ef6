"""Data at rest at a station: VCF reading, the store format, genotype packing, phenotypes, synthesis."""
