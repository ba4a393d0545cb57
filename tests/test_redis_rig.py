"""The Redis test rig is a real server: values round-trip and server-side commands run."""

import redis


def test_value_round_trips_through_real_server(redis_client: redis.Redis) -> None:
    payload = bytes(range(256)) * 4
    redis_client.set("rollcall:test:blob", payload, ex=60)
    assert redis_client.get("rollcall:test:blob") == payload
    assert 0 < redis_client.ttl("rollcall:test:blob") <= 60
    info = redis_client.info("server")
    assert info["redis_version"].split(".")[0].isdigit()


def test_each_test_starts_with_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
