"""Block naming for the engine: a 128-bit digest finds a candidate id, the content decides; ids are recycled."""

from agentkv.kvcache.block_hash import BlockKey, block_key, chain_keys, namespace_digest
from agentkv.kvcache.ids import BlockIds


def test_equal_content_and_prefix_share_an_id():
    ids = BlockIds()
    ns = namespace_digest("model-a")
    k0, k1 = chain_keys([1, 2, 3, 4], 2, ns)
    a0, a1 = ids.name(k0), ids.name(k1)
    assert ids.name(block_key(ns, [1, 2])) == a0 and ids.name(block_key(k0.digest, [3, 4])) == a1
    assert len({a0, a1}) == 2 and ids.collisions == 0 and ids.refs[a0] == 2
    # same tokens after a different parent, or in another namespace, are different blocks
    assert block_key(k1.digest, [1, 2]).digest != k0.digest
    assert ids.name(block_key(namespace_digest("model-b"), [1, 2])) != a0


def test_a_digest_collision_gets_a_private_id_never_the_other_blocks():
    """Two different blocks under one digest (forced here): the second must not get the first's id, nor may a
    later lookup of either content return the other's."""
    ids = BlockIds()
    real = block_key(namespace_digest("m"), [1, 2])
    first = ids.name(real)
    forged = BlockKey(real.digest, real.identity[:-4] + b"\x09\x00\x00\x00")
    other = ids.name(forged)
    assert other != first and ids.collisions == 1
    assert ids.name(real) == first  # the registered content still hits
    assert ids.name(forged) not in (first, other)  # the colliding content is recomputed every time


def test_ids_are_recycled_once_unreferenced():
    ids = BlockIds()
    keys = chain_keys(list(range(8)), 2, namespace_digest("m"))
    named = [ids.name(k) for k in keys]
    assert ids.unref(named[:2]) == named[:2] and len(ids) == 4
    for i in named[:2]:
        ids.recycle(i)
    assert len(ids) == 2 and ids.capacity == 4
    again = ids.name(keys[0])  # its old number may come back, but as a fresh id for this content
    assert again in named[:2] and ids.refs[again] == 1 and ids.capacity == 4
