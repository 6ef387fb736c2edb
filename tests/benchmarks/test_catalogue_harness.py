"""The catalogue benchmark's harness (benchmarks.catalogue) on a small registry: the new listing answers
every query exactly as the old one did (the harness compares them before timing), on each database."""
from __future__ import annotations

from benchmarks.catalogue import QUERIES, run


def test_the_new_listing_answers_every_benchmark_query_as_the_old_one_did(tmp_path, database_url):
    timings = run(models=300, pack_size=10, repeats=1, database_url=database_url, workdir=tmp_path)
    assert [t.query for t in timings] == list(QUERIES)
    by_query = {t.query: t for t in timings}
    assert by_query["first page (100)"].total == 300 and by_query["first page (100)"].items == 100
    assert 0 < by_query["pending, 100"].total < 300, "the registry has pending models, so reasons are compared"
    assert all(t.old_ms > 0 and t.new_ms > 0 for t in timings)
