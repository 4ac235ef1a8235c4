from tokenpool.observability.masking import mask_event, mask_text, mask_to_last_four, mask_token


def test_a_token_keeps_only_its_ends():
    assert mask_token("4000123412341234") == "4000********1234"


def test_a_short_value_is_hidden_entirely():
    assert mask_token("abc123") == "******"


def test_sensitive_keys_are_masked_whatever_their_shape():
    event = mask_event({"internal_token": "4000123412341234", "external_refs": ["ext_0123456789abcdefghijkl"]})
    assert event["internal_token"] == "4000********1234"
    assert "0123456789abcdefgh" not in event["external_refs"][0]


def test_token_shaped_runs_inside_free_text_are_masked():
    text = mask_text("TOME refused 4000123412341234 and ext_01HZX3K9Q8W7E6R5T4Y3U2I1O0")
    assert "4000123412341234" not in text
    assert "01HZX3K9Q8W7E6R5T4Y3U2I1O0" not in text


def test_our_own_identifiers_stay_whole_for_tracing():
    correlation_id = "3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f"
    assert mask_event({"correlation_id": correlation_id})["correlation_id"] == correlation_id


def test_a_token_shown_to_people_keeps_its_last_four_and_its_length():
    assert mask_to_last_four("4000123412341234") == "************1234"
    assert mask_to_last_four("abc123") == "******"
