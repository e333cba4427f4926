"""The ingest stage: read raw S3 objects, normalise, deduplicate, validate, quarantine, stage."""
