"""The assignment of trigger partitions to live engines (engine.loops.partition_owners):
every engine computes its share from the same member list, so the shares must cover
every partition once, whatever the list's order."""

from __future__ import annotations

import itertools

import pytest

from engine.loops.partition_owners import owned_partitions


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("engines", [1, 2, 3, 4, 5, 9])
def test_the_shares_of_the_live_engines_cover_every_partition_once(
    partitions: int, engines: int
) -> None:
    members = [f"host-{i}" for i in range(engines)]
    shares = [owned_partitions(partitions, members, me) for me in members]
    assert sorted(itertools.chain(*shares)) == list(range(partitions))
    # Balanced: no engine reads more than one partition more than another.
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_every_engine_computes_the_same_shares_whatever_the_order_it_reads() -> None:
    members = ["b-2", "a-1", "c-3"]
    for order in itertools.permutations(members):
        assert [owned_partitions(4, order, me) for me in members] == [[1], [0, 3], [2]]


def test_an_engine_not_yet_a_member_reads_every_partition() -> None:
    assert owned_partitions(4, [], "a") == [0, 1, 2, 3]
    assert owned_partitions(4, ["b", "c"], "a") == [0, 1, 2, 3]
