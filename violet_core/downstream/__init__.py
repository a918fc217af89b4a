"""Downstream tasks (docs/method.md §9): normalised task records, loaders for the synthetic layout and for
common public-benchmark files, and the retrieval / QA metrics.

- `records`: `RetrievalSet`, `McItem`, `OeItem`, the synthetic-layout loaders and the text templates.
- `adapters`: MSRVTT / DiDeMo retrieval, TGIF-QA and MSRVTT-QA / MSVD-QA files -> the same records.
- `metrics`: R@k / MdR / MnR with mid-rank ties, chance levels, MC and open-ended QA accuracy.
"""
