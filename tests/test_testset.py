"""The paper's test side: test images chosen by count or list, one chain per image for the set to
curate, drawn in proportion to tier-1 concepts, ids 0..N-1; a curated set passes through unchanged."""

from collections import Counter

from pipeline.testset import TestSection, choose_images, coco_image_id, image_of, sample_test_set


def chains(n_images=40, per_image=5):
    concepts = ["animal", "animal", "animal", "vehicle", "food"]          # 60% / 20% / 20% of images
    out = []
    for i in range(n_images):
        for j in range(per_image):
            c = concepts[i % len(concepts)]
            out.append({"chain_id": f"c{i}-{j}", "image_id": str(i), "positive": [c, f"{c} {j}", f"x {j}", f"cap {i} {j}"]})
    return out


def test_coco_ids():
    assert coco_image_id("http://images.cocodataset.org/val2014/COCO_val2014_000000179765.jpg") == "179765"
    assert coco_image_id("COCO_val2014_000000000042.jpg") == "42" and coco_image_id(None) is None
    assert image_of({"image_url": "http://x/COCO_val2014_000000000007.jpg"}) == "7"
    assert image_of({"image_id": "3", "image_url": "http://x/COCO_val2014_000000000007.jpg"}) == "3"


def test_choose_images_by_count_or_list():
    ids = [str(i) for i in range(100)] * 3
    a = choose_images(ids, TestSection(images=10), seed=0)
    assert len(a) == 10 and a == choose_images(reversed(ids), TestSection(images=10), seed=0)
    assert a != choose_images(ids, TestSection(images=10), seed=1)
    assert choose_images(ids, TestSection(images=["5", "COCO_val2014_000000000007.jpg", "999"]), 0) == {"5", "7"}
    assert choose_images(ids, TestSection(), 0) is None


def test_one_chain_per_image_stratified_ids_0_to_n():
    pool = chains()
    cfg = TestSection(curate=20)
    got = sample_test_set(pool, cfg, seed=0)
    assert [c["test_id"] for c in got] == list(range(20))
    assert len({c["image_id"] for c in got}) == 20                      # one chain per image
    assert Counter(c["positive"][0] for c in got) == {"animal": 12, "vehicle": 4, "food": 4}   # the pool's shares
    assert got == sample_test_set(list(reversed(pool)), cfg, seed=0)    # deterministic, order-free
    assert got != sample_test_set(pool, cfg, seed=1)
    unstratified = sample_test_set(pool, TestSection(curate=20, stratify=False), seed=0)
    assert len({c["image_id"] for c in unstratified}) == 20
    assert len(sample_test_set(pool, TestSection(curate=500), seed=0)) == 40   # at most one per image


def test_a_curated_set_passes_through():
    curated = [{"chain_id": f"k{i}", "image_id": str(i), "orig_id": str(i), "positive": ["a", "a b", "a b c", "a b c d"]}
               for i in range(30)]
    assert sample_test_set(curated, TestSection(curate=1000), seed=0) == curated
    assert sample_test_set(chains(), TestSection(curate=None), seed=0) == chains()
