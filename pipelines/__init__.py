"""Apache Beam pipelines: parse, validate, deduplicate, lineage-tag, chunk, embed and write documents."""
