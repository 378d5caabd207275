mmfuse_add_test(test_fusion_gated SOURCES test_gated.cpp LABELS fusion)
