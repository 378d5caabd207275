# Golden tests against open_clip: clip/siglip/distill losses and gradients, retrieval metrics,
# zero-shot classifier and accuracy (fixtures: tools/golden/make_contrastive_fixtures.py).
mmfuse_add_test(test_contrastive_golden SOURCES test_golden.cpp LABELS contrastive golden)
