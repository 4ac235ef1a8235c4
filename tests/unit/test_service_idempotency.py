from tokenpool.cards.idempotency import MAX_KEY_LENGTH, is_valid_key, request_fingerprint


def test_the_fingerprint_ignores_key_order_but_not_values():
    a = request_fingerprint({"program": "p", "customer_ref": "c"})
    assert a == request_fingerprint({"customer_ref": "c", "program": "p"})
    assert a != request_fingerprint({"program": "p", "customer_ref": "d"})
    assert len(a) == 32


def test_keys_are_visible_ascii_of_bounded_length():
    assert is_valid_key("order-42:retry_1")
    assert is_valid_key("x" * MAX_KEY_LENGTH)
    assert not is_valid_key("x" * (MAX_KEY_LENGTH + 1))
    assert not is_valid_key("")
    assert not is_valid_key("with space")
    assert not is_valid_key("é")
    assert not is_valid_key("line\nbreak")
