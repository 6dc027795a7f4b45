//! The analyzer: scrape per-cohort metrics, compare canary with control, decide.
