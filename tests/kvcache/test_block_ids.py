"""Block naming for the engine: a hash finds a candidate id, the content decides."""

from agentkv.kvcache.block_hash import chain_hash, salt_hash
from agentkv.kvcache.ids import BlockIds


def test_equal_content_and_prefix_share_an_id():
    ids = BlockIds()
    salt = salt_hash("model-a")
    h0 = chain_hash(salt, [1, 2])
    a0 = ids.name(h0, None, salt, [1, 2])
    a1 = ids.name(chain_hash(h0, [3, 4]), a0, salt, [3, 4])
    assert ids.name(h0, None, salt, [1, 2]) == a0
    assert ids.name(chain_hash(h0, [3, 4]), a0, salt, [3, 4]) == a1
    assert len({a0, a1}) == 2 and ids.collisions == 0


def test_a_hash_collision_gets_a_private_id_never_the_other_blocks():
    """Two different blocks under one 64-bit hash (forced here by reusing the hash): the second must not get
    the first's id, nor may a later lookup of either content return the other's."""
    ids = BlockIds()
    salt = salt_hash("model-a")
    h = chain_hash(salt, [1, 2])
    first = ids.name(h, None, salt, [1, 2])
    other = ids.name(h, None, salt, [9, 9])
    assert other != first and ids.collisions == 1
    assert ids.name(h, None, salt, [1, 2]) == first  # the registered content still hits
    again = ids.name(h, None, salt, [9, 9])
    assert again not in (first, other)  # the colliding content is recomputed every time, never shared
    # same tokens after different parents, or under another namespace, are different blocks
    assert ids.name(h, first, salt, [1, 2]) != first
    assert ids.name(h, None, salt_hash("model-b"), [1, 2]) != first
