"""Object storage -> Arrow shards: sensors, grid math, reads, stacking, the ingest graph."""
