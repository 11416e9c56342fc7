from tests.support.java_partitioner import java_partition, murmur2


def test_murmur2_matches_kafkas_published_vectors():
    # Vectors from Kafka's UtilsTest.testMurmur2 (signed ints there, unsigned here).
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        bytes([ord("a"), ord("b"), ord("c")]): 479470107,
    }
    for key, signed in vectors.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key


def test_partition_is_positive_modulo():
    assert 0 <= java_partition(b"8ff7047b-fb46-44ff-a4c6-7c20c73ab86e", 12) < 12
