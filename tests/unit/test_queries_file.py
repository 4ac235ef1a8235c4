from tokenpool.db.queries import load, parse


def test_every_statement_has_a_body_without_header_comments():
    queries = load()
    assert {"reserve", "commit", "release", "expire_leases", "lookup", "copy_staging", "stats"} <= set(queries)
    for name, body in queries.items():
        assert body, name
        assert not body.startswith("--"), name
        assert not body.endswith(";"), name


def test_parse_splits_on_headers():
    assert parse("-- a --\n-- says a\nSELECT 1;\n\n-- b --\nSELECT 2;\n") == {"a": "SELECT 1", "b": "SELECT 2"}


def test_the_claim_skips_locked_rows_and_never_waits():
    assert load()["reserve"].count("FOR UPDATE SKIP LOCKED") == 2
