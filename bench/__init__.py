"""bimamba-bench (installed as bimamba_edge.bench): BM1 against stock llama.cpp types on the same weights.

One module per concern: models (the comparison set), llamabench (one measured llama-bench process),
energy (RAPL / powermetrics meters), bandwidth (read-bandwidth probe), roofline (bytes per decoded token),
gguf_header (a dependency-free GGUF header reader), machine, schema (results document + validator),
suite (the run), report (JSON, markdown, plots), cli.
"""
